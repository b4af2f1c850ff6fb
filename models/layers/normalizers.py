"""Masked attention normalisers: softmax, sparsemax, entmax-1.5 and ReLU (docs/models.md#asga).

Each maps scores ``[..., L]`` and a bool mask (broadcastable, True at real positions) to float32
weights ``[..., L]``: exact zeros at padded positions, and all zeros (finite, with finite
gradients) in a row without a real position. Scores of any float dtype are normalised in
float32.

* ``softmax``: the usual sum-to-one weights.
* ``sparsemax`` (Martins & Astudillo 2016): the Euclidean projection of the scores onto the
  simplex, ``p = [z - tau]_+`` with ``sum(p) = 1``; low scores get exact zeros.
* ``entmax15`` (Peters et al. 2019, alpha = 1.5): ``p = [z/2 - tau]_+^2`` with ``sum(p) = 1``;
  sparse like sparsemax, smoother.
* ``relu`` (as in QIN): ``p = max(z, 0)``, not normalised, so a row can put no weight anywhere.

The two sparse maps find their support by sorting (no gradient through the sort); on that
support the threshold ``tau`` has a closed form in the scores, differentiated by autodiff,
which gives the exact Jacobian of the map.
"""
from __future__ import annotations

import tensorflow as tf

from tirec.models.layers._common import attention_bias, softmax_with_bias

NORMALIZERS = ("softmax", "entmax15", "sparsemax", "relu")


def check_norm(layer: str, norm) -> str:
    """Returns ``norm`` if it is one of :data:`NORMALIZERS`, else raises a ValueError."""
    if norm not in NORMALIZERS:
        raise ValueError(f"{layer}: `norm` must be one of {NORMALIZERS}. Received: norm={norm!r}")
    return norm


def attention_weights(scores, mask, norm: str = "softmax") -> tf.Tensor:
    """float32 attention weights of ``scores`` over the last axis with ``norm``."""
    check_norm("attention_weights", norm)
    scores = tf.cast(scores, tf.float32)
    mask = tf.broadcast_to(tf.cast(mask, tf.bool), tf.shape(scores))
    if norm == "softmax":
        weights = softmax_with_bias(scores, attention_bias(mask))
    elif norm == "relu":
        weights = tf.nn.relu(scores)
    else:
        weights = (sparsemax if norm == "sparsemax" else entmax15)(scores, mask)
    return tf.where(mask, weights, tf.zeros([], tf.float32))


def _sorted_support(z, mask, threshold_ok):
    """The support of a sparse map: bool like ``z``, True at the real entries above the
    threshold of the largest admissible support size ``k`` (``threshold_ok(sorted, k)`` says
    whether size ``k`` is admissible). ``z`` is finite at padded entries, below every real one."""
    z = tf.stop_gradient(z)
    real = tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1, keepdims=True)
    z_sorted = tf.sort(z, axis=-1, direction="DESCENDING")
    k = tf.cast(tf.range(1, tf.shape(z)[-1] + 1), z.dtype)
    ok = threshold_ok(z_sorted, k) & (tf.range(1, tf.shape(z)[-1] + 1) <= real)
    size = tf.reduce_max(tf.where(ok, tf.cast(k, tf.int32), 0), axis=-1, keepdims=True)
    kth = tf.gather(z_sorted, tf.maximum(size - 1, 0), batch_dims=len(z.shape) - 1)
    return mask & (z >= kth)


def _shifted(scores, mask):
    """Scores minus the row's largest real score; padded entries one below the smallest real
    score (finite; a row without a real entry is all zeros)."""
    big = tf.constant(3e38, scores.dtype)
    top = tf.reduce_max(tf.where(mask, scores, -big), axis=-1, keepdims=True)
    low = tf.reduce_min(tf.where(mask, scores, big), axis=-1, keepdims=True)
    any_real = tf.reduce_any(mask, axis=-1, keepdims=True)
    top, low = tf.where(any_real, top, 0.0), tf.where(any_real, low, 0.0)
    return tf.where(mask, scores - top, low - top - 1.0)


def sparsemax(scores, mask) -> tf.Tensor:
    """Sparsemax over the last axis on the real entries (float32 in and out)."""
    z = _shifted(scores, mask)

    def ok(z_sorted, k):
        return 1.0 + k * z_sorted > tf.cumsum(z_sorted, axis=-1)

    support = _sorted_support(z, mask, ok)
    size = tf.maximum(tf.reduce_sum(tf.cast(support, z.dtype), axis=-1, keepdims=True), 1.0)
    tau = (tf.reduce_sum(tf.where(support, z, 0.0), axis=-1, keepdims=True) - 1.0) / size
    return tf.where(mask, tf.nn.relu(z - tau), 0.0)


def entmax15(scores, mask) -> tf.Tensor:
    """Entmax with alpha = 1.5 over the last axis on the real entries (float32 in and out)."""
    z = _shifted(scores, mask) / 2.0

    def ok(z_sorted, k):
        mean = tf.cumsum(z_sorted, axis=-1) / k
        mean_sq = tf.cumsum(tf.square(z_sorted), axis=-1) / k
        delta = (1.0 - k * (mean_sq - tf.square(mean))) / k
        return (delta >= 0.0) & (mean - tf.sqrt(tf.nn.relu(delta)) <= z_sorted)

    support = _sorted_support(z, mask, ok)
    size = tf.maximum(tf.reduce_sum(tf.cast(support, z.dtype), axis=-1, keepdims=True), 1.0)
    on = tf.where(support, z, 0.0)
    mean = tf.reduce_sum(on, axis=-1, keepdims=True) / size
    mean_sq = tf.reduce_sum(tf.square(on), axis=-1, keepdims=True) / size
    delta = (1.0 - size * (mean_sq - tf.square(mean))) / size
    tau = mean - tf.sqrt(tf.maximum(delta, 1e-12))
    return tf.where(mask, tf.square(tf.nn.relu(z - tau)), 0.0)
