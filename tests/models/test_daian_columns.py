"""DAIAN finds the columns it reads besides the embedder's (the target, trigger and history item
ids for the multimodal table, the trigger flag) by group and field, not by name."""
import dataclasses

import numpy as np
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.features.spec import tir_feature_spec
from tirec.models.train import build_model

B, L = 4, 5
RENAMED = {"target_item_id": "cand", "trigger_item_id": "trig", "hist_item_ids": "seq_items",
           "has_trigger": "trig_present"}
SMALL = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[8]",
         "model.daian.uim_hidden=[8]", "model.din_hidden=[8]", "model.daian.sim_bins=3",
         "model.daian.explicit_buckets=1", "model.hist_buckets=1"]


def _batch(spec, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for f in spec.select(model_input=True):
        shape = (B,) if f.kind == "scalar" else (B, f.length)
        high = 2 if f.field == "present" else 12
        out[f.name] = tf.constant(rng.integers(0 if high == 2 else 1, high, size=shape), tf.int64)
    return out


def test_daian_reads_renamed_columns_by_group_and_field():
    spec = tir_feature_spec(item_fields=("cate_id",), max_seq_len=L)
    renamed = dataclasses.replace(spec, features=tuple(
        dataclasses.replace(f, name=RENAMED.get(f.name, f.name)) for f in spec.features))
    cfg = load_config(None, SMALL).model
    ids = np.arange(1, 12, dtype=np.int64)
    vecs = np.random.default_rng(1).normal(size=(11, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    x = _batch(spec)
    x_renamed = {RENAMED.get(k, k): v for k, v in x.items()}
    keras.utils.set_random_seed(0)
    model = build_model("daian", spec, cfg, ids, vecs)
    model_renamed = build_model("daian", renamed, cfg, ids, vecs)
    want = model(x)
    model_renamed(x_renamed)
    model_renamed.set_weights(model.get_weights())
    got = model_renamed(x_renamed)
    np.testing.assert_allclose(got["ctr"].numpy(), want["ctr"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["intent"].numpy(), want["intent"].numpy(), rtol=1e-6)
