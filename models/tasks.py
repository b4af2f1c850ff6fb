"""Training tasks: each objective owns its loss, its metrics and its replica scaling (as TFRS).

A task is a layer called with a batch's labels and the model's predictions; it returns the
task's data loss, the mean over the *global* batch (:func:`global_batch_mean`), and updates
its metrics:

* :class:`CtrTask` (a ``tfrs.tasks.Ranking``): binary cross-entropy on the click 
  (docs/models.md#losses, DAIAN Eq.21) and a streaming ``auc``.
* :class:`IntentTask`: KL(y^I ‖ ŷ^I) over the intent levels (DAIAN Eq.19), requests without a
  click (all-zero label rows) masked out of the loss and of its ``intent_kl`` metric.

Which tasks count, and with which weights, is a training stage's decision
(``tirec.models.base.Stage``); a model's other tasks still update their metrics.

Loss scaling under ``tf.distribute``: every replica sees its share of the global batch and the
replicas' gradients are summed. :func:`replica_objective` is the one place a step's objective
(the weighted task losses plus the regularisation) is divided by the number of replicas in
sync, so that the update equals a single device's on the global batch and each regulariser
counts once. Keras loss objects are not used for the reduction (their ``SUM_OVER_BATCH_SIZE``
averages over the local batch only, and is refused under a strategy outside ``compile``).
Tasks compute in float32 whatever the model's precision.
"""
from __future__ import annotations

import contextlib

import tensorflow as tf
from tensorflow_recommenders import tasks as tfrs_tasks

from tirec.compat import keras


CTR, INTENT = "ctr", "intent"


def global_batch_mean(values: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """The weighted mean of ``values`` over the global batch, as this replica's loss term.

    ``sum(weights * values)`` over the local batch divided by ``sum(weights)`` over the global
    batch (an all-reduce over the replicas in sync), times the number of replicas: once
    :func:`replica_objective` divides every replica's objective by that number, the replicas'
    terms add up to the exact global mean however the batch is split (uneven last batch,
    labelled requests spread unevenly). It is the plain local mean without several replicas,
    and 0 when the weights sum to 0.
    """
    values = tf.cast(values, tf.float32)
    weights = tf.ones_like(values) if weights is None else tf.cast(weights, tf.float32)
    total, count = tf.reduce_sum(values * weights), tf.reduce_sum(weights)
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    if replicas > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count) / replicas
    return tf.math.divide_no_nan(total, count)


def replica_objective(data_loss: tf.Tensor, regularization: tf.Tensor) -> tf.Tensor:
    """What one replica minimises: ``(data loss + regularisation) / replicas in sync``.

    The one place a loss is scaled for the replicas. ``data_loss`` is a weighted sum of task
    losses (each a :func:`global_batch_mean`); ``regularization`` is the model's whole
    penalty, which each replica computes in full on the same mirrored weights, so dividing it
    here makes it count once in the summed gradients.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return (data_loss + regularization) / replicas


def intent_kl(true: tf.Tensor, pred: tf.Tensor, eps: float = 1e-8) -> tf.Tensor:
    """Row-wise KL(true ‖ pred) in nats; rows of zeros give 0."""
    true = tf.cast(true, tf.float32)
    pred = tf.clip_by_value(tf.cast(pred, tf.float32), eps, 1.0)
    return tf.reduce_sum(tf.where(true > 0, true * (tf.math.log(tf.maximum(true, eps)) - tf.math.log(pred)),
                                  0.0), axis=-1)


@contextlib.contextmanager
def _float32_policy():
    """Builds a layer under the float32 policy (tfrs' Ranking takes no ``dtype``): Keras would
    otherwise cast its first input, the labels, to a mixed policy's bfloat16."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _global_mean_bce(y_true, y_pred, sample_weight=None) -> tf.Tensor:
    """Binary cross-entropy of the click, averaged over the global batch."""
    bce = keras.losses.binary_crossentropy(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32))
    return global_batch_mean(bce, sample_weight)


class CtrTask(tfrs_tasks.Ranking):
    """The click task: BCE of ``ctr`` [B, 1] against the click label [B, 1], and ``auc``.

    A ``tfrs.tasks.Ranking`` whose loss is :func:`global_batch_mean` of the per-row BCE (not a
    Keras loss object's local-batch mean), so its value is the same term on one device and on
    every replica of a strategy. ``auc`` is a streaming AUC with 2000 thresholds (progress
    display; ``tirec evaluate`` computes the exact one).
    """

    def __init__(self, name: str = CTR):
        auc = keras.metrics.AUC(name="auc", num_thresholds=2000, dtype="float32")
        with _float32_policy():
            super().__init__(loss=_global_mean_bce, metrics=[auc], name=name)
        self.auc = auc

    def get_config(self):
        return {"name": self.name}


class IntentTask(keras.layers.Layer, tfrs_tasks.Task):
    """The intent task: KL(y^I ‖ ŷ^I) over the levels, unlabelled requests masked (docs/models.md#losses).

    Called with the ground-truth distribution in the model's intent output space [B, k] (rows
    of zeros: requests without a click) and the predicted one [B, k]. The loss is the mean KL
    over the labelled rows of the global batch (0 when there are none); ``intent_kl`` is its
    streaming mean over the labelled rows.
    """

    def __init__(self, name: str = INTENT, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(name=name, **kwargs)
        self.kl = keras.metrics.Mean(name="intent_kl", dtype="float32")

    def call(self, labels, predictions, training=False, compute_metrics=True):
        labels = tf.cast(labels, tf.float32)
        labelled = tf.cast(tf.reduce_sum(labels, axis=-1) > 0, tf.float32)
        kl = intent_kl(labels, predictions)
        loss = global_batch_mean(kl, labelled)
        if not compute_metrics:
            return loss
        update = self.kl.update_state(kl, sample_weight=labelled)  # None when eager
        with tf.control_dependencies([update] if update is not None else []):
            return tf.identity(loss)

    def get_config(self):
        return {"name": self.name}
