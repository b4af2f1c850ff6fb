"""Shared model scaffolding: feature embedding from the FeatureSpec and a staged CTR model.

:class:`FeatureEmbedder` turns the raw id features of a batch into the field embeddings every
TIR model uses (docs/models.md#feature-embeddings): the user ``E_u``, context ``E_c``, trigger
``e_t`` and target ``e_i`` (``[id ‖ side fields]``) and the behaviour sequence ``E_S`` with its
mask. Tables are declared by the spec; target, trigger and history ids share the ``item`` table.

:class:`TirModel` is the Keras model base. Its losses belong to task layers
(:mod:`tirec.models.tasks`: BCE on the click with AUC, KL on the intent distribution with
unlabelled requests masked out), and a training :class:`Stage` is data: which tasks count, which
variable groups train with which optimizers, and which record columns it feeds in. DAIAN's
stages (docs/models.md#three-training-stages): stage ``1`` trains the intent model alone on KL, stage ``2`` trains the
rest on BCE with a label-free intent fed in (the record's ``prior_intent``: the user's click
levels before the request, docs/models.md#prior-intent), stage ``3`` trains everything on BCE with a second,
slower optimizer for the intent model. Single-stage models always run in stage ``3`` with one
learning rate. Keras' train and test functions are traced once per stage.

Precision: a model takes the Keras global dtype policy in force when it is built (see
:func:`precision_scope`, used by ``tirec.models.train.build_model``). Under ``mixed_bfloat16``
its layers compute in bfloat16 while every variable (embedding tables and the frozen item
table included) stays float32; the frozen multimodal vectors, the similarities and the explicit
mask built from them, softmaxes, losses, metrics and the ``ctr``/``intent`` outputs are float32.

Loss: a step minimises the stage's data loss (the weighted sum of its tasks' losses, each the
mean over the global batch, see ``tasks.global_batch_mean``) plus every regulariser
(:meth:`TirModel.regularization_loss`: the layers' ``add_loss`` terms and ``model.l2`` on the
Dense kernels the stage trains). Loss scaling: ``tasks.replica_objective`` divides that whole
sum, in one place, by the number of replicas in sync; each replica sees its share of the global
batch and the replicas' gradients are summed, so the update equals the one of a single device
on the global batch (each regulariser counts once). The ``loss`` metric is the data loss;
``reg_loss`` (only with ``model.l2`` > 0) is the regularisation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tirec.compat import keras
from tirec.features.config_io import Checks, to_dict
from tirec.features.spec import CATEGORY, ITEM_ID, FeatureSpec, standard_column
from tirec.models.config import ModelConfig, changed_settings, check_precision, model_config_from_dict, setting_text
from tirec.models.layers import MLP, DinAttention, FrozenItemTable, HashedEmbedding
from tirec.models.layers.sequence import latest_time, time_gap_buckets, unique_rows
from tirec.models.tasks import CTR, INTENT, CtrTask, IntentTask, replica_objective

STAGE_UIM, STAGE_DIE, STAGE_JOINT = 1, 2, 3


def _feed_fields(stages) -> set[str]:
    """The intent fields (``field`` in the spec's intent group) that ``stages`` (Stages or stage
    numbers) feed to ``forward`` besides the model inputs (stage 2: ``prior``)."""
    return {field for stage in stages for _, field in as_stage(stage).feeds}


def stage_input_names(spec: FeatureSpec, stages=(STAGE_UIM, STAGE_DIE, STAGE_JOINT)) -> set[str]:
    """The record columns ``stages`` (default: DAIAN's three) read besides
    :func:`model_input_names`, per the spec."""
    return {f.name for f in spec.select(group="intent", field=_feed_fields(stages))}


def check_stage_inputs(spec: FeatureSpec, stages, columns=None) -> None:
    """Raises ValueError when the spec (or ``columns``, e.g. a batch's keys, when given) lacks a
    column one of ``stages`` (Stages or stage numbers) feeds.

    Records written before ``prior_intent`` existed have no label-free stage-2 intent input;
    DAIAN's three-stage training must stop before it starts instead of failing in a trace.
    """
    fields = _feed_fields(stages)
    found = {f.field: f.name for f in spec.select(group="intent", field=fields)}
    missing = sorted(standard_column("intent", f) or f"intent field {f!r}" for f in fields - set(found))
    if columns is not None:
        missing += sorted(n for n in found.values() if n not in set(columns))
    if missing:
        raise ValueError(
            f"DAIAN's stage 2 feeds the record column(s) {missing} as its intent input, and these "
            f"records lack them (written by an older `tirec pipeline`): re-run `tirec pipeline`, or "
            f"train with --set train.three_stage=false")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage, as data: everything a train or validation step does differently in it.

    A model's train and test functions are traced once per stage (keyed by the Stage, which is
    hashable), so switching stages needs no ``compile()``.

    Attributes:
      number: 1, 2 or 3: the run folder's ``stage_<number>/`` and the ``stage`` of ``best.json``.
      name: the stage's name in the history, the logs and the backup folders.
      tasks: ``(task name, weight)`` pairs (``ctr``, ``intent``: ``tirec.models.tasks``); the
        stage's data loss is their weighted sum. The model's other tasks update only their metrics.
      train: ``(variable group, learning-rate scale)`` pairs: the groups the stage trains
        (``uim``: the intent model's variables; ``main``: every other trainable variable), in
        this order, each with an optimizer of its own (the base learning rate times the scale,
        see :meth:`TirModel.compile`).
      feeds: ``(keyword, intent field)`` pairs: the record column of the spec's intent group with
        that ``field`` is passed to ``forward`` as that keyword (stage 2: ``prior_intent`` from
        the ``prior`` field, the label-free intent that replaces the UIM's prediction).
      monitor: the validation metric the best checkpoint and early stopping watch.
      mode: ``max`` or ``min``: which way ``monitor`` improves.
    """

    number: int
    name: str
    tasks: tuple[tuple[str, float], ...]
    train: tuple[tuple[str, float], ...]
    feeds: tuple[tuple[str, str], ...] = ()
    monitor: str = "val_auc"
    mode: str = "max"

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.train)


VARIABLE_GROUPS = ("main", "uim")
UIM_PRETRAIN = Stage(STAGE_UIM, "uim_pretrain", tasks=((INTENT, 1.0),), train=(("uim", 1.0),),
                     monitor="val_loss", mode="min")
DIE_PRETRAIN = Stage(STAGE_DIE, "die_pretrain", tasks=((CTR, 1.0),), train=(("main", 1.0),),
                     feeds=(("prior_intent", "prior"),))


def joint_stage(uim_lr_scale: float = 1.0, intent_weight: float = 0.0) -> Stage:
    """Stage 3: everything on the click loss, the UIM at ``uim_lr_scale`` times the learning
    rate (docs/models.md#three-training-stages; 1.0 for a single-stage run). With
    ``intent_weight`` > 0 the intent task's loss is added with that weight (DIHN and DIAN's
    auxiliary intent loss, docs/models.md#request-intent-label; one-stage DAIAN's KL)."""
    tasks = ((CTR, 1.0),) + (((INTENT, float(intent_weight)),) if intent_weight else ())
    return Stage(STAGE_JOINT, "joint", tasks=tasks, train=(("main", 1.0), ("uim", float(uim_lr_scale))))


def as_stage(stage) -> Stage:
    """``stage`` itself, or the default :class:`Stage` of a stage number (1, 2 or 3)."""
    if isinstance(stage, Stage):
        return stage
    defaults = {STAGE_UIM: UIM_PRETRAIN, STAGE_DIE: DIE_PRETRAIN, STAGE_JOINT: joint_stage()}
    if isinstance(stage, bool) or stage not in defaults:
        raise ValueError(f"stage must be 1, 2, 3 or a Stage; received stage={stage!r}")
    return defaults[stage]


@contextlib.contextmanager
def precision_scope(precision: str = "float32"):
    """Sets the Keras global dtype policy to ``precision`` (``float32`` or ``mixed_bfloat16``)
    for the duration of the block, e.g. while a model is built; restores the previous one."""
    check_precision(precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# The groups FeatureEmbedder.request embeds: the same for every candidate of a request, so a
# model may compute them once per distinct request (``model.request_dedup``). The context is
# request-scoped too, but embedded per row with the target: training rows of one request may
# differ in it (e.g. the impression hour).
REQUEST_GROUPS = ("user", "trigger", "history")
USER_ID = "user_id"  # the user id column; the other embedded user-group columns are profile fields


def _embedded(spec: FeatureSpec, group: str) -> list:
    """The model inputs of ``group`` that read an embedding table, in spec order."""
    return [f for f in spec.select(group=group, model_input=True) if f.table is not None]


def item_fields(spec: FeatureSpec) -> list[str]:
    """Item side fields the models embed: the target's table fields other than the id."""
    return [f.field for f in _embedded(spec, "target") if f.field != ITEM_ID]


def request_input_names(spec: FeatureSpec) -> list[str]:
    """The inputs shared by every candidate of a request: the :data:`REQUEST_GROUPS` inputs."""
    return [f.name for f in spec.select(group=REQUEST_GROUPS, model_input=True)]


def model_input_names(spec: FeatureSpec) -> list[str]:
    """The raw features a served model needs (no labels, no pipeline-only columns)."""
    return [f.name for f in spec.select(model_input=True)]


def item_columns(spec: FeatureSpec, group: str, history: str | None = None) -> list[str]:
    """The columns of one item view (the target, the trigger or a history) in embedding order:
    the id, then :func:`item_fields`.

    Raises:
      ValueError: naming the view and the item field it lacks.
    """
    out = []
    for field in [ITEM_ID] + item_fields(spec):
        found = spec.select(group=group, history=history, field=field, model_input=True)
        if not found:
            view = f"history {history!r}" if history else f"the {group}"
            raise ValueError(f"FeatureSpec: {view} has no model input of item field {field!r} "
                             f"(the target has it; every item view embeds the same fields)")
        out.append(found[0].name)
    return out


def trigger_present(spec: FeatureSpec, needed_by: str) -> str:
    """The trigger's ``present`` flag column (``has_trigger``: 0 when the impression has no
    trigger), which the trigger-target similarity and every model that gates on the trigger
    (DAIAN, DIAN, DIHN, DEI2N) need.

    Raises:
      ValueError: naming the column and ``needed_by`` (the model or setting that reads it).
    """
    present = spec.select(group="trigger", field="present", model_input=True)
    if not present:
        raise ValueError(f"FeatureSpec: {needed_by} needs a trigger input of field 'present' (has_trigger: "
                         f"0 when the impression has no trigger)")
    return present[0].name


def din_attention(config: ModelConfig, name: str, weight_normalization: bool = False) -> DinAttention:
    """DIN's attention unit as ``config`` sets it for every model that reads a sequence with it:
    ``din_hidden``, ``hist_buckets``, and Dice where the tower uses Dice (sigmoid otherwise);
    ``weight_normalization`` softmax-normalises its scores (``model.din.attention_softmax``)."""
    activation = "dice" if config.activation == "dice" else "sigmoid"
    return DinAttention(hidden_units=config.din_hidden, activation=activation,
                        weight_normalization=weight_normalization,
                        length_buckets=config.hist_buckets, name=name)


def ctr_tower(config: ModelConfig, name: str = "tower") -> MLP:
    """The click tower as ``config`` sets it: ``tower`` widths, ``activation``, ``dropout``, one logit."""
    return MLP(config.tower, activation=config.activation, dropout=config.dropout, output_logit=True,
               name=name)


def history_sum(r, target, expand) -> list:
    """The reference codes' sum pooling (the ``history_sum`` switch of DIN, DIEN, DIHN, DEI2N):
    ``[Σ_k e_k, e_i ⊙ Σ_k e_k]`` over the real behaviours of the embedder's request-level ``r``,
    expanded to the rows by ``expand``; ``target`` is e_i ``[B, D]``."""
    total = expand(tf.reduce_sum(r["hist"] * tf.cast(r["mask"], r["hist"].dtype)[..., None], axis=1))
    return [total, target * total]


# CATEGORY (tirec.features.spec): the item field whose equality to the trigger's marks a related behaviour
RELATED_RULES = ("auto", "category", "similarity")


def related_rule(spec: FeatureSpec, related: str, key: str) -> str:
    """``category`` or ``similarity``: how a model finds the trigger-related behaviours on records
    of ``spec`` (DIHN's HIEM, DEI2N's instant interest; docs/models.md#trigger-related-behaviours).
    ``related`` is the model's setting ``key`` (e.g. ``model.dihn.related``): ``auto`` picks
    ``category`` when the trigger and the first history carry :data:`CATEGORY` as a model input.

    Raises:
      ValueError: ``related=category`` on records without that field.
    """
    first = next(iter(spec.histories()))
    has_category = bool(spec.select(group="trigger", field=CATEGORY, model_input=True)
                        and spec.select(group="history", history=first, field=CATEGORY, model_input=True))
    if related == "category" and not has_category:
        raise ValueError(f"{key}=category: the data has no model input of field {CATEGORY!r} on the "
                         f"trigger and the history {first!r}; use related=similarity or auto")
    if related == "auto":
        return "category" if has_category else "similarity"
    return related


def history_time(spec: FeatureSpec, history: str) -> str:
    """The behaviour-time column of ``history`` (field ``ts``; 0 marks padding)."""
    found = spec.select(group="history", history=history, field="ts", model_input=True)
    if not found:
        raise ValueError(f"FeatureSpec: history {history!r} has no model input of field 'ts' "
                         f"(its behaviour times, 0 = padding), which gives the sequence mask")
    return found[0].name


# The request time: a context input every served request carries (the client sends it with the
# context), which today's standard records name ``impression_ts``.
REQUEST_TIME = "impression_ts"


def request_time(spec: FeatureSpec) -> str:
    """The request-time column (seconds) of ``spec``: the context model input
    :data:`REQUEST_TIME`.

    Raises:
      ValueError: when the spec has no such model input.
    """
    found = spec.select(name=REQUEST_TIME, group="context", model_input=True)
    if not found:
        raise ValueError(f"FeatureSpec: no context model input {REQUEST_TIME!r} (the request time, "
                         f"seconds), which time gaps relative to the request need")
    return found[0].name


TIME_REFS = ("request", "latest")


def history_gap_buckets(spec: FeatureSpec, rows, mask, time_ref: str, buckets: int,
                        max_gap_days: float) -> tf.Tensor:
    """int32 ``[B, L]``: the log-scale time-gap bucket of every behaviour of the spec's first
    sequence (docs/models.md#time-gap-buckets), from the request-level ``rows`` (which hold the
    request time with ``time_ref="request"``) and the sequence ``mask``.

    ``time_ref``: ``request``, gaps to the request time (:func:`request_time`); ``latest``,
    gaps to the row's most recent behaviour (no request time needed).
    """
    if time_ref not in TIME_REFS:
        raise ValueError(f"time_ref must be one of {TIME_REFS}; received {time_ref!r}")
    ts = rows[history_time(spec, next(iter(spec.histories())))]
    ref = rows[request_time(spec)] if time_ref == "request" else latest_time(ts, mask)
    return time_gap_buckets(ts, ref, buckets, max_gap_days * 86400.0)


def check_time_settings(section: str, config) -> None:
    """Checks the time-gap settings of a model section ``config`` (``time_ref``,
    ``time_buckets``, ``time_max_gap_days``); errors name ``model.<section>.<key>`` and the value."""
    check = Checks(f"model.{section}", config)
    check.one_of("time_ref", TIME_REFS)
    check.counts("time_buckets")
    check.finite("time_max_gap_days", above=0)


def context_input_names(spec: FeatureSpec) -> list[str]:
    """The context model inputs (request-scoped at serving; in training rows of one request may
    differ in them, e.g. the impression time)."""
    return [f.name for f in spec.select(group="context", model_input=True)]


@keras.utils.register_keras_serializable(package="tirec")
class FeatureEmbedder(keras.layers.Layer):
    """Embeds the spec's id features into user, context, item and sequence representations.

    Args:
      spec_json: the FeatureSpec as JSON (a string keeps ``get_config`` simple).
      emb_dim: width of each field embedding.
      shards: row shards per table.
      context: embed the context fields (the UIM does not use them).

    What it embeds comes from the spec (:meth:`FeatureSpec.select`): every model input with a
    table of the user and context groups; for the target, the trigger and each behaviour sequence
    (history group) the item id and the target's item side fields, looked up by ``field``.

    Output (dict): ``user`` [B, Du], ``context`` [B, Dc], ``target`` / ``trigger`` [B, D],
    ``target_id`` / ``trigger_id`` [B, emb_dim] (the id part), ``hist`` [B, L, D], ``mask``
    [B, L] bool (real history positions) of the spec's first behaviour sequence, and
    ``histories`` (every sequence by name). ``request()`` gives the request-level entries
    (user, trigger, histories) and ``impression()`` the per-candidate ones (target, context), so
    a model can embed the request-level inputs once per distinct request.
    """

    def __init__(self, spec_json: str, emb_dim: int = 16, shards: int = 1, context: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.spec_json, self.emb_dim, self.shards, self.context = spec_json, emb_dim, shards, context
        spec = FeatureSpec.from_json(spec_json)
        if not spec.histories():
            raise ValueError("FeatureEmbedder: the spec has no behaviour sequence (group 'history')")
        self._item_fields = item_fields(spec)
        self._user = [f.name for f in _embedded(spec, "user")]
        self._ctx = [f.name for f in _embedded(spec, "context")] if context else []
        self._target = item_columns(spec, "target")
        self._trigger = item_columns(spec, "trigger")
        self._histories = {h: (item_columns(spec, "history", h), history_time(spec, h))
                           for h in spec.histories()}
        self._table_of = {f.name: f.table for f in spec.features if f.table}
        needed = {self._table_of[n] for n in self._user + self._ctx + self._target + self._trigger}
        needed |= {self._table_of[n] for cols, _ in self._histories.values() for n in cols}
        self.tables = {
            t.name: HashedEmbedding(t.num_buckets, emb_dim, shards=min(shards, t.num_buckets),
                                    name=f"{self.name}_{t.name}")
            for t in spec.tables if t.name in needed}

    def _embed(self, inputs, name):
        return self.tables[self._table_of[name]](inputs[name])

    def _item(self, inputs, columns):
        """``[id ‖ side fields]`` of one item view, and the id part."""
        parts = [self._embed(inputs, n) for n in columns]
        return tf.concat(parts, axis=-1), parts[0]

    def request(self, inputs):
        """The request-level part (reads only :func:`request_input_names`): ``user``,
        ``trigger``, ``trigger_id``, ``hist`` and ``mask`` of the first behaviour sequence, and
        ``histories``: ``{name: (E_S [B, L, D], mask [B, L])}`` for every sequence of the spec."""
        trigger, trigger_id = self._item(inputs, self._trigger)
        histories = {h: (self._item(inputs, cols)[0], inputs[ts] > 0)
                     for h, (cols, ts) in self._histories.items()}
        hist, mask = next(iter(histories.values()))
        user = tf.concat([self._embed(inputs, n) for n in self._user], axis=-1)
        return {"user": user, "trigger": trigger, "trigger_id": trigger_id, "hist": hist,
                "mask": mask, "histories": histories}

    def impression(self, inputs):
        """The per-candidate part: ``target``, ``target_id``, ``context``."""
        target, target_id = self._item(inputs, self._target)
        ctx = [self._embed(inputs, n) for n in self._ctx]
        context = tf.concat(ctx, axis=-1) if ctx else tf.zeros([tf.shape(target)[0], 0], target.dtype)
        return {"target": target, "target_id": target_id, "context": context}

    def call(self, inputs):
        return {**self.request(inputs), **self.impression(inputs)}

    @property
    def item_dim(self) -> int:
        return self.emb_dim * (1 + len(self._item_fields))

    def get_config(self):
        return {**super().get_config(), "spec_json": self.spec_json, "emb_dim": self.emb_dim,
                "shards": self.shards, "context": self.context}


class _StageCache:
    """Per-stage state Keras must not track (a plain object): the traced train and test
    functions keyed by ``(kind, Stage)``, and the learning-rate scale each stage optimizer was
    made with."""

    def __init__(self):
        self.functions, self.scales = {}, {}


def warn_shared_unread(model_config: ModelConfig, fields, reader: str) -> list[str]:
    """Warns, naming them, on the non-default shared ``model.*`` ``fields`` that ``reader`` (a
    model, or a model under a switch) does not read; returns the keys."""
    changed = changed_settings(model_config, fields)
    for key, value in changed.items():
        logging.getLogger(__name__).warning("model.%s=%s not read by %s", key, setting_text(value), reader)
    return list(changed)


class TirModel(keras.Model):
    """Base of the registered models: tasks, training stages, per-replica scaling.

    Subclasses implement ``forward(inputs, training, **feeds) -> {"ctr": [B, 1] probability,
    optionally "intent": [B, n]}`` (``feeds``: the keyword inputs their stages feed, see
    :class:`Stage`) and may put intent-model layers under ``self.uim`` (a Layer): the ``uim``
    variable group, which stages train apart from the rest (``main``).

    The losses belong to the tasks (``self.tasks``: ``ctr``, plus ``intent`` for a model with
    an intent output; :mod:`tirec.models.tasks`); the stage (:meth:`set_stage`) says which of
    them count, which variable groups train and with which optimizers. Keras' train and test
    functions are traced once per stage, so a stage switch needs no ``compile()``.
    """

    has_intent = False
    #: the shared ``model.*`` settings the model never reads (named in a warning when set)
    shared_unread: tuple[str, ...] = ()

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        # The layers take the global policy; the model itself stays float32 so that Keras does
        # not cast its float inputs (stage 2's ground-truth intent) to bfloat16.
        policy = keras.mixed_precision.global_policy()
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.precision = policy.name
        self.layer_dtype = tf.as_dtype(policy.compute_dtype)
        self.spec = spec
        self.model_config = model_config
        warn_shared_unread(model_config, self.shared_unread, type(self).__name__)
        self.num_items, self.item_dim = int(num_items), int(item_dim)
        self.stage = joint_stage()
        self.items = FrozenItemTable(num_items=self.num_items, dim=self.item_dim, name="items",
                                     dtype="float32")
        self.tasks = {CTR: CtrTask()}
        if self.has_intent:
            self.tasks[INTENT] = IntentTask()
        self.loss_tracker = keras.metrics.Mean(name="loss", dtype="float32")
        self.reg_tracker = keras.metrics.Mean(name="reg_loss", dtype="float32")
        self.uim_optimizer = None
        self._make_optimizer = None
        self._stage_optimizers = {}
        self._cache = _StageCache()

    # ---- set-up -------------------------------------------------------------------------------
    def set_item_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Loads the pipeline's multimodal vectors into the frozen item table."""
        self.items.set_table(ids, vectors)

    def set_stage(self, stage) -> None:
        """Makes ``stage`` (a :class:`Stage`, or a stage number for its default) the one the
        next train and validation steps run in."""
        stage = as_stage(stage)
        if stage.number != STAGE_JOINT and not self.has_intent:
            raise ValueError(f"{type(self).__name__} has no intent model; only stage 3 applies")
        unknown = sorted({t for t, _ in stage.tasks} - set(self.tasks))
        if unknown:
            raise ValueError(f"stage {stage.name}: {type(self).__name__} has no task {unknown}; "
                             f"its tasks are {sorted(self.tasks)}")
        groups = sorted(set(stage.groups) - set(VARIABLE_GROUPS))
        if groups:
            raise ValueError(f"stage {stage.name}: unknown variable group(s) {groups}; "
                             f"valid: {list(VARIABLE_GROUPS)}")
        self.stage = stage

    def compile(self, optimizer=None, uim_optimizer=None, make_optimizer=None, **kwargs):
        """Configures training (the Keras ``compile`` arguments in ``kwargs``).

        Args:
          optimizer: an optimizer for every stage: it trains every variable group, except that
            in a stage that trains several groups ``uim_optimizer`` (when given) trains ``uim``.
            The stages' learning-rate scales do not apply to instances.
          uim_optimizer: see ``optimizer``.
          make_optimizer: instead of instances, a callable ``lr_scale -> a new optimizer``:
            every (stage, variable group) gets an optimizer of its own, made (under the
            model's strategy) when the stage is first used, with the stage's scale.
        """
        if (optimizer is None) == (make_optimizer is None):
            raise ValueError("compile: pass either optimizer (with an optional uim_optimizer) or "
                             "make_optimizer")
        self._make_optimizer = make_optimizer
        self._stage_optimizers = {}
        self._cache = _StageCache()
        self.uim_optimizer = uim_optimizer
        if make_optimizer is not None:
            optimizer = self._use_stage_optimizers(self.stage)
        super().compile(optimizer=optimizer, **kwargs)

    def stage_optimizers(self, stage=None) -> dict:
        """``{variable group: optimizer}`` of ``stage`` (default: the current one)."""
        stage = self.stage if stage is None else as_stage(stage)
        if self._make_optimizer is None:
            several = len(stage.train) > 1 and self.uim_optimizer is not None
            return {g: self.uim_optimizer if (g == "uim" and several) else self.optimizer for g in stage.groups}
        out = {}
        for group, scale in stage.train:
            key = f"{stage.name}_{group}"
            if key not in self._stage_optimizers:
                with self.distribute_strategy.scope():
                    self._stage_optimizers[key] = self._make_optimizer(scale)
                self._cache.scales[key] = scale
            elif self._cache.scales[key] != scale:
                raise ValueError(f"stage {stage.name}: its {group} optimizer was made for learning-rate scale "
                                 f"{self._cache.scales[key]}, and this stage asks for {scale}: give a stage "
                                 f"of other settings another name, or set_stage before compile")
            out[group] = self._stage_optimizers[key]
        return out

    def _use_stage_optimizers(self, stage: Stage):
        """With ``make_optimizer``: points ``optimizer`` (the ``main`` group's, else the only
        one) and ``uim_optimizer`` (the ``uim`` group's beside ``main``) at ``stage``'s, where
        Keras callbacks and checkpoints look for them. Returns ``optimizer``."""
        optimizers = self.stage_optimizers(stage)
        main = optimizers.get("main", next(iter(optimizers.values())))
        if self._make_optimizer is not None:
            self.optimizer = main
            self.uim_optimizer = optimizers.get("uim") if "main" in optimizers else None
        return main

    def make_train_function(self, force=False):
        """Keras' train function for the current stage, traced once per stage."""
        self._use_stage_optimizers(self.stage)
        return self._stage_function("train", super().make_train_function, force)

    def make_test_function(self, force=False):
        """Keras' test function for the current stage, traced once per stage."""
        return self._stage_function("test", super().make_test_function, force)

    def _stage_function(self, kind: str, make, force: bool):
        """Keras' ``make_<kind>_function`` for the current stage, made once per stage (and
        the traced ``train_tf_function`` TensorBoard logs with it)."""
        key, attr = (kind, self.stage), f"{kind}_function"
        if force or key not in self._cache.functions:
            setattr(self, attr, None)  # Keras returns its cached function otherwise
            function = make(force=True)
            self._cache.functions[key] = (function, getattr(self, "train_tf_function", None))
        function, traced = self._cache.functions[key]
        setattr(self, attr, function)
        if kind == "train":
            self.train_tf_function = traced
        return function

    @property
    def metrics(self):
        """``loss``, the metric of every task the current stage computes (:meth:`stage_tasks`)
        and, with ``model.l2`` > 0, ``reg_loss``."""
        regularised = self.model_config.l2 > 0
        task_metric = {CTR: lambda t: t.auc, INTENT: lambda t: t.kl}
        tasks = [task_metric[name](self.tasks[name]) for name in self.stage_tasks()]
        return [self.loss_tracker] + tasks + ([self.reg_tracker] if regularised else [])

    def stage_tasks(self, stage=None) -> tuple[str, ...]:
        """The tasks whose outputs ``stage`` (default: the current one) computes: the intent
        alone in a stage that counts only the intent task (stage 1, :meth:`intent_forward`),
        else every task of the model."""
        stage = self.stage if stage is None else as_stage(stage)
        return (INTENT,) if {task for task, _ in stage.tasks} == {INTENT} else tuple(self.tasks)

    # ---- forward ------------------------------------------------------------------------------
    def call(self, inputs, training=False, **feeds):
        return self.forward(inputs, training=training, **feeds)

    def forward(self, inputs, training=False, **feeds):
        raise TypeError(f"{type(self).__name__} must define forward()")

    def stage_forward(self, x, stage=None, training=False):
        """The outputs for the batch ``x`` (record columns) in ``stage`` (default: the current
        one), with the stage's feeds passed to ``forward``, in training and validation alike.

        Stage 2 feeds DAIAN ``x["prior_intent"]`` as its intent input: the user's time-decayed
        click levels before the request, written by the pipeline. It carries no label of the
        row's own request (the request's own click distribution, or that minus the row's own
        click, would: docs/models.md#prior-intent); no stage feeds a target.
        """
        stage = self.stage if stage is None else as_stage(stage)
        check_stage_inputs(self.spec, [stage.number], x)
        if self.stage_tasks(stage) == (INTENT,):
            return self.intent_forward(x, training=training)
        return self(x, training=training, **{keyword: x[self._intent_column(field)]
                                             for keyword, field in stage.feeds})

    def intent_forward(self, inputs, training=False):
        """``{"intent": [B, n]}``, all a stage that counts only the intent task needs (stage 1).
        This default runs the whole forward pass; a model whose intent model reads less than
        its click path (DAIAN's UIM) overrides it to skip the rest."""
        return {"intent": self.forward(inputs, training=training)["intent"]}

    def _intent_column(self, field: str) -> str:
        """The record column of the spec's intent group with ``field`` (e.g. ``prior``)."""
        return self.spec.select(group="intent", field=field)[0].name

    def trigger_target_similarity(self, inputs, needed_by: str) -> tf.Tensor:
        """s_sem = cos(m_t, m_i), float32 ``[B, 1]``, from the frozen multimodal table: the
        records' ``trigger_target_sim`` (docs/models.md#similarity-levels) computed in the graph
        from the raw ids, so a served model needs no extra input. 0 without a trigger; an item
        without a vector (or unknown to the table) has the zero vector, hence 0. Float32 whatever
        the precision. ``needed_by`` names the reader in the error of a spec without
        ``has_trigger``."""
        present = trigger_present(self.spec, needed_by)
        m_t, _ = self.items(inputs[item_columns(self.spec, "trigger")[0]])
        m_i, _ = self.items(inputs[item_columns(self.spec, "target")[0]])
        has_trigger = tf.cast(tf.cast(inputs[present], tf.bool), tf.float32)
        return tf.reduce_sum(m_t * m_i, axis=-1, keepdims=True) * has_trigger[:, None]

    def request_rows(self, inputs, extra=()):
        """The request-level inputs (:func:`request_input_names`, plus the columns ``extra``),
        one row per distinct request of the batch with ``model.request_dedup``, and ``expand``,
        which maps a ``[U, ...]`` result back to the batch's ``[B, ...]`` rows."""
        rows, index = self.request_groups(inputs, extra)
        if index is None:
            return rows, lambda t: t
        return rows, lambda t: tf.gather(t, index)

    def request_groups(self, inputs, extra=()):
        """``(rows, index)``: the request-level inputs, one row per distinct request with
        ``model.request_dedup``, and int32 ``[B]`` the distinct request of every row (None
        without ``model.request_dedup``: then ``rows`` are the batch's own).

        ``extra``: further columns that the request-level blocks read and that split a request
        where its rows differ in them (e.g. the context, :func:`context_input_names`)."""
        names = list(dict.fromkeys(request_input_names(self.spec) + list(extra)))
        if not self.model_config.request_dedup:
            return {n: inputs[n] for n in names}, None
        first, index = unique_rows([inputs[n] for n in names])
        return {n: tf.gather(inputs[n], first) for n in names}, index

    def intent_target(self, dist: tf.Tensor) -> tf.Tensor:
        """The ground-truth intent in the model's intent output space (identity here)."""
        return tf.cast(dist, tf.float32)

    def intent_truth(self, y: dict) -> tf.Tensor:
        """The intent task's target from the targets ``y`` (:func:`tirec.models.data.targets`):
        :meth:`intent_target` of the request's intent distribution here."""
        return self.intent_target(y["intent"])

    def uim_variables(self) -> list:
        uim = getattr(self, "uim", None)
        return list(uim.trainable_variables) if uim is not None else []

    def variable_groups(self) -> dict[str, list]:
        """``{"main": [...], "uim": [...]}``: the trainable variables of each group."""
        uim = self.uim_variables()
        ids = {id(v) for v in uim}
        return {"main": [v for v in self.trainable_variables if id(v) not in ids], "uim": uim}

    def trained_variables(self, stage=None) -> list:
        """The variables ``stage`` (default: the current one) trains, group by group."""
        stage = self.stage if stage is None else as_stage(stage)
        groups = self.variable_groups()
        return [v for g in stage.groups for v in groups[g]]

    # ---- losses -------------------------------------------------------------------------------
    def task_losses(self, y, outputs) -> dict[str, tf.Tensor]:
        """The data loss (and metrics updated) of every task with an output in ``outputs``:
        ``ctr`` from the click label, ``intent`` from the intent target :meth:`intent_truth`."""
        losses = {}
        if "ctr" in outputs:
            losses[CTR] = self.tasks[CTR](y["ctr"], outputs["ctr"])
        if INTENT in self.tasks and "intent" in outputs:
            losses[INTENT] = self.tasks[INTENT](self.intent_truth(y), outputs["intent"])
        return losses

    @staticmethod
    def stage_loss(stage: Stage, losses: dict) -> tf.Tensor:
        """The stage's data loss: the weighted sum of its tasks' losses."""
        missing = [t for t, _ in stage.tasks if t not in losses]
        if missing:
            raise ValueError(f"stage {stage.name} counts task(s) {missing}, and the model gave no such "
                             f"output; outputs with a task: {sorted(losses)}")
        return tf.add_n([weight * losses[task] for task, weight in stage.tasks])

    def l2_kernels(self) -> list:
        """The kernels of the model's Dense layers: the weights ``model.l2`` penalises."""
        kernels, seen = [], set()
        for layer in self.submodules:
            kernel = getattr(layer, "kernel", None) if isinstance(layer, keras.layers.Dense) else None
            if kernel is not None and id(kernel) not in seen:
                seen.add(id(kernel))
                kernels.append(kernel)
        return kernels

    def regularization_loss(self, variables) -> tf.Tensor:
        """Everything added to the data loss, as a float32 scalar: the layers' ``add_loss``
        terms plus ``model.l2 * sum(W**2)`` over the Dense kernels among ``variables`` (the
        ones the stage trains; a frozen kernel would only add a constant)."""
        terms = [tf.cast(t, tf.float32) for t in self.losses]
        if self.model_config.l2 > 0:
            ids = {id(v) for v in variables}
            # A kernel partitioned by ParameterServerStrategy is trained (and penalised) as its parts.
            parts = [p for k in self.l2_kernels() for p in (getattr(k, "variables", None) or [k])
                     if id(k) in ids or id(p) in ids]
            if parts:
                squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(p, tf.float32))) for p in parts])
                terms.append(float(self.model_config.l2) * squares)
        return tf.add_n(terms) if terms else tf.zeros([], tf.float32)

    # ---- steps --------------------------------------------------------------------------------
    def train_step(self, data):
        x, y = data
        stage = self.stage  # one train function per stage: see make_train_function
        with tf.GradientTape() as tape:
            outputs = self.stage_forward(x, stage, training=True)
            variables = self.trained_variables(stage)  # after the forward pass has built them
            loss = self.stage_loss(stage, self.task_losses(y, outputs))
            reg = self.regularization_loss(variables)
            objective = replica_objective(loss, reg)
        self._apply_gradients(stage, tape.gradient(objective, variables))
        return self._update_metrics(loss, reg)

    def _apply_gradients(self, stage: Stage, grads) -> None:
        """Applies each group's gradients with its optimizer (one call per optimizer).

        Variables the loss does not reach get no update (e.g. the UIM when use_die=false:
        nothing downstream reads its intent); an optimizer with nothing to do is skipped.
        """
        optimizers, groups = self.stage_optimizers(stage), self.variable_groups()
        pairs, grads = {}, iter(grads)
        for group in stage.groups:
            opt = optimizers[group]
            if self._make_optimizer is None and hasattr(opt, "build"):
                with tf.init_scope():  # an instance may train other groups in another stage
                    opt.build(self.trainable_variables)
            batch = [(g, v) for v, g in zip(groups[group], grads) if g is not None]
            pairs.setdefault(id(opt), (opt, []))[1].extend(batch)
        for opt, batch in pairs.values():
            if batch:
                opt.apply_gradients(batch)

    def test_step(self, data):
        x, y = data
        stage = self.stage
        outputs = self.stage_forward(x, stage, training=False)
        loss = self.stage_loss(stage, self.task_losses(y, outputs))
        return self._update_metrics(loss, self.regularization_loss(self.trained_variables(stage)))

    def _update_metrics(self, loss, reg):
        """The model-level metrics (the tasks updated theirs): ``loss``, the stage's data loss,
        and ``reg_loss``, the regularisation (with ``model.l2`` > 0)."""
        self.loss_tracker.update_state(loss)
        if self.model_config.l2 > 0:
            self.reg_tracker.update_state(reg)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {"spec_json": self.spec.to_json(), "model_config": to_dict(self.model_config),
                "num_items": self.num_items, "item_dim": self.item_dim, "name": self.name,
                "precision": self.precision}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        spec = FeatureSpec.from_json(config.pop("spec_json"))
        model_config = model_config_from_dict(config.pop("model_config"))
        with precision_scope(config.pop("precision", "float32")):
            return cls(spec=spec, model_config=model_config, **config)
