"""A new item side field and a new context field, end to end, with no code change: the raw data
gains an item column ``shop_id`` and an impression column ``ctx_device``; the pipeline writes
them into the spec (with their groups) and the records, a model embeds them, the export serves
them in every signature and the client sends them."""
import glob
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tirec.config import load_config
from tirec.models.base import model_input_names
from tirec.models.data import make_dataset
from tirec.models.train import load_run, train_run
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig
from tirec.serving import client as C
from tirec.serving import export as E

SMALL = ["model.emb_dim=4", "model.tower=[8]", "model.din_hidden=[4]", "model.hist_buckets=1",
         "train.batch_size=64", "train.shuffle_buffer=200", "train.steps_per_epoch=1"]


def _shop(item_ids):
    return np.asarray(item_ids) % 7 + 1


def _device(user_ids):
    return np.asarray(user_ids) % 3 + 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("new_fields")
    raw, data = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=16, seed=5, items=80, page_size=6, format="csv"), raw)
    items = pd.read_csv(os.path.join(raw, "items.csv"))
    items["shop_id"] = _shop(items["item_id"])
    items.to_csv(os.path.join(raw, "items.csv"), index=False)
    for path in glob.glob(os.path.join(raw, "impressions", "*.csv")):
        imps = pd.read_csv(path)
        imps["ctx_device"] = _device(imps["user_id"])
        imps.to_csv(path, index=False)
    job.run(PipelineConfig(input=raw, format="generic", out=data, max_seq_len=5))
    cfg = load_config(None, SMALL)
    run_dir = str(base / "run")
    train_run(data, "din", run_dir, cfg.model, cfg.train)
    exported = E.export_run(run_dir, str(base / "models"), "din", warmup_rows=0)
    return {"data": data, "run": run_dir, "export": exported}


def test_pipeline_writes_the_new_fields_with_their_groups(run):
    _, spec, _ = load_run(run["run"])
    assert [(f.name, f.group, f.scope) for f in spec.select(field="shop_id")] == [
        ("target_shop_id", "target", "candidate"), ("trigger_shop_id", "trigger", "request"),
        ("hist_shop_id", "history", "request")]
    device = spec.feature("ctx_device")
    assert (device.group, device.scope, device.model_input) == ("context", "request", True)
    x, _ = next(iter(make_dataset(run["data"], "train", spec, 256)))
    x = {k: v.numpy() for k, v in x.items()}
    np.testing.assert_array_equal(x["target_shop_id"], _shop(x["target_item_id"]))
    np.testing.assert_array_equal(x["ctx_device"], _device(x["user_id"]))
    real = x["hist_ts"] > 0
    assert real.any()
    np.testing.assert_array_equal(x["hist_shop_id"][real], _shop(x["hist_item_ids"][real]))
    trig = x["has_trigger"] == 1
    np.testing.assert_array_equal(x["trigger_shop_id"][trig], _shop(x["trigger_item_id"][trig]))


def test_model_embeds_the_new_fields(run):
    model, spec, _ = load_run(run["run"])
    x, _ = next(iter(make_dataset(run["data"], "train", spec, 64)))
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    model(x, training=False)  # builds the variables (restored on creation)
    tables = {name: model.embed.tables[name].trainable_variables for name in ("shop_id", "ctx_device")}
    with tf.GradientTape() as tape:
        out = model(x, training=False)["ctr"]
    grads = tape.gradient(out, tables)
    for name, g in grads.items():
        assert g and all(v is not None for v in g), name
        assert sum(float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(v)))) for v in g) > 0, name
    for name in ("ctx_device", "target_shop_id", "hist_shop_id"):
        moved = model({**x, name: x[name] + 1000}, training=False)["ctr"]
        assert not np.allclose(moved.numpy(), out.numpy()), name


def test_export_serves_and_client_sends_the_new_fields(run):
    model, spec, _ = load_run(run["run"])
    loaded = tf.saved_model.load(run["export"])
    assert {"target_shop_id", "trigger_shop_id", "hist_shop_id", "ctx_device"} <= set(
        loaded.signatures["predict"].structured_input_signature[1])
    records = E.read_eval_records(run["data"], 200)
    req = C.request_from_records(spec, records)
    assert "ctx_device" in req["context"] and all("shop_id" in c for c in req["candidates"])
    assert all("shop_id" in h for h in req["history"])
    feats = C.request_features(spec, req)
    want = model(feats, training=False)["ctr"].numpy()
    served = loaded.signatures["serving_default"](examples=tf.constant(C.to_examples(feats)))["ctr"].numpy()
    np.testing.assert_allclose(served, want, atol=1e-6)
    rank = C.rank_inputs(feats, spec)
    assert "target_shop_id" in tf.train.Example.FromString(rank["candidates"][0]).features.feature
    assert "ctx_device" in tf.train.Example.FromString(rank["context"][0]).features.feature
    ranked = loaded.signatures["rank"](context=tf.constant(rank["context"]),
                                       candidates=tf.constant(rank["candidates"]))["ctr"].numpy()
    np.testing.assert_allclose(ranked, want, atol=1e-6)
    # The served score follows the values the client sends.
    other = {**req, "context": {**req["context"], "ctx_device": req["context"]["ctx_device"] + 1000},
             "candidates": [{**c, "shop_id": c["shop_id"] + 1000} for c in req["candidates"]]}
    moved = loaded.signatures["predict"](**{k: tf.constant(v) for k, v in C.request_features(spec, other).items()})
    assert not np.allclose(moved["ctr"].numpy(), want)
