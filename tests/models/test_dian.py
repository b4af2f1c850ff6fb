"""DIAN: the intent mixture of the trigger-aware and trigger-free nets, its clipping, the
trigger-free net's independence of the trigger and the intent net's context switch."""
import numpy as np
import pytest
import tensorflow as tf

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "model.hist_buckets=1",
         "model.dian.intent_hidden=[8]"]
MODEL = "dian"  # make_model builds it


@pytest.fixture
def batch(tiny_data, first_batch):
    """64 train rows of the model inputs, every fifth without a trigger: (x, y, the rows without)."""
    _, x, y = first_batch(tiny_data, 64, untriggered=5)
    return x, y, x["has_trigger"].numpy() == 0


def test_ctr_is_the_intent_mixture_of_the_two_nets(tiny_data, batch, make_model):
    x, _, none = batch
    model = make_model(tiny_data)
    out, k = model(x), {n: t.numpy() for n, t in model.components(x).items()}
    assert out["ctr"].shape == (64, 1) and out["intent"].shape == (64, 2)
    want = np.clip(k["p"] * k["trig"] + (1 - k["p"]) * k["free"], 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(out["ctr"].numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(out["intent"].numpy(), np.concatenate([1 - k["p"], k["p"]], axis=1), rtol=1e-6)
    np.testing.assert_array_equal(out["ctr"].numpy()[none], k["free"][none])  # no trigger: the free net
    assert np.all(k["p"][~none] > 0) and not np.allclose(k["trig"], k["free"])


def test_the_trigger_free_net_ignores_the_trigger(tiny_data, batch, make_model):
    x, _, _ = batch
    model = make_model(tiny_data)
    other = dict(x)
    for name in ("trigger_item_id", "trigger_cate_id", "trigger_brand_id", "trigger_price_bucket"):
        other[name] = tf.roll(x[name], shift=17, axis=0)
    a, b = model.components(x), model.components(other)
    np.testing.assert_array_equal(a["free"].numpy(), b["free"].numpy())
    assert not np.array_equal(a["trig"].numpy(), b["trig"].numpy())
    assert not np.array_equal(a["p"].numpy(), b["p"].numpy())


@pytest.mark.parametrize("context", [True, False])
def test_intent_context_switch(tiny_data, batch, make_model, context):
    """With ``intent_context`` the intent net reads the context; without, p_I is one value per
    request (the net runs on the request-level inputs only)."""
    x, _, none = batch
    model = make_model(tiny_data, f"model.dian.intent_context={str(context).lower()}")
    other = dict(x)
    other["ctx_hour"] = (x["ctx_hour"] + 5) % 24
    p, p_other = model.components(x)["p"].numpy(), model.components(other)["p"].numpy()
    if context:
        assert not np.allclose(p[~none], p_other[~none])
    else:
        np.testing.assert_array_equal(p, p_other)


def test_the_mixture_is_clipped_and_its_loss_finite(tiny_data, batch, make_model):
    x, y, _ = batch
    model = make_model(tiny_data, "model.dian.eps=0.1")
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
