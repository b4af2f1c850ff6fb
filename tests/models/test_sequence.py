"""Compaction and length bucketing (tirec.models.layers.sequence): the fast paths give the
outputs and gradients of the straightforward padded computation."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tirec.models.layers import MultiHeadSelfAttention, MultiHeadTargetAttention  # noqa: E402
from tirec.models.layers.sequence import (compact_positions, keep_first, length_bucketed,  # noqa: E402
                                          trigger_related_mask, unique_rows)

RNG = np.random.default_rng(3)


def _mask(batch, length, p=0.4):
    m = RNG.random([batch, length]) < p
    m[0] = False  # a row with no real position
    if batch > 1:
        m[1] = True  # a full row
    return m


def _first_k(mask, k):
    """numpy: keep the first k True entries of each row."""
    return mask & (np.cumsum(mask, axis=1) <= k)


def test_compact_positions_by_hand():
    mask = np.array([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]], bool)
    pos, lengths = compact_positions(mask)
    assert lengths.numpy().tolist() == [3, 0, 2]
    assert pos.numpy().tolist() == [[1, 3, 4], [0, 1, 2], [0, 2, 1]]  # real first, in order
    pos, lengths = compact_positions(mask, max_len=2)
    assert lengths.numpy().tolist() == [2, 0, 2] and pos.numpy().tolist() == [[1, 3], [0, 1], [0, 2]]
    pos, lengths = compact_positions(np.zeros([2, 4], bool))
    assert pos.shape == (2, 1) and lengths.numpy().tolist() == [0, 0]  # width is at least 1
    np.testing.assert_array_equal(keep_first(tf.constant(mask), 2).numpy(), _first_k(mask, 2))


class _Block:
    """MHTA(query, MHSA(seq)) — the DAIAN explicit branch — plus the compacted sequence sum."""

    def __init__(self):
        self.mhsa = MultiHeadSelfAttention(8, 2)
        self.mhta = MultiHeadTargetAttention(8, 2)

    def __call__(self, rows, seqs, mask):
        (query,), (seq,) = rows, seqs
        v = self.mhta(query, self.mhsa(seq, mask), mask)
        seq_sum = tf.reduce_sum(tf.where(mask[:, :, None], seq, 0.0), axis=1)
        return {"v": v, "sum": seq_sum}


@pytest.mark.parametrize("batch", [1, 5, 37])
@pytest.mark.parametrize("max_len", [None, 3])
def test_length_bucketed_equals_padded_reference(batch, max_len):
    length = 9
    block = _Block()
    query = tf.Variable(RNG.normal(size=[batch, 6]).astype(np.float32))
    seq = tf.Variable(RNG.normal(size=[batch, length, 5]).astype(np.float32))
    mask = _mask(batch, length)
    # Reference: the block on the padded inputs with the numpy-capped mask.
    ref_mask = mask if max_len is None else _first_k(mask, max_len)
    block([query], [seq], ref_mask)  # build
    variables = [query, seq] + block.mhsa.trainable_variables + block.mhta.trainable_variables

    def run(fn):
        with tf.GradientTape() as tape:
            out = fn()
            loss = tf.reduce_sum(tf.sin(out["v"])) + tf.reduce_sum(out["sum"] ** 2)
        return out, tape.gradient(loss, variables)

    want, want_grads = run(lambda: block([query], [seq], ref_mask))
    for buckets in (0, 1, 3, 8):
        got, grads = run(lambda: length_bucketed(block, [query], [seq], mask, buckets=buckets, max_len=max_len,
                                                 min_rows=1))
        for key in want:
            np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{key} buckets={buckets}")
        np.testing.assert_array_equal(got["v"].numpy()[0], 0.0)  # no real position: exact zeros
        for var, g, w in zip(variables, grads, want_grads):
            g, w = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(w).numpy()
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(w).max()),
                                       err_msg=f"gradient of {var.name} buckets={buckets}")


def test_length_bucketed_in_a_function_with_unknown_batch():
    """Batches below buckets * min_rows take the compacted path, larger ones the buckets (a
    tf.cond): both give the block's outputs, gradients included."""
    block = _Block()
    block([tf.ones([1, 6])], [tf.ones([1, 2, 5])], tf.ones([1, 2], tf.bool))  # build before the cond
    fn = tf.function(lambda q, s, m: length_bucketed(block, [q], [s], m, buckets=4, min_rows=2)["v"],
                     input_signature=[tf.TensorSpec([None, 6]), tf.TensorSpec([None, None, 5]),
                                      tf.TensorSpec([None, None], tf.bool)])
    for batch in (0, 2, 7, 8, 11):
        q = RNG.normal(size=[batch, 6]).astype(np.float32)
        s = RNG.normal(size=[batch, 7, 5]).astype(np.float32)
        m = RNG.random([batch, 7]) < 0.5
        out = fn(q, s, m).numpy()
        assert out.shape == (batch, 8)
        np.testing.assert_allclose(out, block([q], [s], m)["v"].numpy(), rtol=1e-5, atol=1e-5)


def test_length_bucketed_rejects_bad_buckets():
    with pytest.raises(ValueError, match="buckets"):
        length_bucketed(lambda r, s, m: r[0], [tf.ones([2, 1])], [tf.ones([2, 3, 1])], None, buckets=-1)


def test_length_bucketed_gradient_through_the_cond():
    block = _Block()
    q = tf.Variable(RNG.normal(size=[12, 6]).astype(np.float32))
    s = tf.Variable(RNG.normal(size=[12, 7, 5]).astype(np.float32))
    m = tf.constant(_mask(12, 7))
    block([q], [s], m)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.bool)])
    def grads(mask):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(length_bucketed(block, [q], [s], mask, buckets=3, min_rows=2)["v"]))
        return tape.gradient(loss, [q, s])

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(block([q], [s], m)["v"]))
    for g, w in zip(grads(m), tape.gradient(loss, [q, s])):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(w).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_unique_rows_finds_rows_equal_in_every_tensor():
    ids = np.array([[1, 2], [1, 2], [1, 3], [1, 2], [1, 3], [4, 4]], np.int64)
    flags = np.array([True, True, True, False, True, True])
    vals = np.array([0.5, 0.5, 0.5, 0.5, 0.5, -0.0], np.float32)
    first, index = unique_rows([ids, flags, vals])
    # rows 0 and 1 are equal; row 3 differs from them by its flag; rows 2 and 4 are equal
    np.testing.assert_array_equal(first.numpy(), [0, 2, 3, 5])
    np.testing.assert_array_equal(index.numpy(), [0, 0, 1, 2, 1, 3])
    # gathering through (first, index) gives back every row of every tensor
    for t in (ids, flags, vals):
        np.testing.assert_array_equal(tf.gather(tf.gather(t, first), index).numpy(), t)


def test_unique_rows_on_random_rows_matches_numpy():
    base = RNG.integers(0, 5, size=(30, 7))
    rows = base[RNG.integers(0, 30, size=500)]
    first, index = unique_rows([rows[:, :3], rows[:, 3:]])
    want = np.unique(rows, axis=0)
    assert first.shape[0] == want.shape[0]
    assert np.all(np.diff(first.numpy()) > 0)  # first occurrences, ascending
    np.testing.assert_array_equal(rows[first.numpy()][index.numpy()], rows)
    with pytest.raises(ValueError, match="cannot compare rows of a string tensor"):
        unique_rows([tf.constant(["a", "b"])])


def test_trigger_related_mask_hand_computed():
    hist = np.array([[3, 5, 3, 0], [7, 7, 2, 7], [4, 4, 4, 4]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]], bool)
    trigger = np.array([3, 7, 4])
    got = trigger_related_mask(hist, trigger, mask).numpy()
    np.testing.assert_array_equal(got, [[1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    # a [B, 1] trigger key, 0/1 mask and the rows without a trigger relate to nothing
    got = trigger_related_mask(hist, trigger[:, None], mask.astype(np.int64), has_trigger=[1, 0, 1]).numpy()
    np.testing.assert_array_equal(got, [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    assert got.dtype == bool
