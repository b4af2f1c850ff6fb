"""The helpers the model tests share as fixtures (test modules cannot import this conftest): a
first batch of a pipeline output, the test module's model built small, and a model's click
outputs and gradients on a batch. The tiny pipeline outputs (``tiny_data`` and its variants) are
in tests/conftest.py, shared with the GPU tests."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras

from tirec.config import load_config
from tirec.models.base import model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.train import build_model


def _first_batch(data, n=64, columns=False, spec=None, untriggered=0):
    """The first ``n`` train rows of pipeline output ``data`` as ``(spec, x, y)``: ``x`` keeps only
    the model inputs of ``spec`` (default the data's) unless ``columns``, and with
    ``untriggered=k`` every k-th row (row 0 first) has no trigger (``has_trigger`` 0)."""
    spec = spec or load_data_spec(data)
    x, y = next(iter(make_dataset(data, "train", spec, n)))
    x = dict(x) if columns else {k: v for k, v in x.items() if k in model_input_names(spec)}
    if untriggered:
        none = np.arange(n) % untriggered == 0
        x["has_trigger"] = tf.where(none, tf.zeros_like(x["has_trigger"]), x["has_trigger"])
    return spec, x, y


@pytest.fixture(scope="session")
def first_batch():
    """:func:`_first_batch`, a function ``(data, n=64, columns=False, spec=None, untriggered=0)``."""
    return _first_batch


@pytest.fixture
def make_model(request):
    """A function ``(data, *settings, spec=None, name=None)``: the untrained model ``name``
    (default the test module's ``MODEL``) built on ``spec`` (default the data's) and the item
    vectors of pipeline output ``data``, with the module's ``SMALL`` settings, then ``settings``."""
    small = list(request.module.SMALL)

    def make(data, *settings, spec=None, name=None):
        ids, vecs, _ = load_item_vectors(data)
        return build_model(name or request.module.MODEL, spec or load_data_spec(data),
                           load_config(None, small + list(settings)).model, ids, vecs)

    return make


def _outputs_and_grads(model, x, y):
    """``model``'s click output on batch ``(x, y)`` in training mode and the gradients of its mean
    binary cross-entropy, by variable name (variables without a gradient left out)."""
    with tf.GradientTape() as tape:
        out = model(x, training=True)["ctr"]
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y["ctr"], out))
    grads = tape.gradient(loss, model.trainable_variables)
    return out.numpy(), {v.name: tf.convert_to_tensor(g).numpy() for v, g in zip(model.trainable_variables, grads)
                         if g is not None}


@pytest.fixture(scope="session")
def outputs_and_grads():
    """:func:`_outputs_and_grads`, a function ``(model, x, y) -> (ctr, {variable name: gradient})``."""
    return _outputs_and_grads
