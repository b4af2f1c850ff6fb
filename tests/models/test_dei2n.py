"""DEI2N: the time-gap buckets and the trigger-related mask against hand computations, its
config, the instant/general interest and the tower input against their formulas, empty
histories and sub-sequences, the label-free inputs, the exact speed paths and the export."""
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.features.spec import tir_feature_spec
from tirec.models.base import request_input_names
from tirec.models.base import related_rule
from tirec.models.dei2n import Dei2nConfig
from tirec.models.layers.sequence import latest_time, time_gap_buckets, trigger_related_mask, unique_rows

SMALL = ["model.emb_dim=4", "model.dei2n.att_units=8", "model.dei2n.att_heads=2", "model.tower=[16,8]",
         "model.dei2n.ui2m_hidden=[8]", "model.dei2n.interaction_hidden=[8]", "model.hist_buckets=1"]
MODEL = "dei2n"  # make_model builds it
DAY = 86400


# ---- sequence helpers --------------------------------------------------------------------------

def test_time_gap_buckets_hand_computed():
    ts = np.array([[100, 99, 0], [1000, 1000 - DAY, 5000]], np.int64)
    ref = np.array([100, 1000], np.int64)
    got = time_gap_buckets(ts, ref, 20, 14 * DAY).numpy()
    # 20 * log(1 + g) / log(1 + 14 days): g = 0 -> 0; 1 s -> 0.99 -> 0; 100 s (row 0, ts 0 is
    # a gap of 100) -> 6.59 -> 6; 1 day -> 16.24 -> 16; ts after ref (gap < 0) -> gap 0 -> 0
    assert got.tolist() == [[0, 0, 6], [0, 16, 0]]
    assert got.dtype == np.int32
    # gaps of 14 days and more share the last bucket; against the formula on random gaps
    far = time_gap_buckets(np.array([[0, 1, 2]]), np.array([14 * DAY + 2]), 20, 14 * DAY).numpy()
    assert far.tolist() == [[19, 19, 19]]
    gaps = np.random.default_rng(0).integers(0, 30 * DAY, size=(4, 50))
    got = time_gap_buckets(np.zeros_like(gaps), gaps[:, 0], 7, 3 * DAY).numpy()[:, 0]
    want = np.minimum(np.floor(7 * np.log1p(gaps[:, 0]) / math.log1p(3 * DAY)), 6)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="buckets` must be an int >= 1"):
        time_gap_buckets(ts, ref, 0, DAY)


def test_trigger_related_mask_and_latest_time_hand_computed():
    cate = np.array([[3, 4, 3, 3], [3, 3, 0, 0], [7, 7, 0, 0]], np.int64)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]], bool)
    got = trigger_related_mask(cate, np.array([3, 3, 7]), mask, np.array([1, 0, 1])).numpy()
    assert got.tolist() == [[True, False, True, False],  # position 3 is padding
                            [False, False, False, False],  # no trigger: empty
                            [True, True, False, False]]
    assert trigger_related_mask(cate, np.array([[0], [0], [0]]), mask).numpy().sum() == 0
    ts = np.array([[50, 70, 60, 0], [0, 0, 0, 0]])
    assert latest_time(ts, ts > 0).numpy().tolist() == [70, 0]


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, match", [
    ("model.dei2n.time_ref=now", r"model.dei2n.time_ref: must be request or latest; received 'now'"),
    ("model.dei2n.time_buckets=0", r"model.dei2n.time_buckets: must be an integer >= 1; received 0"),
    ("model.dei2n.time_max_gap_days=0", r"model.dei2n.time_max_gap_days: must be a finite number > 0; received 0"),
    ("model.dei2n.related=brand", r"model.dei2n.related: must be one of auto, category, similarity; received 'brand'"),
    ("model.dei2n.att_units=10", r"model.dei2n.att_units: must be divisible by att_heads=4; received 10"),
    ("model.dei2n.ui2m_hidden=[]", r"model.dei2n.ui2m_hidden: must be a non-empty list of layer sizes >= 1"),
    ("model.dei2n.interaction_hidden=[0]", r"model.dei2n.interaction_hidden: must be a list of layer sizes >= 1 "
                                            r"\(\[\] = no interaction MLP\); received \[0\]"),
    ("model.dei2n.history_sum=1", r"model.dei2n.history_sum: expected true/false; received 1"),
    ("model.dei2n.self_attention=1", r"model.dei2n.self_attention: expected true/false; received 1"),
    ("model.dei2n.combine=sum", r"model.dei2n.combine: must be mixture or concat; received 'sum'"),
])
def test_config_errors_name_the_key_and_value(setting, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [setting])
    d = Dei2nConfig()
    assert (d.time_ref, d.time_buckets, d.time_max_gap_days, d.related, d.history_sum, d.self_attention,
            d.combine) == ("request", 20, 14.0, "auto", True, True, "mixture")


def test_related_rule_uses_the_category_else_the_similarity():
    assert related_rule(tir_feature_spec(item_fields=("cate_id", "brand_id")), "auto",
                        "model.dei2n.related") == "category"
    no_category = tir_feature_spec(item_fields=("brand_id",))
    assert related_rule(no_category, "auto", "model.dei2n.related") == "similarity"
    assert related_rule(no_category, "similarity", "model.dei2n.related") == "similarity"
    with pytest.raises(ValueError, match="model.dei2n.related=category: the data has no model input of field "
                                         "'cate_id' on the trigger and the history 'hist'"):
        related_rule(no_category, "category", "model.dei2n.related")


# ---- the model ---------------------------------------------------------------------------------


def _reads(model, x):
    """Per row (dedup off): (p [B, 2], v_inst, v_gen, the related mask, the history mask)."""
    r = model.embed.request(x)
    e = model.embed.impression(x)
    keys = model.timed_history(x, r)
    related = model.related_mask(x, r["mask"])
    p = model.instant_probability(r, e["context"], related, False)
    v_inst = model.instant_target(r["trigger"], *model.self_attend(model.instant_self, keys, related))
    v_gen = model.general_target(e["target"], *model.self_attend(model.general_self, keys, r["mask"]))
    return p.numpy(), v_inst.numpy(), v_gen.numpy(), related.numpy(), r["mask"].numpy()


def test_similarity_sub_sequence_is_the_records_explicit_mask(tiny_data, caplog, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 128, columns=True)
    with caplog.at_level(logging.INFO, logger="tirec.models.dei2n"):
        model = make_model(tiny_data, "model.dei2n.related=similarity")
    assert "DEI2N trigger-related sub-sequence: behaviours whose multimodal similarity to the trigger " \
           f"is >= {spec.explicit_threshold:.4g}" in caplog.text
    related = model.related_mask(x, x["hist_ts"] > 0).numpy()
    want = (x["explicit_mask"].numpy() == 1) & (x["has_trigger"].numpy()[:, None] == 1)
    np.testing.assert_array_equal(related, want)
    assert 0 < related.sum() < (x["hist_ts"].numpy() > 0).sum()
    category = make_model(tiny_data).related_mask(x, x["hist_ts"] > 0).numpy()
    np.testing.assert_array_equal(category, (x["hist_cate_id"].numpy() == x["trigger_cate_id"].numpy()[:, None])
                                  & (x["hist_ts"].numpy() > 0) & (x["has_trigger"].numpy()[:, None] == 1))


@pytest.mark.parametrize("history_sum, interaction, ui2m_context, combine, self_attention",
                         [(True, True, True, "mixture", True), (False, True, True, "mixture", True),
                          (True, False, True, "mixture", True), (True, True, False, "mixture", True),
                          (True, True, True, "concat", True), (True, True, True, "mixture", False)])
def test_tower_reads_the_formula(tiny_data, history_sum, interaction, ui2m_context, combine, self_attention,
                                 first_batch, make_model):
    """Tower input = [E_u ‖ E_c ‖ e_i ‖ e_t ‖ p_inst v_inst + p_gen v_gen ‖ MLP([e_t ‖ e_i ‖ e_t⊙e_i ‖ e_t−e_i])],
    then, with ``history_sum`` (the default), Σ_b e_b and e_i ⊙ Σ_b e_b over the real behaviours;
    ``interaction_hidden=[]`` leaves the MLP's part out, ``combine=concat`` gives
    [p_inst v_inst ‖ p_gen v_gen] in place of the sum, ``self_attention=false`` has the target
    attentions read the time-coded behaviours without an MHSA."""
    spec, x, _ = first_batch(tiny_data, 32)
    x = {**x, "hist_ts": tf.where(tf.range(x["hist_ts"].shape[1]) >= tf.range(32)[:, None] % 7 + 2,
                                  tf.zeros_like(x["hist_ts"]), x["hist_ts"])}  # padding at the end
    model = make_model(tiny_data, "model.request_dedup=false", f"model.dei2n.history_sum={str(history_sum).lower()}",
                       *([] if interaction else ["model.dei2n.interaction_hidden=[]"]),
                       f"model.dei2n.ui2m_context={str(ui2m_context).lower()}",  # E_c stays in the tower
                       f"model.dei2n.combine={combine}", f"model.dei2n.self_attention={str(self_attention).lower()}")
    model(x)
    assert any("mhsa" in v.name for v in model.weights) == self_attention
    seen = []
    call = model.tower.call
    model.tower.call = lambda z, training=None: seen.append(z.numpy()) or call(z, training=training)
    model(x)
    r, e = model.embed.request(x), model.embed.impression(x)
    p, v_inst, v_gen, _, mask = _reads(model, x)
    assert np.allclose(p.sum(axis=1), 1.0) and np.all(p > 0)
    t, i = r["trigger"].numpy(), e["target"].numpy()
    if not self_attention:  # the target attentions read K itself
        keys, related = model.timed_history(x, r), model.related_mask(x, r["mask"])
        np.testing.assert_allclose(v_inst, model.instant_target(r["trigger"], keys, related).numpy(), atol=1e-6)
        np.testing.assert_allclose(v_gen, model.general_target(e["target"], keys, r["mask"]).numpy(), atol=1e-6)
    reads = [p[:, :1] * v_inst, p[:, 1:] * v_gen]
    v = reads[0] + reads[1] if combine == "mixture" else np.concatenate(reads, axis=1)
    want = [r["user"].numpy(), e["context"].numpy(), i, t, v]
    if interaction:
        want.append(model.interaction(np.concatenate([t, i, t * i, t - i], axis=1)).numpy())
    else:
        assert model.interaction is None and not any("interaction" in v.name for v in model.weights)
    if history_sum:
        total = (r["hist"].numpy() * mask[:, :, None]).sum(axis=1)
        assert np.any(total != 0) and not mask.all()  # padding present and left out
        want += [total, i * total]
    np.testing.assert_allclose(seen[0], np.concatenate(want, axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ui2m_context", [True, False])
def test_ui2m_reads_the_context_unless_switched_off(tiny_data, first_batch, make_model, ui2m_context):
    """UI2M's (p_inst, p_gen) move with the context fields by default and not at all with
    ``model.dei2n.ui2m_context=false``, whose MLP reads E_c's width fewer inputs."""
    spec, x, _ = first_batch(tiny_data, 64)
    model = make_model(tiny_data, "model.request_dedup=false", f"model.dei2n.ui2m_context={str(ui2m_context).lower()}")
    model(x)
    names = [f.name for f in spec.select(group="context", model_input=True)]
    assert names
    moved = {**x, **{n: (x[n] + 1) % 7 for n in names}}  # every row gets another context value
    width = model.embed.impression(x)["context"].shape[-1]
    r = model.embed.request(x)
    widths = [int(r[k].shape[-1]) for k in ("user", "trigger", "hist")]  # E_u, e_t, the sum-pool of S_t
    assert model.ui2m.weights[0].shape[0] == sum(widths) + width * ui2m_context
    p, p_moved = _reads(model, x)[0], _reads(model, moved)[0]
    assert np.allclose(p, p_moved, atol=1e-7) != ui2m_context
    assert Dei2nConfig().ui2m_context is True
    with pytest.raises(ValueError, match=r"model.dei2n.ui2m_context: must be true or false; received 'no'"):
        Dei2nConfig(ui2m_context="no")


def test_instant_interest_reads_only_the_trigger_related_behaviours(tiny_data, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 64)
    model = make_model(tiny_data, "model.request_dedup=false")
    model(x)
    _, v_inst, v_gen, related, mask = _reads(model, x)
    other = dict(x)  # new items at the real behaviours outside S_t
    other["hist_item_ids"] = tf.where(mask & ~related, x["hist_item_ids"] + 7919, x["hist_item_ids"])
    _, v_inst2, v_gen2, related2, _ = _reads(model, other)
    np.testing.assert_array_equal(related2, related)
    np.testing.assert_allclose(v_inst2, v_inst, atol=1e-6)
    changed = (mask & ~related).any(axis=1)
    assert changed.any() and not np.allclose(v_gen2[changed], v_gen[changed], atol=1e-4)


def test_empty_histories_and_sub_sequences_read_zeros_not_nan(tiny_data, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 64)
    x = dict(x)
    empty = np.arange(64) % 3 == 0  # no behaviour at all
    no_related = np.arange(64) % 3 == 1  # a trigger category no behaviour has
    x["hist_ts"] = tf.where(empty[:, None], tf.zeros_like(x["hist_ts"]), x["hist_ts"])
    x["trigger_cate_id"] = tf.where(no_related, tf.constant(-12345, tf.int64), x["trigger_cate_id"])
    model = make_model(tiny_data)
    with tf.GradientTape() as tape:
        out = model(x, training=True)["ctr"]
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y["ctr"], out))
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.all(np.isfinite(out.numpy()))
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)
    p, v_inst, v_gen, related, mask = _reads(model, x)
    assert not related[empty | no_related].any() and np.all(np.isfinite(p))
    assert np.all(v_inst[empty | no_related] == 0) and np.all(v_gen[empty] == 0)
    assert np.any(v_inst[related.any(axis=1)] != 0) and np.any(v_gen[~empty] != 0)


def test_labels_and_intent_columns_do_not_reach_the_output(tiny_data, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 64, columns=True)
    x = {**x, spec.label: y["ctr"][:, 0]}
    flipped = {**x, spec.label: 1.0 - x[spec.label], "intent_counts": x["intent_counts"][:, ::-1] + 3,
               "intent_dist": x["intent_dist"][:, ::-1], "prior_intent": x["prior_intent"][:, ::-1]}
    model = make_model(tiny_data)
    np.testing.assert_array_equal(model(x)["ctr"].numpy(), model(flipped)["ctr"].numpy())


def test_time_ref_request_reads_the_request_time_and_latest_does_not(tiny_data, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 64)
    later = {**x, "impression_ts": x["impression_ts"] + 5 * DAY}
    shifted = {**later, "hist_ts": tf.where(x["hist_ts"] > 0, x["hist_ts"] + 5 * DAY, tf.zeros_like(x["hist_ts"]))}
    request, latest = make_model(tiny_data), make_model(tiny_data, "model.dei2n.time_ref=latest")
    base = request(x)["ctr"].numpy()
    assert not np.allclose(request(later)["ctr"].numpy(), base, atol=1e-6)
    np.testing.assert_array_equal(request(shifted)["ctr"].numpy(), base)  # only the gaps count
    np.testing.assert_array_equal(latest(later)["ctr"].numpy(), latest(x)["ctr"].numpy())


@pytest.mark.parametrize("switches", [[], ["model.dei2n.self_attention=false", "model.dei2n.combine=concat"]])
def test_speed_paths_equal_the_straightforward_path(tiny_data, first_batch, make_model, outputs_and_grads, switches):
    """request_dedup and the length groups (hist_buckets 1 and 3) change only the speed."""
    spec, x, y = first_batch(tiny_data, 128)
    variants = [("false", 0), ("true", 0), ("true", 1), ("true", 3)]
    results, weights = [], None
    for dedup, buckets in variants:
        model = make_model(tiny_data, f"model.request_dedup={dedup}", f"model.hist_buckets={buckets}", *switches)
        model(x)
        weights = model.get_weights() if weights is None else weights
        model.set_weights(weights)
        results.append(outputs_and_grads(model, x, y))
    first, index = unique_rows([x[n] for n in request_input_names(spec)])
    assert 1 < first.shape[0] < index.shape[0] // 2  # several candidates per request
    want, want_grads = results[0]
    for variant, (got, grads) in zip(variants[1:], results[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(variant))
        assert set(grads) == set(want_grads)
        for name, g in grads.items():
            w = want_grads[name]
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1e-3, np.abs(w).max()),
                                       err_msg=f"{name} {variant}")


def test_without_self_attention_the_length_groups_are_named_unread(tiny_data, make_model, caplog):
    with caplog.at_level(logging.WARNING):
        make_model(tiny_data, "model.dei2n.self_attention=false", "model.hist_buckets=3")
    assert "model.hist_buckets=3 not read by DEI2N with model.dei2n.self_attention=false" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_model(tiny_data, "model.hist_buckets=3")
    assert "not read by DEI2N" not in caplog.text
