"""QIN: its ReLU target attention and one quadratic layer against numpy references, BN in
training, inference and export, its switches, its config, and that no label reaches its output."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.config import load_config
from tirec.models.base import model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.qin import QinAttention, QuadraticNetwork
from tirec.models.train import build_model, load_run, train_run
from tirec.serving import export as E
from tirec.serving.verify import offline_scores

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.qin.num_layers=2", "model.qin.num_row=2",
         "train.batch_size=128", "train.shuffle_buffer=1000", "model.hist_buckets=1"]


def _model(data, *settings):
    cfg = load_config(None, SMALL + list(settings))
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    return build_model("qin", spec, cfg.model, ids, vecs), spec


def _batch(data, spec, n=64):
    x, y = next(iter(make_dataset(data, "train", spec, n)))
    return x, y


# ---- numpy references --------------------------------------------------------------------------

def qin_attention_ref(q, keys, mask, wq, wk, wv, wo, bo, heads):
    """The unfolded formula: Q = q W_q, K = S W_k, V = S W_v per head; score = QK^T/sqrt(d_h)
    times the 0/1 mask; A = ReLU(score); o = [A_h V_h]_h W_o + b_o + q."""
    d = wq.shape[1] // heads
    out, weights = [], []
    for b in range(q.shape[0]):
        heads_out, w_b = [], []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            Q, K, V = q[b] @ wq[:, cols], keys[b] @ wk[:, cols], keys[b] @ wv[:, cols]
            a = np.maximum((K @ Q) / np.sqrt(d) * mask[b], 0.0)
            heads_out.append(a @ V)
            w_b.append(a)
        out.append(np.concatenate(heads_out) @ wo + bo + q[b])
        weights.append(w_b)
    return np.array(out), np.array(weights)


@pytest.mark.parametrize("heads", [1, 2])
def test_relu_attention_matches_numpy(heads):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 6)).astype(np.float32)
    keys = rng.normal(size=(4, 5, 6)).astype(np.float32)
    mask = np.ones((4, 5), bool)
    mask[1, 3:] = False
    mask[2] = False  # all padding
    mask[3, ::2] = False
    att = QinAttention(units=8, heads=heads)
    got, weights = att(q, keys, mask, return_scores=True)
    got, weights = got.numpy(), weights.numpy()
    assert [v.name.split("/")[-2] for v in att.weights if "bias" in v.name] == ["output"]  # Q, K, V: no bias
    want, want_w = qin_attention_ref(q, keys, mask.astype(np.float32), att.query_dense.kernel.numpy(),
                                     att.key_dense.kernel.numpy(), att.value_dense.kernel.numpy(),
                                     att.output_dense.kernel.numpy(), att.output_dense.bias.numpy(), heads)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-6)
    assert (weights[~np.broadcast_to(mask[:, None, :], weights.shape)] == 0).all()
    assert (weights == 0).any() and (weights > 0).any()  # ReLU: sparse, not normalised
    # all padding: no weight anywhere, the output is W_o(0) + b_o + q, finite
    assert (weights[2] == 0).all() and np.isfinite(got).all()
    np.testing.assert_allclose(got[2], att.output_dense.bias.numpy() + q[2], atol=1e-6)
    with tf.GradientTape() as tape:
        out = att(q, keys, np.zeros((4, 5), bool))
    assert all(np.isfinite(g.numpy()).all() for g in tape.gradient(out, att.trainable_variables) if g is not None)


def quadratic_layer_ref(x, w, b, rows, gamma, beta, mean, var, alpha):
    """One QNN layer: h = xW + b split in rows, x' = x * sum_r h_r, BN(mean, var, eps 1e-5),
    PReLU(alpha), + x."""
    n = x.shape[1]
    h = (x @ w + b).reshape(-1, rows, n)
    y = x * h.sum(axis=1)
    y = gamma * (y - mean) / np.sqrt(var + 1e-5) + beta
    y = np.where(y > 0, y, alpha * y)
    return x + y, x * h.sum(axis=1)


def test_quadratic_layer_matches_numpy_in_training_and_inference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    qnn = QuadraticNetwork(num_layers=1, num_row=3, dropout=0.0, batch_norm=True)
    qnn(x)  # build
    bn = qnn.norms[0]
    bn.gamma.assign(rng.uniform(0.5, 1.5, 5).astype(np.float32))
    bn.beta.assign(rng.normal(size=5).astype(np.float32))
    w, b = qnn.linears[0].kernel.numpy(), qnn.linears[0].bias.numpy()
    assert w.shape == (5, 15) and qnn.prelus[0].alpha.numpy().tolist() == [0.25]
    gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
    # inference: the moving statistics (initially 0 and 1), which training has not touched yet
    want, _ = quadratic_layer_ref(x, w, b, 3, gamma, beta, 0.0, 1.0, 0.25)
    np.testing.assert_allclose(qnn(x, training=False).numpy(), want, rtol=1e-5, atol=1e-5)
    # training: the batch's statistics, and the moving ones move (momentum 0.9)
    _, pre = quadratic_layer_ref(x, w, b, 3, gamma, beta, 0.0, 1.0, 0.25)
    mean, var = pre.mean(axis=0), pre.var(axis=0)
    want_train, _ = quadratic_layer_ref(x, w, b, 3, gamma, beta, mean, var, 0.25)
    np.testing.assert_allclose(qnn(x, training=True).numpy(), want_train, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
    # ... and inference now reads them
    want, _ = quadratic_layer_ref(x, w, b, 3, gamma, beta, bn.moving_mean.numpy(), bn.moving_variance.numpy(), 0.25)
    np.testing.assert_allclose(qnn(x, training=False).numpy(), want, rtol=1e-5, atol=1e-5)


def test_qnn_switches_dropout_and_batch_norm():
    x = np.random.default_rng(2).normal(size=(32, 6)).astype(np.float32)
    qnn = QuadraticNetwork(num_layers=3, num_row=2, dropout=0.5, batch_norm=False)
    out = qnn(x, training=False).numpy()
    assert not qnn.norms and len(qnn.linears) == 3
    np.testing.assert_array_equal(qnn(x, training=False).numpy(), out)  # no dropout at inference
    assert not np.allclose(qnn(x, training=True).numpy(), qnn(x, training=True).numpy())
    assert not any("batch_normalization" in v.name or "bn_" in v.name for v in qnn.weights)


# ---- the model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("settings,present,absent", [
    ([], ["target_attention", "qnn/bn_1", "head/kernel"], ["trigger_attention", "tower"]),
    (["model.qin.trigger_attention=true", "model.qin.head=tower", "model.qin.batch_norm=false",
      "model.qin.att_dim=12", "model.qin.att_heads=3"], ["trigger_attention", "tower"], ["bn_", "head/kernel"]),
    (["model.qin.trigger_in_qnn=false"], ["target_attention"], ["trigger_attention"]),
])
def test_qin_shapes_and_switches(tiny_data, settings, present, absent):
    model, spec = _model(tiny_data, *settings)
    x, _ = _batch(tiny_data, spec)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    out = model(x, training=False)["ctr"]
    assert out.shape == (64, 1) and out.dtype == tf.float32
    assert np.all((out.numpy() > 0) & (out.numpy() < 1))
    names = [v.name for v in model.weights]
    for part in present:
        assert any(part in n for n in names), (part, names)
    for part in absent:
        assert not any(part in n for n in names), (part, names)
    q = model.qin_config
    d = model.embed.item_dim
    assert model.target_att.query_dense.kernel.shape == (d, q.att_dim or 2 * d)
    e = model.embed(x)  # x = [E_u ‖ E_c (‖ e_t) ‖ e_i ‖ o (‖ o_t)]
    items = 2 + q.trigger_in_qnn + q.trigger_attention
    width = e["user"].shape[-1] + e["context"].shape[-1] + items * d
    assert model.qnn.linears[0].kernel.shape == (width, q.num_row * width)
    # the trigger reaches the output through e_t in the QNN input or through o_t, else not at all
    x2 = dict(x, trigger_item_id=x["trigger_item_id"] + 1)
    moved = not np.allclose(model(x2)["ctr"].numpy(), out.numpy())
    assert moved == (q.trigger_in_qnn or q.trigger_attention)


def test_qin_output_ignores_labels_and_intent_columns(tiny_data):
    model, spec = _model(tiny_data, "model.qin.trigger_attention=true")
    x, y = _batch(tiny_data, spec)
    x = dict(x, label=tf.cast(y["ctr"][:, 0], tf.int64))  # the whole record, label included
    want = model(x, training=False)["ctr"].numpy()
    assert 0 < x["label"].numpy().sum() < 64 and x["intent_dist"].numpy().any()
    flipped = dict(x, label=1 - x["label"], intent_counts=x["intent_counts"][::-1] + 3,
                   intent_dist=tf.reverse(x["intent_dist"], [1]), prior_intent=tf.reverse(x["prior_intent"], [1]))
    np.testing.assert_array_equal(model(flipped, training=False)["ctr"].numpy(), want)


def test_qin_config_is_validated():
    for setting, message in [("model.qin.num_row=0", "model.qin.num_row: must be an integer >= 1; received 0"),
                             ("model.qin.dropout=1.0", "model.qin.dropout: must be in [0, 1)"),
                             ("model.qin.head=mlp", "model.qin.head: must be linear or tower; received 'mlp'"),
                             ("model.qin.att_dim=10", "model.qin.att_dim: must be divisible by att_heads=4"),
                             ("model.qin.batch_norm=1", "model.qin.batch_norm: expected true/false"),
                             ("model.qin.trigger_in_qnn=2", "model.qin.trigger_in_qnn: expected true/false")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
            load_config(None, [setting, "model.qin.att_heads=4"] if "att_dim" in setting else [setting])


def test_qin_trains_exports_and_serves_with_inference_batch_norm(tiny_data, tmp_path):
    """Two training steps move BN's moving statistics; the exported SavedModel scores with them
    (inference BN), equal to the Keras model at inference and unlike its training-mode output."""
    cfg = load_config(None, SMALL + ["train.steps_per_epoch=2", "model.qin.dropout=0"])
    run = str(tmp_path / "run")
    metrics = train_run(tiny_data, "qin", run, cfg.model, cfg.train)
    assert np.isfinite(metrics["auc"])
    model, spec, _ = load_run(run)
    records = E.read_eval_records(tiny_data, 64)
    want = offline_scores(model, spec, records)["ctr"]
    bn = model.qnn.norms[0]
    assert not np.allclose(bn.moving_mean.numpy(), 0.0) and not np.allclose(bn.moving_variance.numpy(), 1.0)
    exported = E.export_run(run, str(tmp_path / "models"), "qin", warmup_rows=0)
    loaded = tf.saved_model.load(exported)
    got = loaded.signatures["serving_default"](examples=tf.constant(records))["ctr"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    parse = {k: v for k, v in spec.parse_example_spec(include_label=False).items() if k in model_input_names(spec)}
    x = tf.io.parse_example(tf.constant(records), parse)
    assert not np.allclose(model(x, training=True)["ctr"].numpy(), want, atol=1e-4)  # batch statistics differ


def test_qin_under_mixed_bfloat16(tiny_data):
    """Built under mixed_bfloat16, every QIN layer (those made at build time included) computes
    in bfloat16 on float32 variables, and the output is float32, close to the float32 model's."""
    cfg = load_config(None, SMALL + ["model.qin.trigger_attention=true"])
    spec = load_data_spec(tiny_data)
    ids, vecs, _ = load_item_vectors(tiny_data)
    x, _ = _batch(tiny_data, spec)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    full = build_model("qin", spec, cfg.model, ids, vecs)
    want = full(x)["ctr"].numpy()
    half = build_model("qin", spec, cfg.model, ids, vecs, "mixed_bfloat16")
    half(x)
    half.set_weights(full.get_weights())
    got = half(x)["ctr"]
    assert got.dtype == tf.float32
    layers = [half.target_att.output_dense, half.qnn.linears[0], half.qnn.norms[0], half.qnn.prelus[0]]
    assert {lay.compute_dtype for lay in layers} == {"bfloat16"}
    assert {v.dtype for v in half.weights if v.dtype.is_floating} == {tf.float32}
    np.testing.assert_allclose(got.numpy(), want, atol=0.02)
