"""Training and evaluation runs: strategies, DAIAN's three stages, callbacks, exact metrics.

``train_run`` builds the model under the chosen ``tf.distribute`` strategy, trains each stage
(DAIAN: UIM pretrain -> DIE pretrain -> joint; others: one stage), checkpoints after every
stage (a finished stage is skipped when the run is started again; ``BackupAndRestore`` resumes
an interrupted epoch), and writes ``RUN/``:

    RUN/config.json       resolved model + train config
    RUN/spec.json         the FeatureSpec the model was trained with
    RUN/items.npz         the multimodal item table baked into the model
    RUN/stage_<k>/        weights after stage k (+ ``done`` marker)
    RUN/best/             with a ``valid`` split: weights of the final stage's epoch with the best
                          validation AUC (``best.json``: stage, epoch, monitor, value)
    RUN/final/            final weights
    RUN/logs/             TensorBoard
    RUN/metrics.json      exact eval metrics (AUC, GAUC, logloss, intent KL/JS)

Validation: when the data has a ``valid`` split (the pipeline's time window before eval), every
epoch is validated on it; the best checkpoint and early stopping monitor ``val_auc`` (DAIAN's
stage 1: ``val_loss``, the intent KL) on ``valid``, never on ``eval``. Without one there is no
per-epoch validation, no best checkpoint, and ``train.early_stopping_patience`` > 0 is an error.
The final metrics are always the eval split's, from the final weights; ``tirec export
--checkpoint best`` exports the best ones.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf

from tirec.compat import keras
from tirec.features.config_io import to_dict
from tirec.features.jsonio import read_json, write_json
from tirec.features.spec import LATER_TARGETS, FeatureSpec, first_of
from tirec.models import metrics as M
from tirec.models import robustness as R
from tirec.models.base import (DIE_PRETRAIN, UIM_PRETRAIN, Stage, check_stage_inputs, joint_stage,
                                model_input_names, precision_scope, stage_input_names)
from tirec.models.config import (ModelConfig, RunConfig, TrainConfig, changed_settings, check_precision,
                                 load_run_config, setting_text)
from tirec.models.data import check_data, check_split, load_data_spec, load_item_vectors, make_dataset
from tirec.models.registry import get_builder, model_spec
from tirec.models.tasks import INTENT

log = logging.getLogger(__name__)

CHECKPOINTS = ("last", "best")
BEST_RECORD = "best.json"


# ---- strategies ------------------------------------------------------------------------------

def configure_cpu_replicas(n: int) -> None:
    """Splits the CPU into ``n`` logical devices (before TensorFlow initialises its runtime)."""
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise RuntimeError(f"cannot create {n} logical CPU devices: TensorFlow is already "
                               f"initialised with {have}; configure before any TF op") from err


def make_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The strategy named by ``cfg.strategy`` (TF_CONFIG supplies the cluster where needed)."""
    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "mirrored":
        return _mirrored(cfg)
    if cfg.strategy == "multiworker":
        _require_tf_config("multiworker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    _require_tf_config("ps")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return ps_strategy(resolver, cfg.ps_min_shard_bytes)


def _mirrored(cfg: TrainConfig) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over every GPU, else over ``cfg.cpu_replicas`` logical CPU devices; on
    a machine without a GPU an unset ``cpu_replicas`` is an error rather than one silent replica."""
    if tf.config.list_physical_devices("GPU"):  # physical: does not start the runtime
        gpus = tf.config.list_logical_devices("GPU")
        if cfg.cpu_replicas:
            log.warning("--cpu-replicas %d ignored: mirroring over %d GPU(s)", cfg.cpu_replicas, len(gpus))
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    if cfg.cpu_replicas < 1:
        raise ValueError("--strategy mirrored: this machine has no GPU, so it would train one replica; "
                         "pass --cpu-replicas N (train.cpu_replicas) to mirror over N logical CPU "
                         "devices (N=1: one replica, knowingly), or use --strategy default")
    configure_cpu_replicas(cfg.cpu_replicas)
    cpus = tf.config.list_logical_devices("CPU")[:cfg.cpu_replicas]
    return tf.distribute.MirroredStrategy([d.name for d in cpus])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def server_config(num_workers: int) -> "tf.compat.v1.ConfigProto":
    """Session config for ``tf.distribute.Server`` tasks: at least ``num_workers + 1`` inter-op
    threads (with fewer, as on a 2-core machine, a ParameterServer cluster deadlocks)."""
    config = tf.compat.v1.ConfigProto()
    config.inter_op_parallelism_threads = max(num_workers + 1, os.cpu_count() or 1)
    return config


def run_server() -> None:
    """Runs this process's parameter-server-cluster task (worker or ps) from TF_CONFIG, forever."""
    _require_tf_config("ps")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type not in ("worker", "ps"):
        raise ValueError(f"TF_CONFIG task type must be worker or ps for a server; received "
                         f"{resolver.task_type!r} (the chief runs `tirec train --strategy ps`)")
    n_workers = len(resolver.cluster_spec().as_dict().get("worker", []))
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc",
                                  config=server_config(n_workers), start=True)
    log.info("serving %s:%d of the training cluster", resolver.task_type, resolver.task_id)
    server.join()


def ps_strategy(resolver, min_shard_bytes: int = 256 << 10) -> tf.distribute.Strategy:
    """ParameterServerStrategy whose partitioner shards large tables over the parameter servers
    (a variable is split into at most one shard per server, each at least ``min_shard_bytes``)."""
    n_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=max(1, n_ps))
    return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def _log_shards(model) -> None:
    """Logs where each embedding table's variables live (ParameterServerStrategy shards)."""
    for name, table in getattr(getattr(model, "embed", None), "tables", {}).items():
        shards = [s for v in table.weights for s in getattr(v, "variables", [v])]
        log.info("table %s: %d shard(s) of %s rows on %s", name, len(shards),
                 [int(s.shape[0]) for s in shards], sorted({s.device for s in shards}))


def _require_tf_config(name: str) -> None:
    if not os.environ.get("TF_CONFIG"):
        raise ValueError(f"--strategy {name} needs the TF_CONFIG environment variable describing "
                         "the cluster (see README, 'Distributed training')")


# ---- model ------------------------------------------------------------------------------------

def build_model(name: str, spec: FeatureSpec, model_cfg: ModelConfig, item_ids: np.ndarray,
                item_vectors: np.ndarray, precision: str = "float32"):
    """Builds registered model ``name`` with its frozen item table filled.

    ``precision`` (``float32`` or ``mixed_bfloat16``) is the Keras dtype policy its layers
    compute in; variables are float32 either way, so weights load across precisions.
    """
    check_precision(precision, "precision")
    with precision_scope(precision):
        model = get_builder(name)(spec, model_cfg, len(item_ids), item_vectors.shape[1])
    model.set_item_vectors(item_ids, item_vectors)
    return model


def _optimizer(cfg: TrainConfig, scale: float = 1.0):
    lr = cfg.learning_rate * scale
    if cfg.optimizer == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=lr)
    return keras.optimizers.Adam(learning_rate=lr)


def training_stages(model, cfg: TrainConfig, model_cfg: ModelConfig | None = None) -> list[Stage]:
    """The stages ``model`` (a model, or its registered builder) trains in under ``cfg``: DAIAN's
    three (the joint one with ``cfg.uim_lr_scale``), else one joint stage at one learning rate.

    A model with an intent task (``intent_section``: DIHN, DIAN, and DAIAN with
    ``train.three_stage=false``) trains in that one stage with its intent loss weighted by
    ``model.<section>.intent_weight`` of ``model_cfg`` (default: a built model's own config,
    else the section's defaults)."""
    if getattr(model, "three_stages", False) and cfg.three_stage:
        return [UIM_PRETRAIN, DIE_PRETRAIN, joint_stage(cfg.uim_lr_scale)]
    section = getattr(model, "intent_section", "")
    if section:
        model_cfg = model_cfg or getattr(model, "model_config", None) or ModelConfig()
        return [joint_stage(intent_weight=model_cfg.section(section).intent_weight)]
    return [joint_stage()]


def stages_for(model, cfg: TrainConfig) -> list[int]:
    """The numbers of :func:`training_stages`."""
    return [stage.number for stage in training_stages(model, cfg)]


def _datasets(strategy, data_dir, spec, cfg: TrainConfig, names, stages, repeat: bool, has_valid: bool):
    """The train dataset (or DatasetCreator under ParameterServerStrategy) and the valid one
    (None without a ``valid`` split)."""
    keep = set(names) | stage_input_names(spec, stages)

    def select(x, y):
        return {k: v for k, v in x.items() if k in keep}, y

    ps = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
    workers = 1
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        cluster = strategy.cluster_resolver.cluster_spec().as_dict()
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))

    def train_fn(ctx=None):
        per_replica = ctx.get_per_replica_batch_size(cfg.batch_size) if ctx else cfg.batch_size
        return make_dataset(data_dir, "train", spec, per_replica, shuffle_buffer=cfg.shuffle_buffer,
                            shuffle_block=cfg.shuffle_block, seed=cfg.seed, repeat=ps or repeat, input_context=ctx,
                            workers=workers).map(select)

    if ps:
        train = keras.utils.experimental.DatasetCreator(train_fn)
    else:
        train = train_fn()
    valid = make_dataset(data_dir, "valid", spec, cfg.batch_size, workers=workers).map(select) \
        if has_valid else None
    return train, valid


def _check_run_dir(run_dir: str, spec: FeatureSpec, data_dir: str) -> None:
    """A run folder that already holds a spec (a resumed run) must have been trained on data
    with the same spec."""
    path = os.path.join(run_dir, "spec.json")
    if tf.io.gfile.exists(path):
        diff = FeatureSpec.load(path).diff(spec)
        if diff:
            raise ValueError(f"--run {run_dir} holds a run on other data: its spec.json differs from "
                             f"{os.path.join(data_dir, 'spec.json')}: {first_of(diff)}; "
                             f"train into a new --run folder")


# Settings of how a run trains, not of what it learns: a run may resume with others (on
# another machine). Its data are checked by their spec (_check_run_dir), not their path.
RESUME_MAY_CHANGE = ("data", "train.strategy", "train.cpu_replicas", "train.backup_every_steps",
                     "train.ps_min_shard_bytes")


def _check_run_config(run_dir: str, run_cfg: RunConfig) -> None:
    """A run folder that already holds a config (a resumed run) must be resumed with the same
    settings (but :data:`RESUME_MAY_CHANGE`): a finished stage is not trained again, and its
    config.json would otherwise claim settings its weights were not trained with."""
    if not tf.io.gfile.exists(os.path.join(run_dir, "config.json")):
        return
    old, new = _flat(to_dict(load_run_config(run_dir))), _flat(to_dict(run_cfg))
    diff = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE]
    if diff:
        raise ValueError(f"--run {run_dir} holds a run with other settings ({first_of(diff)}); resume it with "
                         f"the same settings, or train into a new --run folder")


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{"model.daian.att_units": 32, ...}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_run_files(run_dir: str, spec: FeatureSpec, run_cfg: RunConfig, item_ids: np.ndarray,
                     item_vectors: np.ndarray) -> None:
    """``RUN/spec.json`` (kept when a resumed run has it), ``config.json`` and ``items.npz``: what
    :func:`load_run` rebuilds the model from."""
    tf.io.gfile.makedirs(run_dir)
    spec_path = os.path.join(run_dir, "spec.json")
    if not tf.io.gfile.exists(spec_path):
        spec.save(spec_path)
    write_json(os.path.join(run_dir, "config.json"), to_dict(run_cfg))
    buf = io.BytesIO()
    np.savez(buf, ids=item_ids, vectors=item_vectors)
    with tf.io.gfile.GFile(os.path.join(run_dir, "items.npz"), "wb") as fh:
        fh.write(buf.getvalue())


def check_run_data(model_name: str, data_dir: str, run_spec: FeatureSpec) -> None:
    """Raises a ValueError listing every difference between the records of ``data_dir`` (as
    model ``model_name`` reads them) and a trained run's ``run_spec``. The training targets
    added to the records after a run was trained (``intent_cate_clicks``) are no difference: the
    run neither reads nor needs them, so an older run evaluates on newer records. The other way
    round is a difference: a run trained on records with such a column does not evaluate on
    records without it."""
    data = model_spec(model_name, load_data_spec(data_dir))
    data.without(n for n in LATER_TARGETS if n not in run_spec.names).check_compatible(run_spec, what="data")


def _check_validation(cfg: TrainConfig, data_dir: str, has_valid: bool, strategy=None) -> None:
    """Early stopping needs per-epoch validation on a valid split."""
    if not cfg.early_stopping_patience:
        return
    if not has_valid:
        raise ValueError(f"train.early_stopping_patience={cfg.early_stopping_patience} needs a valid split, "
                         f"and {os.path.join(data_dir, 'valid')}/ is absent (early stopping never selects "
                         f"on eval): run the pipeline with its validation window, or set "
                         f"train.early_stopping_patience=0")
    if cfg.strategy == "ps" or isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        raise ValueError("train.early_stopping_patience: --strategy ps runs no per-epoch validation; "
                         "set train.early_stopping_patience=0")


def warn_unread_run_settings(model_cfg: ModelConfig, cfg: TrainConfig, model_name: str, builder) -> None:
    """Logs the settings that training ``model_name`` does not read: a ``model.name`` naming
    another model, the sections of other models, and the stage settings of a schedule it does
    not train in (``train.three_stage`` and ``uim_lr_scale`` outside DAIAN's three stages,
    ``model.daian.intent_weight`` inside them)."""
    if model_cfg.name not in (ModelConfig().name, model_name):
        log.warning("model.name=%r not read: training %r (--model)", model_cfg.name, model_name)
    for other in sorted(set(model_cfg.sections) - {model_name}):
        log.warning("model.%s.* not read: training %r", other, model_name)
    staged = getattr(builder, "three_stages", False)
    if not staged:
        unread = ("three_stage", "uim_lr_scale")
    else:
        unread = () if cfg.three_stage else ("uim_lr_scale",)
    for key, value in changed_settings(cfg, unread).items():
        log.warning("train.%s=%s not read: only DAIAN's three stages read it", key, setting_text(value))
    if staged and cfg.three_stage and changed_settings(model_cfg.section(model_name), ("intent_weight",)):
        log.warning("model.%s.intent_weight not read: it weighs the intent loss of train.three_stage=false",
                    model_name)


def train_run(data_dir: str, model_name: str, run_dir: str, model_cfg: ModelConfig,
              train_cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None,
              callbacks: list | None = None) -> dict:
    """Trains ``model_name`` on ``data_dir`` into ``run_dir``; returns the eval metrics.

    ``callbacks`` are added to every stage's ``fit`` (after the built-in ones).
    """
    builder = get_builder(model_name)  # fail early on an unknown name
    warn_unread_run_settings(model_cfg, train_cfg, model_name, builder)
    model_cfg = dataclasses.replace(model_cfg, name=model_name).resolved()
    # Check the input before building anything: one clear line per problem.
    data_spec, has_valid = check_data(data_dir)
    spec = model_spec(model_name, data_spec)  # the sequences the model reads (its run spec.json)
    stages = training_stages(builder, train_cfg, model_cfg)
    check_stage_inputs(spec, stages)
    run_cfg = RunConfig(model=model_cfg, train=train_cfg, data=data_dir)
    _check_run_dir(run_dir, spec, data_dir)
    _check_run_config(run_dir, run_cfg)
    _check_validation(train_cfg, data_dir, has_valid, strategy)
    if train_cfg.warm_start:
        check_warm_start_source(train_cfg.warm_start, model_name)
    strategy = strategy or make_strategy(train_cfg)
    # One backup folder for every worker: Keras' BackupAndRestore writes the chief's there
    # (the others write aside) and every worker restores from it, so all resume at one step.
    backup_dir = os.path.join(run_dir, "backup")
    if not is_chief(strategy):
        # Multi-worker: every worker runs the same program; only the chief owns RUN/.
        run_dir = os.path.join(run_dir, f".worker_{strategy.cluster_resolver.task_id}")
    item_ids, item_vectors, item_meta = load_item_vectors(data_dir)
    keras.utils.set_random_seed(train_cfg.seed)
    log.info("strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    with strategy.scope():  # a setting the data cannot serve fails here, before RUN/ holds a file
        model = build_model(model_name, spec, model_cfg, item_ids, item_vectors, train_cfg.precision)
    _write_run_files(run_dir, spec, run_cfg, item_ids, item_vectors)
    names = model_input_names(spec)
    steps = _steps_per_epoch(data_dir, train_cfg, strategy)
    # With a known epoch length the data repeats and fit counts the steps.
    train_ds, valid_ds = _datasets(strategy, data_dir, spec, train_cfg, names, stages, repeat=steps is not None,
                                   has_valid=has_valid)
    if not has_valid:
        log.info("no valid split in %s: no per-epoch validation and no best checkpoint", data_dir)
    # Build the variables before fit (BackupAndRestore and checkpoints need them).
    x, _ = next(iter(make_dataset(data_dir, "eval", spec, 2)))
    with strategy.scope():
        built = model({k: v for k, v in x.items() if k in names})
    intent_classes = built["intent"].shape[-1] if "intent" in built else None
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        _log_shards(model)
    if train_cfg.warm_start:
        warm_start(model, train_cfg.warm_start, model_name, run_dir)
    history = {}
    with strategy.scope():
        # One compile for every stage: each stage gets its own optimizers and traced functions.
        model.set_stage(stages[0])
        model.compile(make_optimizer=lambda scale: _optimizer(train_cfg, scale), steps_per_execution=1)
    warnings = []
    for stage in stages:
        history[stage.name] = _train_stage(model, stage, strategy, train_ds, valid_ds, run_dir, backup_dir,
                                           train_cfg, final=stage == stages[-1], extra=callbacks or [],
                                           steps_per_epoch=steps)
        note = intent_collapse(history[stage.name], intent_classes, stage.name) \
            if dict(stage.tasks).get(INTENT) else None
        if note:
            log.warning("%s", note)
            warnings.append(note)
    model.set_stage(stages[-1])  # the joint stage
    final = os.path.join(run_dir, "final", "weights")
    model.save_weights(final)
    metrics = evaluate_model(model, data_dir, spec, train_cfg.batch_size)
    metrics["history"] = history
    if warnings:
        metrics["warnings"] = warnings
    metrics["strategy"] = type(strategy).__name__
    metrics["replicas"] = strategy.num_replicas_in_sync
    metrics["valid_split"] = has_valid
    best = os.path.join(run_dir, "best", BEST_RECORD)
    if tf.io.gfile.exists(best):
        metrics["best_checkpoint"] = read_json(best)
    metrics["embedding"] = item_meta.get("provider", "")
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    return metrics


def check_warm_start_source(source: str, model_name: str) -> None:
    """Raises a ValueError or FileNotFoundError starting ``train.warm_start=SOURCE:`` unless
    ``source`` is a run folder that trained ``model_name``; checked before the new run writes
    anything, so a mistyped folder does not leave a run that refuses the corrected command."""
    try:
        trained = load_run_config(source).model.name
    except (ValueError, FileNotFoundError) as err:
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        raise kind(f"train.warm_start={source!r}: {err}") from None
    if trained != model_name:
        raise ValueError(f"train.warm_start={source!r}: that run trained {trained!r}, not {model_name!r}")


def warm_start(model, source: str, model_name: str, run_dir: str) -> int:
    """Loads run ``source``'s last weights into the built ``model``; writes
    ``RUN/warm_start.json`` and returns the number of variables restored.

    Raises:
      ValueError: naming ``source`` when it trained another model, or the model variables its
        checkpoint lacks (another architecture or settings).
    """
    check_warm_start_source(source, model_name)
    try:
        status = model.load_weights(checkpoint_prefix(source, "last"))
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as err:
        raise ValueError(f"train.warm_start={source!r}: its checkpoint does not hold every variable of this "
                         f"{model_name} model (another architecture or settings): {err}") from None
    status.expect_partial()  # the optimizer slots of the old run are not restored
    restored = len(model.weights)
    write_json(os.path.join(run_dir, "warm_start.json"), {"from": source, "restored": restored})
    log.info("warm start: %d variables from %s", restored, source)
    return restored


def _steps_per_epoch(data_dir: str, cfg: TrainConfig, strategy) -> int | None:
    """Steps of one epoch: the configured cap, else the pipeline's train count / batch size.

    A known epoch length lets BackupAndRestore resume inside an interrupted epoch. Multi-worker
    runs keep Keras' own end-of-data detection (each worker reads its shard).
    """
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    stats = os.path.join(data_dir, "stats.json")
    if not tf.io.gfile.exists(stats):
        return None
    n = int(read_json(stats).get("written", {}).get("train", 0))
    return -(-n // cfg.batch_size) if n else None


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation ``monitor`` in ``DIR/weights``
    and that epoch's record in ``DIR/best.json`` (stage, epoch, monitor, value). A resumed stage
    starts from the recorded best, so a worse epoch after a restart does not replace it.

    Args:
      directory: the checkpoint folder (``RUN/best``).
      monitor: a key of the epoch logs, ``val_auc`` or ``val_loss``.
      mode: ``max`` or ``min``.
      stage: the training stage (recorded; a record of another stage is not resumed from).
    """

    def __init__(self, directory: str, monitor: str, mode: str, stage: int):
        super().__init__()
        self.directory, self.monitor, self.mode, self.stage = directory, monitor, mode, stage
        self.best = None
        record = os.path.join(directory, BEST_RECORD)
        if tf.io.gfile.exists(record):
            previous = read_json(record)
            if previous.get("stage") == stage and previous.get("monitor") == monitor:
                self.best = previous["value"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(f"best checkpoint: {self.monitor!r} is not in the epoch logs {sorted(logs)}")
        value = float(logs[self.monitor])
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if np.isfinite(value) and better:
            self.best = value
            self.model.save_weights(os.path.join(self.directory, "weights"))
            write_json(os.path.join(self.directory, BEST_RECORD),
                        {"stage": self.stage, "epoch": epoch, "monitor": self.monitor, "value": value})


def _backup_freq(cfg: TrainConfig, steps_per_epoch: int | None, ps: bool):
    """BackupAndRestore's ``save_freq``: every ``train.backup_every_steps`` steps, or at epoch
    ends under ParameterServerStrategy or without a known epoch length (then a set
    ``backup_every_steps`` is named as not read)."""
    if steps_per_epoch and not ps:
        return cfg.backup_every_steps
    if changed_settings(cfg, ("backup_every_steps",)):
        why = "ParameterServerStrategy" if ps else "a run whose epoch length is unknown (set --steps-per-epoch)"
        log.warning("train.backup_every_steps=%d not read: %s backs up at epoch ends", cfg.backup_every_steps, why)
    return "epoch"


def intent_collapse(history: dict, classes: int | None, stage: str) -> str | None:
    """Why the intent model of a stage that trained it collapsed, or None: its best intent KL
    (on valid when the stage validated, else on train) is above log(classes), which predicting the
    uniform distribution never exceeds (a saturated softmax: its intent output is not usable)."""
    key = "val_intent_kl" if history.get("val_intent_kl") else "intent_kl"
    kl = history.get(key)
    if not kl or not classes or classes < 2 or min(kl) <= math.log(classes):
        return None
    return (f"stage {stage}: the intent model's best {key} is {min(kl):.3f}, above log({classes}) = "
            f"{math.log(classes):.3f}, which predicting the uniform distribution never exceeds: it "
            f"collapsed (a saturated softmax) and its intent output is not usable; retrain with a lower "
            f"train.learning_rate or another train.seed")


def _train_stage(model, stage: Stage, strategy, train_ds, valid_ds, run_dir, backup_dir, cfg: TrainConfig,
                 final: bool, extra: list, steps_per_epoch: int | None):
    name = stage.name
    stage_dir = os.path.join(run_dir, f"stage_{stage.number}")
    done = os.path.join(stage_dir, "done")
    weights = os.path.join(stage_dir, "weights")
    if tf.io.gfile.exists(done):
        log.info("stage %s already finished: loading its weights", name)
        model.set_stage(stage)
        model.load_weights(weights)
        return {"skipped": True}
    log.info("stage %d (%s)", stage.number, name)
    model.set_stage(stage)
    monitor, mode = stage.monitor, stage.mode
    ps = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
    # With ParameterServerStrategy there is no per-epoch validation (the coordinator has no
    # validation loop for remote datasets).
    validate = valid_ds is not None and not ps
    callbacks = [keras.callbacks.TensorBoard(os.path.join(run_dir, "logs", name))]
    if not ps:
        # With ParameterServerStrategy the per-batch logs are remote values (TerminateOnNaN
        # cannot read them); the coordinator reschedules the work of a failed worker.
        callbacks.append(keras.callbacks.TerminateOnNaN())
    # A restarted chief (or, multi-worker, every restarted worker) resumes the stage from the
    # last backup; Keras backs up a ParameterServerStrategy run only at epoch ends.
    callbacks.append(keras.callbacks.BackupAndRestore(
        os.path.join(backup_dir, name), delete_checkpoint=True,
        save_freq=_backup_freq(cfg, steps_per_epoch, ps)))
    if validate and final:
        callbacks.append(BestCheckpoint(os.path.join(run_dir, "best"), monitor, mode, stage.number))
    if validate and cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                       patience=cfg.early_stopping_patience,
                                                       restore_best_weights=True))
    callbacks += list(extra)
    t0 = time.time()
    interactive = sys.stdout.isatty() or bool(os.environ.get("TIREC_PROGRESS"))
    hist = model.fit(train_ds, validation_data=valid_ds if validate else None, epochs=cfg.epochs,
                     steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                     verbose=1 if interactive else 2)  # a progress bar on a terminal
    model.save_weights(weights)
    with tf.io.gfile.GFile(done, "w") as fh:
        fh.write(str(time.time()))
    out = {k: [float(x) for x in v] for k, v in hist.history.items()}
    out["seconds"] = round(time.time() - t0, 2)
    return out


# ---- evaluation -------------------------------------------------------------------------------

def predict_eval(model, data_dir: str, spec: FeatureSpec, batch_size: int, noise=None,
                 keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Predictions and the columns the metrics need, over the whole eval split.

    Args:
      noise: a :class:`tirec.models.robustness.HistoryNoise` applied to every batch before the
        model reads it (``tirec evaluate --noise``), or None.
      keep: further columns to return as read (clean, before any noise), e.g. the slices'.
    """
    names = model_input_names(spec)
    extra = tuple(keep) + ((noise.request,) if noise is not None else ())
    ds = make_dataset(data_dir, "eval", spec, batch_size, extra_columns=extra)
    out = {k: [] for k in ("label", "prob", "user_id", "intent_true", "intent_pred", *keep)}

    @tf.function
    def step(x):
        return model({k: v for k, v in x.items() if k in names}, training=False)

    for x, y in ds:
        for k in keep:
            if k != "user_id":
                out[k].append(x[k].numpy())
        if noise is not None:
            x = {k: tf.constant(v) for k, v in noise({k: v.numpy() for k, v in x.items()}).items()}
        pred = step(x)
        out["label"].append(y["ctr"].numpy()[:, 0])
        out["prob"].append(pred["ctr"].numpy()[:, 0])
        out["user_id"].append(x["user_id"].numpy())
        if "intent" in pred:
            out["intent_true"].append(model.intent_truth(y).numpy())
            out["intent_pred"].append(pred["intent"].numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


def evaluate_model(model, data_dir: str, spec: FeatureSpec, batch_size: int = 4096, noise=None,
                   slices: list[str] | tuple = ()) -> dict:
    """Exact AUC, GAUC, logloss (and intent KL/JS for intent models) on the eval split; under
    ``noise`` (a :class:`~tirec.models.robustness.HistoryNoise`) with its settings and counts
    (``noise``), and with the metrics of each of ``slices`` (``slices``)."""
    keep = tuple(dict.fromkeys(k for k in R.slice_columns(spec).values() if k)) if slices else ()
    p = predict_eval(model, data_dir, spec, batch_size, noise=noise, keep=keep)
    metrics = M.ctr_metrics(p["label"].astype(np.int64), p["prob"], p["user_id"],
                            intent_true=p.get("intent_true"), intent_pred=p.get("intent_pred"))
    if noise is not None:
        metrics["noise"] = noise.summary()
    if slices:
        metrics["slices"] = R.evaluate_slices(spec, data_dir, p, list(slices))
    return metrics


def checkpoint_prefix(run_dir: str, checkpoint: str = "last") -> str:
    """The weights prefix of a run's ``last`` (final) or ``best`` checkpoint.

    ``best`` is the final stage's epoch with the best validation AUC (``RUN/best``), written only
    when the run's data had a ``valid`` split.
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}; received {checkpoint!r}")
    if checkpoint == "last":
        return os.path.join(run_dir, "final", "weights")
    if not tf.io.gfile.exists(os.path.join(run_dir, "best", BEST_RECORD)):
        raise FileNotFoundError(f"{run_dir} has no best checkpoint ({os.path.join(run_dir, 'best')}/): it "
                                f"is written only when the training data has a valid split; use "
                                f"--checkpoint last")
    return os.path.join(run_dir, "best", "weights")


def best_record(run_dir: str) -> dict:
    """``RUN/best/best.json``: the stage, epoch, monitor and value of the best checkpoint."""
    checkpoint_prefix(run_dir, "best")  # a clear error when there is none
    return read_json(os.path.join(run_dir, "best", BEST_RECORD))


def load_run(run_dir: str, precision: str | None = "float32", checkpoint: str = "last"):
    """Rebuilds a trained run's model from its config, spec, item table and weights.

    Args:
      run_dir: a ``tirec train`` run folder.
      precision: the compute precision of the rebuilt model, ``float32`` (default, whatever
        the run trained in: the weights are float32) or ``mixed_bfloat16``; None takes the run's
        ``train.precision``.
      checkpoint: ``last`` (the final weights, default) or ``best`` (see :func:`checkpoint_prefix`).
    """
    weights = checkpoint_prefix(run_dir, checkpoint)
    run_cfg = load_run_config(run_dir)
    spec = FeatureSpec.load(os.path.join(run_dir, "spec.json"))
    with tf.io.gfile.GFile(os.path.join(run_dir, "items.npz"), "rb") as fh:
        z = np.load(io.BytesIO(fh.read()))
        ids, vectors = z["ids"], z["vectors"]
    if precision is None:
        precision = run_cfg.train.precision
    model = build_model(run_cfg.model.name, spec, run_cfg.model, ids, vectors, precision)
    model.load_weights(weights).expect_partial()
    return model, spec, to_dict(run_cfg)


def _loaded_run(run_dir: str, data_dir: str) -> tuple:
    """``(model, spec)`` of a trained run, after checking it reads ``data_dir``'s records."""
    model, spec, cfg = load_run(run_dir)
    check_run_data(cfg["model"]["name"], data_dir, spec)
    return model, spec


def evaluate_run(data_dir: str, run_dir: str, baseline_dir: str | None = None,
                 batch_size: int = 4096, noise: float | None = None, noise_seed: int = 0,
                 slices: list[str] | tuple = ()) -> dict:
    """``tirec evaluate``: exact metrics of a run on ``data_dir``'s eval split (+ RelaImpr).

    Args:
      noise: P, the percentage of every behaviour sequence's real positions replaced by random
        catalogue items (:mod:`tirec.models.robustness`), or None for the clean records.
      noise_seed: the seed of those draws.
      slices: slice names (:data:`tirec.models.robustness.SLICES`; comma lists allowed).
    """
    slices = R.check_slices(slices)
    percent = None if noise is None else R.check_percent(noise)
    check_split(data_dir, "eval")
    if baseline_dir:  # fails before any scoring; its weights are loaded after the run's scores
        check_run_data(load_run_config(baseline_dir).model.name, data_dir,
                       FeatureSpec.load(os.path.join(baseline_dir, "spec.json")))
    run = _loaded_run(run_dir, data_dir)

    def score(model, spec, slices=()):
        history_noise = None if percent is None else R.HistoryNoise(
            spec, R.load_catalogue(data_dir), percent, noise_seed)
        return evaluate_model(model, data_dir, spec, batch_size, noise=history_noise, slices=slices)

    metrics = score(*run, slices=slices)
    del run
    if baseline_dir:  # scored here, on the same records (and noise): not its stored metrics
        base_metrics = score(*_loaded_run(baseline_dir, data_dir))
        metrics["baseline"] = baseline_dir
        for key in ("auc", "gauc"):
            metrics[f"baseline_{key}"] = base_metrics[key]
            metrics[f"rela_impr_{key}"] = M.rela_impr(metrics[key], base_metrics[key])
    previous = read_json(os.path.join(run_dir, "metrics.json")) if tf.io.gfile.exists(
        os.path.join(run_dir, "metrics.json")) else {}
    for key in ("noise", "slices", "baseline", "baseline_auc", "baseline_gauc", "rela_impr_auc",
                "rela_impr_gauc"):  # describe this evaluation only
        previous.pop(key, None)
    previous.update(metrics)
    write_json(os.path.join(run_dir, "metrics.json"), previous)
    return metrics
