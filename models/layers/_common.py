"""Helpers shared by the layers: argument checks, masks, the training flag and head reshapes.

Private to :mod:`tirec.models.layers`; models import the layers, not these helpers.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import tensorflow as tf

from tirec.compat import keras


def check_positive_int(layer: str, name: str, value: Any) -> int:
    """Returns ``value`` as an int, or raises ValueError naming ``name`` when it is not >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{layer}: `{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_units(layer: str, name: str, value: Any, allow_empty: bool = False) -> tuple[int, ...]:
    """Normalises an int or a sequence of ints to a tuple of positive ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{layer}: `{name}` must be an int or a sequence of positive ints. "
                         f"Received: {name}={value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{layer}: `{name}` must not be empty. Received: {name}={value!r}")
    for unit in value:
        if isinstance(unit, bool) or not isinstance(unit, numbers.Integral) or unit < 1:
            raise ValueError(f"{layer}: every entry of `{name}` must be a positive integer. "
                             f"Received: {name}={value!r}")
    return tuple(int(u) for u in value)


def static_training(training) -> bool | None:
    """The Python value of a ``training`` flag, or None when it is only known at run time."""
    if training is None:
        return False
    if isinstance(training, (bool, numbers.Integral)):
        return bool(training)
    value = tf.get_static_value(training)
    return None if value is None else bool(value)


def cond_training(training, true_fn: Callable[[], Any], false_fn: Callable[[], Any]):
    """Runs ``true_fn`` or ``false_fn`` depending on a Python or tensor ``training`` flag."""
    value = static_training(training)
    if value is None:
        return tf.cond(tf.cast(training, tf.bool), true_fn, false_fn)
    return true_fn() if value else false_fn()


def sequence_mask(mask, keys: tf.Tensor) -> tf.Tensor:
    """A bool [B, L] mask for ``keys`` [B, L, ...]; None means every position is real."""
    if mask is None:
        return tf.ones(tf.shape(keys)[:2], dtype=tf.bool)
    mask = tf.convert_to_tensor(mask)
    if mask.dtype != tf.bool:
        mask = tf.not_equal(mask, tf.zeros([], dtype=mask.dtype))
    return mask


# Additive logit of a masked-out attention key. exp(MASK_LOGIT - max) underflows to exactly 0
# next to any real logit, so a row with a real key gets exact zero weights at its padded keys;
# it is finite, so a row with no real key stays NaN-free (callers zero those rows' outputs).
MASK_LOGIT = -1e9


def attention_bias(mask: tf.Tensor) -> tf.Tensor:
    """float32 ``0`` where ``mask`` (bool) is True and ``MASK_LOGIT`` elsewhere (additive mask)."""
    return tf.where(mask, tf.zeros([], tf.float32), tf.constant(MASK_LOGIT, tf.float32))


def softmax_with_bias(scores: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """``softmax(scores + bias)`` over the last axis, computed in float32 (``scores`` may be
    bfloat16 under mixed precision); returns float32. ``bias`` broadcasts against ``scores``."""
    return tf.nn.softmax(tf.cast(scores, tf.float32) + bias, axis=-1)


def low_precision(dtype) -> bool:
    """Whether ``dtype`` is float16/bfloat16 (statistics are then computed in float32)."""
    return tf.as_dtype(dtype) in (tf.float16, tf.bfloat16)


def layer_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float) -> tf.Tensor:
    """LayerNorm over the last axis, ``(x - mean) / sqrt(var + epsilon) * gamma + beta``.

    Equal to ``keras.layers.LayerNormalization`` (same variables) with a hand-written gradient,
    ``dx = r (g' - mean(g') - x_hat mean(g' x_hat))`` with ``g' = g gamma``: a few passes over
    ``x`` instead of the dozen of the autodiff graph. Computed in float32 (low-precision inputs
    are cast, the output is cast back), as Keras does under mixed precision.
    """
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    gamma, beta = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)

    @tf.custom_gradient
    def norm(x, gamma, beta):
        centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        r = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True) + epsilon)
        x_hat = centred * r

        def grad(g):
            axes = tf.range(tf.rank(g) - 1)
            g_scaled = g * gamma
            dx = r * (g_scaled - tf.reduce_mean(g_scaled, axis=-1, keepdims=True)
                      - x_hat * tf.reduce_mean(g_scaled * x_hat, axis=-1, keepdims=True))
            return dx, tf.reduce_sum(g * x_hat, axis=axes), tf.reduce_sum(g, axis=axes)

        return x_hat * gamma + beta, grad

    return tf.cast(norm(x, gamma, beta), dtype)


def masked_softmax(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis where ``mask`` (broadcastable bool) is True, 0 elsewhere.

    A row with no True entry gives all zeros (finite), not NaN.
    """
    neg = tf.constant(scores.dtype.min, dtype=scores.dtype)
    weights = tf.nn.softmax(tf.where(mask, scores, neg), axis=-1)
    return tf.where(mask, weights, tf.zeros([], dtype=weights.dtype))


def split_heads(x: tf.Tensor, heads: int) -> tf.Tensor:
    """[..., heads * dh] -> [..., heads, dh]."""
    dh = x.shape[-1] // heads
    return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [heads, dh]], axis=0))


def merge_heads(x: tf.Tensor) -> tf.Tensor:
    """[..., heads, dh] -> [..., heads * dh]."""
    width = x.shape[-2] * x.shape[-1]
    return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [width]], axis=0))


def fresh_initializer(initializer):
    """A new instance of ``initializer`` (a Keras initializer object, name or config).

    Keras warns that one unseeded initializer instance called several times returns identical
    values each time; every variable gets its own instance so shards and layers differ.
    """
    return keras.initializers.get(keras.initializers.serialize(keras.initializers.get(initializer)))
