"""On the GPUs: DIN and DAIAN train under MirroredStrategy over every visible GPU (float32 and
``mixed_bfloat16``), and the exported SavedModel scores like the trained model.

Marked ``gpu``: skipped where TensorFlow sees no GPU (tests/conftest.py); run them with
``benchmarks/gpu_check.sh`` on a GPU machine, or ``pytest -m gpu tests/gpu``. With
``TIREC_GPU_TESTS_ON_CPU=1`` they run without a GPU, mirrored over one CPU replica
(``train.cpu_replicas=1``), to check the tests themselves.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models.train import load_run, train_run
from tirec.serving.export import export_run, read_eval_records
from tirec.serving.verify import offline_scores

pytestmark = pytest.mark.gpu

GPUS = len(tf.config.list_physical_devices("GPU"))  # physical: does not start the runtime

# Tiny models (as the export tests), a few steps per stage.
SMALL = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
         "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "model.daian.sim_bins=5",
         "train.batch_size=256", "train.shuffle_buffer=1000", "train.steps_per_epoch=3",
         "model.daian.explicit_buckets=1", "model.hist_buckets=1",  # tiny runs: one length group
         "train.strategy=mirrored"] + ([] if GPUS else ["train.cpu_replicas=1"])
# DAIAN trains its three stages in float32; the mixed runs train the joint stage only (shorter).
PER_PRECISION = {"float32": [], "mixed_bfloat16": ["train.precision=mixed_bfloat16", "train.three_stage=false"]}
STAGES = {("daian", "float32"): {"uim_pretrain", "die_pretrain", "joint"}}
# Exported (float32) vs the in-memory model: the same graph in float32; bfloat16 compute in the
# mixed-precision model (as tests/models/test_train.py's mixed check).
IN_MEMORY_ATOL = {"float32": 1e-5, "mixed_bfloat16": 0.03}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A function ``(model, precision) -> {"run", "metrics", "model"}``: the run trained once per
    module (the export test reuses the training tests' runs), ``model`` the in-memory one."""
    runs = {}

    class Keep(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.trained = self.model

    def get(name, precision):
        if (name, precision) not in runs:
            cfg = load_config(None, SMALL + PER_PRECISION[precision])
            run = str(tmp_path_factory.mktemp(f"run_{name}_{precision}") / "run")
            keep = Keep()
            metrics = train_run(tiny_data, name, run, cfg.model, cfg.train, callbacks=[keep])
            runs[(name, precision)] = {"run": run, "metrics": metrics, "model": keep.trained}
        return runs[(name, precision)]

    return get


def _check_training(result, name, precision):
    metrics, run = result["metrics"], result["run"]
    assert metrics["strategy"] == "MirroredStrategy"
    assert metrics["replicas"] == max(GPUS, 1)  # every visible GPU (one CPU replica without)
    assert set(metrics["history"]) == STAGES.get((name, precision), {"joint"})
    for stage, history in metrics["history"].items():
        assert history["loss"], stage
        assert all(np.isfinite(v).all() for k, v in history.items() if k.endswith("loss")), (stage, history)
    for key in ("auc", "gauc", "logloss"):
        assert np.isfinite(metrics[key]), key
    on_disk = json.load(open(os.path.join(run, "metrics.json")))
    assert on_disk["replicas"] == metrics["replicas"] and on_disk["auc"] == pytest.approx(metrics["auc"])
    train_cfg = json.load(open(os.path.join(run, "config.json")))["train"]
    assert (train_cfg["strategy"], train_cfg["precision"]) == ("mirrored", precision)
    assert result["model"].precision == precision


@pytest.mark.parametrize("name", ["din", "daian"])
def test_mirrored_training_float32(trained, name):
    _check_training(trained(name, "float32"), name, "float32")


@pytest.mark.parametrize("name", ["din", "daian"])
def test_mirrored_training_mixed_bfloat16(trained, name):
    result = trained(name, "mixed_bfloat16")
    _check_training(result, name, "mixed_bfloat16")
    assert result["model"].embed.compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in result["model"].weights if v.dtype.is_floating)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["din", "daian"])
def test_export_serving_parity(trained, tiny_data, tmp_path, name, precision):
    """The exported SavedModel (plain ``tf.saved_model.load``) scores serialized eval
    tf.Examples as the run reloaded offline (what ``tirec verify-serving`` compares) and as the
    trained in-memory model; ``rank`` (1 context + the request's candidates) as
    ``serving_default``."""
    result = trained(name, precision)
    exported = export_run(result["run"], str(tmp_path / "models"), name)
    records = read_eval_records(tiny_data, 64)
    loaded = tf.saved_model.load(exported)
    got = {k: v.numpy() for k, v in loaded.signatures["serving_default"](examples=tf.constant(records)).items()}
    offline, spec, _ = load_run(result["run"])  # float32 compute, as exported
    want = offline_scores(offline, spec, records)
    assert set(got) == set(want) == ({"ctr", "intent"} if name == "daian" else {"ctr"})
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    in_memory = offline_scores(result["model"], spec, records)
    np.testing.assert_allclose(got["ctr"], in_memory["ctr"], atol=IN_MEMORY_ATOL[precision])
    assert np.all((got["ctr"] > 0) & (got["ctr"] < 1))

    rid = tf.io.parse_example(tf.constant(records), {"request_id": tf.io.FixedLenFeature([], tf.string)})
    rid = rid["request_id"].numpy()
    rows = np.flatnonzero(rid == rid[0])
    ranked = loaded.signatures["rank"](context=tf.constant(records[:1]),
                                       candidates=tf.constant([records[i] for i in rows]))
    np.testing.assert_allclose(ranked["ctr"].numpy(), got["ctr"][rows], atol=1e-5)
