"""Tests of tirec.models.layers: hand-computed outputs, masking, argument checks, serialization,
sharding and gradients, MirroredStrategy, and one SavedModel round trip."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


def _two_logical_cpus() -> None:
    """Splits the CPU into 2 logical devices for the MirroredStrategy test.

    Only possible before the TF runtime starts; if an earlier test module already ran TF ops the
    call raises RuntimeError and the strategy test runs on the devices there are.
    """
    try:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:
        pass


_two_logical_cpus()

from tirec.compat import keras  # noqa: E402
from tirec.features.spec import TableSpec  # noqa: E402
from tirec.models.layers import (MLP, Dice, DinAttention, FrozenItemTable, GateNU,  # noqa: E402
                                 HashedEmbedding, MultiHeadSelfAttention, MultiHeadTargetAttention,
                                 shard_sizes)

RNG = np.random.default_rng(0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax_masked(s, mask):
    s = np.where(mask, s, -np.inf)
    m = np.max(np.where(mask, s, -1e30), axis=-1, keepdims=True)
    e = np.where(mask, np.exp(s - m), 0.0)
    z = e.sum(-1, keepdims=True)
    return np.divide(e, z, out=np.zeros_like(e), where=z > 0)


def _rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


MASK = np.array([[True, True, False, False], [True, True, True, True], [False, False, False, False]])


# ---- HashedEmbedding ----------------------------------------------------------------------------

def test_fingerprint_buckets_are_farmhash64_mod_n():
    # FarmHash64 of the little-endian int64 ids 1, 2, 3 (pinned: changing the hash breaks models).
    farm = {1: 5925585971146611297, 2: 3353244675891348105, 3: 7262150054277104024}
    n = 1_000_003
    emb = HashedEmbedding(num_buckets=n, dim=2)
    ids = tf.constant([[1, 2], [3, 1]], tf.int64)
    expected = [[farm[1] % n, farm[2] % n], [farm[3] % n, farm[1] % n]]
    np.testing.assert_array_equal(emb.bucket(ids).numpy(), expected)
    np.testing.assert_array_equal(emb.bucket(tf.constant([1, 2, 3], tf.int32)).numpy(),
                                  [farm[1] % n, farm[2] % n, farm[3] % n])
    rows = emb.bucket(tf.range(-500, 500, dtype=tf.int64)).numpy()
    assert rows.min() >= 0 and rows.max() < n and len(set(rows.tolist())) > 990


def test_mod_hashing_and_lookup_by_hand():
    emb = HashedEmbedding(num_buckets=5, dim=2, hashing="mod")
    emb.build(None)
    table = np.array([[0, 0], [1, 10], [2, 20], [3, 30], [4, 40]], np.float32)
    emb.set_weights([table])
    ids = tf.constant([[1, 7], [-1, 5]], tf.int64)
    np.testing.assert_array_equal(emb.bucket(ids).numpy(), [[1, 2], [4, 0]])
    np.testing.assert_array_equal(emb(ids).numpy(), [[[1, 10], [2, 20]], [[4, 40], [0, 0]]])
    assert emb(tf.zeros([2, 3, 4], tf.int64)).shape == (2, 3, 4, 2)


def test_sharded_table_equals_unsharded_table():
    assert shard_sizes(10, 3) == [4, 3, 3]
    sharded = HashedEmbedding(num_buckets=10, dim=4, shards=3)
    single = HashedEmbedding(num_buckets=10, dim=4, shards=1)
    sharded.build(None)
    single.build(None)
    assert [tuple(v.shape) for v in sharded.embedding_variables] == [(4, 4), (3, 4), (3, 4)]
    full = _rand(10, 4)
    sharded.set_weights([full[:4], full[4:7], full[7:]])
    single.set_weights([np.concatenate(sharded.get_weights(), axis=0)])
    ids = tf.reshape(tf.range(-40, 80, dtype=tf.int64), [4, 30])
    np.testing.assert_array_equal(sharded(ids).numpy(), single(ids).numpy())
    np.testing.assert_array_equal(sharded(ids).numpy(), full[sharded.bucket(ids).numpy()])
    # Shards are initialised independently (no repeated unseeded initializer values).
    fresh = HashedEmbedding(num_buckets=10, dim=4, shards=3)
    fresh.build(None)
    a, b, _ = fresh.get_weights()
    assert not np.allclose(a[:3], b)


def test_shard_gradients_are_indexed_slices():
    emb = HashedEmbedding(num_buckets=10, dim=2, shards=3, hashing="mod")
    emb.build(None)
    ids = tf.constant([[1, 1, 5], [9, 1, 0]], tf.int64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(emb(ids))
    grads = tape.gradient(loss, emb.trainable_weights)
    assert len(grads) == 3 and all(isinstance(g, tf.IndexedSlices) for g in grads)
    dense = np.concatenate([tf.convert_to_tensor(g).numpy() for g in grads], axis=0)
    counts = np.bincount([1, 1, 5, 9, 1, 0], minlength=10).astype(np.float32)
    np.testing.assert_array_equal(dense, np.repeat(counts[:, None], 2, axis=1))


def test_from_table_spec():
    emb = HashedEmbedding.from_table_spec(TableSpec("item", num_buckets=100), dim=8, shards=4)
    assert (emb.name, emb.num_buckets, emb.dim, emb.shards) == ("item", 100, 8, 4)
    assert emb(tf.constant([[3, 4]], tf.int64)).shape == (1, 2, 8)
    assert len(emb.trainable_weights) == 4
    other = HashedEmbedding.from_table_spec(TableSpec("user", 50), 4, name="user_table", hashing="mod")
    assert (other.name, other.hashing, other.dim, other.shards) == ("user_table", "mod", 4, 1)


def test_hashed_embedding_under_mirrored_strategy():
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(cpus)
    replicas = strategy.num_replicas_in_sync
    assert replicas == len(cpus)
    with strategy.scope():
        emb = HashedEmbedding(num_buckets=10, dim=2, shards=3, hashing="mod", embeddings_initializer="ones")
        emb.build(None)
        optimizer = keras.optimizers.SGD(learning_rate=1.0)
    assert all(isinstance(v, tf.distribute.DistributedValues) for v in emb.trainable_weights)
    ids = tf.constant([1, 1, 4], tf.int64)  # shard 2 (rows 7-9) is read by no replica

    @tf.function
    def step():
        def replica_step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(emb(ids))
            grads = tape.gradient(loss, emb.trainable_weights)
            optimizer.apply_gradients(zip(grads, emb.trainable_weights))
            return emb(ids)
        return strategy.run(replica_step)

    outputs = strategy.experimental_local_results(step())
    assert len(outputs) == replicas
    table = np.concatenate([v.numpy() for v in emb.embedding_variables], axis=0)
    expected = np.ones([10, 2], np.float32)
    expected[1] -= 2 * replicas  # summed over replicas, row 1 read twice per replica
    expected[4] -= replicas
    np.testing.assert_allclose(table, expected)
    for out in outputs:
        np.testing.assert_allclose(out.numpy(), expected[[1, 1, 4]])


# ---- Dice ---------------------------------------------------------------------------------------

def _dice_ref(x, mean, var, alpha, eps=1e-8):
    p = _sigmoid((x - mean) / np.sqrt(var + eps))
    return p * x + (1 - p) * alpha * x


def test_dice_by_hand_training_and_inference():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, -6.0]], np.float32)
    dice = Dice(momentum=0.5)
    out = dice(x, training=True).numpy()
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(out, _dice_ref(x, mean, var, 0.0), rtol=1e-5, atol=1e-6)
    # alpha = 0: f = sigmoid(z) * x; check one entry fully by hand: z = (1 - 3) / sqrt(8/3).
    assert out[0, 0] == pytest.approx(_sigmoid(-2 / np.sqrt(8 / 3)) * 1.0, rel=1e-5)
    moving_mean, moving_var = 0.5 * mean, 0.5 * 1.0 + 0.5 * var
    np.testing.assert_allclose(dice.moving_mean.numpy(), moving_mean, rtol=1e-6)
    np.testing.assert_allclose(dice.moving_variance.numpy(), moving_var, rtol=1e-6)
    dice.alpha.assign([0.25, -0.5])
    np.testing.assert_allclose(dice(x, training=False).numpy(),
                               _dice_ref(x, moving_mean, moving_var, np.array([0.25, -0.5])),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dice.moving_mean.numpy(), moving_mean, rtol=1e-6)  # inference: no update


def test_dice_mask_restricts_batch_statistics():
    x = _rand(3, 4, 2)
    dice = Dice()
    out = dice(x, training=True, mask=MASK).numpy()
    real = x[MASK]
    expected = _dice_ref(x, real.mean(0), real.var(0), 0.0)
    np.testing.assert_allclose(out[MASK], expected[MASK], rtol=1e-4, atol=1e-5)
    x2 = x.copy()
    x2[~MASK] = 100.0
    np.testing.assert_allclose(dice(x2, training=True, mask=MASK).numpy()[MASK], out[MASK], rtol=1e-5)
    # An all-padded batch leaves the moving statistics alone and stays finite.
    before = dice.moving_mean.numpy()
    empty = dice(x, training=True, mask=np.zeros([3, 4], bool)).numpy()
    assert np.all(np.isfinite(empty))
    np.testing.assert_array_equal(dice.moving_mean.numpy(), before)


# ---- DinAttention -------------------------------------------------------------------------------

def _din_ref(layer, q, keys, mask):
    qb = np.broadcast_to(q[:, None, :], keys.shape)
    x = np.concatenate([qb, keys, qb - keys, qb * keys], axis=-1)
    for dense in layer.dense_layers:
        w, b = dense.get_weights()
        x = _sigmoid(x @ w + b)
    w, b = layer.score_layer.get_weights()
    s = np.where(mask, (x @ w + b)[..., 0], 0.0)
    return (s[..., None] * keys).sum(1), s


def test_din_attention_by_hand():
    att = DinAttention(hidden_units=(2,))
    q, keys = _rand(3, 3), _rand(3, 4, 3)
    att(q, keys, MASK)
    att.dense_layers[0].set_weights([np.zeros([12, 2], np.float32), np.zeros([2], np.float32)])
    att.score_layer.set_weights([np.ones([2, 1], np.float32), np.array([1.0], np.float32)])
    # Hidden = sigmoid(0) = 0.5 everywhere, so a_k = 0.5 + 0.5 + 1 = 2 at real positions.
    out, scores = att(q, keys, MASK, return_scores=True)
    np.testing.assert_allclose(scores.numpy(), np.where(MASK, 2.0, 0.0))
    np.testing.assert_allclose(out.numpy(), 2.0 * (keys * MASK[..., None]).sum(1), rtol=1e-6)


def test_din_attention_matches_numpy_and_ignores_padding():
    att = DinAttention(hidden_units=(6, 4))
    q, keys = _rand(3, 5), _rand(3, 4, 5)
    out, scores = att(q, keys, MASK.astype(np.int32), return_scores=True)
    ref_out, ref_scores = _din_ref(att, q, keys, MASK)
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-5, atol=1e-5)
    noisy = keys.copy()
    noisy[~MASK] = 1e3
    np.testing.assert_allclose(att(q, noisy, MASK).numpy(), out.numpy(), rtol=1e-6)
    assert np.all(out.numpy()[2] == 0.0)
    np.testing.assert_allclose(att(q, keys).numpy(), _din_ref(att, q, keys, np.ones_like(MASK))[0],
                               rtol=1e-5, atol=1e-5)


def test_din_attention_weight_normalization_and_dice():
    att = DinAttention(hidden_units=(4,), activation="dice", weight_normalization=True)
    q, keys = _rand(3, 2), _rand(3, 4, 2)
    out, scores = att(q, keys, MASK, training=True, return_scores=True)
    s = scores.numpy()
    np.testing.assert_allclose(s.sum(-1), [1.0, 1.0, 0.0], rtol=1e-6)
    assert np.all(s[~MASK] == 0.0) and np.all(np.isfinite(out.numpy()))
    noisy = keys.copy()
    noisy[~MASK] = -50.0
    # Padded keys change neither the Dice batch statistics nor the output, in training too.
    np.testing.assert_allclose(att(q, noisy, MASK, training=True).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.numpy()[2], 0.0)


# ---- MultiHeadTargetAttention -------------------------------------------------------------------

def _dense(layer, x):
    w = layer.get_weights()
    return x @ w[0] + (w[1] if len(w) > 1 else 0.0)


def _mhta_ref(layer, q, keys, mask):
    h = layer.heads
    dh = layer.units // h
    qq = _dense(layer.query_dense, q).reshape(len(q), h, dh)
    kk = _dense(layer.key_dense, keys).reshape(*keys.shape[:2], h, dh)
    vv = _dense(layer.value_dense, keys).reshape(*keys.shape[:2], h, dh)
    a = _softmax_masked(np.einsum("bhd,blhd->bhl", qq, kk) / np.sqrt(dh), mask[:, None, :])
    o = _dense(layer.output_dense, np.einsum("bhl,blhd->bhd", a, vv).reshape(len(q), -1))
    return np.where(mask.any(1, keepdims=True), o, 0.0)


def test_mhta_by_hand_uniform_attention():
    att = MultiHeadTargetAttention(units=4, heads=2)
    q, keys = _rand(3, 3), _rand(3, 4, 4)
    att(q, keys, MASK)
    zeros, eye, b0 = np.zeros([3, 4], np.float32), np.eye(4, dtype=np.float32), np.zeros([4], np.float32)
    att.query_dense.set_weights([zeros, b0])
    att.key_dense.set_weights([eye, b0])
    att.value_dense.set_weights([eye, b0])
    att.output_dense.set_weights([eye, np.ones([4], np.float32)])
    # Zero queries: every real key gets the same weight, so each output is the mean of real keys + 1.
    out = att(q, keys, MASK).numpy()
    np.testing.assert_allclose(out[0], keys[0, :2].mean(0) + 1, rtol=1e-5)
    np.testing.assert_allclose(out[1], keys[1].mean(0) + 1, rtol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)  # fully masked: 0, not the output bias


def test_mhta_matches_numpy_and_ignores_padding():
    att = MultiHeadTargetAttention(units=8, heads=2, output_dim=3)
    q, keys = _rand(3, 5), _rand(3, 4, 6)
    out, weights = att(q, keys, MASK, return_scores=True)
    assert out.shape == (3, 3) and weights.shape == (3, 2, 4)
    np.testing.assert_allclose(out.numpy(), _mhta_ref(att, q, keys, MASK), rtol=1e-4, atol=1e-5)
    noisy = keys.copy()
    noisy[~MASK] = 1e4
    np.testing.assert_allclose(att(q, noisy, MASK).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(out.numpy())) and np.all(weights.numpy()[2] == 0.0)
    assert MultiHeadTargetAttention(units=8, heads=2)(q, keys, MASK).shape == (3, 8)


# ---- MultiHeadSelfAttention ---------------------------------------------------------------------

def _mhsa_ref(layer, x, mask):
    h = layer.heads
    dh = layer.units // h
    b, length = x.shape[:2]
    qq, kk, vv = (_dense(d, x).reshape(b, length, h, dh)
                  for d in (layer.query_dense, layer.key_dense, layer.value_dense))
    a = _softmax_masked(np.einsum("bqhd,bkhd->bhqk", qq, kk) / np.sqrt(dh), mask[:, None, None, :])
    o = _dense(layer.output_dense, np.einsum("bhqk,bkhd->bqhd", a, vv).reshape(b, length, -1))
    if layer.residual:
        o = o + (_dense(layer.residual_dense, x) if layer.residual_dense is not None else x)
    if layer.layer_norm:
        mu, var = o.mean(-1, keepdims=True), o.var(-1, keepdims=True)
        o = (o - mu) / np.sqrt(var + 1e-6)
    return np.where(mask[..., None], o, 0.0)


def test_mhsa_by_hand_uniform_attention():
    att = MultiHeadSelfAttention(units=4, heads=2, residual=False, layer_norm=False)
    x = _rand(3, 4, 4)
    att(x, MASK)
    zeros, eye, b0 = np.zeros([4, 4], np.float32), np.eye(4, dtype=np.float32), np.zeros([4], np.float32)
    att.query_dense.set_weights([zeros, b0])
    att.key_dense.set_weights([zeros, b0])
    att.value_dense.set_weights([eye, b0])
    att.output_dense.set_weights([eye, b0])
    out = att(x, MASK).numpy()
    np.testing.assert_allclose(out[0, :2], np.repeat(x[0, :2].mean(0, keepdims=True), 2, 0), rtol=1e-5)
    np.testing.assert_allclose(out[1], np.repeat(x[1].mean(0, keepdims=True), 4, 0), rtol=1e-5)
    np.testing.assert_array_equal(out[0, 2:], 0.0)
    np.testing.assert_array_equal(out[2], 0.0)


@pytest.mark.parametrize("d", [6, 8])
def test_mhsa_matches_numpy_and_ignores_padding(d):
    att = MultiHeadSelfAttention(units=8, heads=2)
    x = _rand(3, 4, d)
    out, weights = att(x, MASK, return_scores=True)
    assert out.shape == (3, 4, 8) and weights.shape == (3, 2, 4, 4)
    assert (att.residual_dense is None) == (d == 8)
    np.testing.assert_allclose(out.numpy(), _mhsa_ref(att, x, MASK), rtol=1e-4, atol=1e-4)
    noisy = x.copy()
    noisy[~MASK] = 1e4
    np.testing.assert_allclose(att(noisy, MASK).numpy(), out.numpy(), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(out.numpy())) and np.all(out.numpy()[2] == 0.0)


# ---- fast attention paths equal the straightforward computation --------------------------------

def _straight_mhta(layer, query, keys, mask):
    """MHTA as docs/models.md#multi-head-target-attention writes it: project K and V, masked
    softmax, zero rows without keys."""
    from tirec.models.layers._common import masked_softmax, merge_heads, split_heads
    q = split_heads(layer.query_dense(query), layer.heads)
    k = split_heads(layer.key_dense(keys), layer.heads)
    v = split_heads(layer.value_dense(keys), layer.heads)
    scores = tf.einsum("bhd,blhd->bhl", q, k) / np.sqrt(layer.units // layer.heads)
    heads = tf.einsum("bhl,blhd->bhd", masked_softmax(scores, mask[:, None, :]), v)
    out = layer.output_dense(merge_heads(heads))
    return tf.where(tf.reduce_any(mask, 1, keepdims=True), out, 0.0)


def _straight_mhsa(layer, x, mask):
    from tirec.models.layers._common import masked_softmax, merge_heads, split_heads
    q, k, v = (split_heads(d(x), layer.heads) for d in (layer.query_dense, layer.key_dense, layer.value_dense))
    scores = tf.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(layer.units // layer.heads)
    heads = tf.einsum("bhqk,bkhd->bqhd", masked_softmax(scores, mask[:, None, None, :]), v)
    out = layer.output_dense(merge_heads(heads))
    if layer.residual:
        out += layer.residual_dense(x) if layer.residual_dense is not None else x
    if layer.norm is not None:
        out = layer.norm(out)
    return tf.where(mask[:, :, None], out, 0.0)


def _straight_din(layer, query, keys, mask, training):
    from tirec.models.layers.dice import apply_activation
    q = tf.broadcast_to(query[:, None, :], tf.shape(keys))
    x = tf.concat([q, keys, q - keys, q * keys], axis=-1)
    for dense, act in zip(layer.dense_layers, layer.activation_layers):
        x = apply_activation(act, dense(x), training=training, mask=mask)
    scores = tf.where(mask, tf.squeeze(layer.score_layer(x), -1), 0.0)
    return tf.reduce_sum(scores[:, :, None] * keys, axis=1)


def _compare_with_gradients(fast, straight, variables, rtol=1e-4):
    def run(fn):
        with tf.GradientTape() as tape:
            out = fn()
            loss = tf.reduce_sum(tf.sin(out))
        return out, tape.gradient(loss, variables)

    (got, got_grads), (want, want_grads) = run(fast), run(straight)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=rtol, atol=rtol)
    for var, g, w in zip(variables, got_grads, want_grads):
        g, w = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(w).numpy()
        # Key biases have an exactly zero gradient in exact arithmetic (softmax shift
        # invariance); compare on the scale of the largest gradient.
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * max(1.0, np.abs(w).max()),
                                   err_msg=f"gradient of {getattr(var, 'name', var)}")


def _padded_inputs(batch=24, length=7, d=6):
    mask = RNG.random([batch, length]) < 0.6
    mask[0] = False
    mask[1] = True
    keys = _rand(batch, length, d)
    keys[~mask] = 30.0  # padding must not leak
    return tf.Variable(_rand(batch, d)), tf.Variable(keys), tf.constant(mask)


@pytest.mark.parametrize("use_bias", [True, False])
def test_mhta_folded_path_equals_straightforward(use_bias):
    query, keys, mask = _padded_inputs()
    att = MultiHeadTargetAttention(units=8, heads=2, output_dim=5, use_bias=use_bias)
    att(query, keys, mask)
    _compare_with_gradients(lambda: att(query, keys, mask), lambda: _straight_mhta(att, query, keys, mask),
                            [query, keys] + att.trainable_variables)


def test_mhta_steps_on_groups_of_rows_equal_one_call():
    """fold_query and project once on the batch, pool per group of rows (as DAIAN's explicit
    branch does with length buckets): same outputs and gradients as call()."""
    query, keys, mask = _padded_inputs()
    att = MultiHeadTargetAttention(units=8, heads=2, output_dim=5)
    att(query, keys, mask)

    def grouped():
        q_keys, q_bias = att.fold_query(query, keys.shape[-1])
        halves = [slice(0, 2), slice(2, None)]
        pooled = tf.concat([att.pool((q_keys[s], q_bias[s]), keys[s], mask[s])[1] for s in halves], axis=0)
        return att.project(pooled, tf.reduce_any(mask, axis=1))

    _compare_with_gradients(grouped, lambda: att(query, keys, mask), [query, keys] + att.trainable_variables)


@pytest.mark.parametrize("d, layer_norm", [(6, True), (8, False)])
def test_mhsa_fast_path_equals_straightforward(d, layer_norm):
    _, x, mask = _padded_inputs(d=d)
    att = MultiHeadSelfAttention(units=8, heads=2, layer_norm=layer_norm)
    att(x, mask)
    _compare_with_gradients(lambda: att(x, mask), lambda: _straight_mhsa(att, x, mask),
                            [x] + att.trainable_variables)


@pytest.mark.parametrize("activation", ["sigmoid", "dice", "prelu"])
def test_din_attention_split_first_layer_equals_concatenated(activation):
    query, keys, mask = _padded_inputs()
    att = DinAttention(hidden_units=(6, 4), activation=activation)
    att(query, keys, mask, training=True)
    _compare_with_gradients(lambda: att(query, keys, mask, training=True),
                            lambda: _straight_din(att, query, keys, mask, training=True),
                            [query, keys] + att.trainable_variables)


@pytest.mark.parametrize("activation,softmax", [("sigmoid", False), ("prelu", False), ("sigmoid", True)])
def test_din_attention_length_buckets_equal_the_padded_path(activation, softmax):
    query, keys, mask = _padded_inputs(batch=128)  # 3 groups of >= 32 rows: the bucketed path runs

    def run(layer):
        with tf.GradientTape() as tape:
            out = layer(query, keys, mask)
            loss = tf.reduce_sum(tf.sin(out))
        return out.numpy(), [tf.convert_to_tensor(g).numpy()
                             for g in tape.gradient(loss, [query, keys] + layer.trainable_variables)]

    padded = DinAttention(hidden_units=(6, 4), activation=activation, weight_normalization=softmax)
    padded(query, keys, mask)
    want, want_grads = run(padded)
    for buckets in (1, 3):
        grouped = DinAttention(hidden_units=(6, 4), activation=activation, weight_normalization=softmax,
                               length_buckets=buckets)
        grouped(query, keys, mask)
        grouped.set_weights(padded.get_weights())
        got, grads = run(grouped)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert len(grads) == len(want_grads)
        for g, w in zip(grads, want_grads):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(w).max()))


def test_din_attention_length_buckets_validated_and_skipped_for_dice():
    with pytest.raises(ValueError, match="length_buckets"):
        DinAttention(length_buckets=-1)
    query, keys, mask = _padded_inputs()
    dice = DinAttention(hidden_units=(4,), activation="dice", length_buckets=3)
    ref = DinAttention(hidden_units=(4,), activation="dice")
    dice(query, keys, mask, training=True)
    ref(query, keys, mask, training=True)
    ref.set_weights(dice.get_weights())
    # Dice statistics over the whole batch's real positions: the padded path, bit for bit.
    np.testing.assert_array_equal(dice(query, keys, mask, training=True).numpy(),
                                  ref(query, keys, mask, training=True).numpy())


def test_attention_weight_names_unchanged():
    """Saved runs load by variable path: the fast paths keep the sublayers and their variables."""
    query, keys, mask = _padded_inputs()
    mhta = MultiHeadTargetAttention(8, 2, name="t")
    mhta(query, keys, mask)
    assert [v.name for v in mhta.weights] == [f"t/{p}/{w}:0" for p in ("query", "key", "value", "output")
                                              for w in ("kernel", "bias")]
    mhsa = MultiHeadSelfAttention(8, 2, name="s")
    mhsa(keys, mask)
    assert [v.name for v in mhsa.weights] == (
        [f"s/{p}/{w}:0" for p in ("query", "key", "value", "output") for w in ("kernel", "bias")]
        + ["s/layer_norm/gamma:0", "s/layer_norm/beta:0", "s/residual_projection/kernel:0"])
    din = DinAttention((6, 4), name="d")
    din(query, keys, mask)
    assert [v.name for v in din.weights][:2] == ["d/dense_0/kernel:0", "d/dense_0/bias:0"]
    assert din.dense_layers[0].kernel.shape == (4 * 6, 6)


# ---- mixed precision ----------------------------------------------------------------------------

@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_layers_under_mixed_bfloat16(mixed_bfloat16):
    query, keys, mask = _padded_inputs(d=8)
    layers = {"mhta": MultiHeadTargetAttention(8, 2), "mhsa": MultiHeadSelfAttention(8, 2),
              "din": DinAttention((6, 4), activation="dice")}
    outs = {"mhta": layers["mhta"](query, keys, mask), "mhsa": layers["mhsa"](keys, mask),
            "din": layers["din"](query, keys, mask, training=True)}
    keras.mixed_precision.set_global_policy("float32")
    ref = {"mhta": MultiHeadTargetAttention(8, 2), "mhsa": MultiHeadSelfAttention(8, 2),
           "din": DinAttention((6, 4), activation="dice")}
    ref_call = {"mhta": lambda: ref["mhta"](query, keys, mask), "mhsa": lambda: ref["mhsa"](keys, mask),
                "din": lambda: ref["din"](query, keys, mask, training=True)}
    for name, layer in layers.items():
        assert outs[name].dtype == tf.bfloat16, name
        assert all(v.dtype == tf.float32 for v in layer.weights), name
        ref_call[name]()  # builds the float32 copy, which then takes the bfloat16 layer's weights
        ref[name].set_weights(layer.get_weights())
        w = ref_call[name]().numpy()
        np.testing.assert_allclose(tf.cast(outs[name], tf.float32).numpy(), w, rtol=0.05,
                                   atol=0.05 * np.abs(w).max(), err_msg=name)
    # Dice keeps float32 statistics.
    dice = layers["din"].activation_layers[0]
    assert dice.moving_mean.dtype == tf.float32 and np.isfinite(dice.moving_variance.numpy()).all()


def test_tables_stay_float32_under_mixed_bfloat16(mixed_bfloat16):
    emb = HashedEmbedding(50, 4, shards=2)
    out = emb(tf.constant([[1, 2, 3]], tf.int64))
    assert out.dtype == tf.bfloat16
    assert all(type(v).__name__ != "AutoCastVariable" and v.dtype == tf.float32 for v in emb.weights)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(emb(tf.constant([1, 2], tf.int64)), tf.float32))
    assert all(isinstance(g, tf.IndexedSlices) and g.dtype == tf.float32
               for g in tape.gradient(loss, emb.trainable_weights) if g is not None)
    table = FrozenItemTable(np.array([3, 7]), np.eye(2, dtype=np.float32) / 3, dtype="float32")
    vec, _ = table(tf.constant([7], tf.int64))
    assert vec.dtype == tf.float32 and vec.numpy()[0, 1] == np.float32(1 / 3)


# ---- GateNU, MLP --------------------------------------------------------------------------------

def test_gate_nu_centred_at_one_and_by_hand():
    gate = GateNU(hidden_units=(3,), output_dim=5, output_kernel_initializer="zeros")
    np.testing.assert_array_equal(gate(_rand(4, 6)).numpy(), np.ones([4, 5], np.float32))
    gate = GateNU(hidden_units=1, output_dim=2, gamma=2.0)
    x = np.array([[1.0, 2.0], [-1.0, -2.0]], np.float32)
    gate(x)
    gate.hidden_layers[0].set_weights([np.ones([2, 1], np.float32), np.zeros([1], np.float32)])
    gate.output_layer.set_weights([np.array([[0.5, -1.0]], np.float32), np.array([0.0, 1.0], np.float32)])
    # Row 0: h = relu(3) = 3 -> logits [1.5, -2]; row 1: h = relu(-3) = 0 -> logits [0, 1].
    expected = 2.0 * _sigmoid(np.array([[1.5, -2.0], [0.0, 1.0]]))
    np.testing.assert_allclose(gate(x).numpy(), expected, rtol=1e-6)
    assert GateNU((), 3, gamma=1.0, output_kernel_initializer="zeros")(x).numpy().max() == 0.5


def test_mlp_by_hand():
    mlp = MLP(units=(2,), kernel_initializer="ones", output_logit=True)
    x = np.array([[1.0, -2.0, 3.0], [-1.0, -2.0, 0.0]], np.float32)
    # Row 0: hidden relu(2) = [2, 2] -> logit 4; row 1: relu(-3) = 0 -> logit 0.
    np.testing.assert_array_equal(mlp(x).numpy(), [[4.0], [0.0]])
    assert MLP(units=(4, 3))(x).shape == (2, 3)
    deep = MLP(units=(4, 4))  # each Dense gets its own initializer instance: different kernels
    deep(_rand(2, 4))
    assert not np.allclose(deep.dense_layers[1].get_weights()[0], deep.dense_layers[0].get_weights()[0])


@pytest.mark.parametrize("activation", ["dice", "prelu", "sigmoid"])
def test_mlp_batch_norm_dropout_training_and_inference(activation):
    mlp = MLP(units=(8, 4), activation=activation, dropout=0.5, batch_norm=True, output_logit=True)
    x = _rand(16, 5)
    train = mlp(x, training=True).numpy()
    infer = mlp(x, training=False).numpy()
    assert train.shape == infer.shape == (16, 1)
    np.testing.assert_array_equal(mlp(x).numpy(), infer)  # training defaults to False
    assert not np.allclose(train, infer)


# ---- FrozenItemTable ----------------------------------------------------------------------------

def test_frozen_item_table_by_hand():
    ids = np.array([10, 3, 7], np.int64)
    vectors = np.array([[10, 10], [3, 3], [7, 7]], np.float32)
    table = FrozenItemTable(ids, vectors)
    assert (table.num_items, table.dim) == (3, 2) and not table.trainable_weights
    vec, found = table(tf.constant([[7, 4], [10, 3], [11, -1]], tf.int64))
    np.testing.assert_array_equal(found.numpy(), [[True, False], [True, True], [False, False]])
    np.testing.assert_array_equal(vec.numpy(), [[[7, 7], [0, 0]], [[10, 10], [3, 3]], [[0, 0], [0, 0]]])
    vec, found = table(tf.constant(7, tf.int32))
    assert vec.shape == (2,) and bool(found.numpy())


def test_frozen_item_table_set_table_empty_and_unset():
    table = FrozenItemTable(num_items=2, dim=3)
    vec, found = table(tf.constant([0, 5], tf.int64))
    assert not found.numpy().any() and not vec.numpy().any()  # unset: nothing found, even id 0
    table.set_table([5, 0], np.ones([2, 3]))
    assert table(tf.constant([0, 5, 6], tf.int64))[1].numpy().tolist() == [True, True, False]
    with pytest.raises(ValueError, match="vectors"):
        table.set_table([5, 0, 1], np.ones([3, 3]))
    with pytest.raises(ValueError, match="unique"):
        table.set_table([5, 5], np.ones([2, 3]))
    empty = FrozenItemTable(num_items=0, dim=4)
    vec, found = empty(tf.constant([[1, 2]], tf.int64))
    assert vec.shape == (1, 2, 4) and not found.numpy().any()


# ---- argument checks and serialization ----------------------------------------------------------

@pytest.mark.parametrize("make, argument", [
    (lambda: HashedEmbedding(0, 4), "num_buckets"),
    (lambda: HashedEmbedding(10, -1), "dim"),
    (lambda: HashedEmbedding(10, 4, shards=0), "shards"),
    (lambda: HashedEmbedding(10, 4, shards=11), "shards"),
    (lambda: HashedEmbedding(10, 4, hashing="md5"), "hashing"),
    (lambda: HashedEmbedding.from_table_spec({"name": "item"}, 8), "table"),
    (lambda: Dice(epsilon=0.0), "epsilon"),
    (lambda: Dice(axis=1.5), "axis"),
    (lambda: Dice(momentum=1.0), "momentum"),
    (lambda: DinAttention(hidden_units=(8, 0)), "hidden_units"),
    (lambda: DinAttention(hidden_units=()), "hidden_units"),
    (lambda: DinAttention(activation="nope"), "activation"),
    (lambda: DinAttention(weight_normalization="yes"), "weight_normalization"),
    (lambda: MultiHeadTargetAttention(units=0), "units"),
    (lambda: MultiHeadTargetAttention(units=8, heads=3), "heads"),
    (lambda: MultiHeadTargetAttention(units=8, heads=2, output_dim=0), "output_dim"),
    (lambda: MultiHeadSelfAttention(units=8, heads=0), "heads"),
    (lambda: MultiHeadSelfAttention(units=8, heads=3), "heads"),
    (lambda: MultiHeadSelfAttention(residual=1), "residual"),
    (lambda: GateNU((4,), 0), "output_dim"),
    (lambda: GateNU((4,), 2, gamma=0.0), "gamma"),
    (lambda: GateNU((-1,), 2), "hidden_units"),
    (lambda: MLP(units=(4, 0)), "units"),
    (lambda: MLP(units=()), "units"),
    (lambda: MLP(dropout=1.0), "dropout"),
    (lambda: MLP(activation="bogus"), "activation"),
    (lambda: FrozenItemTable(num_items=-1, dim=2), "num_items"),
    (lambda: FrozenItemTable(num_items=2, dim=0), "dim"),
    (lambda: FrozenItemTable(ids=[1, 2]), "ids"),
    (lambda: FrozenItemTable(ids=[[1, 2]], vectors=np.ones([1, 2])), "ids"),
    (lambda: FrozenItemTable(ids=[1, 2], vectors=np.ones([3, 2])), "vectors"),
    (lambda: FrozenItemTable(ids=[1, 2], vectors=np.ones([2, 2]), dim=3), "dim"),
])
def test_invalid_arguments_raise_value_error_naming_them(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()


def test_call_time_shape_errors():
    with pytest.raises(ValueError, match="last dimension"):
        DinAttention((4,))(tf.ones([2, 3]), tf.ones([2, 5, 4]))
    with pytest.raises(ValueError, match="rank"):
        MultiHeadTargetAttention(8, 2)(tf.ones([2, 1, 3]), tf.ones([2, 5, 4]))


def _ids(shape):
    return RNG.integers(-50, 50, size=shape).astype(np.int64)


SERIALIZATION_CASES = {
    "hashed_embedding": (lambda: HashedEmbedding(20, 3, shards=2, hashing="mod",
                                                 embeddings_initializer=keras.initializers.RandomNormal(seed=1)),
                         lambda: (_ids([3, 4]),), {}),
    "dice": (lambda: Dice(epsilon=1e-6, axis=-1, momentum=0.9), lambda: (_rand(4, 3),), {}),
    "din_attention": (lambda: DinAttention((6, 4), activation="dice", weight_normalization=True),
                      lambda: (_rand(3, 5), _rand(3, 4, 5), MASK), {}),
    "mhta": (lambda: MultiHeadTargetAttention(8, 2, output_dim=5, use_bias=False),
             lambda: (_rand(3, 5), _rand(3, 4, 6), MASK), {}),
    "mhsa": (lambda: MultiHeadSelfAttention(8, 4, residual=True, layer_norm=False),
             lambda: (_rand(3, 4, 6), MASK), {}),
    "gate_nu": (lambda: GateNU((4, 3), 6, gamma=1.5), lambda: (_rand(2, 5),), {}),
    "mlp": (lambda: MLP((6, 3), activation="prelu", dropout=0.2, batch_norm=True, output_logit=True),
            lambda: (_rand(4, 5),), {"training": False}),
    "frozen_item_table": (lambda: FrozenItemTable(np.array([4, 9, 1]), _rand(3, 2)),
                          lambda: (np.array([[1, 2], [9, 4]], np.int64),), {}),
}


@pytest.mark.parametrize("case", sorted(SERIALIZATION_CASES))
def test_serialize_deserialize_round_trip(case):
    make, inputs, kwargs = SERIALIZATION_CASES[case]
    layer = make()
    args = inputs()
    expected = layer(*args, **kwargs)
    config = keras.layers.serialize(layer)
    assert config["registered_name"] == f"tirec>{type(layer).__name__}"
    clone = keras.layers.deserialize(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    clone(*args, **kwargs)
    clone.set_weights(layer.get_weights())
    for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(clone(*args, **kwargs))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


# ---- SavedModel ---------------------------------------------------------------------------------

def test_saved_model_round_trip(tmp_path):
    length, item_ids = 4, np.array([3, 8, 12, 40], np.int64)
    target = keras.Input([], dtype=tf.int64, name="target")
    hist = keras.Input([length], dtype=tf.int64, name="hist")
    mask = keras.Input([length], dtype=tf.bool, name="mask")
    emb = HashedEmbedding(50, 8, shards=2, name="item_table")
    e_t, e_h = emb(target), emb(hist)
    v_din = DinAttention((8, 4), activation="dice", name="din")(e_t, e_h, mask)
    s_hat = MultiHeadSelfAttention(8, 2, name="mhsa")(e_h, mask)
    v_mhta = MultiHeadTargetAttention(8, 2, output_dim=8, name="mhta")(e_t, s_hat, mask)
    m_t, found = FrozenItemTable(item_ids, _rand(4, 3), name="items")(target)
    gate_in = keras.layers.Concatenate()([m_t, tf.cast(found, tf.float32)[:, None]])
    gated = keras.layers.Multiply()([GateNU((4,), 8, name="gate")(gate_in), v_mhta])
    logit = MLP((8, 4), activation="dice", batch_norm=True, output_logit=True, name="tower")(
        keras.layers.Concatenate()([e_t, v_din, gated, m_t]))
    model = keras.Model({"target": target, "hist": hist, "mask": mask}, keras.layers.Activation("sigmoid")(logit))

    n = 32
    x = {"target": RNG.choice(np.r_[item_ids, [5, 6]], n).astype(np.int64),
         "hist": _ids([n, length]),
         "mask": RNG.random([n, length]) < 0.7}
    x["mask"][:3] = False
    y = (RNG.random([n, 1]) < 0.5).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adagrad(0.05), loss="binary_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    expected = model(x, training=False).numpy()
    assert np.all(np.isfinite(expected))

    path = str(tmp_path / "model")
    model.save(path, save_format="tf")
    restored = tf.saved_model.load(path)
    np.testing.assert_allclose(restored({k: tf.constant(v) for k, v in x.items()}, training=False).numpy(),
                               expected, rtol=1e-5, atol=1e-6)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded.get_layer("din"), DinAttention)
    assert isinstance(reloaded.get_layer("items"), FrozenItemTable)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(reloaded.get_layer("items").item_ids.numpy(), np.sort(item_ids))
