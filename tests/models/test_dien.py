"""DIEN: its GRU, AUGRU and attention against numpy, the behaviour order, the auxiliary loss
(value, negatives, how it is counted in a step, training only), empty histories, the switches,
the request-dedup path and the label-free ``ctr``."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models.base import model_input_names
from tirec.models.data import load_item_vectors
from tirec.models.dien import DIEN, DienConfig
from tirec.models.layers.gru import InterestEvolving, InterestGru
from tirec.models.train import build_model

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.dien.aux_hidden=[8,4]"]
MODEL = "dien"  # make_model builds it


# ---- numpy references --------------------------------------------------------------------------

def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def gru_ref(x, mask, kernel, recurrent, bias, attention=None):
    """DIEN's GRU (AUGRU with ``attention``) in numpy, float64: the states after every step."""
    b, t, _ = x.shape
    units = recurrent.shape[0]
    h, out = np.zeros((b, units)), np.zeros((b, t, units))
    for k in range(t):
        xu, xr, xh = np.split(x[:, k] @ kernel + bias, 3, axis=-1)
        hu, hr, hh = np.split(h @ recurrent, 3, axis=-1)
        u = sigmoid(xu + hu)
        if attention is not None:
            u = attention[:, k:k + 1] * u
        r = sigmoid(xr + hr)
        new = (1 - u) * h + u * np.tanh(xh + r * hh)
        h = np.where(mask[:, k:k + 1], new, h)
        out[:, k] = h
    return out


def _gru_weights(layer):
    return [w.numpy().astype(np.float64) for w in (layer.kernel, layer.recurrent_kernel, layer.bias)]


# ---- layers ------------------------------------------------------------------------------------

def test_augru_step_matches_the_hand_computed_update():
    """One AUGRU step from a non-zero state: ũ = a·u scales the update gate (a = 0.3)."""
    rng = np.random.default_rng(0)
    layer = InterestGru(3, attentional=True)
    x = rng.normal(size=(2, 2, 4)).astype(np.float32)
    att = np.array([[0.7, 0.3], [1.0, 0.0]], np.float32)
    got = layer(x, mask=np.ones((2, 2), bool), attention=att).numpy()
    kernel, recurrent, bias = _gru_weights(layer)
    # step 1 by hand, from the state after step 0
    h = got[:, 0].astype(np.float64)
    xu, xr, xh = np.split(x[:, 1] @ kernel + bias, 3, axis=-1)
    hu, hr, hh = np.split(h @ recurrent, 3, axis=-1)
    u = att[:, 1:2] * sigmoid(xu + hu)
    want = (1 - u) * h + u * np.tanh(xh + sigmoid(xr + hr) * hh)
    np.testing.assert_allclose(got[:, 1], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1, 1], got[1, 0], atol=0)  # a = 0: the state does not move
    np.testing.assert_allclose(got, gru_ref(x, np.ones((2, 2), bool), kernel, recurrent, bias, att),
                               rtol=1e-5, atol=1e-6)


def test_gru_matches_numpy_and_padding_never_changes_the_state():
    rng = np.random.default_rng(1)
    layer = InterestGru(5)
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
    got = layer(x, mask=mask).numpy()
    np.testing.assert_allclose(got, gru_ref(x, mask, *_gru_weights(layer)), rtol=1e-5, atol=1e-6)
    noisy = np.where(mask[..., None], x, rng.normal(size=x.shape) * 100).astype(np.float32)
    np.testing.assert_array_equal(layer(noisy, mask=mask).numpy(), got)  # padding is ignored
    np.testing.assert_array_equal(got[0, 3:], np.repeat(got[0, 2:3], 3, axis=0))  # carried over
    np.testing.assert_array_equal(got[2], 0.0)  # no real step: the zero initial state


def test_interest_evolving_weights_sum_to_one_over_real_steps_and_empty_rows_are_zeros():
    rng = np.random.default_rng(2)
    layer = InterestEvolving(3)
    states = rng.normal(size=(3, 4, 3)).astype(np.float32)
    query = rng.normal(size=(3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    evolved, weights = layer(query, states, mask, return_attention=True)
    weights = weights.numpy()
    np.testing.assert_allclose(weights[:2].sum(axis=1), 1.0, rtol=1e-6)
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    # a_k = softmax(h_k W q) over the real steps
    w = layer.query_proj.kernel.numpy().astype(np.float64)
    scores = np.einsum("bth,bh->bt", states, query @ w)
    ref = np.exp(scores[0, :2] - scores[0, :2].max())
    np.testing.assert_allclose(weights[0, :2], ref / ref.sum(), rtol=1e-5)
    # h'_L: the AUGRU state after the last real step
    want = gru_ref(states, mask, *_gru_weights(layer.augru), attention=weights)
    np.testing.assert_allclose(evolved.numpy()[:2], want[:2, -1], rtol=1e-5, atol=1e-6)
    assert np.array_equal(evolved.numpy()[2], np.zeros(3)) and np.isfinite(weights).all()


def test_count_gate_scale_is_n_times_the_weight_capped_at_one():
    """gate_scale=count: the AUGRU's gate scale is min(1, n·a_k); uniform attention gives the
    plain GRU over the real steps."""
    rng = np.random.default_rng(4)
    layer = InterestEvolving(3, gate_scale="count")
    states = rng.normal(size=(2, 4, 3)).astype(np.float32)
    query = rng.normal(size=(2, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    evolved, weights = layer(query, states, mask, return_attention=True)
    gate = np.minimum(weights.numpy() * mask.sum(axis=1, keepdims=True), 1.0)
    want = gru_ref(states, mask, *_gru_weights(layer.augru), attention=gate)[:, -1]
    np.testing.assert_allclose(evolved.numpy(), want, rtol=1e-5, atol=1e-6)
    layer.query_proj.kernel.assign(np.zeros([5, 3], np.float32))  # uniform attention
    plain = gru_ref(states, mask, *_gru_weights(layer.augru))[:, -1]
    np.testing.assert_allclose(layer(query, states, mask).numpy(), plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="gate_scale.*'max'"):
        InterestEvolving(3, gate_scale="max")


def test_without_recurrence_the_output_is_the_attention_pooling_of_the_states():
    rng = np.random.default_rng(5)
    layer = InterestEvolving(3, recurrent=False)
    states = rng.normal(size=(3, 4, 3)).astype(np.float32)
    query = rng.normal(size=(3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    pooled, weights = layer(query, states, mask, return_attention=True)
    np.testing.assert_allclose(pooled.numpy(), np.einsum("bt,bth->bh", weights.numpy(), states),
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(pooled.numpy()[2], np.zeros(3)) and (weights.numpy()[~mask] == 0).all()
    assert layer.augru is None and [v.name.split("/")[-2] for v in layer.weights] == ["bilinear"]
    with pytest.raises(ValueError, match="recurrent.*'no'"):
        InterestEvolving(3, recurrent="no")


@pytest.mark.parametrize("layer", [InterestGru(4, attentional=True, name="g"), InterestEvolving(4, name="e"),
                                   InterestEvolving(4, gate_scale="count", name="c"),
                                   InterestEvolving(4, recurrent=False, name="p")])
def test_layers_serialize_round_trip(layer):
    clone = type(layer).from_config(keras.layers.serialize(layer)["config"])
    assert clone.get_config() == layer.get_config()


def test_oldest_first_reverses_the_real_behaviours_and_keeps_padding_last():
    ids = tf.constant([[30, 20, 10, 0], [7, 0, 0, 0], [0, 0, 0, 0], [4, 0, 3, 0]], tf.int64)
    mask = ids > 0
    hist = tf.cast(ids[..., None], tf.float32) * tf.ones([1, 1, 2])
    items, got_ids, real, lengths = DIEN.oldest_first(hist, ids, mask)
    assert got_ids.numpy()[:, :3].tolist() == [[10, 20, 30], [7, 0, 0], [0, 0, 0], [3, 4, 0]]
    assert lengths.numpy().tolist() == [3, 1, 0, 2]
    assert real.numpy()[:, :3].tolist() == [[True] * 3, [True, False, False], [False] * 3, [True, True, False]]
    np.testing.assert_array_equal(items.numpy()[..., 0], got_ids.numpy())


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, match", [
    ("model.dien.gru_units=-1", r"model\.dien\.gru_units.*-1"),
    ("model.dien.aux_weight=-0.5", r"model\.dien\.aux_weight.*-0\.5"),
    ("model.dien.negatives=random", r"model\.dien\.negatives.*random"),
    ("model.dien.aux_score=cosine", r"model\.dien\.aux_score.*cosine"),
    ("model.dien.aux_hidden=[]", r"model\.dien\.aux_hidden"),
    ("model.dien.gate_scale=max", r"model\.dien\.gate_scale.*max"),
    ("model.dien.history_sum=1", r"model\.dien\.history_sum.*1"),
    ("model.dien.recurrent=1", r"model\.dien\.recurrent.*1"),
    ("model.dien.negatives_outside_history=1", r"model\.dien\.negatives_outside_history.*1"),
    ("model.dien.recurrent=false", r"recurrent=false has no interest states.*aux_weight=1\.0"),
])
def test_config_errors_name_the_key_and_value(setting, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [setting])


def test_defaults():
    c = DienConfig()
    assert (c.gru_units, c.aux_weight, c.negatives, c.aux_score, c.aux_hidden, c.trigger_in_tower,
            c.gate_scale, c.history_sum, c.recurrent, c.negatives_outside_history) == \
        (0, 1.0, "batch", "mlp", (100, 50), True, "softmax", True, True, False)


# ---- the model ---------------------------------------------------------------------------------


def _inputs(spec, x):
    return {k: v for k, v in x.items() if k in model_input_names(spec)}


def test_dot_score_needs_the_item_width(tiny_data, make_model):
    with pytest.raises(ValueError, match=r"model\.dien\.gru_units.*D=16.*gru_units=8"):
        make_model(tiny_data, "model.dien.aux_score=dot", "model.dien.gru_units=8")
    # without L_aux there is no h_k · e to score: any width builds
    assert make_model(tiny_data, "model.dien.aux_score=dot", "model.dien.gru_units=8",
                      "model.dien.aux_weight=0").aux_mlp is None


def test_ctr_ignores_the_labels_and_intent_columns(tiny_data, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 64, columns=True)
    model = make_model(tiny_data)
    x = {**x, "label": tf.cast(y["ctr"][:, 0], tf.int64)}
    flipped = dict(x)
    for name in ("intent_counts", "intent_dist"):
        flipped[name] = tf.reverse(x[name], axis=[0]) + tf.ones_like(x[name])
    flipped["label"] = 1 - x["label"]
    assert not np.array_equal(flipped["intent_dist"].numpy(), x["intent_dist"].numpy())
    assert np.array_equal(model(x)["ctr"].numpy(), model(flipped)["ctr"].numpy())


def test_aux_loss_matches_numpy_on_a_tiny_example(tiny_data, first_batch, make_model):
    """L_aux = mean over (request, k) pairs with a real next behaviour of -log σ(h_k·e_{k+1}) -
    log(1 - σ(h_k·ê_{k+1})), each request counted once per row it has."""
    spec, x, _ = first_batch(tiny_data, 8, columns=True)
    model = make_model(tiny_data, "model.dien.aux_score=dot")
    model(_inputs(spec, x))
    rng = np.random.default_rng(3)
    d = 16
    states = rng.normal(size=(2, 3, d)).astype(np.float32)
    items = rng.normal(size=(2, 3, d)).astype(np.float32)
    ids = tf.constant([[11, 12, 13], [21, 22, 0]], tf.int64)
    lengths, counts = tf.constant([3, 2]), tf.constant([1.0, 3.0])
    e = model.embed.impression(_inputs(spec, x))
    loss = model.auxiliary_loss(states, items, ids, lengths, counts, e, x).numpy()
    negative, usable = model.negatives(items[:, 1:], ids[:, 1:], ids[:, :-1], e, x)
    negative, usable = negative.numpy(), usable.numpy()
    terms, weights = [], []
    for u, (n, c) in enumerate(zip([3, 2], [1, 3])):
        for k in range(n - 1):
            pos = np.log(sigmoid(states[u, k] @ items[u, k + 1]))
            neg = np.log(1 - sigmoid(states[u, k] @ negative[u, k])) if usable[u, k] else 0.0
            terms.append(-(pos + neg))
            weights.append(c)
    assert usable[0].all() and usable[1, 0]
    np.testing.assert_allclose(loss, np.average(terms, weights=weights), rtol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "table"])
def test_negatives_come_from_their_pool_and_are_never_the_positive(tiny_data, mode, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 64, columns=True)
    inputs = _inputs(spec, x)
    model = make_model(tiny_data, f"model.dien.negatives={mode}")
    model(inputs)
    targets = np.unique(x["target_item_id"].numpy())
    pool = targets if mode == "batch" else model.items.item_ids.numpy()
    positive_ids = tf.constant(np.repeat(pool[:, None], 3, axis=1)[:, :2])  # every pool item a positive
    previous = tf.zeros_like(positive_ids)
    e = model.embed.impression(inputs)
    positive = tf.random.normal(positive_ids.shape.as_list() + [16])
    negative, usable = model.negatives(positive, positive_ids, previous, e, inputs)
    assert usable.numpy().all()
    # recover each negative's id from its embedding: batch: a target row's; table: the id part
    if mode == "batch":
        rows = {tuple(np.round(v, 6)): i for v, i in zip(e["target"].numpy(), x["target_item_id"].numpy())}
        got = np.array([[rows[tuple(np.round(v, 6))] for v in row] for row in negative.numpy()])
    else:
        id_emb = model.embed.tables["item"]
        table = id_emb(tf.constant(pool)).numpy()
        got = np.array([[pool[np.argmin(np.abs(table - v[:4]).sum(axis=1))] for v in row]
                        for row in negative.numpy()])
        np.testing.assert_array_equal(negative.numpy()[..., 4:], positive.numpy()[..., 4:])  # side fields
    assert np.isin(got, pool).all() and not (got == positive_ids.numpy()).any()
    assert len(np.unique(got)) > 1
    again, _ = model.negatives(positive, positive_ids, previous, e, inputs)
    np.testing.assert_array_equal(again.numpy(), negative.numpy())  # deterministic per step


def test_negatives_outside_history_drops_draws_among_the_rows_real_behaviours(tiny_data, first_batch, make_model):
    """With the switch, a draw that is one of its row's real behaviours is not usable; padded
    positions do not count; without it (the default) the history is not read."""
    spec, x, _ = first_batch(tiny_data, 64, columns=True)
    inputs = _inputs(spec, x)
    off, on = make_model(tiny_data), make_model(tiny_data, "model.dien.negatives_outside_history=true")
    on(inputs)
    e = on.embed.impression(inputs)
    pool = np.unique(x["target_item_id"].numpy())
    n = len(pool)
    positive_ids = tf.constant(np.repeat(pool[:, None], 2, axis=1))  # [n, 2]: every pool item a positive
    positive = tf.random.normal([n, 2, e["target"].shape[-1]])
    holds_all = np.arange(n) % 3 != 1  # rows 0, 2, 3, 5, ...: the whole pool in their history
    hist = np.where(holds_all[:, None], pool[None, :], -1 - np.arange(n)[None, :])
    real = np.ones_like(hist, bool)
    real[np.arange(n) % 3 == 2] = False  # rows 2, 5, ...: the pool, but only as padding
    history = (tf.constant(hist), tf.constant(real))
    _, usable = on.negatives(positive, positive_ids, tf.zeros_like(positive_ids), e, inputs, history=history)
    want = ~(holds_all & real.any(axis=1))
    np.testing.assert_array_equal(usable.numpy(), np.repeat(want[:, None], 2, axis=1))
    assert want.any() and not want.all()
    off(inputs)
    _, usable = off.negatives(positive, positive_ids, tf.zeros_like(positive_ids), e, inputs, history=history)
    assert usable.numpy().all()
    seen = {}
    negatives = on.negatives
    on.negatives = lambda *a, **k: seen.update(k) or negatives(*a, **k)
    on.auxiliary_loss(tf.zeros([2, 3, 16]), tf.zeros([2, 3, 16]), tf.constant([[1, 2, 3], [4, 5, 0]], tf.int64),
                      tf.constant([3, 2]), tf.constant([1.0, 1.0]), e, inputs)
    np.testing.assert_array_equal(seen["history"][0].numpy(), [[1, 2, 3], [4, 5, 0]])  # the ids with their mask
    np.testing.assert_array_equal(seen["history"][1].numpy(), [[True, True, True], [True, True, False]])


def test_aux_loss_is_added_in_training_only_and_counted_in_the_step(tiny_data, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 64, columns=True)
    inputs = _inputs(spec, x)
    model = make_model(tiny_data, "model.dien.aux_weight=2.5")
    model(inputs)
    assert model.losses == []  # serving / evaluation: no auxiliary loss
    model(inputs, training=True)
    (added,) = model.losses
    assert float(model.regularization_loss([])) == pytest.approx(float(added))
    assert float(added) == pytest.approx(2.5 * float(model.aux_tracker.result()), rel=1e-6)
    # the aux MLP is reached only through L_aux: one step moves it
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    before = [v.numpy().copy() for v in model.aux_mlp.trainable_variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["aux_loss"] > 0 and np.isfinite(logs["loss"])
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.aux_mlp.trainable_variables))
    assert "aux_loss" not in model.test_on_batch(x, y, return_dict=True)
    off = make_model(tiny_data, "model.dien.aux_weight=0")
    off(inputs, training=True)
    assert off.losses == []
    # without L_aux there is no auxiliary head: no unused variables, no parameters counted for it
    assert off.aux_mlp is None and not any("aux_mlp" in v.name for v in off.weights)
    assert any("aux_mlp" in v.name for v in model.weights)


def test_users_without_history_get_zero_interest_and_finite_outputs(tiny_data, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 32, columns=True)
    inputs = _inputs(spec, x)
    inputs["hist_ts"] = tf.zeros_like(inputs["hist_ts"])
    model = make_model(tiny_data)
    with tf.GradientTape() as tape:
        out = model(inputs, training=True)["ctr"]
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y["ctr"], out)) + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(out.numpy()).all() and float(model.losses[0]) == 0.0
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads if g is not None)
    r = model.embed.request(inputs)
    items, _, real, _ = model.oldest_first(r["hist"], inputs["hist_item_ids"], r["mask"])
    evolved = model.evolving(model.embed.impression(inputs)["target"], model.extractor(items, mask=real), real)
    assert np.array_equal(evolved.numpy(), np.zeros_like(evolved.numpy()))


SWITCHES = ["model.dien.negatives=table", "model.dien.aux_score=dot", "model.dien.trigger_in_tower=false",
            "model.dien.gru_units=8", "model.dien.gate_scale=count", "model.dien.history_sum=false",
            "model.dien.recurrent=false model.dien.aux_weight=0", "model.dien.negatives_outside_history=true"]


@pytest.mark.parametrize("setting", SWITCHES)
def test_each_switch_changes_the_model_and_trains(tiny_data, setting, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 64, columns=True)
    inputs = _inputs(spec, x)
    full, other = make_model(tiny_data), make_model(tiny_data, *setting.split())
    full(inputs, training=True), other(inputs, training=True)
    shared = {v.name: v.numpy() for v in full.weights}
    for v in other.weights:
        if v.name in shared and v.shape == shared[v.name].shape:
            v.assign(shared[v.name])
    if setting.startswith("model.dien.negatives") or setting.startswith("model.dien.aux_score"):
        # the same ctr; another auxiliary loss
        assert np.array_equal(full(inputs)["ctr"].numpy(), other(inputs)["ctr"].numpy())
        full(inputs, training=True), other(inputs, training=True)
        assert float(full.losses[0]) != float(other.losses[0])
    else:
        assert not np.allclose(full(inputs)["ctr"].numpy(), other(inputs)["ctr"].numpy(), atol=1e-6)
    other.compile(optimizer=keras.optimizers.Adagrad(0.1), run_eagerly=True)
    before = [v.numpy().copy() for v in other.trainable_variables]
    logs = other.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["aux_loss"])
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, other.trainable_variables)]
    assert sum(moved) > len(moved) // 2, setting


def test_request_dedup_gives_the_same_outputs_aux_loss_and_gradients(tiny_data, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 128, columns=True)
    inputs = _inputs(spec, x)
    results, weights = [], None
    for dedup in ("false", "true"):
        model = make_model(tiny_data, f"model.request_dedup={dedup}")
        model(inputs, training=True)
        weights = model.get_weights() if weights is None else weights
        model.set_weights(weights)
        with tf.GradientTape(persistent=True) as tape:
            out = model(inputs, training=True)["ctr"]
            ctr, aux = tf.reduce_mean(keras.losses.binary_crossentropy(y["ctr"], out)), model.losses[0]
        grads = [[np.zeros(v.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
                  for g, v in zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)]
                 for loss in (ctr, aux)]
        results.append((out.numpy(), float(aux), grads))
    (out0, aux0, g0), (out1, aux1, g1) = results
    np.testing.assert_allclose(out1, out0, rtol=1e-5, atol=1e-6)
    assert aux1 == pytest.approx(aux0, rel=1e-5)
    names = [v.name for v in model.trainable_variables]
    for name, a, b in zip(names, g0[0], g1[0]):  # the click loss: each variable at its own scale
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(1e-3, np.abs(a).max()), err_msg=name)
    # The auxiliary loss sums thousands of float32 terms that cancel; the two orders of summation
    # differ by about 1e-6 whatever the size of a head's gradient, so its floor is its largest one.
    scale = max(np.abs(a).max() for a in g0[1])
    for name, a, b in zip(names, g0[1], g1[1]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=3e-5 * scale, err_msg=name)


def test_mixed_precision_outputs_float32(tiny_data, first_batch):
    spec, x, _ = first_batch(tiny_data, 32, columns=True)
    ids, vecs, _ = load_item_vectors(tiny_data)
    mixed = build_model("dien", spec, load_config(None, SMALL).model, ids, vecs, "mixed_bfloat16")
    out = mixed(_inputs(spec, x), training=True)["ctr"]
    assert out.dtype == tf.float32 and np.isfinite(out.numpy()).all() and np.isfinite(float(mixed.losses[0]))
