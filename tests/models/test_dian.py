"""DIAN: the intent mixture of the trigger-aware and trigger-free nets, its clipping, the
trigger-free net's independence of the trigger and the intent net's context switch."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras

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


@pytest.mark.parametrize("target_read, free_net", [(True, "din"), (False, "din"), (True, "sum"), (False, "sum")])
def test_the_nets_read_what_their_switches_say(tiny_data, batch, make_model, target_read, free_net):
    """Tower_trig reads [E_u ‖ E_c ‖ e_i ‖ e_t ‖ e_t⊙e_i ‖ h_t (‖ v_i)], Tower_free
    [E_u ‖ E_c ‖ e_i ‖ v_i] (``free_net=sum``: Σ_k e_k over the real behaviours for v_i); the
    target attention exists only when a net reads it."""
    x, _, _ = batch
    x = {**x, "hist_ts": tf.where(tf.range(x["hist_ts"].shape[1]) >= tf.range(64)[:, None] % 7 + 2,
                                  tf.zeros_like(x["hist_ts"]), x["hist_ts"])}  # padding at the end
    model = make_model(tiny_data, "model.request_dedup=false", f"model.dian.free_net={free_net}",
                       f"model.dian.trigger_net_target_read={str(target_read).lower()}")
    model(x)
    assert (model.target_att is None) == (not target_read and free_net == "sum")
    assert any("target_attention" in v.name for v in model.weights) == (model.target_att is not None)
    seen = {}
    for name in ("tower_trig", "tower_free"):
        tower = getattr(model, name)
        tower.call = (lambda z, training=None, call=tower.call, name=name:
                      seen.update({name: z.numpy()}) or call(z, training=training))
    model(x)
    r, e = model.embed.request(x), model.embed.impression(x)
    u, c, i, t = r["user"].numpy(), e["context"].numpy(), e["target"].numpy(), r["trigger"].numpy()
    h_t = model.trigger_att(r["trigger"], r["hist"], r["mask"]).numpy()
    v_i = None if model.target_att is None else model.target_att(e["target"], r["hist"], r["mask"]).numpy()
    mask = r["mask"].numpy()
    total = (r["hist"].numpy() * mask[:, :, None]).sum(axis=1)
    assert not mask.all() and np.any(total != 0)  # padding present and left out of the sum
    want_trig = [u, c, i, t, t * i, h_t] + ([v_i] if target_read else [])
    want_free = [u, c, i, v_i if free_net == "din" else total]
    np.testing.assert_allclose(seen["tower_trig"], np.concatenate(want_trig, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen["tower_free"], np.concatenate(want_free, axis=1), rtol=1e-5, atol=1e-6)
    model.compile(optimizer=keras.optimizers.Adagrad(0.1), run_eagerly=True)  # and it trains
    before = [v.numpy().copy() for v in model.trainable_variables]
    assert np.isfinite(model.train_on_batch(x, batch[1], return_dict=True)["loss"])
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)
               if "embed" not in v.name)


@pytest.mark.parametrize("setting, match", [
    ("model.dian.free_net=mlp", r"model.dian.free_net: must be din or sum; received 'mlp'"),
    ("model.dian.trigger_net_target_read=1", r"model.dian.trigger_net_target_read: expected true/false; received 1"),
])
def test_switch_errors_name_the_key_and_value(setting, match):
    from tirec.config import load_config

    with pytest.raises(ValueError, match=match):
        load_config(None, [setting])
