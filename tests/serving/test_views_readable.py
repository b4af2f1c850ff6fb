"""Records written with ``--views`` stay readable by every model: DIN, which reads only ``hist``,
trains on them, and neither its run nor its exported signatures carry the ``rt_*`` / ``lt_*``
columns."""
import json
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tirec import cli
from tirec.config import load_config
from tirec.features.spec import FeatureSpec
from tirec.models.train import load_run, train_run
from tirec.pipeline import synthetic
from tirec.serving import export as E
from tirec.serving.verify import offline_scores

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "train.batch_size=256",
         "train.shuffle_buffer=1000", "train.steps_per_epoch=2", "model.hist_buckets=1"]


def _view_columns(names) -> list:
    return sorted(n for n in names if n.startswith(("rt_", "lt_")))


def test_din_trains_and_exports_on_records_with_views_without_reading_them(tmp_path, capsys):
    raw, data, run = str(tmp_path / "raw"), str(tmp_path / "tfr"), str(tmp_path / "run")
    synthetic.generate(synthetic.GeneratorConfig(users=20, seed=4, days=4), raw)
    assert cli.main(["pipeline", "--input", raw, "--format", "synthetic", "--out", data, "--views",
                     "--max-seq-len", "10", "--long-seq-len", "30"]) == 0
    printed = capsys.readouterr().out
    assert "view rt:" in printed and "mean length" in printed and "of 30" in printed
    data_spec = FeatureSpec.load(f"{data}/spec.json")
    assert set(data_spec.histories()) == {"hist", "rt", "lt"}
    assert len(_view_columns(data_spec.names)) == 12  # ids, ts, 3 side fields, len; twice
    cfg = load_config(None, SMALL)
    metrics = train_run(data, "din", run, cfg.model, cfg.train)
    assert np.isfinite(metrics["auc"])
    with open(os.path.join(run, "spec.json")) as fh:
        run_names = [f["name"] for f in json.load(fh)["features"]]
    assert _view_columns(run_names) == [] and "hist_item_ids" in run_names
    model, spec, _ = load_run(run)
    assert spec == data_spec.keep_histories(["hist"])

    exported = E.export_run(run, str(tmp_path / "models"), "din", warmup_rows=4)
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(exported, "saved_model.pb"), "rb") as fh:
        sm.ParseFromString(fh.read())
    sigs = sm.meta_graphs[0].signature_def
    assert "hist_item_ids" in sigs["predict"].inputs
    assert _view_columns(sigs["predict"].inputs) == []
    with open(os.path.join(exported, "assets", "spec.json")) as fh:
        assert _view_columns(f["name"] for f in json.load(fh)["features"]) == []
    # the records (which carry the views) score through the exported model as through Keras
    records = E.read_eval_records(data, 32)
    assert _view_columns(tf.train.Example.FromString(records[0]).features.feature)
    got = tf.saved_model.load(exported).signatures["serving_default"](examples=tf.constant(records))
    np.testing.assert_allclose(got["ctr"].numpy(), offline_scores(model, spec, records)["ctr"], atol=1e-6)
