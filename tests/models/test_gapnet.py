"""GAP-Net (reconstructed): its layers against hand computations and numpy references, its
config, its views (real, cut from ``hist``, absent), its ablation switches and its exact speed
paths."""
import logging

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models.base import request_input_names
from tirec.models.data import load_item_vectors
from tirec.models.gapnet import GapNetConfig, view_plan
from tirec.models.layers import ASGA, PAFS, ContextGatedFusion, QueryCalibration
from tirec.models.layers.normalizers import NORMALIZERS, attention_weights
from tirec.models.layers.sequence import from_groups, group_slots, to_groups, unique_rows
from tirec.models.train import build_model

SMALL = ["model.emb_dim=4", "model.gapnet.att_units=8", "model.gapnet.att_heads=2", "model.tower=[16,8]",
         "model.gapnet.cgdf_hidden=[4]", "model.hist_buckets=1"]
MODEL = "gapnet"  # make_model builds it


# ---- numpy references --------------------------------------------------------------------------

def sparsemax_ref(z):
    """Sort-based sparsemax (Martins & Astudillo 2016) of a 1-D array."""
    zs = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    size = k[1 + k * zs > np.cumsum(zs)].max()
    return np.maximum(z - (np.cumsum(zs)[size - 1] - 1) / size, 0)


def entmax15_ref(z):
    """Entmax-1.5 of a 1-D array by bisection on tau: sum([z/2 - tau]_+^2) = 1."""
    z = z / 2
    lo, hi = z.max() - 1.0, z.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if (np.maximum(z - tau, 0) ** 2).sum() > 1 else (lo, tau)
    p = np.maximum(z - tau, 0) ** 2
    return p / p.sum()


def softmax_ref(z):
    e = np.exp(z - z.max())
    return e / e.sum()


REFS = {"softmax": softmax_ref, "sparsemax": sparsemax_ref, "entmax15": entmax15_ref,
        "relu": lambda z: np.maximum(z, 0)}


def masked_ref(scores, mask, norm):
    out = np.zeros_like(scores, dtype=np.float64)
    for i in range(scores.shape[0]):
        if mask[i].any():
            out[i, mask[i]] = REFS[norm](scores[i, mask[i]].astype(np.float64))
    return out


def _scores_and_mask():
    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(6, 9)) * 2).astype(np.float32)
    scores[4, :3] = [0.5, 0.5, -3.0]  # ties
    mask = np.ones((6, 9), bool)
    mask[1, 5:] = False
    mask[2] = False  # no real position
    mask[3, 1:] = False  # one real position
    mask[4, ::2] = False  # padding between real positions
    return scores, mask


# ---- normalisers -------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", NORMALIZERS)
def test_normalisers_match_the_numpy_references(norm):
    scores, mask = _scores_and_mask()
    got = attention_weights(scores, mask, norm).numpy()
    np.testing.assert_allclose(got, masked_ref(scores, mask, norm), atol=2e-6)
    assert got.dtype == np.float32 and np.all(got[~mask] == 0) and np.all(got[2] == 0)
    if norm != "relu":
        np.testing.assert_allclose(got[mask.any(axis=1)].sum(axis=1), 1.0, atol=1e-5)
        assert got[3, 0] == pytest.approx(1.0)
    if norm in ("sparsemax", "entmax15"):
        assert np.any(got[mask] == 0)  # sparse: some real positions get exact zeros


@pytest.mark.parametrize("norm", NORMALIZERS)
def test_normaliser_gradients_are_finite_and_match_finite_differences(norm):
    scores, mask = _scores_and_mask()
    v = np.random.default_rng(1).normal(size=scores.shape)
    x = tf.Variable(scores.astype(np.float64).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(attention_weights(x, mask, norm) * v)
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[~mask] == 0) and np.all(grad[2] == 0)
    eps = 1e-3
    for i, j in [(0, 1), (1, 2), (4, 1), (5, 7)]:
        up, down = scores.astype(np.float64).copy(), scores.astype(np.float64).copy()
        up[i, j] += eps
        down[i, j] -= eps
        numeric = ((masked_ref(up, mask, norm) - masked_ref(down, mask, norm)) * v).sum() / (2 * eps)
        assert grad[i, j] == pytest.approx(numeric, abs=2e-3), (norm, i, j)


def test_normalisers_are_float32_for_bfloat16_scores():
    scores, mask = _scores_and_mask()
    got = attention_weights(tf.cast(scores, tf.bfloat16), mask, "entmax15")
    assert got.dtype == tf.float32 and np.all(np.isfinite(got.numpy()))
    with pytest.raises(ValueError, match="norm` must be one of"):
        attention_weights(scores, mask, "tanh")


# ---- layers ------------------------------------------------------------------------------------

def _set(layer, values):
    layer.set_weights([np.asarray(v, np.float32) for v in values])


def test_pafs_hand_computed():
    pafs = PAFS(mult=1.5)
    x = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
    pafs(x)
    w_g, w_u, w_d = np.full((2, 3), 0.5), np.arange(6).reshape(2, 3) / 10, np.ones((3, 2)) * [[1, -1]]
    b_g, b_u, b_d = np.array([0.1, 0, 0]), np.zeros(3), np.array([0.2, 0.0])
    gamma, beta = np.array([2.0, 1.0]), np.array([0.0, 0.5])
    _set(pafs, [w_g, b_g, w_u, b_u, w_d, b_d, gamma, beta])
    g = x @ w_g + b_g
    h = (g / (1 + np.exp(-g))) * (x @ w_u + b_u) @ w_d + b_d
    norm = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6) * gamma + beta
    np.testing.assert_allclose(pafs(x).numpy(), x + norm, rtol=1e-5, atol=1e-5)
    assert [w.shape for w in pafs.weights][:2] == [(2, 3), (3,)]  # d' = round(1.5 * 2)
    with pytest.raises(ValueError, match="mult` must be a positive number"):
        PAFS(mult=0)


def _asga_ref(layer, q, keys, mask, norm):
    """ASGA's formula written out in numpy with the layer's weights (no folding)."""
    w = {v.name.split("/")[-2] + "/" + v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.weights}
    heads, dh = layer.heads, layer.units // layer.heads
    qp = (q @ w["query/kernel"] + w["query/bias"]).reshape(-1, heads, dh)
    kp = (keys @ w["key/kernel"] + w["key/bias"]).reshape(keys.shape[0], keys.shape[1], heads, dh)
    vp = (keys @ w["value/kernel"] + w["value/bias"]).reshape(keys.shape[0], keys.shape[1], heads, dh)
    scores = np.einsum("bhe,blhe->bhl", qp, kp) / np.sqrt(dh)
    out = np.zeros((q.shape[0], heads, dh))
    for h in range(heads):
        a = masked_ref(scores[:, h], mask, norm)
        out[:, h] = np.einsum("bl,ble->be", a, vp[:, :, h])
    if layer.use_gate:
        out *= 1 / (1 + np.exp(-(q @ w["gate/kernel"] + w["gate/bias"]).reshape(-1, heads, dh)))
    res = out.reshape(-1, heads * dh) @ w["output/kernel"] + w["output/bias"]
    return np.where(mask.any(axis=1)[:, None], res, 0.0)


@pytest.mark.parametrize("use_gate", [True, False])
@pytest.mark.parametrize("norm", NORMALIZERS)
def test_asga_matches_its_formula(norm, use_gate):
    rng = np.random.default_rng(2)
    q, keys = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 6, 3)).astype(np.float32)
    mask = np.ones((4, 6), bool)
    mask[1, 2:] = False
    mask[2] = False
    mask[3, ::2] = False
    layer = ASGA(units=4, heads=2, output_dim=3, norm=norm, use_gate=use_gate)
    layer(q, keys, mask)
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    out, weights = layer(q, keys, mask, return_scores=True)
    np.testing.assert_allclose(out.numpy(), _asga_ref(layer, q, keys, mask, norm), rtol=1e-4, atol=1e-5)
    assert np.all(out.numpy()[2] == 0) and np.all(weights.numpy()[:, :, :][~np.repeat(mask[:, None], 2, 1)] == 0)
    assert (len(layer.weights) == 10) == use_gate


def test_asga_gate_starts_open_and_closes_the_output():
    layer = ASGA(units=4, heads=2, output_dim=3, gate_bias=1.0)
    q, keys = tf.ones([2, 5]), tf.ones([2, 4, 3])
    layer(q, keys)
    assert np.allclose(layer.gate_dense.bias.numpy(), 1.0)  # σ(1) = 0.73 plus the query term
    layer.gate_dense.bias.assign(tf.fill([4], -1e4))  # a closed gate: the view says nothing
    np.testing.assert_allclose(layer(q, keys).numpy(), np.broadcast_to(layer.output_dense.bias.numpy(), (2, 3)),
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"`heads` must divide units=4"):
        ASGA(units=4, heads=3)
    with pytest.raises(ValueError, match=r"`norm` must be one of .* Received: norm='max'"):
        ASGA(norm="max")


def test_query_calibration_hand_computed():
    step = QueryCalibration(units=2)
    q, r, t = np.array([[1.0, 2.0]], np.float32), np.array([[0.5, -1.0, 2.0]], np.float32), np.array([[3.0]], np.float32)
    step(q, r, t)
    w_c, b_c, w_r = np.arange(12).reshape(6, 2) / 10 - 0.5, np.array([0.1, -0.1]), np.arange(6).reshape(3, 2) / 5
    _set(step, [w_c, b_c, w_r])
    gate = 1 / (1 + np.exp(-(np.concatenate([q, r, t], -1) @ w_c + b_c)))
    np.testing.assert_allclose(step(q, r, t).numpy(), q + gate * (r @ w_r), rtol=1e-5)


@pytest.mark.parametrize("mode", ["sigmoid", "softmax", "concat"])
def test_context_gated_fusion_hand_computed(mode):
    fuse = ContextGatedFusion(views=2, width=2, mode=mode, hidden=())
    c = np.array([[1.0, -1.0, 0.5]], np.float32)
    reads = [np.array([[1.0, 2.0]], np.float32), np.array([[-3.0, 4.0]], np.float32)]
    fuse(c, reads)
    rng = np.random.default_rng(3)
    fuse.set_weights([rng.normal(size=w.shape) for w in fuse.get_weights()])
    w = fuse.get_weights()
    if mode == "concat":
        assert not w
        want = np.concatenate(reads, -1)
    elif mode == "softmax":
        beta = softmax_ref((c @ w[0] + w[1])[0])
        want = beta[0] * reads[0] + beta[1] * reads[1]
    else:
        gates = [1 / (1 + np.exp(-(c @ w[2 * k] + w[2 * k + 1]))) for k in range(2)]
        want = gates[0] * reads[0] + gates[1] * reads[1]
    np.testing.assert_allclose(fuse(c, reads).numpy(), want, rtol=1e-5)
    if mode == "sigmoid":  # independent gates: every view can be shut at once
        fuse.set_weights([np.zeros_like(x) if x.ndim == 2 else np.full_like(x, -1e4) for x in w])
        assert np.all(fuse(c, reads).numpy() == 0)


def test_group_slots_lay_rows_out_per_group_and_back():
    index = tf.constant([2, 0, 2, 1, 2, 0])
    slots, width = group_slots(index, 4)
    np.testing.assert_array_equal(slots.numpy(), [[2, 0], [0, 0], [2, 1], [1, 0], [2, 2], [0, 1]])
    assert int(width) == 3
    rows = tf.constant([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    laid = to_groups(rows, slots, 4, width).numpy()
    np.testing.assert_array_equal(laid[..., 0], [[2, 6, 0], [4, 0, 0], [1, 3, 5], [0, 0, 0]])
    np.testing.assert_array_equal(from_groups(laid, slots).numpy(), rows.numpy())
    empty, none = group_slots(tf.zeros([0], tf.int32), 0)
    assert empty.shape == (0, 2) and int(none) == 0


@pytest.mark.parametrize("layer", [PAFS(mult=3.0), ASGA(units=4, heads=2, norm="entmax15", use_gate=False),
                                   QueryCalibration(units=5), ContextGatedFusion(3, 4, "softmax", (2,))])
def test_layers_serialize_round_trip(layer):
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(again) is type(layer) and again.get_config() == layer.get_config()


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, match", [
    ("model.gapnet.attention_norm=max", r"model.gapnet.attention_norm: must be one of softmax, entmax15, "
                                        r"sparsemax, relu; received 'max'"),
    ("model.gapnet.cgdf=mean", r"model.gapnet.cgdf: must be one of sigmoid, softmax, concat; received 'mean'"),
    ("model.gapnet.att_units=10", r"model.gapnet.att_units: must be divisible by att_heads=4; received 10"),
    ("model.gapnet.realtime_cut=0", r"model.gapnet.realtime_cut: must be an integer >= 1; received 0"),
    ("model.gapnet.pafs_mult=-1", r"model.gapnet.pafs_mult: must be a finite number > 0; received -1"),
])
def test_config_errors_name_the_key_and_value(setting, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [setting])
    assert GapNetConfig().attention_norm == "softmax" and GapNetConfig().realtime_cut == 5


# ---- the model ---------------------------------------------------------------------------------


def test_records_without_views_cut_rt_from_hist_and_say_so(tiny_data, caplog, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 128)
    assert view_plan(spec) == (("rt", "hist", "cut"), ("st", "hist", "real"))
    with caplog.at_level(logging.INFO, logger="tirec.models.gapnet"):
        model = make_model(tiny_data, "model.gapnet.realtime_cut=3")
    assert "GAP-Net (reconstructed) views: rt: cut from 'hist' (its 3 most recent); st: 'hist' (10); " \
           "lt: absent (no 'lt' sequence)" in caplog.text
    views = model.request_views(x, model.embed.request(x)["histories"])
    keys, mask = views["rt"]
    hist_keys, hist_mask = views["st"]
    lengths = np.minimum(hist_mask.numpy().sum(axis=1), 3)
    np.testing.assert_array_equal(mask.numpy().sum(axis=1), lengths)
    for i in range(8):  # the most recent real behaviours, in order
        real = np.flatnonzero(hist_mask.numpy()[i])[:3]
        np.testing.assert_allclose(keys.numpy()[i, :len(real)], hist_keys.numpy()[i, real])


def test_records_with_real_views_read_all_three(tiny_views_data, caplog, first_batch, make_model):
    spec, x, _ = first_batch(tiny_views_data, 128)
    assert view_plan(spec) == (("rt", "rt", "real"), ("st", "hist", "real"), ("lt", "lt", "real"))
    with caplog.at_level(logging.INFO, logger="tirec.models.gapnet"):
        model = make_model(tiny_views_data)
    assert "rt: 'rt' (4); st: 'hist' (10); lt: 'lt' (20)" in caplog.text
    out = model(x)["ctr"].numpy()
    assert out.shape == (128, 1) and np.all(np.isfinite(out))
    assert [a.name for a in model.attention] == ["asga_rt", "asga_st", "asga_lt"]


@pytest.mark.parametrize("norm", NORMALIZERS)
def test_empty_views_give_finite_outputs_and_gradients(tiny_views_data, norm, first_batch, make_model):
    spec, x, y = first_batch(tiny_views_data, 64)
    x = dict(x)
    empty = np.arange(64) % 2 == 0  # users without any behaviour (and no real-time click)
    for name in ("hist_ts", "rt_ts", "lt_ts"):
        x[name] = tf.where(empty[:, None], tf.zeros_like(x[name]), x[name])
    model = make_model(tiny_views_data, f"model.gapnet.attention_norm={norm}")
    with tf.GradientTape() as tape:
        out = model(x, training=True)["ctr"]
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y["ctr"], out))
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.all(np.isfinite(out.numpy()))
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)
    views = model.request_views(x, model.embed.request(x)["histories"])
    for k, view in enumerate(model.views):  # an empty view reads exactly 0
        keys, mask = views[view]
        read = model.read_view(k, model.embed.impression(x)["target"], keys, mask).numpy()
        assert np.all(read[empty] == 0) and np.any(read[~empty] != 0)


def _variable_names(model):
    return {v.name.split(":")[0] for v in model.trainable_variables}


def _kernel(model, part):
    return [v for v in model.trainable_variables if part in v.name and v.name.endswith("kernel:0")]


# Each switch's documented change of the parameters: a check on (full model, ablated model).
ABLATIONS = {
    "model.gapnet.use_pafs=false": lambda full, ab: _kernel(full, "pafs") and not _kernel(ab, "pafs"),
    "model.gapnet.use_qaog=false": lambda full, ab: len(_kernel(full, "/gate/")) == 3 and not _kernel(ab, "/gate/"),
    "model.gapnet.use_gcqc=false": lambda full, ab: len(_kernel(full, "gcqc")) == 6 and not _kernel(ab, "gcqc"),
    # no DIN read: no DIN attention unit, the tower reads one item-wide vector less
    "model.gapnet.din_read=false": lambda full, ab: _kernel(full, "din_attention") and not _kernel(
        ab, "din_attention") and _kernel(ab, "tower/dense_0")[0].shape[0] == _kernel(full, "tower/dense_0")[0].shape[0]
        - full.embed.item_dim,
    # concat: no gates; the tower reads the three 8-wide reads instead of one fused read
    "model.gapnet.cgdf=concat": lambda full, ab: not _kernel(ab, "cgdf") and (
        _kernel(ab, "tower/dense_0")[0].shape[0] == _kernel(full, "tower/dense_0")[0].shape[0] + 16),
    # softmax: one MLP with one weight per view instead of one 8-wide vector gate per view
    "model.gapnet.cgdf=softmax": lambda full, ab: [k.shape[-1] for k in _kernel(ab, "cgdf") if "hidden" not in k.name]
    == [3] and [k.shape[-1] for k in _kernel(full, "cgdf") if "hidden" not in k.name] == [8, 8, 8],
    # the normalisers have no parameters: the same variables, other weights
    "model.gapnet.attention_norm=sparsemax": lambda full, ab: _variable_names(full) == _variable_names(ab),
    "model.gapnet.attention_norm=entmax15": lambda full, ab: _variable_names(full) == _variable_names(ab),
    "model.gapnet.attention_norm=relu": lambda full, ab: _variable_names(full) == _variable_names(ab),
}


@pytest.mark.parametrize("setting", sorted(ABLATIONS))
def test_each_ablation_switch_changes_the_model_and_trains(tiny_views_data, setting, first_batch, make_model):
    spec, x, y = first_batch(tiny_views_data, 64)
    full, ablated = make_model(tiny_views_data), make_model(tiny_views_data, setting)
    full(x), ablated(x)
    assert ABLATIONS[setting](full, ablated), setting
    # the same weights where both have them: a different output (the switch does something)
    shared = {v.name: v.numpy() for v in full.weights}
    for v in ablated.weights:
        if v.name in shared and v.shape == shared[v.name].shape:
            v.assign(shared[v.name])
    assert not np.allclose(full(x)["ctr"].numpy(), ablated(x)["ctr"].numpy(), atol=1e-6), setting
    ablated.compile(optimizer=keras.optimizers.Adagrad(0.1), run_eagerly=True)  # eager: no tracing
    before = [v.numpy().copy() for v in ablated.trainable_variables]
    logs = ablated.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, ablated.trainable_variables)]
    assert sum(moved) > len(moved) // 2, setting


def test_static_query_reads_every_view_with_the_target(tiny_views_data, first_batch, make_model):
    spec, x, _ = first_batch(tiny_views_data, 16)
    model = make_model(tiny_views_data, "model.gapnet.use_gcqc=false")
    model(x)
    seen = []
    original = model.read_view
    model.read_view = lambda k, q, *args: seen.append(q.numpy()) or original(k, q, *args)
    model(x)
    target = model.embed.impression(x)["target"].numpy()
    assert len(seen) == 3 and all(np.array_equal(q, target) for q in seen)


@pytest.mark.parametrize("norm", ["softmax", "entmax15"])
@pytest.mark.parametrize("data", ["tiny_data", "tiny_views_data"])
def test_speed_paths_equal_the_straightforward_path(request, data, norm, first_batch, make_model,
                                                    outputs_and_grads):
    """request_dedup and length groups (hist_buckets 1 and 3) only change the speed: the same
    outputs and gradients as every block per sample on the padded views (dedup off, 0)."""
    data = request.getfixturevalue(data)
    spec, x, y = first_batch(data, 128)
    variants = [("false", 0), ("true", 0), ("true", 1), ("true", 3), ("false", 3)]
    results, weights = [], None
    for dedup, buckets in variants:
        model = make_model(data, f"model.request_dedup={dedup}", f"model.hist_buckets={buckets}",
                           f"model.gapnet.attention_norm={norm}")
        model(x)
        weights = model.get_weights() if weights is None else weights
        model.set_weights(weights)
        results.append(outputs_and_grads(model, x, y))
    want, want_grads = results[0]
    # the batch (records in request order) does hold several candidates per request
    first, index = unique_rows([x[n] for n in request_input_names(spec)])
    assert 1 < first.shape[0] < index.shape[0] // 2
    for variant, (got, grads) in zip(variants[1:], results[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(variant))
        assert set(grads) == set(want_grads)
        for name, g in grads.items():
            w = want_grads[name]
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1e-3, np.abs(w).max()),
                                       err_msg=f"{name} {variant}")


def test_mixed_precision_outputs_float32(tiny_views_data, first_batch):
    spec, x, _ = first_batch(tiny_views_data, 32)
    ids, vecs, _ = load_item_vectors(tiny_views_data)
    cfg = load_config(None, SMALL + ["model.gapnet.attention_norm=entmax15"]).model
    mixed = build_model("gapnet", spec, cfg, ids, vecs, "mixed_bfloat16")
    plain = build_model("gapnet", spec, cfg, ids, vecs)
    mixed(x), plain(x)
    mixed.set_weights(plain.get_weights())
    got, want = mixed(x)["ctr"], plain(x)["ctr"]
    assert got.dtype == tf.float32 and mixed.tower.compute_dtype == "bfloat16"
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=0.05)
