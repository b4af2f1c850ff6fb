"""Shared model scaffolding: feature embedding from the FeatureSpec and a staged CTR model.

:class:`FeatureEmbedder` turns the raw id features of a batch into the field embeddings every
TIR model uses (docs/models.md#feature-embeddings): the user ``E_u``, context ``E_c``, trigger
``e_t`` and target ``e_i`` (``[id ‖ side fields]``) and the behaviour sequence ``E_S`` with its
mask. Tables are declared by the spec; target, trigger and history ids share the ``item`` table.

:class:`TirModel` is the Keras model base. It owns the losses (BCE on the click, KL on the intent
distribution with unlabelled requests masked out), their per-replica scaling, a streaming AUC
for progress display, and DAIAN's stage switch: stage ``1`` trains the intent model alone on
KL, stage ``2`` trains the rest on BCE with a label-free intent fed in (the record's
``prior_intent``: the user's click levels before the request, docs/models.md#prior-intent),
stage ``3`` trains everything on BCE with a second, slower optimizer for the intent model
(docs/models.md#three-training-stages).
Single-stage models always run in stage ``3`` semantics with one optimizer.

Precision: a model takes the Keras global dtype policy in force when it is built (see
:func:`precision_scope`, used by ``tirec.models.train.build_model``). Under ``mixed_bfloat16``
its layers compute in bfloat16 while every variable (embedding tables and the frozen item
table included) stays float32; the frozen multimodal vectors, the similarities and the explicit
mask built from them, softmaxes, losses, metrics and the ``ctr``/``intent`` outputs are float32.

Loss: a step minimises the stage's data loss (the mean over the global batch, see
:func:`global_batch_mean`) plus every regulariser (:meth:`TirModel.regularization_loss`: the
layers' ``add_loss`` terms and ``model.l2`` on the Dense kernels). Loss scaling: ``train_step``
divides that whole sum, in one place, by the number of replicas in sync; each replica sees its
share of the global batch and the replicas' gradients are summed, so the update equals the one
of a single device on the global batch (each regulariser counts once). The ``loss`` metric is
the data loss; ``reg_loss`` (only with ``model.l2`` > 0) is the regularisation.
"""
from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from tirec.compat import keras
from tirec.features.config_io import to_dict
from tirec.features.spec import ITEM_ID, FeatureSpec, standard_column
from tirec.models.config import ModelConfig, check_precision, model_config_from_dict
from tirec.models.layers import FrozenItemTable, HashedEmbedding
from tirec.models.layers.sequence import unique_rows

STAGE_UIM, STAGE_DIE, STAGE_JOINT = 1, 2, 3
# The intent columns (their ``field`` in the spec's intent group) a stage reads besides the model
# inputs: stage 2 feeds the prior intent (``prior_intent`` in the standard records).
STAGE_INPUTS = {STAGE_DIE: ("prior",)}


def stage_input_names(spec: FeatureSpec) -> set[str]:
    """Every record column some stage reads besides :func:`model_input_names`, per the spec."""
    fields = {f for names in STAGE_INPUTS.values() for f in names}
    return {f.name for f in spec.select(group="intent", field=fields)}


def check_stage_inputs(spec: FeatureSpec, stages, columns=None) -> None:
    """Raises ValueError when the spec (or ``columns``, e.g. a batch's keys, when given) lacks a
    column one of ``stages`` reads.

    Records written before ``prior_intent`` existed have no label-free stage-2 intent input;
    DAIAN's three-stage training must stop before it starts instead of failing in a trace.
    """
    fields = {f for s in stages for f in STAGE_INPUTS.get(s, ())}
    found = {f.field: f.name for f in spec.select(group="intent", field=fields)}
    missing = sorted(standard_column("intent", f) or f"intent field {f!r}" for f in fields - set(found))
    if columns is not None:
        missing += sorted(n for n in found.values() if n not in set(columns))
    if missing:
        raise ValueError(
            f"DAIAN's stage 2 feeds the record column(s) {missing} as its intent input, and these "
            f"records lack them (written by an older `tirec pipeline`): re-run `tirec pipeline`, or "
            f"train with --set train.three_stage=false")


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


def history_time(spec: FeatureSpec, history: str) -> str:
    """The behaviour-time column of ``history`` (field ``ts``; 0 marks padding)."""
    found = spec.select(group="history", history=history, field="ts", model_input=True)
    if not found:
        raise ValueError(f"FeatureSpec: history {history!r} has no model input of field 'ts' "
                         f"(its behaviour times, 0 = padding), which gives the sequence mask")
    return found[0].name


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


class TirModel(keras.Model):
    """Base of the registered models: staged losses, per-replica scaling, two optimizers.

    Subclasses implement ``forward(inputs, training) -> {"ctr": [B, 1] probability, optionally
    "intent": [B, n]}`` and may put intent-model layers under ``self.uim`` (a Layer) so stage 3
    can give them their own optimizer.
    """

    has_intent = False

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
        self.num_items, self.item_dim = int(num_items), int(item_dim)
        self.stage = STAGE_JOINT
        self.items = FrozenItemTable(num_items=self.num_items, dim=self.item_dim, name="items",
                                     dtype="float32")
        self.loss_tracker = keras.metrics.Mean(name="loss", dtype="float32")
        self.auc_tracker = keras.metrics.AUC(name="auc", num_thresholds=2000, dtype="float32")
        self.kl_tracker = keras.metrics.Mean(name="intent_kl", dtype="float32")
        self.reg_tracker = keras.metrics.Mean(name="reg_loss", dtype="float32")
        self.uim_optimizer = None

    # ---- set-up -------------------------------------------------------------------------------
    def set_item_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Loads the pipeline's multimodal vectors into the frozen item table."""
        self.items.set_table(ids, vectors)

    def set_stage(self, stage: int) -> None:
        if stage not in (STAGE_UIM, STAGE_DIE, STAGE_JOINT):
            raise ValueError(f"stage must be 1, 2 or 3; received stage={stage!r}")
        if stage != STAGE_JOINT and not self.has_intent:
            raise ValueError(f"{type(self).__name__} has no intent model; only stage 3 applies")
        self.stage = stage

    def compile(self, optimizer, uim_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.uim_optimizer = uim_optimizer

    @property
    def metrics(self):
        regularised = self.model_config.l2 > 0
        return [self.loss_tracker, self.auc_tracker, self.kl_tracker] + ([self.reg_tracker] if regularised else [])

    # ---- forward ------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        return self.forward(inputs, training=training)

    def forward(self, inputs, training=False):
        raise TypeError(f"{type(self).__name__} must define forward()")

    def request_rows(self, inputs):
        """The request-level inputs (:func:`request_input_names`), one row per distinct request
        of the batch with ``model.request_dedup``, and ``expand``, which maps a ``[U, ...]``
        result back to the batch's ``[B, ...]`` rows."""
        names = request_input_names(self.spec)
        if not self.model_config.request_dedup:
            return {n: inputs[n] for n in names}, lambda t: t
        first, index = unique_rows([inputs[n] for n in names])
        return {n: tf.gather(inputs[n], first) for n in names}, lambda t: tf.gather(t, index)

    def intent_target(self, dist: tf.Tensor) -> tf.Tensor:
        """The ground-truth intent in the model's intent output space (identity here)."""
        return tf.cast(dist, tf.float32)

    def uim_variables(self) -> list:
        uim = getattr(self, "uim", None)
        return list(uim.trainable_variables) if uim is not None else []

    # ---- losses -------------------------------------------------------------------------------
    def _stage_loss(self, x, y, outputs):
        """The stage's data loss (see :func:`global_batch_mean`): the mean intent KL over the
        labelled requests in stage 1, the mean click BCE otherwise."""
        if self.stage == STAGE_UIM:
            true = self.intent_target(y["intent"])
            has = tf.cast(tf.reduce_sum(true, axis=-1) > 0, tf.float32)
            return global_batch_mean(intent_kl(true, outputs["intent"]), has)
        label = tf.cast(y["ctr"], tf.float32)
        return global_batch_mean(keras.losses.binary_crossentropy(label, outputs["ctr"]))

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

    def _stage_inputs(self, x, y):
        """The inputs of the current stage, in training and validation alike.

        Stage 2 feeds DAIAN ``x["prior_intent"]`` as its intent input: the user's time-decayed
        click levels before the request, written by the pipeline. It carries no label of the
        row's own request (the request's own click distribution, or that minus the row's own
        click, would: docs/models.md#prior-intent), so the targets ``y`` are never read.
        """
        check_stage_inputs(self.spec, [self.stage], x)
        return x

    def _trainable_split(self):
        uim = self.uim_variables()
        uim_ids = {id(v) for v in uim}
        rest = [v for v in self.trainable_variables if id(v) not in uim_ids]
        if self.stage == STAGE_UIM:
            return [], uim
        if self.stage == STAGE_DIE:
            return rest, []
        return rest, uim

    def train_step(self, data):
        x, y = data
        x = self._stage_inputs(x, y)
        with tf.GradientTape() as tape:
            outputs = self(x, training=True)
            main, uim = self._trainable_split()
            loss = self._stage_loss(x, y, outputs)
            reg = self.regularization_loss(main + uim)
            # The one place the loss is scaled: the replicas' gradients are summed, so each
            # replica's whole objective (data loss + regularisation) is divided by their number.
            scaled = (loss + reg) / tf.distribute.get_strategy().num_replicas_in_sync
        grads = tape.gradient(scaled, main + uim)
        uim_opt = self.uim_optimizer if (self.stage == STAGE_JOINT and self.uim_optimizer is not None) \
            else self.optimizer
        # Variables the loss does not reach get no update (e.g. the UIM when use_die=false:
        # nothing downstream reads its intent); an optimizer with nothing to do is skipped.
        main_pairs = [(g, v) for g, v in zip(grads[:len(main)], main) if g is not None]
        uim_pairs = [(g, v) for g, v in zip(grads[len(main):], uim) if g is not None]
        if uim_opt is self.optimizer:
            main_pairs, uim_pairs = main_pairs + uim_pairs, []
        if main_pairs:
            self.optimizer.apply_gradients(main_pairs)
        if uim_pairs:
            uim_opt.apply_gradients(uim_pairs)
        return self._update_metrics(loss, reg, y, outputs)

    def test_step(self, data):
        x, y = data
        x = self._stage_inputs(x, y)
        outputs = self(x, training=False)
        main, uim = self._trainable_split()
        return self._update_metrics(self._stage_loss(x, y, outputs), self.regularization_loss(main + uim),
                                    y, outputs)

    def _update_metrics(self, loss, reg, y, outputs):
        self.loss_tracker.update_state(loss)
        if self.model_config.l2 > 0:
            self.reg_tracker.update_state(reg)
        self.auc_tracker.update_state(y["ctr"], outputs["ctr"])
        if "intent" in outputs:
            true = self.intent_target(y["intent"])
            has = tf.cast(tf.reduce_sum(true, axis=-1) > 0, tf.float32)
            self.kl_tracker.update_state(intent_kl(true, outputs["intent"]), sample_weight=has)
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


def global_batch_mean(values: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """The weighted mean of ``values`` over the global batch, as this replica's loss term.

    ``sum(weights * values)`` over the local batch divided by ``sum(weights)`` over the global
    batch (an all-reduce over the replicas in sync), times the number of replicas: once
    ``train_step`` divides every replica's loss by that number, the replicas' terms add up to
    the exact global mean however the batch is split (uneven last batch, labelled requests
    spread unevenly). It is the plain local mean without several replicas, and 0 when the
    weights sum to 0.
    """
    values = tf.cast(values, tf.float32)
    weights = tf.ones_like(values) if weights is None else tf.cast(weights, tf.float32)
    total, count = tf.reduce_sum(values * weights), tf.reduce_sum(weights)
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    if replicas > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count) / replicas
    return tf.math.divide_no_nan(total, count)


def intent_kl(true: tf.Tensor, pred: tf.Tensor, eps: float = 1e-8) -> tf.Tensor:
    """Row-wise KL(true ‖ pred) in nats; rows of zeros give 0."""
    true = tf.cast(true, tf.float32)
    pred = tf.clip_by_value(tf.cast(pred, tf.float32), eps, 1.0)
    return tf.reduce_sum(tf.where(true > 0, true * (tf.math.log(tf.maximum(true, eps)) - tf.math.log(pred)),
                                  0.0), axis=-1)
