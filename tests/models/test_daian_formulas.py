"""DAIAN's switchable blocks against their formulas (docs/models.md#i2e, #hybrid-similarity-enhancer,
#ia2n): each switch's two settings are computed by hand from the layer's own weights, so a switch
that stopped doing what it says would fail here, not only a build-and-step check."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.models.daian import DaianConfig

SMALL = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
         "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "model.daian.sim_bins=5",
         "model.daian.explicit_buckets=1", "model.hist_buckets=1"]
MODEL = "daian"  # make_model builds it


@pytest.fixture
def built(make_model, first_batch):
    """A function ``(data, *settings)``: DAIAN with ``settings``, its variables made on a first batch."""
    def build(data, *settings):
        model = make_model(data, *settings)
        model(first_batch(data, 32)[1])
        return model
    return build


def _random(*shape, seed=0):
    return tf.constant(np.random.default_rng(seed + len(shape)).normal(size=shape), tf.float32)


@pytest.mark.parametrize("fusion", ["concat", "add"])
def test_i2e_query_is_the_fusion_it_names(tiny_data, built, fusion):
    model = built(tiny_data, f"model.daian.i2e_fusion={fusion}")
    d, k = model.embed.item_dim, model.spec.intent_levels
    trigger, intent = _random(6, d), tf.nn.softmax(_random(6, k, seed=1))
    w, b = (v.numpy() for v in model.i2e_query.weights)
    t, y = trigger.numpy(), intent.numpy()
    want = np.concatenate([t, y], 1) @ w + b if fusion == "concat" else t + y @ w + b
    assert w.shape == ((d + k, d) if fusion == "concat" else (k, d))
    np.testing.assert_allclose(model._i2e_query(trigger, intent).numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ["norm_ratio", "additive"])
def test_enhanced_similarity_is_eq_12_to_14(tiny_data, built, fusion):
    """h_id = p_t ⊙ p_i (Eq.12), e_s = the embedding of s_sem's equal-width bucket (Eq.13), fused
    by their norms (Eq.14) with no gradient to the ID embeddings."""
    model = built(tiny_data, f"model.daian.sim_fusion={fusion}")
    width = model.proj.weights[0].shape[0]
    t_id, i_id = _random(7, width, seed=2), _random(7, width, seed=3)
    s_sem = tf.constant([[-1.0], [-0.61], [-0.2], [0.0], [0.39], [0.99], [1.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([t_id, i_id])
        got = model._enhanced_similarity({"trigger_id": t_id}, {"target_id": i_id}, lambda t: t, s_sem, False)
    h_id = (model.proj(t_id) * model.proj(i_id)).numpy()
    lo, hi = model.sim_lo, model.sim_hi
    bucket = np.clip(np.floor((s_sem.numpy()[:, 0] - lo) / (hi - lo) * 5), 0, 4).astype(int)
    assert (lo, hi) == (-1.0, 1.0) and list(bucket) == [0, 0, 2, 2, 3, 4, 4]
    e_s = model.sim_bins.embeddings.numpy()[bucket]
    n_id, n_s = (np.linalg.norm(a, axis=1, keepdims=True) for a in (h_id, e_s))
    if fusion == "norm_ratio":
        want = n_id / (n_id + n_s) * h_id + n_s / (n_id + n_s) * e_s
    else:
        want = h_id + n_id / n_s * e_s
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert tape.gradient(got, t_id) is None and tape.gradient(got, i_id) is None


@pytest.mark.parametrize("inputs, shift", [("intent", "none"), ("intent_interest", "none"), ("intent", "mlp")])
def test_ia2n_gates_the_interests_as_eq_15_to_18(tiny_data, built, inputs, shift):
    """δ = GateNU(x) over x = [e_sim ‖ sg(ŷ)] (+ sg(v_imp), sg(v_exp)); w = δ, or with
    ``gate_shift=mlp`` w = Dense(δ ⊙ [v_exp ‖ v_imp]); u_exp = w_exp ⊙ v_exp, u_imp = w_imp ⊙ v_imp."""
    model = built(tiny_data, f"model.daian.gate_inputs={inputs}", f"model.daian.gate_shift={shift}")
    width = model.gate.hidden_layers[0].weights[0].shape[0]
    k, units = model.spec.intent_levels, 8
    e_sim = _random(5, width - k - (2 * units if inputs == "intent_interest" else 0), seed=4)
    intent = tf.nn.softmax(_random(5, k, seed=5))
    v_imp, v_exp = _random(5, units, seed=6), _random(5, units, seed=7)
    x = [e_sim, intent] + ([v_imp, v_exp] if inputs == "intent_interest" else [])
    delta = model.gate(tf.concat(x, axis=-1)).numpy()
    v = np.concatenate([v_exp.numpy(), v_imp.numpy()], axis=1)
    if shift == "mlp":
        kernel, bias = (a.numpy() for a in model.gate_shift.weights)
        w = (delta * v) @ kernel + bias
    else:
        assert model.gate_shift is None and not any("ia2n_shift" in a.name for a in model.weights)
        w = delta
    with tf.GradientTape() as tape:
        tape.watch([intent, v_imp, v_exp])
        u_exp, u_imp = model._ia2n(e_sim, intent, v_imp, v_exp)
        total = tf.reduce_sum(u_exp) + tf.reduce_sum(u_imp)
    np.testing.assert_allclose(np.concatenate([u_exp.numpy(), u_imp.numpy()], 1), w * v, rtol=1e-5, atol=1e-6)
    g_intent, g_exp, g_imp = tape.gradient(total, [intent, v_exp, v_imp])
    assert g_intent is None  # sg(ŷ): the gate trains no intent
    if shift == "none":  # sg(v_imp), sg(v_exp) in the gate's input: d u / d v is the gate alone
        np.testing.assert_allclose(np.concatenate([g_exp.numpy(), g_imp.numpy()], 1), delta, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("switch", ["use_die", "use_sein"])
def test_settings_of_a_removed_block_are_named_in_a_warning(tiny_data, built, caplog, switch):
    with caplog.at_level("WARNING", logger="tirec.models.daian"):
        built(tiny_data, f"model.daian.{switch}=false", "model.daian.gate_shift=mlp", "model.daian.explicit_buckets=4")
    assert f"model.daian.{switch}=false: " in caplog.text and "model.daian.gate_shift='mlp'" in caplog.text
    assert ("model.daian.explicit_buckets=4" in caplog.text) == (switch == "use_die")  # DIE's alone
    if switch == "use_sein":  # SMALL's sim_bins=5 is not read either
        assert "model.daian.sim_bins=5" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tirec.models.daian"):
        built(tiny_data, "model.daian.gate_shift=mlp")
    assert "not read" not in caplog.text


def test_gate_shift_setting_is_checked():
    assert DaianConfig().gate_shift == "none"
    with pytest.raises(ValueError, match=r"model.daian.gate_shift: must be none or mlp; received 'MLP'"):
        DaianConfig(gate_shift="MLP")
