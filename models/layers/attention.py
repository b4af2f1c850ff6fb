"""Attention blocks: the DIN unit, multi-head target and self attention.

See docs/models.md#building-blocks.

Every layer takes its mask as an explicit call argument: a ``[B, L]`` tensor, bool or 0/1
integers, True (non-zero) at real positions. ``None`` means every position is real. Padded
positions never change an output, and a sequence with no real position gives exact zeros.
"""
from __future__ import annotations

import math

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import (attention_bias, check_positive_int, check_units,
                                         layer_norm, masked_softmax, merge_heads, sequence_mask,
                                         softmax_with_bias, split_heads)
from tirec.models.layers.dice import activation_layer, apply_activation, check_activation
from tirec.models.layers.sequence import length_bucketed


def _check_bool(layer: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{layer}: `{name}` must be a bool. Received: {name}={value!r}")
    return value


def _check_rank(layer: str, name: str, x: tf.Tensor, rank: int) -> None:
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"{layer}: `{name}` must have rank {rank}. Received shape {x.shape}")


@keras.utils.register_keras_serializable(package="tirec")
class DinAttention(keras.layers.Layer):
    """DIN's local activation unit (Zhou et al., KDD 2018), docs/models.md#din-attention-unit.

    For each position ``k``: ``a_k = FFN([q, k_k, q - k_k, q * k_k])``, an MLP
    ``hidden_units -> 1`` with a linear last layer. The scores are **not** softmax-normalised
    (``weight_normalization=True`` switches to a masked softmax). Padded positions get
    ``a_k = 0``; the output is ``sum_k a_k * k_k``.

    With ``activation="dice"`` the Dice statistics are computed over the real positions only.

    Example:
      >>> att = DinAttention(hidden_units=(8, 4))
      >>> q, keys = tf.ones([2, 6]), tf.ones([2, 5, 6])
      >>> mask = tf.sequence_mask([3, 5], 5)
      >>> att(q, keys, mask).shape
      TensorShape([2, 6])

    Args:
      hidden_units: hidden layer widths of the scoring FFN (reference code: 80-40).
      activation: hidden activation: a Keras activation name (``"sigmoid"``, the reference
        code's choice), ``"dice"`` or ``"prelu"`` (the paper's).
      weight_normalization: softmax-normalise the scores over the real positions.
      length_buckets: ``0`` scores every position of the padded sequence; ``k >= 1`` runs the
        unit on the real positions only, compacted, in ``k`` groups of rows of similar length
        (``tirec.models.layers.sequence.length_bucketed``). Same outputs and gradients up to
        float rounding, less work when sequences are shorter than ``L``. Ignored with
        ``activation="dice"`` (its statistics would become per group) and with
        ``return_scores=True``.
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      query: ``[B, d]``.
      keys: ``[B, L, d]`` (same ``d`` as the query).
      mask: ``[B, L]`` bool or 0/1, or None.
      training: Python bool (Dice statistics).
      return_scores: also return the scores ``[B, L]``.

    Input shape:
      ``query`` ``[B, d]``, ``keys`` ``[B, L, d]``, ``mask`` ``[B, L]``.

    Output shape:
      ``[B, d]``; with ``return_scores=True`` the tuple ``([B, d], [B, L])``.
    """

    def __init__(self, hidden_units=(80, 40), activation: str = "sigmoid",
                 weight_normalization: bool = False, length_buckets: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_units("DinAttention", "hidden_units", hidden_units)
        if isinstance(length_buckets, bool) or not isinstance(length_buckets, int) or length_buckets < 0:
            raise ValueError(f"DinAttention: `length_buckets` must be an int >= 0. "
                             f"Received: length_buckets={length_buckets!r}")
        self.length_buckets = length_buckets
        self.activation = check_activation("DinAttention", "activation", activation)
        self.weight_normalization = _check_bool("DinAttention", "weight_normalization",
                                                weight_normalization)
        self.dense_layers = [keras.layers.Dense(u, name=f"dense_{i}")
                             for i, u in enumerate(self.hidden_units)]
        self.activation_layers = [activation_layer(self.activation, name=f"{self.activation}_{i}",
                                                   shared_axes=[1])
                                  for i in range(len(self.hidden_units))]
        self.score_layer = keras.layers.Dense(1, name="score")

    def call(self, query, keys, mask=None, training=None, return_scores=False):
        query, keys = tf.convert_to_tensor(query), tf.convert_to_tensor(keys)
        _check_rank("DinAttention", "query", query, 2)
        _check_rank("DinAttention", "keys", keys, 3)
        if query.shape[-1] is not None and keys.shape[-1] is not None and query.shape[-1] != keys.shape[-1]:
            raise ValueError(f"DinAttention: `query` and `keys` must have the same last dimension. "
                             f"Received query shape {query.shape} and keys shape {keys.shape}")
        keys = tf.cast(keys, self.compute_dtype)
        query = tf.cast(query, self.compute_dtype)
        mask = sequence_mask(mask, keys)
        if return_scores or not self.length_buckets or self.activation == "dice":
            return self._pool(query, keys, mask, training, return_scores)
        if not self.score_layer.built:  # build outside length_bucketed's tf.cond branches
            self._pool(query[:1], keys[:1], mask[:1], training)
        return length_bucketed(lambda rows, seqs, m: self._pool(rows[0], seqs[0], m, training),
                               [query], [keys], mask, buckets=self.length_buckets)

    def _pool(self, query, keys, mask, training, return_scores=False):
        """Scores and weighted sum over ``keys`` (compute dtype) with bool ``mask``."""
        x = self._first_layer(query, keys)
        x = apply_activation(self.activation_layers[0], x, training=training, mask=mask)
        for dense, act in zip(self.dense_layers[1:], self.activation_layers[1:]):
            x = apply_activation(act, dense(x), training=training, mask=mask)
        scores = tf.squeeze(self.score_layer(x), axis=-1)  # [B, L]
        if self.weight_normalization:
            scores = tf.cast(masked_softmax(tf.cast(scores, tf.float32), mask), scores.dtype)
        else:
            scores = tf.where(mask, scores, tf.zeros([], scores.dtype))
        output = tf.reduce_sum(scores[:, :, None] * keys, axis=1)
        if return_scores:
            return output, scores
        return output

    def _first_layer(self, query, keys):
        """``[q, k, q - k, q * k] W + b`` without forming the ``[B, L, 4d]`` input.

        With ``W = [W_1; W_2; W_3; W_4]`` this is ``q (W_1 + W_3) + b`` (once per sample)
        ``+ k (W_2 - W_3) + (q * k) W_4`` (per position): half the multiply-adds of the
        concatenated form and no ``[B, L, 4d]`` tensor or its gradient.
        """
        dense = self.dense_layers[0]
        d = keys.shape[-1]
        if not dense.built:  # builds the kernel [4d, units] the usual way (same variable names)
            dense(tf.zeros([0, 4 * d], keys.dtype))
        w_q, w_k, w_diff, w_prod = tf.split(tf.cast(dense.kernel, keys.dtype), 4, axis=0)
        per_sample = tf.matmul(query, w_q + w_diff)
        if dense.use_bias:
            per_sample = tf.nn.bias_add(per_sample, tf.cast(dense.bias, keys.dtype))
        flat = tf.reshape(keys, [-1, d])
        prod = tf.reshape(query[:, None, :] * keys, [-1, d])
        per_position = tf.matmul(flat, w_k - w_diff) + tf.matmul(prod, w_prod)
        out_shape = tf.concat([tf.shape(keys)[:2], [dense.units]], axis=0)
        return tf.reshape(per_position, out_shape) + per_sample[:, None, :]

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units),
                "activation": self.activation, "weight_normalization": self.weight_normalization,
                "length_buckets": self.length_buckets}


@keras.utils.register_keras_serializable(package="tirec")
class MultiHeadTargetAttention(keras.layers.Layer):
    """Multi-head target attention (MHTA, docs/models.md#multi-head-target-attention).

    ``head_h = softmax((q W_h^Q)(K W_h^K)^T / sqrt(d_h) + mask) (K W_h^V)`` and
    ``output = [head_1 ‖ ... ‖ head_H] W^O`` with ``d_h = units / heads``. Padded keys get zero
    weight; a row with no real key outputs zeros (no NaN).

    Example:
      >>> mhta = MultiHeadTargetAttention(units=8, heads=2, output_dim=4)
      >>> mhta(tf.ones([2, 3]), tf.ones([2, 5, 6]), tf.sequence_mask([2, 0], 5)).shape
      TensorShape([2, 4])

    Args:
      units: total attention width (``heads * d_h``); default 128.
      heads: number of heads; must divide ``units``. Default 4.
      output_dim: width of the output projection ``W^O``; default ``units``.
      use_bias: biases in the Q/K/V/O projections.
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      query: ``[B, dq]``.
      keys: ``[B, L, dk]`` (used as keys and values).
      mask: ``[B, L]`` bool or 0/1, or None.
      return_scores: also return the attention weights ``[B, heads, L]``.

    Input shape:
      ``query`` ``[B, dq]``, ``keys`` ``[B, L, dk]``, ``mask`` ``[B, L]``.

    Output shape:
      ``[B, output_dim]``; with ``return_scores=True`` also ``[B, heads, L]``.
    """

    def __init__(self, units: int = 128, heads: int = 4, output_dim: int | None = None,
                 use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("MultiHeadTargetAttention", "units", units)
        self.heads = check_positive_int("MultiHeadTargetAttention", "heads", heads)
        if self.units % self.heads:
            raise ValueError(f"MultiHeadTargetAttention: `heads` must divide units={self.units}. "
                             f"Received: heads={heads!r}")
        self.output_dim = (self.units if output_dim is None else
                           check_positive_int("MultiHeadTargetAttention", "output_dim", output_dim))
        self.use_bias = _check_bool("MultiHeadTargetAttention", "use_bias", use_bias)
        self.query_dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name="query")
        self.key_dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name="key")
        self.value_dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name="value")
        self.output_dense = keras.layers.Dense(self.output_dim, use_bias=self.use_bias, name="output")

    def _build_projection(self, dense, key_dim: int):
        # key/value projections are applied through their kernels (below), not called; a call
        # on an empty batch builds them the usual way (same variables and names).
        if not dense.built:
            dense(tf.zeros([0, key_dim], self.compute_dtype))

    def call(self, query, keys, mask=None, return_scores=False):
        query, keys = tf.convert_to_tensor(query), tf.convert_to_tensor(keys)
        _check_rank("MultiHeadTargetAttention", "query", query, 2)
        _check_rank("MultiHeadTargetAttention", "keys", keys, 3)
        mask = sequence_mask(mask, keys)
        folded = self.fold_query(query, keys.shape[-1])
        weights, pooled = self.pool(folded, keys, mask)
        output = self.project(pooled, tf.reduce_any(mask, axis=1))
        if return_scores:
            return output, tf.where(mask[:, None, :], weights, tf.zeros([], weights.dtype))
        return output

    # call() in three steps, so that a caller running the attention on groups of rows (e.g.
    # ``length_bucketed``) does the per-row work (fold_query, project) once on the whole batch
    # and only the per-position work (pool) per group. One query: it is folded into the key
    # projection, q_h (K W_h^K + b_h^K)^T = K (W_h^K q_h) + q_h.b_h^K, and the raw keys are
    # pooled before the value projection, sum_l w_l (K_l W_h^V + b_h^V) = (sum_l w_l K_l) W_h^V
    # + b_h^V (the weights of a row with a real key sum to 1). No [B, L, units] projection is
    # formed.

    def fold_query(self, query, key_dim: int):
        """Per-row part of the scores: ``(W_h^K q_h [B, H, key_dim], q_h.b_h^K [B, H] or None)``."""
        dtype = self.compute_dtype
        self._build_projection(self.key_dense, key_dim)
        self._build_projection(self.value_dense, key_dim)
        heads, dh = self.heads, self.units // self.heads
        q = tf.reshape(self.query_dense(tf.cast(query, dtype)), [-1, heads, dh])
        q *= tf.cast(1.0 / math.sqrt(dh), q.dtype)
        w_k = tf.reshape(tf.cast(self.key_dense.kernel, dtype), [key_dim, heads, dh])
        q_keys = tf.einsum("bhe,dhe->bhd", q, w_k)
        q_bias = None
        if self.use_bias:
            q_bias = tf.einsum("bhe,he->bh", q, tf.reshape(tf.cast(self.key_dense.bias, dtype), [heads, dh]))
        return q_keys, q_bias

    def pool(self, folded, keys, mask):
        """Per-position part: softmax weights (float32 ``[B, H, L]``) and the weighted sum of the
        raw keys ``[B, H, key_dim]``. ``mask`` is a bool ``[B, L]``."""
        q_keys, q_bias = folded
        keys = tf.cast(keys, self.compute_dtype)
        scores = tf.matmul(q_keys, keys, transpose_b=True)  # [B, H, L]
        if q_bias is not None:
            scores += q_bias[:, :, None]
        weights = softmax_with_bias(scores, attention_bias(mask)[:, None, :])  # float32
        return weights, tf.matmul(tf.cast(weights, keys.dtype), keys)

    def project(self, pooled, any_real):
        """Output from the pooled keys: value projection, heads merged, ``W^O``; zeros where
        ``any_real`` (bool ``[B]``: the row has a real key) is False."""
        dtype = self.compute_dtype
        heads, dh = self.heads, self.units // self.heads
        key_dim = pooled.shape[-1]
        w_v = tf.reshape(tf.cast(self.value_dense.kernel, dtype), [key_dim, heads, dh])
        values = tf.einsum("bhd,dhe->bhe", tf.cast(pooled, dtype), w_v)
        if self.use_bias:
            values += tf.reshape(tf.cast(self.value_dense.bias, dtype), [heads, dh])
        output = self.output_dense(tf.reshape(values, [-1, self.units]))
        return tf.where(any_real[:, None], output, tf.zeros([], output.dtype))

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads,
                "output_dim": self.output_dim, "use_bias": self.use_bias}


@keras.utils.register_keras_serializable(package="tirec")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Transformer multi-head self attention with a key mask (MHSA).

    See docs/models.md#multi-head-self-attention.

    ``Y = softmax(Q K^T / sqrt(d_h) + key_mask) V`` per head, heads concatenated and projected by
    ``W^O`` to ``units``. With ``residual`` the input is added (first projected to ``units`` by a
    bias-free Dense when its width differs), then ``LayerNorm`` when ``layer_norm``. Outputs at
    padded positions are zeros, and so is a sequence with no real position.

    Example:
      >>> mhsa = MultiHeadSelfAttention(units=8, heads=2)
      >>> mhsa(tf.ones([2, 5, 6]), tf.sequence_mask([3, 5], 5)).shape
      TensorShape([2, 5, 8])

    Args:
      units: attention and output width; default 128.
      heads: number of heads; must divide ``units``. Default 4.
      residual: add the (projected) input to the attention output.
      layer_norm: apply LayerNorm (epsilon ``1e-6``) after the residual sum.
      use_bias: biases in the Q/K/V/O projections.
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      inputs: ``[B, L, d]``.
      mask: ``[B, L]`` bool or 0/1 (real positions), or None.
      return_scores: also return the attention weights ``[B, heads, L, L]``.

    Input shape:
      ``inputs`` ``[B, L, d]``, ``mask`` ``[B, L]``.

    Output shape:
      ``[B, L, units]``; with ``return_scores=True`` also ``[B, heads, L, L]``.
    """

    def __init__(self, units: int = 128, heads: int = 4, residual: bool = True,
                 layer_norm: bool = True, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("MultiHeadSelfAttention", "units", units)
        self.heads = check_positive_int("MultiHeadSelfAttention", "heads", heads)
        if self.units % self.heads:
            raise ValueError(f"MultiHeadSelfAttention: `heads` must divide units={self.units}. "
                             f"Received: heads={heads!r}")
        self.residual = _check_bool("MultiHeadSelfAttention", "residual", residual)
        self.layer_norm = _check_bool("MultiHeadSelfAttention", "layer_norm", layer_norm)
        self.use_bias = _check_bool("MultiHeadSelfAttention", "use_bias", use_bias)
        self.query_dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name="query")
        self.key_dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name="key")
        self.value_dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name="value")
        self.output_dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name="output")
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="layer_norm") if self.layer_norm else None
        self.residual_dense = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 3 or input_shape[-1] is None:
            raise ValueError(f"MultiHeadSelfAttention: inputs must be [B, L, d] with a known d. "
                             f"Received shape {input_shape}")
        if self.residual and input_shape[-1] != self.units:
            # Built lazily: take this layer's policy, not the global one at build time.
            self.residual_dense = keras.layers.Dense(self.units, use_bias=False, name="residual_projection",
                                                     dtype=self.dtype_policy)
        super().build(input_shape)

    def call(self, inputs, mask=None, return_scores=False):
        x = tf.cast(tf.convert_to_tensor(inputs), self.compute_dtype)
        mask = sequence_mask(mask, x)
        dh = self.units // self.heads
        # [B, H, L, dh]; the 1/sqrt(d_h) scale goes on the queries ([B, L, units]), not on the
        # [B, H, L, L] scores.
        q = self.query_dense(x)
        q = tf.transpose(split_heads(q * tf.cast(1.0 / math.sqrt(dh), q.dtype), self.heads), [0, 2, 1, 3])
        k = tf.transpose(split_heads(self.key_dense(x), self.heads), [0, 2, 1, 3])
        v = tf.transpose(split_heads(self.value_dense(x), self.heads), [0, 2, 1, 3])
        scores = tf.matmul(q, k, transpose_b=True)  # [B, H, Lq, Lk]
        # Additive key mask, softmax in float32; no second masking pass: padded keys get exact
        # zeros, and the outputs of padded queries (all of a row without a real key) are zeroed
        # at the end.
        weights = softmax_with_bias(scores, attention_bias(mask)[:, None, None, :])
        heads = tf.transpose(tf.matmul(tf.cast(weights, v.dtype), v), [0, 2, 1, 3])  # [B, Lq, H, dh]
        output = self.output_dense(merge_heads(heads))
        if self.residual:
            output += self.residual_dense(x) if self.residual_dense is not None else x
        if self.norm is not None:
            if not self.norm.built:  # creates gamma/beta the usual way (same variable names)
                self.norm(tf.zeros([1, 1, self.units], output.dtype))
            output = layer_norm(output, self.norm.gamma, self.norm.beta, self.norm.epsilon)
        output = tf.where(mask[:, :, None], output, tf.zeros([], output.dtype))
        if return_scores:
            return output, tf.where(mask[:, None, None, :], weights, tf.zeros([], weights.dtype))
        return output

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads,
                "residual": self.residual, "layer_norm": self.layer_norm, "use_bias": self.use_bias}
