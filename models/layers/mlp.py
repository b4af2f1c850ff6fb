"""MLP: the prediction tower, Dense -> [BatchNorm] -> activation -> [Dropout].

See docs/models.md#tower.
"""
from __future__ import annotations

import numbers

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import check_units, fresh_initializer
from tirec.models.layers.dice import activation_layer, apply_activation, check_activation


@keras.utils.register_keras_serializable(package="tirec")
class MLP(keras.layers.Layer):
    """A feed-forward tower: per hidden layer ``Dense -> [BatchNorm] -> activation -> [Dropout]``.

    With ``output_logit=True`` a linear ``Dense(1)`` follows (the CTR logit, docs/models.md#tower:
    512-256-128 -> 1). Every hidden layer, the last included, is activated; ``output_logit=False``
    returns the last hidden layer.

    Example:
      >>> tower = MLP(units=(16, 8), activation="dice", output_logit=True)
      >>> tower(tf.ones([4, 5]), training=True).shape
      TensorShape([4, 1])

    Args:
      units: hidden widths (an int or a sequence; may be empty only with ``output_logit``).
      activation: a Keras activation name, ``"dice"`` or ``"prelu"``.
      dropout: dropout rate after each hidden layer, in ``[0, 1)``.
      batch_norm: BatchNormalization between each Dense and its activation.
      output_logit: append a linear ``Dense(1)``.
      kernel_initializer: initializer of every Dense kernel.
      bias_initializer: initializer of every Dense bias.
      **kwargs: base ``Layer`` arguments.

    Input shape:
      ``[B, d_in]`` (any ``[..., d_in]`` works; batch norm and Dice normalise the last axis).

    Output shape:
      ``[B, units[-1]]``, or ``[B, 1]`` with ``output_logit=True``.
    """

    def __init__(self, units=(512, 256, 128), activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False, output_logit: bool = False,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(output_logit, bool):
            raise ValueError(f"MLP: `output_logit` must be a bool. Received: output_logit={output_logit!r}")
        if not isinstance(batch_norm, bool):
            raise ValueError(f"MLP: `batch_norm` must be a bool. Received: batch_norm={batch_norm!r}")
        self.units = check_units("MLP", "units", units, allow_empty=output_logit)
        self.activation = check_activation("MLP", "activation", activation)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: `dropout` must be in [0, 1). Received: dropout={dropout!r}")
        self.dropout = float(dropout)
        self.batch_norm = batch_norm
        self.output_logit = output_logit
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.dense_layers = [keras.layers.Dense(u, name=f"dense_{i}", **self._initializers())
                             for i, u in enumerate(self.units)]
        self.norm_layers = ([keras.layers.BatchNormalization(name=f"batch_norm_{i}")
                             for i in range(len(self.units))] if batch_norm else [])
        self.activation_layers = [activation_layer(self.activation, name=f"{self.activation}_{i}")
                                  for i in range(len(self.units))]
        self.dropout_layers = ([keras.layers.Dropout(self.dropout, name=f"dropout_{i}")
                                for i in range(len(self.units))] if self.dropout > 0 else [])
        self.logit_layer = keras.layers.Dense(1, name="logit", **self._initializers()) if output_logit else None

    def _initializers(self) -> dict:
        return {"kernel_initializer": fresh_initializer(self.kernel_initializer),
                "bias_initializer": fresh_initializer(self.bias_initializer)}

    def call(self, inputs, training=None, gates=None):
        """The tower on ``inputs``; ``gates``, when given, holds one multiplier per hidden layer
        (each broadcastable to ``[B, units[i]]``) applied after its activation, before dropout:
        POSO's ``x̂ = gate ⊙ act(W x)`` (docs/models.md#poso)."""
        if gates is not None and len(gates) != len(self.units):
            raise ValueError(f"MLP: `gates` needs one entry per hidden layer ({len(self.units)}); "
                             f"received {len(gates)}")
        x = tf.convert_to_tensor(inputs)
        for i, dense in enumerate(self.dense_layers):
            x = dense(x)
            if self.norm_layers:
                x = self.norm_layers[i](x, training=training)
            x = apply_activation(self.activation_layers[i], x, training=training)
            if gates is not None:
                x = x * tf.cast(gates[i], x.dtype)
            if self.dropout_layers:
                x = self.dropout_layers[i](x, training=training)
        if self.logit_layer is not None:
            x = self.logit_layer(x)
        return x

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": list(self.units), "activation": self.activation,
                "dropout": self.dropout, "batch_norm": self.batch_norm,
                "output_logit": self.output_logit,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}
