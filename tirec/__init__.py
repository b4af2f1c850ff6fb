"""tirec: trigger-induced recommendation CTR prediction on TensorFlow.

Importing ``tirec`` pins Keras 2 (tf-keras): TensorFlow Recommenders refuses Keras 3, and
ParameterServer / MultiWorker ``fit`` only works under tf-keras. The variable must be set before
TensorFlow first touches ``tf.keras``, so it is set here, at the top of the package.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
