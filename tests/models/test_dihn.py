"""DIHN: the trigger-related behaviours (by category, or by similarity on data without one), the
FEM's fused query, the HIEM's pooling and its switches, against numpy references."""
import dataclasses
import logging

import numpy as np
import pytest
import tensorflow as tf

from tirec.config import load_config
from tirec.models.data import load_data_spec, load_item_vectors

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "model.hist_buckets=1",
         "model.dihn.att_units=8", "model.dihn.att_heads=2", "model.dihn.uin_hidden=[8]"]
MODEL = "dihn"  # make_model builds it


def _batch(first_batch, data, spec):
    """64 train rows of ``spec``'s model inputs, every fifth without a trigger: (x, y, the rows
    without)."""
    _, x, y = first_batch(data, 64, spec=spec, untriggered=5)
    return x, y, x["has_trigger"].numpy() == 0


def _no_category(spec):
    return dataclasses.replace(spec, features=tuple(f for f in spec.features if f.field != "cate_id"))


def test_related_behaviours_are_the_trigger_category(tiny_data, caplog, first_batch, make_model):
    spec = load_data_spec(tiny_data)
    x, _, none = _batch(first_batch, tiny_data, spec)
    with caplog.at_level(logging.INFO, logger="tirec.models.dihn"):
        model = make_model(tiny_data)
    assert "trigger-related behaviours by category (hist_cate_id == trigger_cate_id)" in caplog.text
    mask = x["hist_ts"].numpy() > 0
    got = model.related_mask(x, tf.constant(mask)).numpy()
    want = (x["hist_cate_id"].numpy() == x["trigger_cate_id"].numpy()[:, None]) & mask & ~none[:, None]
    np.testing.assert_array_equal(got, want)
    assert want.any() and (mask & ~want).any()


def test_without_a_category_the_related_behaviours_are_the_similar_ones(tiny_data, caplog, first_batch, make_model):
    spec = _no_category(load_data_spec(tiny_data))
    x, _, none = _batch(first_batch, tiny_data, spec)
    with caplog.at_level(logging.INFO, logger="tirec.models.dihn"):
        model = make_model(tiny_data, spec=spec)
    assert "by similarity (no 'cate_id' in the data or related=similarity): cos(m_t, m_b) >= 0.3333, " \
           "the lower edge of level 4 of 6" in caplog.text
    ids, vecs, _ = load_item_vectors(tiny_data)
    table = dict(zip(ids.tolist(), vecs))
    zero = np.zeros(vecs.shape[1], np.float32)
    m_hist = np.array([[table.get(i, zero) for i in row] for row in x["hist_item_ids"].numpy().tolist()])
    m_t = np.array([table.get(i, zero) for i in x["trigger_item_id"].numpy().tolist()])
    sim = np.einsum("bld,bd->bl", m_hist, m_t)
    mask = x["hist_ts"].numpy() > 0
    want = mask & (sim >= 1 / 3) & ~none[:, None]
    np.testing.assert_array_equal(model.related_mask(x, tf.constant(mask)).numpy(), want)
    assert want.any() and (mask & ~want).any()
    assert np.all(np.isfinite(model(x)["ctr"].numpy()))
    with pytest.raises(ValueError, match=r"model.dihn.related=category: the data has no model input of field "
                                         r"'cate_id' on the trigger and the history 'hist'"):
        make_model(tiny_data, "model.dihn.related=category", spec=spec)


def test_fused_query_and_sum_pooling_hand_computed(tiny_data, first_batch, make_model):
    spec = load_data_spec(tiny_data)
    x, _, none = _batch(first_batch, tiny_data, spec)
    model = make_model(tiny_data, "model.dihn.sub_pooling=sum", "model.request_dedup=false")
    seen = []
    original = model.hybrid_interest
    model.hybrid_interest = lambda e_f, *args, **kw: seen.append(e_f) or original(e_f, *args, **kw)
    out = model(x)
    assert out["ctr"].shape == (64, 1) and out["intent"].shape == (64, 2)
    r, e = model.embed.request(x), model.embed.impression(x)
    p = model.user_intent(x, r).numpy()
    np.testing.assert_allclose(out["intent"].numpy()[:, 1:], p, rtol=1e-6)
    assert np.all(p[none] == 0)
    e_f = p * r["trigger"].numpy() + (1 - p) * e["target"].numpy()
    np.testing.assert_allclose(seen[0].numpy(), e_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[0].numpy()[none], e["target"].numpy()[none], rtol=1e-6)
    _, v_2 = model.hybrid_interest(seen[0], x, r, lambda t: t)
    related = model.related_mask(x, r["mask"]).numpy()
    want = (r["hist"].numpy() * related[:, :, None]).sum(axis=1)
    np.testing.assert_allclose(v_2.numpy(), want, rtol=1e-5, atol=1e-6)


def _uin_grads(model, x, y):
    with tf.GradientTape() as tape:
        click = model.task_losses(y, model(x, training=True))["ctr"]
    uin = [v for v in model.trainable_variables if "uin" in v.name]
    assert uin
    return [g for g in tape.gradient(click, uin)]


def test_fem_stop_gradient_keeps_the_click_loss_out_of_the_uin(tiny_data, first_batch, make_model):
    spec = load_data_spec(tiny_data)
    x, y, _ = _batch(first_batch, tiny_data, spec)
    plain, stopped = make_model(tiny_data), make_model(tiny_data, "model.dihn.fem_stop_gradient=true")
    plain(x), stopped(x)
    stopped.set_weights(plain.get_weights())
    np.testing.assert_array_equal(plain(x)["ctr"].numpy(), stopped(x)["ctr"].numpy())  # the same forward
    assert any(g is not None and np.abs(g.numpy()).max() > 0 for g in _uin_grads(plain, x, y))
    assert all(g is None or np.abs(tf.convert_to_tensor(g).numpy()).max() == 0 for g in _uin_grads(stopped, x, y))


# On the synthetic data same category <=> similarity >= 1/3 (level 4, the default): the
# similarity switch is tried with level 3, where they differ.
@pytest.mark.parametrize("settings", [("model.dihn.sub_pooling=sum",),
                                      ("model.dihn.related=similarity", "model.dihn.intent_level=3")])
def test_each_switch_changes_the_output(tiny_data, settings, first_batch, make_model):
    spec = load_data_spec(tiny_data)
    x, _, _ = _batch(first_batch, tiny_data, spec)
    full, switched = make_model(tiny_data), make_model(tiny_data, *settings)
    full(x), switched(x)
    shared = {v.name: v.numpy() for v in full.weights}
    for v in switched.weights:
        if v.name in shared and v.shape == shared[v.name].shape:
            v.assign(shared[v.name])
    assert not np.allclose(full(x)["ctr"].numpy(), switched(x)["ctr"].numpy(), atol=1e-6), settings


def _tower_input(model, x):
    seen = []
    call = model.tower.call
    model.tower.call = lambda z, training=None: seen.append(z.numpy()) or call(z, training=training)
    model(x)
    model.tower.call = call
    return seen[0]


def test_history_sum_adds_the_sum_and_its_product_with_the_target(tiny_data, first_batch, make_model):
    """history_sum (default): Σ_b e_b and e_i ⊙ Σ_b e_b over the real behaviours join the tower
    input after the paper's [E_u ‖ E_c ‖ e_i ‖ e_t ‖ v_1 ‖ v_2]; false: the paper's input alone."""
    spec = load_data_spec(tiny_data)
    x, _, _ = _batch(first_batch, tiny_data, spec)
    x["hist_ts"] = tf.where(tf.range(x["hist_ts"].shape[1]) >= tf.range(64)[:, None] % 7 + 2,
                            tf.zeros_like(x["hist_ts"]), x["hist_ts"])  # padding at the end
    summed, plain = make_model(tiny_data), make_model(tiny_data, "model.dihn.history_sum=false")
    assert summed.dihn_config.history_sum and not plain.dihn_config.history_sum
    summed(x), plain(x)
    shared = {v.name: v.numpy() for v in summed.weights}
    for v in plain.weights:
        if v.name in shared and v.shape == shared[v.name].shape:
            v.assign(shared[v.name])
    z, z_plain = _tower_input(summed, x), _tower_input(plain, x)
    r, e = summed.embed.request(x), summed.embed.impression(x)
    mask = r["mask"].numpy()
    assert not mask.all() and mask.any()  # padding present and left out
    total = (r["hist"].numpy() * mask[:, :, None]).sum(axis=1)
    d = total.shape[1]
    np.testing.assert_allclose(z[:, :-2 * d], z_plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z[:, -2 * d:], np.concatenate([total, e["target"].numpy() * total], axis=1),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"model\.dihn\.history_sum: expected true/false; received 1"):
        load_config(None, ["model.dihn.history_sum=1"])
