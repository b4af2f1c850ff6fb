"""DIAN: the intent mixture of the trigger-aware and trigger-free nets, its clipping, the
trigger-free net's independence of the trigger and the intent net's context switch."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.config import load_config
from tirec.models.base import model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.train import build_model

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "model.hist_buckets=1",
         "model.dian.intent_hidden=[8]"]


def _batch(data, n=64):
    spec = load_data_spec(data)
    x, y = next(iter(make_dataset(data, "train", spec, n)))
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    none = np.arange(n) % 5 == 0  # some rows without a trigger
    x["has_trigger"] = tf.where(none, tf.zeros_like(x["has_trigger"]), x["has_trigger"])
    return x, y, none


def _model(data, *settings):
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    return build_model("dian", spec, load_config(None, SMALL + list(settings)).model, ids, vecs)


def test_ctr_is_the_intent_mixture_of_the_two_nets(tiny_data):
    x, _, none = _batch(tiny_data)
    model = _model(tiny_data)
    out, k = model(x), {n: t.numpy() for n, t in model.components(x).items()}
    assert out["ctr"].shape == (64, 1) and out["intent"].shape == (64, 2)
    want = np.clip(k["p"] * k["trig"] + (1 - k["p"]) * k["free"], 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(out["ctr"].numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(out["intent"].numpy(), np.concatenate([1 - k["p"], k["p"]], axis=1), rtol=1e-6)
    np.testing.assert_array_equal(out["ctr"].numpy()[none], k["free"][none])  # no trigger: the free net
    assert np.all(k["p"][~none] > 0) and not np.allclose(k["trig"], k["free"])


def test_the_trigger_free_net_ignores_the_trigger(tiny_data):
    x, _, _ = _batch(tiny_data)
    model = _model(tiny_data)
    other = dict(x)
    for name in ("trigger_item_id", "trigger_cate_id", "trigger_brand_id", "trigger_price_bucket"):
        other[name] = tf.roll(x[name], shift=17, axis=0)
    a, b = model.components(x), model.components(other)
    np.testing.assert_array_equal(a["free"].numpy(), b["free"].numpy())
    assert not np.array_equal(a["trig"].numpy(), b["trig"].numpy())
    assert not np.array_equal(a["p"].numpy(), b["p"].numpy())


@pytest.mark.parametrize("context", [True, False])
def test_intent_context_switch(tiny_data, context):
    """With ``intent_context`` the intent net reads the context; without, p_I is one value per
    request (the net runs on the request-level inputs only)."""
    x, _, none = _batch(tiny_data)
    model = _model(tiny_data, f"model.dian.intent_context={str(context).lower()}")
    other = dict(x)
    other["ctx_hour"] = (x["ctx_hour"] + 5) % 24
    p, p_other = model.components(x)["p"].numpy(), model.components(other)["p"].numpy()
    if context:
        assert not np.allclose(p[~none], p_other[~none])
    else:
        np.testing.assert_array_equal(p, p_other)


def test_the_mixture_is_clipped_and_its_loss_finite(tiny_data):
    x, y, _ = _batch(tiny_data)
    model = _model(tiny_data, "model.dian.eps=0.1")
    model(x)
    for bias, want in ((40.0, 0.9), (-40.0, 0.1)):
        for tower in (model.tower_trig, model.tower_free):
            tower.logit_layer.bias.assign([bias])
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = model.stage_loss(model.stage, model.task_losses(y, out))
        grads = tape.gradient(loss, model.trainable_variables)
        np.testing.assert_allclose(out["ctr"].numpy(), want, rtol=1e-6)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)
