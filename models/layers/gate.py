"""GateNU: PEPNet's gate neural unit (docs/models.md#gate-nu)."""
from __future__ import annotations

import numbers

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import check_positive_int, check_units, fresh_initializer


@keras.utils.register_keras_serializable(package="tirec")
class GateNU(keras.layers.Layer):
    """Gate neural unit of PEPNet (Chang et al., KDD 2023).

    ``delta = gamma * sigmoid(W_L(... ReLU(W_1 x + b_1) ...) + b_L)``: ReLU hidden layers, then
    a sigmoid output layer scaled by ``gamma``. With ``gamma = 2`` the gate lies in ``(0, 2)``
    and is centred at 1: a zero output kernel and bias give exactly ``1.0``, so the gated
    module starts as an identity map.

    Example:
      >>> gate = GateNU(hidden_units=(8,), output_dim=4, output_kernel_initializer="zeros")
      >>> gate(tf.ones([2, 3])).numpy()[0]
      array([1., 1., 1., 1.], dtype=float32)

    Args:
      hidden_units: ReLU hidden widths (an int or a sequence; may be empty).
      output_dim: gate width.
      gamma: positive scale of the sigmoid (2 centres the gate at 1).
      output_kernel_initializer: initializer of the output kernel.
      output_bias_initializer: initializer of the output bias.
      **kwargs: base ``Layer`` arguments.

    Input shape:
      ``[B, d_in]`` (or any ``[..., d_in]``).

    Output shape:
      ``[B, output_dim]`` (``[..., output_dim]``), values in ``(0, gamma)``.
    """

    def __init__(self, hidden_units, output_dim: int, gamma: float = 2.0,
                 output_kernel_initializer="glorot_uniform", output_bias_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_units("GateNU", "hidden_units", hidden_units, allow_empty=True)
        self.output_dim = check_positive_int("GateNU", "output_dim", output_dim)
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma > 0:
            raise ValueError(f"GateNU: `gamma` must be a positive number. Received: gamma={gamma!r}")
        self.gamma = float(gamma)
        self.output_kernel_initializer = keras.initializers.get(output_kernel_initializer)
        self.output_bias_initializer = keras.initializers.get(output_bias_initializer)
        self.hidden_layers = [keras.layers.Dense(u, activation="relu", name=f"hidden_{i}")
                              for i, u in enumerate(self.hidden_units)]
        self.output_layer = keras.layers.Dense(self.output_dim,
                                               kernel_initializer=fresh_initializer(self.output_kernel_initializer),
                                               bias_initializer=fresh_initializer(self.output_bias_initializer),
                                               name="gate")

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        for layer in self.hidden_layers:
            x = layer(x)
        logits = self.output_layer(x)
        return tf.cast(self.gamma, logits.dtype) * tf.sigmoid(logits)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units),
                "output_dim": self.output_dim, "gamma": self.gamma,
                "output_kernel_initializer": keras.initializers.serialize(self.output_kernel_initializer),
                "output_bias_initializer": keras.initializers.serialize(self.output_bias_initializer)}
