"""InterestGru: a masked GRU over a behaviour sequence, optionally with an attentional update
gate (AUGRU), as DIEN's interest extractor and interest evolving layers use
(docs/models.md#dien)."""
from __future__ import annotations

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import check_positive_int, fresh_initializer, masked_softmax, sequence_mask


@keras.utils.register_keras_serializable(package="tirec")
class InterestGru(keras.layers.Layer):
    """A GRU run over the time axis of ``[B, T, d]`` inputs, position 0 first.

    Per step, with x the input and h the previous state (DIEN's GRU, one bias per gate)::

        u  = σ(x W_u + h U_u + b_u)
        r  = σ(x W_r + h U_r + b_r)
        h~ = tanh(x W_h + r ⊙ (h U_h) + b_h)
        h  = (1 - u) ⊙ h + u ⊙ h~

    With ``attentional=True`` (AUGRU) the update gate is scaled by the step's attention weight
    a: ``u~ = a · u`` replaces ``u``, so a step with a = 0 leaves the state unchanged. A masked
    (padded) step leaves the state unchanged too, whatever its input, so the state after the
    last real step is the final state; a row without a real step keeps the zero initial state.
    The input projections of every step are one matmul before the loop; the loop
    (``tf.scan``, a ``tf.while_loop``) does only ``h U``, so it traces once, exports and runs
    under ``tf.distribute``.

    Args:
      units: state width.
      attentional: AUGRU (needs ``attention`` in ``call``).
      kernel_initializer / recurrent_initializer: initializers of W and U.
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      inputs: ``[B, T, d]``.
      mask: ``[B, T]`` bool (or 0/1), True at real steps; None: every step is real.
      attention: ``[B, T]`` step weights (AUGRU only).

    Output shape:
      ``[B, T, units]``: the state after each step (at a padded step, the state carried over).
    """

    def __init__(self, units: int, attentional: bool = False, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("InterestGru", "units", units)
        if not isinstance(attentional, bool):
            raise ValueError(f"InterestGru: `attentional` must be a bool. Received: attentional={attentional!r}")
        self.attentional = attentional
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.kernel = self.add_weight("kernel", shape=[d, 3 * self.units],
                                      initializer=fresh_initializer(self.kernel_initializer))
        self.recurrent_kernel = self.add_weight("recurrent_kernel", shape=[self.units, 3 * self.units],
                                                initializer=fresh_initializer(self.recurrent_initializer))
        self.bias = self.add_weight("bias", shape=[3 * self.units], initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, mask=None, attention=None):
        x = tf.convert_to_tensor(inputs)
        if self.attentional and attention is None:
            raise ValueError("InterestGru: an attentional GRU (AUGRU) needs `attention` [B, T]")
        real = sequence_mask(mask, x)
        dtype = x.dtype
        kernel, recurrent = tf.cast(self.kernel, dtype), tf.cast(self.recurrent_kernel, dtype)
        projected = tf.einsum("btd,dk->btk", x, kernel) + tf.cast(self.bias, dtype)
        weights = (tf.cast(attention, dtype) if self.attentional
                   else tf.ones(tf.shape(x)[:2], dtype))
        elems = (tf.transpose(projected, [1, 0, 2]), tf.transpose(real), tf.transpose(weights))
        h0 = tf.zeros([tf.shape(x)[0], self.units], dtype)

        def step(h, elem):
            xp, is_real, a = elem
            xu, xr, xh = tf.split(xp, 3, axis=-1)
            hu, hr, hh = tf.split(tf.matmul(h, recurrent), 3, axis=-1)
            u = tf.sigmoid(xu + hu) * a[:, None]
            r = tf.sigmoid(xr + hr)
            candidate = tf.tanh(xh + r * hh)
            new = (1 - u) * h + u * candidate
            return tf.where(is_real[:, None], new, h)

        states = tf.scan(step, elems, initializer=h0)
        return tf.transpose(states, [1, 0, 2])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "attentional": self.attentional,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer)}


GATE_SCALES = ("softmax", "count")


@keras.utils.register_keras_serializable(package="tirec")
class InterestEvolving(keras.layers.Layer):
    """DIEN's interest evolving layer: target attention over the interest states, then AUGRU.

    ::

        a_k = softmax_k(h_k W q)      over the real steps k (0 at padded ones)
        h'  = AUGRU(h, g)             the state after the last step

    with the update-gate scale g = a (``gate_scale="softmax"``, the paper's) or
    g_k = min(1, n · a_k) for a row of n real steps (``"count"``): softmax weights average 1/n,
    so with the paper's scale the AUGRU state of a long history barely moves from 0 until the
    attention is sharp; with ``count`` uniform attention gives a plain GRU. With
    ``recurrent=False`` there is no AUGRU: the output is the attention pooling ``Σ_k a_k h_k``.

    Args:
      units: width of the interest states h (and of the AUGRU state).
      gate_scale: ``softmax`` or ``count``.
      recurrent: the AUGRU (default); False: attention pooling instead (an ablation).
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      query: ``[B, dq]`` (the target item).
      states: ``[B, T, units]`` interest states, oldest first.
      mask: ``[B, T]`` bool, True at real steps; the real steps must come before the padded
        ones (the final state is the one after the last step).
      return_attention: also return the weights a ``[B, T]`` (float32).

    Output shape:
      ``[B, units]`` h'_L (zeros for a row without a real step), and with
      ``return_attention`` the weights.
    """

    def __init__(self, units: int, gate_scale: str = "softmax", recurrent: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("InterestEvolving", "units", units)
        if gate_scale not in GATE_SCALES:
            raise ValueError(f"InterestEvolving: `gate_scale` must be one of {GATE_SCALES}. "
                             f"Received: gate_scale={gate_scale!r}")
        if not isinstance(recurrent, bool):
            raise ValueError(f"InterestEvolving: `recurrent` must be a bool. Received: recurrent={recurrent!r}")
        self.gate_scale, self.recurrent = gate_scale, recurrent
        self.query_proj = keras.layers.Dense(self.units, use_bias=False, name="bilinear")
        self.augru = InterestGru(self.units, attentional=True, name="augru") if recurrent else None

    def call(self, query, states, mask, return_attention=False):
        real = sequence_mask(mask, states)
        q = self.query_proj(query)
        scores = tf.einsum("bth,bh->bt", states, tf.cast(q, states.dtype))
        weights = masked_softmax(tf.cast(scores, tf.float32), real)
        if not self.recurrent:
            pooled = tf.reduce_sum(tf.cast(weights, states.dtype)[..., None] * states, axis=1)
            return (pooled, weights) if return_attention else pooled
        gate = weights
        if self.gate_scale == "count":
            count = tf.reduce_sum(tf.cast(real, tf.float32), axis=1, keepdims=True)
            gate = tf.minimum(weights * count, 1.0)
        evolved = self.augru(states, mask=real, attention=tf.cast(gate, states.dtype))[:, -1]
        return (evolved, weights) if return_attention else evolved

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "gate_scale": self.gate_scale,
                "recurrent": self.recurrent}
