"""PAFS: GAP-Net's pre-attention feature sifting (docs/models.md#pafs)."""
from __future__ import annotations

import numbers

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import layer_norm


@keras.utils.register_keras_serializable(package="tirec")
class PAFS(keras.layers.Layer):
    """Pre-Attention Feature Sifting, a SwiGLU feed-forward block with a residual (GAP-Net
    (reconstructed), docs/models.md#pafs).

    ``PAFS(x) = x + LN((Swish(x W_g + b_g) ⊙ (x W_u + b_u)) W_d + b_d)`` with ``W_g, W_u`` of
    shape ``[d, d']``, ``d' = round(mult * d)`` and ``W_d`` of shape ``[d', d]``. Position-wise:
    each vector of the last axis is sifted on its own, so the block may run on any subset or
    re-arrangement of a sequence's positions. LayerNorm statistics are float32.

    Example:
      >>> pafs = PAFS(mult=2.0)
      >>> pafs(tf.ones([2, 5, 6])).shape
      TensorShape([2, 5, 6])

    Args:
      mult: ``d' / d``, the hidden width factor (> 0; the reconstruction suggests 4/3 to 4,
        default 2).
      epsilon: LayerNorm epsilon.
      **kwargs: base ``Layer`` arguments.

    Input shape:
      ``[..., d]``.

    Output shape:
      ``[..., d]``.
    """

    def __init__(self, mult: float = 2.0, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if isinstance(mult, bool) or not isinstance(mult, numbers.Real) or not mult > 0:
            raise ValueError(f"PAFS: `mult` must be a positive number. Received: mult={mult!r}")
        self.mult, self.epsilon = float(mult), float(epsilon)
        self.gate_dense = self.up_dense = self.down_dense = self.norm = None

    def build(self, input_shape):
        d = tf.TensorShape(input_shape)[-1]
        if d is None:
            raise ValueError(f"PAFS: the last dimension must be known. Received shape {input_shape}")
        hidden = max(1, int(round(self.mult * d)))
        policy = self.dtype_policy
        self.gate_dense = keras.layers.Dense(hidden, name="gate", dtype=policy)
        self.up_dense = keras.layers.Dense(hidden, name="up", dtype=policy)
        self.down_dense = keras.layers.Dense(d, name="down", dtype=policy)
        self.norm = keras.layers.LayerNormalization(epsilon=self.epsilon, name="layer_norm", dtype=policy)
        for dense, width in ((self.gate_dense, d), (self.up_dense, d), (self.down_dense, hidden)):
            dense.build(tf.TensorShape([None, width]))
        self.norm.build(tf.TensorShape([None, d]))
        super().build(input_shape)

    def call(self, inputs):
        x = tf.cast(tf.convert_to_tensor(inputs), self.compute_dtype)
        h = tf.nn.silu(self.gate_dense(x)) * self.up_dense(x)
        y = layer_norm(self.down_dense(h), self.norm.gamma, self.norm.beta, self.epsilon)
        return x + y

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "mult": self.mult, "epsilon": self.epsilon}
