"""ASGA: GAP-Net's gated multi-head target attention with a choice of normaliser
(docs/models.md#asga)."""
from __future__ import annotations

import math
import numbers

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import check_positive_int, sequence_mask
from tirec.models.layers.normalizers import attention_weights, check_norm


@keras.utils.register_keras_serializable(package="tirec")
class ASGA(keras.layers.Layer):
    """Adaptive Sparse Gated Attention, the attention half of GAP-Net's ASGA (GAP-Net
    (reconstructed), docs/models.md#asga); the PAFS half sifts the query and keys before.

    Per head ``h`` (``d_h = units / heads``)::

        A_h = norm(q W_h^Q (K W_h^K)^T / sqrt(d_h), mask)        norm: softmax | entmax15 | sparsemax | relu
        o_h = A_h K W_h^V
        g_h = σ(q W_h^G + b_h^G)                                 QAOG, with use_gate
        r   = [o_1 ⊙ g_1 ‖ ... ‖ o_H ⊙ g_H] W^O

    ``b^G`` starts at ``gate_bias`` (1.0: σ ≈ 0.73), so the gate starts open and can learn to
    close, letting a view contribute nothing (no attention sink). Padded keys get zero weight;
    a row with no real key outputs exact zeros. Weights are float32 (``attention_weights``).

    Example:
      >>> att = ASGA(units=8, heads=2, output_dim=4, norm="sparsemax")
      >>> att(tf.ones([2, 6]), tf.ones([2, 5, 6]), tf.sequence_mask([2, 0], 5)).shape
      TensorShape([2, 4])

    Args:
      units: total attention width; default 128.
      heads: number of heads; must divide ``units``. Default 4.
      output_dim: width of ``W^O``; default ``units``.
      norm: ``softmax`` (default), ``entmax15``, ``sparsemax`` or ``relu``.
      use_gate: the query-guided output gate (QAOG).
      gate_bias: initial value of ``b^G``.
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      query: ``[B, dq]``. keys: ``[B, L, dk]`` (keys and values). mask: ``[B, L]`` or None.
      return_scores: also return the weights ``[B, heads, L]``.

    Input shape:
      ``query`` ``[B, dq]``, ``keys`` ``[B, L, dk]``, ``mask`` ``[B, L]``.

    Output shape:
      ``[B, output_dim]``; with ``return_scores=True`` also ``[B, heads, L]``.
    """

    def __init__(self, units: int = 128, heads: int = 4, output_dim: int | None = None,
                 norm: str = "softmax", use_gate: bool = True, gate_bias: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("ASGA", "units", units)
        self.heads = check_positive_int("ASGA", "heads", heads)
        if self.units % self.heads:
            raise ValueError(f"ASGA: `heads` must divide units={self.units}. Received: heads={heads!r}")
        self.output_dim = self.units if output_dim is None else check_positive_int("ASGA", "output_dim", output_dim)
        self.norm = check_norm("ASGA", norm)
        if not isinstance(use_gate, bool):
            raise ValueError(f"ASGA: `use_gate` must be a bool. Received: use_gate={use_gate!r}")
        if isinstance(gate_bias, bool) or not isinstance(gate_bias, numbers.Real):
            raise ValueError(f"ASGA: `gate_bias` must be a number. Received: gate_bias={gate_bias!r}")
        self.use_gate, self.gate_bias = use_gate, float(gate_bias)
        self.query_dense = keras.layers.Dense(self.units, name="query")
        self.key_dense = keras.layers.Dense(self.units, name="key")
        self.value_dense = keras.layers.Dense(self.units, name="value")
        self.gate_dense = (keras.layers.Dense(self.units, name="gate",
                                              bias_initializer=keras.initializers.Constant(self.gate_bias))
                           if use_gate else None)
        self.output_dense = keras.layers.Dense(self.output_dim, name="output")

    def call(self, query, keys, mask=None, return_scores=False):
        query, keys = tf.convert_to_tensor(query), tf.convert_to_tensor(keys)
        mask = sequence_mask(mask, keys)
        weights, pooled, total = self.pool(self.fold_query(query, keys.shape[-1]), keys, mask)
        output = self.project(pooled, total, query, tf.reduce_any(mask, axis=1))
        return (output, weights) if return_scores else output

    # call() in three steps, as MultiHeadTargetAttention's: the per-row work (fold_query,
    # project) once on the whole batch, the per-position work (pool) per group of rows. The
    # query is folded into the key projection, and the raw keys are pooled before the value
    # projection: sum_l w_l (K_l W^V + b^V) = (sum_l w_l K_l) W^V + (sum_l w_l) b^V (the weights
    # of relu need not sum to one).

    def _build_projections(self, key_dim: int) -> None:
        for dense in (self.key_dense, self.value_dense):
            if not dense.built:
                dense(tf.zeros([0, key_dim], self.compute_dtype))

    def fold_query(self, query, key_dim: int):
        """Per-row part of the scores: ``(W_h^K q_h [B, H, key_dim], q_h.b_h^K [B, H])``."""
        dtype, heads, dh = self.compute_dtype, self.heads, self.units // self.heads
        self._build_projections(key_dim)
        q = tf.reshape(self.query_dense(tf.cast(query, dtype)), [-1, heads, dh])
        q *= tf.cast(1.0 / math.sqrt(dh), q.dtype)
        w_k = tf.reshape(tf.cast(self.key_dense.kernel, dtype), [key_dim, heads, dh])
        b_k = tf.reshape(tf.cast(self.key_dense.bias, dtype), [heads, dh])
        return tf.einsum("bhe,dhe->bhd", q, w_k), tf.einsum("bhe,he->bh", q, b_k)

    def pool(self, folded, keys, mask):
        """Per-position part: the weights (float32 ``[B, H, L]``), the weighted sum of the raw
        keys ``[B, H, key_dim]`` and the weights' sum ``[B, H]``. ``mask``: bool ``[B, L]``."""
        q_keys, q_bias = folded
        keys = tf.cast(keys, self.compute_dtype)
        scores = tf.matmul(q_keys, keys, transpose_b=True) + q_bias[:, :, None]  # [B, H, L]
        weights = attention_weights(scores, mask[:, None, :], self.norm)
        pooled = tf.matmul(tf.cast(weights, keys.dtype), keys)
        return weights, pooled, tf.cast(tf.reduce_sum(weights, axis=-1), keys.dtype)

    def project(self, pooled, total, query, any_real):
        """The output from the pooled keys: value projection, QAOG gate (from ``query``),
        heads merged, ``W^O``; zeros where ``any_real`` (bool ``[B]``) is False."""
        dtype, heads, dh = self.compute_dtype, self.heads, self.units // self.heads
        key_dim = pooled.shape[-1]
        w_v = tf.reshape(tf.cast(self.value_dense.kernel, dtype), [key_dim, heads, dh])
        b_v = tf.reshape(tf.cast(self.value_dense.bias, dtype), [heads, dh])
        values = tf.einsum("bhd,dhe->bhe", tf.cast(pooled, dtype), w_v) + tf.cast(total, dtype)[:, :, None] * b_v
        if self.use_gate:
            values *= tf.reshape(tf.sigmoid(self.gate_dense(tf.cast(query, dtype))), [-1, heads, dh])
        output = self.output_dense(tf.reshape(values, [-1, self.units]))
        return tf.where(any_real[:, None], output, tf.zeros([], output.dtype))

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads,
                "output_dim": self.output_dim, "norm": self.norm, "use_gate": self.use_gate,
                "gate_bias": self.gate_bias}
