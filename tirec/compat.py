"""The one way tirec imports Keras: ``from tirec.compat import keras``.

tirec runs on Keras 2, the ``tf-keras`` package: TensorFlow Recommenders refuses Keras 3, and
ParameterServer / MultiWorker ``fit`` only works under tf-keras. ``tirec/__init__.py`` sets
``TF_USE_LEGACY_KERAS=1`` before TensorFlow first resolves ``tf.keras``, so that ``tf.keras``
(which TensorFlow Recommenders uses) is the same Keras as the ``keras`` exported here. Every
package (features, pipeline, models, serving, the CLI, tests and benchmarks) imports Keras from
this module and no other way (``tests/tirec/test_keras_import.py`` checks the tracked files).

Importing this module fails with an ImportError when ``tf.keras`` is another Keras, e.g. when
``TF_USE_LEGACY_KERAS`` was set to something other than ``1``/``true`` before tirec was
imported, or when ``tf.keras`` was used before ``import tirec``: layers of the two Kerases
cannot be mixed in one model, and the failure would otherwise surface much later.
"""
from __future__ import annotations

import os

import tensorflow as tf
import tf_keras as keras


def check_same_keras(resolved) -> None:
    """Raises ImportError unless ``resolved`` (what ``tf.keras`` resolves to) is :data:`keras`."""
    if getattr(getattr(resolved, "layers", None), "Layer", None) is not keras.layers.Layer:
        raise ImportError(
            "tirec needs tf.keras to be Keras 2 (the tf-keras package), but tf.keras is Keras "
            f"{getattr(resolved, '__version__', '?')} (TF_USE_LEGACY_KERAS="
            f"{os.environ.get('TF_USE_LEGACY_KERAS')!r}): set TF_USE_LEGACY_KERAS=1, or import "
            "tirec before anything uses tf.keras")


check_same_keras(tf.keras)

__all__ = ["check_same_keras", "keras"]
