"""Dice, DIN's data-adaptive activation, and the activation factory the other layers share."""
from __future__ import annotations

import numbers
from typing import Sequence

import tensorflow as tf

from tirec.compat import keras
from tirec.models.layers._common import cond_training, low_precision

# Activation names handled by a layer of their own rather than by ``keras.activations.get``.
LAYER_ACTIVATIONS = ("dice", "prelu")


@keras.utils.register_keras_serializable(package="tirec")
class Dice(keras.layers.Layer):
    """Dice activation (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
    KDD 2018).

    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + epsilon))`` and
    ``f(s) = p(s) * s + (1 - p(s)) * alpha * s``, with one learnable ``alpha`` per channel.
    ``E[s]`` and ``Var[s]`` are the batch statistics (over every axis but ``axis``) in training
    and moving averages at inference, exactly as batch normalisation without scale and shift.
    The moving averages are updated in training as ``m <- momentum * m + (1 - momentum) * batch``.

    An optional ``mask`` (the input shape without ``axis``, bool or 0/1) restricts the batch
    statistics to the real positions, so padded sequence positions do not shift them.

    Example:
      >>> dice = Dice()
      >>> dice(tf.ones([4, 3]), training=True).shape
      TensorShape([4, 3])

    Args:
      epsilon: small positive constant added to the variance.
      axis: the channel axis (one ``alpha`` and one pair of moving statistics per channel).
      momentum: moving average momentum, in ``[0, 1)``.
      alpha_initializer: initializer of ``alpha`` (DIN and DeepCTR start from zeros).
      **kwargs: base ``Layer`` arguments (``name``, ``dtype``...).

    Input shape:
      Any tensor with a known size along ``axis``, e.g. ``[B, C]`` or ``[B, L, C]``.

    Output shape:
      Same as the input.
    """

    def __init__(self, epsilon: float = 1e-8, axis: int = -1, momentum: float = 0.99,
                 alpha_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if (isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real)
                or not epsilon > 0):
            raise ValueError(f"Dice: `epsilon` must be a positive number. Received: epsilon={epsilon!r}")
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(f"Dice: `axis` must be an integer. Received: axis={axis!r}")
        if (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                or not 0.0 <= momentum < 1.0):
            raise ValueError(f"Dice: `momentum` must be in [0, 1). Received: momentum={momentum!r}")
        self.epsilon = float(epsilon)
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.alpha_initializer = keras.initializers.get(alpha_initializer)
        self._channel_axis = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        rank = input_shape.rank
        if rank is None or not -rank <= self.axis < rank:
            raise ValueError(f"Dice: `axis` is out of range for inputs of shape {input_shape}. "
                             f"Received: axis={self.axis}")
        self._channel_axis = self.axis % rank
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(f"Dice: the size of axis {self.axis} must be known. "
                             f"Received input shape {input_shape}")
        # Float32 variables, read as float32 under mixed precision too (the call computes in
        # float32 then).
        self.alpha = self.add_weight(name="alpha", shape=[channels], initializer=self.alpha_initializer,
                                     trainable=True, experimental_autocast=False)
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=[channels], initializer="zeros", trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=[channels], initializer="ones", trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False)
        super().build(input_shape)

    def _broadcast(self, v: tf.Tensor, rank: int, dtype) -> tf.Tensor:
        shape = [1] * rank
        shape[self._channel_axis] = -1
        return tf.reshape(tf.cast(v, dtype), shape)

    def _batch_moments(self, x: tf.Tensor, mask):
        rank = x.shape.rank
        reduce_axes = [i for i in range(rank) if i != self._channel_axis]
        if mask is None:
            mean, var = tf.nn.moments(x, reduce_axes)
            return mean, var, None
        m = tf.convert_to_tensor(mask)
        m = tf.cast(tf.not_equal(m, tf.zeros([], m.dtype)) if m.dtype != tf.bool else m, x.dtype)
        m = tf.expand_dims(m, self._channel_axis) * tf.ones_like(x)
        count = tf.reduce_sum(m, reduce_axes)
        mean = tf.math.divide_no_nan(tf.reduce_sum(x * m, reduce_axes), count)
        centred = x - self._broadcast(mean, rank, x.dtype)
        var = tf.math.divide_no_nan(tf.reduce_sum(m * tf.square(centred), reduce_axes), count)
        return mean, var, count > 0

    def _update(self, variable, value, has_data):
        old = tf.convert_to_tensor(variable)
        new = old * self.momentum + tf.cast(value, old.dtype) * (1.0 - self.momentum)
        if has_data is not None:
            new = tf.where(has_data, new, old)
        variable.assign(new)

    def call(self, inputs, training=None, mask=None):
        x = tf.convert_to_tensor(inputs)
        if low_precision(x.dtype):
            # Mixed precision: statistics and activation in float32, as Keras batch norm does.
            return tf.cast(self.call(tf.cast(x, tf.float32), training=training, mask=mask), x.dtype)
        rank = x.shape.rank

        def batch_stats():
            mean, var, has_data = self._batch_moments(x, mask)
            self._update(self.moving_mean, mean, has_data)
            self._update(self.moving_variance, var, has_data)
            return tf.cast(mean, x.dtype), tf.cast(var, x.dtype)

        def moving_stats():
            return (tf.cast(tf.convert_to_tensor(self.moving_mean), x.dtype),
                    tf.cast(tf.convert_to_tensor(self.moving_variance), x.dtype))

        mean, var = cond_training(training, batch_stats, moving_stats)
        normed = (x - self._broadcast(mean, rank, x.dtype)) * tf.math.rsqrt(
            self._broadcast(var, rank, x.dtype) + tf.cast(self.epsilon, x.dtype))
        p = tf.sigmoid(normed)
        alpha = self._broadcast(self.alpha, rank, x.dtype)
        return p * x + (1.0 - p) * alpha * x

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "axis": self.axis,
                "momentum": self.momentum,
                "alpha_initializer": keras.initializers.serialize(self.alpha_initializer)}


def check_activation(layer: str, name: str, value) -> str:
    """Checks that ``value`` names a Keras activation, ``"dice"`` or ``"prelu"``.

    Raises:
      ValueError: naming the argument ``name`` of ``layer`` and the received value.
    """
    if not isinstance(value, str):
        raise ValueError(f"{layer}: `{name}` must be an activation name such as 'relu', 'sigmoid' or "
                         f"'dice'. Received: {name}={value!r}")
    if value in LAYER_ACTIVATIONS:
        return value
    try:
        keras.activations.get(value)
    except ValueError as err:
        raise ValueError(f"{layer}: unknown `{name}`; expected a Keras activation name or one of "
                         f"{LAYER_ACTIVATIONS}. Received: {name}={value!r}") from err
    return value


def activation_layer(activation: str, name: str,
                     shared_axes: Sequence[int] | None = None) -> keras.layers.Layer:
    """The layer applying ``activation`` (checked by :func:`check_activation`).

    Args:
      activation: a Keras activation name, ``"dice"`` or ``"prelu"``.
      name: the layer name.
      shared_axes: PReLU axes that share one slope (``[1]`` for ``[B, L, C]`` inputs).
    """
    if activation == "dice":
        return Dice(name=name)
    if activation == "prelu":
        return keras.layers.PReLU(shared_axes=list(shared_axes) if shared_axes else None, name=name)
    return keras.layers.Activation(activation, name=name)


def apply_activation(layer: keras.layers.Layer, x: tf.Tensor, training=None, mask=None) -> tf.Tensor:
    """Calls an activation layer; only Dice receives ``training`` and ``mask``."""
    if isinstance(layer, Dice):
        return layer(x, training=training, mask=mask)
    return layer(x)
