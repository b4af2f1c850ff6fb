"""What the ``tirec run`` tests share: a tiny config (60 users, a small DIN) and readers of a
run's executions."""
import os

from tirec.features.jsonio import read_json
from tirec.orchestration.config import load_runner_config

TINY = ["run.model=din", "model.din.sim_feature=true", "model.emb_dim=4", "model.tower=[16]",
        "model.din_hidden=[8]", "train.batch_size=256", "train.shuffle_buffer=2000", "train.epochs=3",
        "train.learning_rate=0.1", "pipeline.max_seq_len=10", "blessing.min_auc=0.55"]
USERS = 60
LENIENT = ["blessing.max_auc_drop=1", "blessing.max_gauc_drop=1", "blessing.max_slice_auc_drop=1"]


def cfg(*extra):
    return load_runner_config(None, TINY + list(extra), users=USERS)


def statuses(result):
    return {e["component"]: e["status"] for e in result.executions}


def outputs(result, name):
    return next(e for e in result.executions if e["component"] == name)["outputs"]


def evaluation(result):
    return read_json(os.path.join(outputs(result, "Evaluator")["evaluation"], "evaluation.json"))
