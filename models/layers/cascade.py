"""GAP-Net's query calibration (one GCQC step) and context-gated view fusion (CGDF).

See docs/models.md#gcqc and docs/models.md#cgdf.
"""
from __future__ import annotations

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import check_positive_int, check_units

FUSIONS = ("sigmoid", "softmax", "concat")


@keras.utils.register_keras_serializable(package="tirec")
class QueryCalibration(keras.layers.Layer):
    """One step of GAP-Net's Gated Cascading Query Calibration (GAP-Net (reconstructed),
    docs/models.md#gcqc)::

        c = σ(W_c [q ‖ r ‖ e_trigger] + b_c)          ∈ R^d
        q' = q + c ⊙ (W_r r)

    ``q`` is the query that read the previous (more recent) view, ``r`` what the view gave.

    Example:
      >>> step = QueryCalibration(units=6)
      >>> step(tf.ones([2, 6]), tf.ones([2, 4]), tf.ones([2, 6])).shape
      TensorShape([2, 6])

    Args:
      units: d, the query width.
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      query: ``[B, d]``. read: ``[B, dr]``. trigger: ``[B, dt]``.

    Output shape:
      ``[B, d]``.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("QueryCalibration", "units", units)
        self.calibration = keras.layers.Dense(self.units, name="calibration_gate")
        self.read_projection = keras.layers.Dense(self.units, use_bias=False, name="read_projection")

    def call(self, query, read, trigger):
        dtype = self.compute_dtype
        query, read, trigger = (tf.cast(t, dtype) for t in (query, read, trigger))
        gate = tf.sigmoid(self.calibration(tf.concat([query, read, trigger], axis=-1)))
        return query + gate * self.read_projection(read)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.utils.register_keras_serializable(package="tirec")
class ContextGatedFusion(keras.layers.Layer):
    """GAP-Net's Context-Gated Dynamic Fusion of the views' reads (GAP-Net (reconstructed),
    docs/models.md#cgdf).

    ``mode="sigmoid"``: ``f = Σ_k σ(MLP_k(c)) ⊙ r_k``, one independent vector gate per view, so
    every view can be suppressed at once; ``"softmax"``: ``f = Σ_k β_k r_k`` with
    ``β = softmax(MLP(c))`` over the views; ``"concat"``: ``f = [r_1 ‖ ... ‖ r_K]`` (no gate).
    The MLPs have ReLU hidden layers of widths ``hidden``.

    Example:
      >>> fuse = ContextGatedFusion(views=2, width=4, mode="softmax", hidden=(8,))
      >>> fuse(tf.ones([3, 5]), [tf.ones([3, 4]), tf.zeros([3, 4])]).shape
      TensorShape([3, 4])

    Args:
      views: number of views K.
      width: dr, the width of each read.
      mode: ``sigmoid`` (default), ``softmax`` or ``concat``.
      hidden: hidden widths of the gate MLPs (may be empty).
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      context: ``[B, dc]``. reads: a list of K ``[B, dr]`` tensors.

    Output shape:
      ``[B, dr]``, or ``[B, K * dr]`` with ``concat``.
    """

    def __init__(self, views: int, width: int, mode: str = "sigmoid", hidden=(64,), **kwargs):
        super().__init__(**kwargs)
        self.views = check_positive_int("ContextGatedFusion", "views", views)
        self.width = check_positive_int("ContextGatedFusion", "width", width)
        if mode not in FUSIONS:
            raise ValueError(f"ContextGatedFusion: `mode` must be one of {FUSIONS}. Received: mode={mode!r}")
        self.mode = mode
        self.hidden = check_units("ContextGatedFusion", "hidden", hidden, allow_empty=True)
        outs = {"sigmoid": [self.width] * self.views, "softmax": [self.views], "concat": []}[mode]
        self.gates = [self._mlp(out, i) for i, out in enumerate(outs)]

    def _mlp(self, out: int, i: int):
        layers = [keras.layers.Dense(u, activation="relu", name=f"gate_{i}_hidden_{j}")
                  for j, u in enumerate(self.hidden)]
        return layers + [keras.layers.Dense(out, name=f"gate_{i}")]

    def _run(self, mlp, x):
        for layer in mlp:
            x = layer(x)
        return x

    def call(self, context, reads):
        if len(reads) != self.views:
            raise ValueError(f"ContextGatedFusion: expected {self.views} reads, received {len(reads)}")
        reads = [tf.cast(r, self.compute_dtype) for r in reads]
        if self.mode == "concat":
            return tf.concat(reads, axis=-1)
        context = tf.cast(context, self.compute_dtype)
        if self.mode == "softmax":
            beta = tf.nn.softmax(tf.cast(self._run(self.gates[0], context), tf.float32), axis=-1)
            beta = tf.cast(beta, self.compute_dtype)
            return tf.add_n([beta[:, k:k + 1] * r for k, r in enumerate(reads)])
        return tf.add_n([tf.sigmoid(self._run(mlp, context)) * r for mlp, r in zip(self.gates, reads)])

    def get_config(self):
        return {**super().get_config(), "views": self.views, "width": self.width, "mode": self.mode,
                "hidden": list(self.hidden)}
