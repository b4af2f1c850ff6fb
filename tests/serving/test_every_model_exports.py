"""Every registered model trains, exports and serves without tirec: two training steps -> `tirec
export` -> the SavedModel reloaded in a fresh Python that imports only TensorFlow -> serialized
tf.Examples (``serving_default``) and raw tensors (``predict``) score as the trained in-memory
Keras model does. The models come from the registry when the tests are collected, so a newly
registered model is tested with no edit here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.features.spec import FeatureSpec
from tirec.models.registry import model_names
from tirec.models.train import training_stages, train_run
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig
from tirec.serving import export as E
from tirec.serving.verify import offline_scores

# Tiny dims; settings of a model's own section only for the models that exist on every branch
# (another model trains with its section's defaults and the small common settings).
SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "model.hist_buckets=1",
         "model.daian.att_units=8", "model.daian.att_heads=2", "model.daian.uim_hidden=[8]",
         "model.daian.sim_bins=5", "model.daian.explicit_buckets=1",
         "model.gapnet.att_units=8", "model.gapnet.att_heads=2", "model.gapnet.cgdf_hidden=[4]",
         # Two steps per stage. DAIAN trains its default three stages (UIM pretrain -> DIE
         # pretrain -> joint), the schedule a user exports after: the exported model is the one
         # left by the stage switches (tests/serving/test_export.py covers the joint stage alone).
         "train.three_stage=true", "train.steps_per_epoch=2", "train.epochs=1", "train.batch_size=64",
         "train.shuffle_buffer=1000", "train.seed=0"]

# A fresh interpreter started once for the module (TensorFlow's import is paid once): for each
# request line ``[export, records, out]`` it loads the export with TensorFlow alone, scores the
# records through both signatures into ``out`` and answers with the tirec modules it holds
# (there must be none), or with the error.
SCORER = r"""
import json, sys, traceback
import numpy as np
import tensorflow as tf

for line in sys.stdin:
    try:
        export, records, out = json.loads(line)
        rows = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(records)])
        loaded = tf.saved_model.load(export)
        by_examples = loaded.signatures["serving_default"](examples=rows)
        predict = loaded.signatures["predict"]
        # The raw-tensor inputs parsed by the signature's own declared shapes and dtypes (what a
        # client without tirec would do).
        parse = {k: tf.io.FixedLenFeature(s.shape[1:], s.dtype)
                 for k, s in predict.structured_input_signature[1].items()}
        by_tensors = predict(**tf.io.parse_example(rows, parse))
        np.savez(out, **{f"examples__{k}": v.numpy() for k, v in by_examples.items()},
                 **{f"tensors__{k}": v.numpy() for k, v in by_tensors.items()})
        answer = {"tirec_modules": sorted(m for m in sys.modules if m == "tirec" or m.startswith("tirec."))}
    except Exception:
        answer = {"error": traceback.format_exc()}
    print(json.dumps(answer), flush=True)
"""


@pytest.fixture(scope="module")
def scorer():
    """The SCORER process; a call scores one export and returns (outputs, its tirec modules)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-c", SCORER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)

    def score(export_dir: str, records: list[bytes], tmp) -> tuple[dict, list]:
        path, out = str(tmp / "records.tfr"), str(tmp / "scores.npz")
        with tf.io.TFRecordWriter(path) as w:
            for r in records:
                w.write(r)
        proc.stdin.write(json.dumps([export_dir, path, out]) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"the scorer process exited (code {proc.poll()})"
        answer = json.loads(line)
        assert "error" not in answer, answer.get("error")
        z = np.load(out)
        return {k: z[k] for k in z.files}, answer["tirec_modules"]

    yield score
    proc.stdin.close()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def views_data(tmp_path_factory):
    """30 users' logs with GAP-Net's views (each model narrows the schema to the sequences it
    reads, so the exports have different inputs)."""
    base = tmp_path_factory.mktemp("every_model")
    raw, out = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=30, seed=3), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=10, views=True,
                           realtime_len=4, long_seq_len=20))
    return out


class KeepModel(keras.callbacks.Callback):
    """Holds the model `fit` trained (the in-memory Keras model, after its last stage)."""

    def on_train_end(self, logs=None):
        KeepModel.trained = self.model


@pytest.mark.parametrize("name", model_names())
def test_model_trains_exports_and_serves_without_tirec(views_data, scorer, tmp_path, name):
    cfg = load_config(None, SMALL)
    run = str(tmp_path / "run")
    keep = KeepModel()
    metrics = train_run(views_data, name, run, cfg.model, cfg.train, callbacks=[keep])
    stages = training_stages(KeepModel.trained, cfg.train)
    # Two steps in every stage the model trains in.
    assert set(metrics["history"]) == {s.name for s in stages}
    assert all(len(h["loss"]) == 1 for h in metrics["history"].values())
    model = KeepModel.trained
    assert model.stage == stages[-1] and int(model.optimizer.iterations) == 2
    exported = E.export_run(run, str(tmp_path / "models"), name, warmup_rows=0)

    records = E.read_eval_records(views_data, 48)
    spec = FeatureSpec.load(os.path.join(run, "spec.json"))
    want = offline_scores(model, spec, records)
    got, tirec_modules = scorer(exported, records, tmp_path)
    assert tirec_modules == []
    outputs = ["ctr", "intent"] if getattr(model, "has_intent", False) else ["ctr"]
    assert {k.split("__")[1] for k in got} == set(outputs)
    for key in outputs:
        for sig in ("examples", "tensors"):
            np.testing.assert_allclose(got[f"{sig}__{key}"], want[key], atol=1e-6, rtol=0,
                                       err_msg=f"{name} {sig} {key}")
    # The rows are scored differently (the check compares real scores, not one constant).
    assert np.ptp(want["ctr"]) > 0
