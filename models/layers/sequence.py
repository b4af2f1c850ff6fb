"""Exact speed-ups for masked sequence blocks: compaction and length bucketing.

A masked attention block (MHSA, MHTA) gives outputs at its real positions that depend only on
the real positions, and has no positional encoding, so it can run on any re-arrangement of a
row that keeps the real positions in their order and drops padding. Two re-arrangements:

* :func:`compact_positions` moves every row's real positions to the front (stable, so in their
  original order, as the explicit-intent subsequence ``S'`` keeps them:
  docs/models.md#explicit-intent-subsequence) and cuts the width to the longest row.
  Optionally it keeps only the first ``max_len`` real positions (the most recent ones:
  sequences are most recent first).
* :func:`length_bucketed` sorts the rows by their number of real positions, splits them into
  ``buckets`` groups of equal size and runs a block on each group cut to that group's longest
  row, then puts the outputs back in the original row order. Padding work (the ``[B, H, L, L]``
  self-attention scores above all) then scales with the real lengths instead of ``L``.

Both are exact (equal outputs up to float rounding) for blocks with no statistics across rows
or padded positions; a batch-statistics layer (Dice, BatchNorm) inside the block would see
per-group statistics instead.

Two sequence masks and codes the baselines share: :func:`trigger_related_mask` (the behaviours
in the trigger's category, DEI2N's trigger-related sub-sequence) and :func:`time_gap_buckets`
(log-scale buckets of the time between a reference time and each behaviour, DEI2N's and TIN's
time codes).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from tirec.models.layers._common import sequence_mask


def real_lengths(mask: tf.Tensor, max_len: int | None = None) -> tf.Tensor:
    """Real positions per row of a bool ``[B, L]`` mask (int32 ``[B]``), at most ``max_len``."""
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    if max_len is not None:
        lengths = tf.minimum(lengths, max_len)
    return lengths


def keep_first(mask: tf.Tensor, max_len: int | None) -> tf.Tensor:
    """``mask`` (bool ``[B, L]``) with only the first ``max_len`` real positions of each row kept."""
    if max_len is None:
        return mask
    rank = tf.cumsum(tf.cast(mask, tf.int32), axis=1)
    return mask & (rank <= max_len)


def compact_positions(mask, max_len: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Positions that bring each row's real positions to the front, in their original order.

    Args:
      mask: ``[B, L]`` bool or 0/1, True at real positions.
      max_len: keep at most the first ``max_len`` real positions of a row (None: all).

    Returns:
      ``(positions, lengths)``: int32 ``[B, W]`` positions into ``L`` (the row's real positions
      first, then padded ones) with ``W = max(1, longest row)``, and int32 ``[B]`` lengths
      (real positions kept per row). ``tf.gather(x, positions, batch_dims=1)`` compacts ``x``;
      ``tf.sequence_mask(lengths, W)`` is the compacted mask.
    """
    mask = tf.convert_to_tensor(mask)
    if mask.dtype != tf.bool:
        mask = tf.not_equal(mask, tf.zeros([], mask.dtype))
    lengths = real_lengths(mask, max_len)
    order = tf.argsort(tf.cast(tf.logical_not(mask), tf.int32), axis=1, stable=True)
    width = tf.maximum(tf.reduce_max(tf.concat([lengths, [0]], axis=0)), 1)
    return order[:, :width], lengths


def length_bucketed(fn: Callable, rows: Sequence[tf.Tensor], sequences: Sequence[tf.Tensor], mask,
                    buckets: int = 8, max_len: int | None = None, min_rows: int = 32):
    """Runs a masked sequence block on groups of rows of similar length; returns its outputs.

    ``fn(rows, sequences, mask)`` takes lists of per-row tensors ``[n, ...]`` and of sequences
    ``[n, W, ...]`` with their bool mask ``[n, W]``, and returns (a nest of) per-row tensors
    ``[n, ...]``. It must treat rows independently and ignore padded positions (masked
    attention does; a batch-statistics layer does not).

    Args:
      fn: the block. With ``buckets > 1`` and a batch size unknown when tracing, ``fn`` is
        traced in both branches of a ``tf.cond``: its layers must already be built (call it
        once eagerly, or on a small slice, before).
      rows: per-row inputs ``[B, ...]`` (e.g. the query of a target attention).
      sequences: sequence inputs ``[B, L, ...]`` sharing ``mask``.
      mask: ``[B, L]`` bool or 0/1, True at real positions (None: all real).
      buckets: ``0``: call ``fn`` once on the padded inputs (the reference path); ``1``: once on
        the inputs compacted to the batch's longest row; ``k > 1``: on ``k`` groups of rows
        sorted by length, each compacted to its longest row.
      max_len: keep only the first ``max_len`` real positions of each row (None: all).
      min_rows: with ``buckets > 1``, batches of fewer than ``buckets * min_rows`` rows take
        the ``buckets=1`` path (the per-group overhead outweighs the saving on small batches,
        e.g. when serving).

    Returns:
      ``fn``'s outputs for all ``B`` rows, in the original row order.
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 0:
        raise ValueError(f"length_bucketed: `buckets` must be an int >= 0. Received: buckets={buckets!r}")
    rows, sequences = list(rows), [tf.convert_to_tensor(s) for s in sequences]
    mask = sequence_mask(mask, sequences[0])
    if buckets == 0:
        return fn(rows, sequences, keep_first(mask, max_len))
    positions, lengths = compact_positions(mask, max_len)

    def compact():
        seqs = [tf.gather(s, positions, batch_dims=1) for s in sequences]
        return fn(rows, seqs, tf.sequence_mask(lengths, tf.shape(positions)[1]))

    def bucketed():
        batch, length = tf.shape(mask)[0], tf.shape(mask)[1]
        perm = tf.argsort(lengths, stable=True)
        sorted_lengths = tf.gather(lengths, perm)
        # One gather per group and sequence: rows flattened to [B * L, ...].
        flat = [tf.reshape(s, tf.concat([[-1], tf.shape(s)[2:]], axis=0)) for s in sequences]
        outputs = []
        for g in range(buckets):
            lo, hi = batch * g // buckets, batch * (g + 1) // buckets
            idx = perm[lo:hi]
            n = sorted_lengths[lo:hi]
            width = tf.maximum(tf.reduce_max(tf.concat([n, [0]], axis=0)), 1)
            pos = tf.gather(positions, idx)[:, :width]
            flat_pos = idx[:, None] * length + pos
            seqs = [tf.gather(f, flat_pos) for f in flat]
            outputs.append(fn([tf.gather(r, idx) for r in rows], seqs, tf.sequence_mask(n, width)))
        inverse = tf.math.invert_permutation(perm)
        return tf.nest.map_structure(lambda *parts: tf.gather(tf.concat(parts, axis=0), inverse), *outputs)

    if buckets == 1:
        return compact()
    threshold = buckets * max(int(min_rows), 1)
    static_batch = mask.shape[0]
    if static_batch is not None:
        return bucketed() if static_batch >= threshold else compact()
    return tf.cond(tf.shape(mask)[0] >= threshold, bucketed, compact)


def unique_rows(tensors: Sequence[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """The distinct rows of a batch, compared over several tensors at once.

    Several samples of a batch often share their request-level inputs (a request shows many
    candidates to one user, with one trigger and one history). A block that reads only those
    inputs can run once per distinct row and have its outputs gathered back:
    ``block(x) == tf.gather(block(tf.gather(x, first)), index)``, exactly.

    Args:
      tensors: ``[B, ...]`` tensors (integer, bool or float; floats are compared bit for bit).
        Two rows are equal when they are equal in every tensor.

    Returns:
      ``(first, index)``: int32 ``[U]`` position of each distinct row's first occurrence
      (ascending), and int32 ``[B]`` the distinct row of every row
      (``tf.gather(first, index)`` points at an equal row).
    """
    columns = []
    for t in tensors:
        t = tf.convert_to_tensor(t)
        if t.dtype == tf.bool:
            t = tf.cast(t, tf.int32)
        elif t.dtype.is_floating:
            t = tf.bitcast(tf.cast(t, tf.float32), tf.int32)
        elif not t.dtype.is_integer:
            raise ValueError(f"unique_rows: cannot compare rows of a {t.dtype.name} tensor")
        columns.append(tf.reshape(tf.cast(t, tf.int64), [tf.shape(t)[0], -1]))
    if not columns:
        raise ValueError("unique_rows: needs at least one tensor")
    distinct, index = tf.raw_ops.UniqueV2(x=tf.concat(columns, axis=1), axis=[0], out_idx=tf.int32)
    first = tf.math.unsorted_segment_min(tf.range(tf.shape(index)[0]), index, tf.shape(distinct)[0])
    return first, index


def group_slots(index: tf.Tensor, groups) -> tuple[tf.Tensor, tf.Tensor]:
    """Where each row goes in a ``[groups, C, ...]`` layout that holds the rows of each group
    side by side (C = the largest group).

    A block that pairs every row with its group's sequence (every candidate with its request's
    history, :func:`unique_rows`) can then read each sequence once per group, as
    ``[groups, C * ...]`` batched matmuls, instead of gathering a copy of it for every row.

    Args:
      index: int32 ``[B]``, the group of every row (in ``[0, groups)``).
      groups: the number of groups U.

    Returns:
      ``(slots, width)``: int32 ``[B, 2]`` (group, position within the group) of every row, in
      row order within a group, and C as an int32 scalar (0 for an empty batch).
    """
    index = tf.cast(index, tf.int32)
    order = tf.argsort(index, stable=True)
    sorted_index = tf.gather(index, order)
    counts = tf.math.bincount(index, minlength=groups, maxlength=groups, dtype=tf.int32)
    starts = tf.cumsum(counts, exclusive=True)
    position = tf.range(tf.shape(index)[0]) - tf.gather(starts, sorted_index)
    slots = tf.scatter_nd(order[:, None], tf.stack([sorted_index, position], axis=1),
                          tf.stack([tf.shape(index)[0], 2]))
    return slots, tf.reduce_max(tf.concat([counts, [0]], axis=0))


def to_groups(t: tf.Tensor, slots: tf.Tensor, groups, width) -> tf.Tensor:
    """``t`` ``[B, ...]`` laid out as ``[groups, width, ...]`` (zeros at empty slots)."""
    shape = tf.concat([tf.stack([tf.cast(groups, tf.int32), tf.cast(width, tf.int32)]), tf.shape(t)[1:]], axis=0)
    return tf.scatter_nd(slots, t, shape)


def from_groups(t: tf.Tensor, slots: tf.Tensor) -> tf.Tensor:
    """The rows ``[B, ...]`` back from a ``[groups, width, ...]`` layout (:func:`to_groups`)."""
    return tf.gather_nd(t, slots)


def trigger_related_mask(hist_keys, trigger_key, mask, has_trigger=None) -> tf.Tensor:
    """The behaviours related to the trigger: real positions whose key equals the trigger's.

    DIHN's hybrid interest module (and DEI2N's instant interest) reads the sub-sequence of
    behaviours in the trigger's category (docs/models.md#trigger-related-behaviours); the key is
    the category id (``hist_cate_id`` against ``trigger_cate_id``), or any other per-item key
    such as a similarity level. The sub-sequence keeps the history's order; apply it as a mask.

    Args:
      hist_keys: ``[B, L]`` integer keys of the behaviours.
      trigger_key: ``[B]`` (or ``[B, 1]``) integer key of the trigger.
      mask: ``[B, L]`` bool or 0/1, True at real positions.
      has_trigger: optional ``[B]`` (or ``[B, 1]``) 0/1 or bool; rows without a trigger relate
        to no behaviour (their padded trigger's key would match padding-like keys).

    Returns:
      bool ``[B, L]``: True where the position is real, the row has a trigger and the keys match.
    """
    hist_keys = tf.convert_to_tensor(hist_keys)
    trigger_key = tf.reshape(tf.cast(trigger_key, hist_keys.dtype), [-1, 1])
    related = tf.equal(hist_keys, trigger_key) & sequence_mask(mask, hist_keys[:, :, None])
    if has_trigger is not None:
        present = tf.reshape(tf.convert_to_tensor(has_trigger), [-1, 1])
        related &= tf.not_equal(present, tf.zeros([], present.dtype))
    return related


def time_gap_buckets(ts, ref, buckets: int, max_gap: float) -> tf.Tensor:
    """Log-scale buckets of the time gaps ``g = max(ref - ts, 0)`` (seconds)
    (docs/models.md#time-gap-buckets):

        bucket(g) = min(floor(buckets * log(1 + g) / log(1 + max_gap)), buckets - 1)

    Gaps of ``max_gap`` seconds and more share the last bucket; a behaviour timed after the
    reference (a client clock ahead) counts as a gap of 0.

    Args:
      ts: int ``[B, L]`` behaviour times (seconds; padded positions get some bucket: mask them).
      ref: int ``[B]`` or ``[B, 1]`` reference times (seconds).
      buckets: number of buckets, >= 1.
      max_gap: the gap (seconds, > 0) where the last bucket starts.

    Returns:
      int32 ``[B, L]`` in ``[0, buckets)``.
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"time_gap_buckets: `buckets` must be an int >= 1. Received: buckets={buckets!r}")
    if not max_gap > 0:
        raise ValueError(f"time_gap_buckets: `max_gap` must be > 0. Received: max_gap={max_gap!r}")
    ts = tf.cast(ts, tf.int64)
    gap = tf.maximum(tf.reshape(tf.cast(ref, tf.int64), [-1, 1]) - ts, 0)
    scaled = tf.math.log1p(tf.cast(gap, tf.float64)) * (buckets / math.log1p(float(max_gap)))
    return tf.cast(tf.minimum(tf.floor(scaled), buckets - 1), tf.int32)


def latest_time(ts, mask) -> tf.Tensor:
    """int64 ``[B]``: each row's most recent real behaviour time (0 for a row without one)."""
    ts = tf.cast(ts, tf.int64)
    mask = sequence_mask(mask, tf.expand_dims(ts, -1))
    return tf.reduce_max(tf.where(mask, ts, tf.zeros([], tf.int64)), axis=1)
