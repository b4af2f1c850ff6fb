"""The request intent label of DIHN and DIAN, and the base class both train it with.

DIHN's user intent network and DIAN's intent net predict one probability p per request: did
the user come for the trigger? The papers label a request 1 when the user clicked, in it, an
item of the trigger's leaf category. tirec's data sets all carry the request's clicks per
trigger-target similarity level instead (``intent_dist``, docs/models.md#intent-distribution),
so the label is read from the levels **[X]** (docs/models.md#request-intent-label):

    y_I = 1  iff  the request has a click whose similarity level is >= k

with k = ``model.<name>.intent_level``; by default the first level whose lower edge reaches the
explicit-intent threshold tau of the FeatureSpec (the top ``pipeline.explicit_top_levels``
levels), the same "related to the trigger" as DAIAN's explicit subsequence and its scalar
intent. ``model.<name>.intent_rule=category`` takes the papers' rule instead, on records with
the column ``intent_cate_clicks`` (the pipeline writes it when the items have ``cate_id``):

    y_I = 1  iff  the request has a click on an item of the trigger's category

A request without a click (C = 0, which includes every request without a trigger: only
clicks with a trigger are counted) reveals no intent and is masked out of the loss, as
DAIAN's intent loss does.

y_I is only a training target: the models read no label. The label is passed to the intent
task (:class:`tirec.models.tasks.IntentTask`) as the two-bin distribution ``[1 - y_I, y_I]``
(zeros on unlabelled rows) against the model's ``[1 - p, p]``; the KL divergence of a one-hot
distribution is the cross-entropy, so the task's loss is BCE(y_I, p) averaged over the
labelled rows of the global batch. :class:`RequestIntentModel` trains it as an auxiliary loss
of the one joint stage, weighted by ``model.<name>.intent_weight``.
"""
from __future__ import annotations

import logging
import numbers

import numpy as np
import tensorflow as tf

from tirec.features import transforms
from tirec.features.config_io import is_count
from tirec.features.spec import CATEGORY, CATEGORY_CLICKS, FeatureSpec
from tirec.models.base import STAGE_JOINT, Stage, TirModel, as_stage, joint_stage
from tirec.models.config import ModelConfig

log = logging.getLogger(__name__)


LEVEL, CATEGORY_RULE = "level", "category"
INTENT_RULES = (LEVEL, CATEGORY_RULE)  # model.<name>.intent_rule


def check_intent_settings(section: str, level, weight, rule: str = LEVEL) -> None:
    """Validates a model section's ``intent_level`` (None or an int >= 1), ``intent_weight`` (a
    number >= 0) and ``intent_rule`` (:data:`INTENT_RULES`); errors name
    ``model.<section>.<key>`` and the value."""
    if rule not in INTENT_RULES:
        raise ValueError(f"model.{section}.intent_rule: must be level or category; received {rule!r}")
    if level is not None and not is_count(level):
        raise ValueError(f"model.{section}.intent_level: must be null (the explicit-intent threshold's "
                         f"level) or an integer >= 1; received {level!r}")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight >= 0:
        raise ValueError(f"model.{section}.intent_weight: must be a number >= 0; received {weight!r}")


def related_level(spec: FeatureSpec, level: int | None, key: str) -> int:
    """The first similarity level k counted as related to the trigger (docs/models.md#request-intent-label).

    Args:
      spec: the data's FeatureSpec (its ``intent_levels``, ``sim_range`` and ``explicit_threshold``).
      level: the configured level, or None for the first level whose lower edge is at least the
        spec's explicit threshold tau (at least 1).
      key: the config key, for the error.

    Raises:
      ValueError: naming ``key`` when ``level`` is not in [1, n - 1] (level 0 would count every
        click as related: a constant label).
    """
    n = int(spec.intent_levels)
    if level is None:
        lo, hi = spec.sim_range
        lower_edges = transforms.bin_edges(n, lo, hi)[:-1]
        above = np.nonzero(lower_edges >= float(spec.explicit_threshold) - 1e-9)[0]
        level = max(1, int(above[0]) if above.size else n - 1)
    if not 1 <= level <= n - 1:
        raise ValueError(f"{key}: must lie in [1, {n - 1}] for data with {n} similarity levels "
                         f"(pipeline.intent_levels); received {level!r}")
    return int(level)


def level_threshold(spec: FeatureSpec, level: int) -> float:
    """The lower edge of similarity level ``level``: s >= it is level ``level`` or above."""
    lo, hi = spec.sim_range
    return float(transforms.bin_edges(int(spec.intent_levels), lo, hi)[level])


def intent_label(dist: tf.Tensor, level: int) -> tf.Tensor:
    """y_I, float32 ``[B, 1]``: 1 where the request has a click at similarity level >= ``level``.

    ``dist`` is the request's click distribution over the levels ``[B, n]`` (``intent_dist``;
    the counts ``intent_counts`` give the same label). A request without a click gives 0 here;
    :func:`intent_target` masks it out.
    """
    dist = tf.cast(dist, tf.float32)
    return tf.cast(tf.reduce_sum(dist[:, level:], axis=-1, keepdims=True) > 0, tf.float32)


def intent_target(dist: tf.Tensor, level: int) -> tf.Tensor:
    """The intent task's target ``[B, 2]``: ``[1 - y_I, y_I]`` on requests with a click, zeros
    (no label, masked out of the loss and the intent metrics) on the others."""
    return _masked_target(dist, intent_label(dist, level))


def _masked_target(dist: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """``[1 - y, y]`` (float32 ``[B, 2]``) on the requests with a click (``dist`` not all zero),
    zeros on the others."""
    labelled = tf.cast(tf.reduce_sum(tf.cast(dist, tf.float32), axis=-1, keepdims=True) > 0, tf.float32)
    return tf.concat([1.0 - y, y], axis=-1) * labelled


def category_target(dist: tf.Tensor, category_clicks: tf.Tensor) -> tf.Tensor:
    """The intent task's target ``[B, 2]`` by the category rule: ``[1 - y_I, y_I]`` with y_I = 1
    where the request has a click in the trigger's category (``category_clicks`` ``[B, 1]`` > 0),
    zeros on the requests without a click (``dist`` all zero), as :func:`intent_target`."""
    return _masked_target(dist, tf.cast(tf.reshape(category_clicks, [-1, 1]) > 0, tf.float32))


def check_category_rule(spec: FeatureSpec, section: str) -> None:
    """Raises a ValueError naming ``model.<section>.intent_rule`` when the records of ``spec``
    lack the column the category rule reads."""
    if CATEGORY_CLICKS not in spec.names:
        raise ValueError(f"model.{section}.intent_rule=category: the data has no column {CATEGORY_CLICKS!r} "
                         f"(the pipeline writes it when the items have {CATEGORY!r}; data written "
                         f"before it lacks it: run the pipeline again, or use intent_rule=level)")


def two_bins(p: tf.Tensor) -> tf.Tensor:
    """The intent output ``[1 - p, p]`` (float32 ``[B, 2]``) of a probability ``p`` ``[B, 1]``."""
    p = tf.cast(p, tf.float32)
    return tf.concat([1.0 - p, p], axis=-1)


class RequestIntentModel(TirModel):
    """Base of the models with a request intent probability trained as an auxiliary task
    (DIHN, DIAN).

    Subclasses set ``intent_section`` (their config section, which holds ``intent_level``,
    ``intent_weight`` and ``intent_rule``) and return ``{"ctr": [B, 1], "intent": two_bins(p)}`` from ``forward``.
    The model trains in one joint stage whose loss is ``L_CTR + intent_weight * BCE(y_I, p)``
    (``tirec.models.train.training_stages`` plans the same stage before the model is built).
    """

    has_intent = True
    intent_section = ""

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        s = model_config.section(self.intent_section)
        self.intent_level = related_level(spec, s.intent_level, f"model.{self.intent_section}.intent_level")
        self.intent_rule = s.intent_rule
        if self.intent_rule == CATEGORY_RULE:
            check_category_rule(spec, self.intent_section)
            if s.intent_level is not None:
                log.warning("model.%s.intent_level=%s does not set the intent label under intent_rule=category",
                            self.intent_section, s.intent_level)
        self.joint = joint_stage(intent_weight=s.intent_weight)
        self.stage = self.joint

    def set_stage(self, stage) -> None:
        """Only the joint stage applies; the stage number 3 means this model's own joint stage
        (with the intent loss at ``intent_weight``)."""
        if not isinstance(stage, Stage) and stage == STAGE_JOINT:
            stage = self.joint
        if as_stage(stage).number != STAGE_JOINT:
            raise ValueError(f"{type(self).__name__} trains in one joint stage (3), its intent loss an "
                             f"auxiliary term; received stage {stage!r}")
        super().set_stage(stage)

    def intent_target(self, dist: tf.Tensor) -> tf.Tensor:
        """The ground truth by the level rule: ``[1 - y_I, y_I]``, zeros without a click."""
        return intent_target(dist, self.intent_level)

    def intent_truth(self, y: dict) -> tf.Tensor:
        """The intent task's target by ``intent_rule``: :meth:`intent_target`, or
        :func:`category_target` of ``y["intent_category"]``."""
        if self.intent_rule == CATEGORY_RULE:
            return category_target(y["intent"], y["intent_category"])
        return self.intent_target(y["intent"])
