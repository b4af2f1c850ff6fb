"""FeatureEmbedder reads the FeatureSpec's groups, not the feature names: columns of any name
are embedded by their group and field, every behaviour sequence gets its own output, and the
request-level inputs (model.request_dedup's key) are the user, trigger and history groups."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tirec.features.spec import Feature, FeatureSpec, TableSpec, tir_feature_spec
from tirec.models.base import FeatureEmbedder, model_input_names, request_input_names

B, L, LONG = 3, 4, 6


def _spec():
    """The standard records with an item field ``shop`` and a context field ``weather`` whose
    column names follow no prefix, and a second behaviour sequence ``long``."""
    base = tir_feature_spec(item_fields=("cate_id",), max_seq_len=L)
    item = dict(table="shop", model_input=True, field="shop")
    seq = dict(kind="sequence", length=LONG, group="history", scope="request", history="long", model_input=True)
    extra = (Feature("cand_shop", "int64", group="target", scope="candidate", **item),
             Feature("trig_shop", "int64", group="trigger", scope="request", **item),
             Feature("seq_shop", "int64", "sequence", L, group="history", scope="request", history="hist", **item),
             Feature("weather", "int64", table="weather", group="context", scope="request", model_input=True),
             Feature("long_items", "int64", table="item", field="item_id", **seq),
             Feature("long_when", "int64", field="ts", **seq),
             Feature("long_cate", "int64", table="cate_id", field="cate_id", **seq),
             Feature("long_shop", "int64", table="shop", field="shop", **seq))
    return dataclasses.replace(base, features=base.features + extra,
                               tables=base.tables + (TableSpec("shop", 32), TableSpec("weather", 8)))


def _batch(spec, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for f in spec.select(model_input=True):
        shape = (B,) if f.kind == "scalar" else (B, f.length)
        out[f.name] = tf.constant(rng.integers(1, 20, size=shape), tf.int64)
    return out


def test_embedder_embeds_by_group_and_field():
    spec = _spec()
    emb = FeatureEmbedder(spec.to_json(), emb_dim=2, name="embed")
    x = _batch(spec)
    with tf.GradientTape() as tape:
        r, e = emb.request(x), emb.impression(x)
        total = sum(tf.reduce_sum(t) for t in (r["user"], r["trigger"], r["hist"], e["target"], e["context"],
                                               r["histories"]["long"][0]))
    assert {"shop", "weather"} <= set(emb.tables)
    # [id, cate_id, shop] for every item view; the context holds hour, dow and weather.
    assert e["target"].shape == (B, 6) and r["trigger"].shape == (B, 6) and r["hist"].shape == (B, L, 6)
    assert e["context"].shape == (B, 6)
    assert set(r["histories"]) == {"hist", "long"}
    long_seq, long_mask = r["histories"]["long"]
    assert long_seq.shape == (B, LONG, 6) and long_mask.shape == (B, LONG)
    grads = tape.gradient(total, {n: emb.tables[n].trainable_variables for n in ("shop", "weather")})
    for name, g in grads.items():
        assert all(v is not None for v in g), name
    # Each new column moves the output it feeds.
    before = tf.nest.flatten(emb(x))
    for col in ("cand_shop", "trig_shop", "seq_shop", "long_shop", "weather"):
        moved = tf.nest.flatten(emb({**x, col: x[col] + 100}))
        assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(before, moved)), col


def test_request_and_model_inputs_come_from_the_spec():
    spec = _spec()
    names = request_input_names(spec)
    assert {"trig_shop", "seq_shop", "long_items", "long_when", "long_shop"} <= set(names)
    assert not {"cand_shop", "weather", "target_item_id", "ctx_hour"} & set(names)
    assert {"cand_shop", "trig_shop", "weather", "long_items"} <= set(model_input_names(spec))
    assert "hist_btag" not in model_input_names(spec)


def test_an_item_view_without_a_target_field_is_named():
    spec = _spec()
    without = FeatureSpec.from_dict({**spec.to_dict(), "features": [
        dataclasses.asdict(f) for f in spec.features if f.name != "long_shop"]})
    with pytest.raises(ValueError, match=r"history 'long' has no model input of item field 'shop'"):
        FeatureEmbedder(without.to_json(), emb_dim=2)
