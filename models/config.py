"""Typed configuration of models and training (the ``model:`` and ``train:`` config sections).

Each section validates itself when it is built (``__post_init__``). Defaults follow the DAIAN
paper (docs/models.md#optimisers-and-defaults): batch 4096, Adagrad lr 0.05, tower 512-256-128, attention 128 units x
4 heads (``model.daian``), sequence length 50 (from the FeatureSpec).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from tirec.features.config_io import RUN_CONFIG, SECTIONS, Checks, from_dict, read_mapping
from tirec.features.jsonio import exists

STRATEGIES = ("default", "mirrored", "multiworker", "ps")
PRECISIONS = ("float32", "mixed_bfloat16")


# The DAIAN settings that lived in the common section before each model had its own: read
# under their old names with a deprecation line (and from old runs' config.json, quietly).
DAIAN_MOVED = ("att_units", "att_heads", "use_uim", "use_die", "use_sein", "uim_hidden", "uim_attention",
               "i2e_fusion", "sim_bins", "sim_fusion", "gate_inputs", "gamma", "explicit_len",
               "explicit_buckets")


def _model_sections():
    from tirec.models import registry  # TensorFlow-free; model modules load on first lookup

    return registry.model_names, registry.config_class


def _registered_names() -> list[str]:
    return _model_sections()[0]()


def _registered_class(name: str) -> type:
    return _model_sections()[1](name)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The ``model:`` section: the settings every registered model shares, and one sub-section
    per model with its own settings.

    A model reads the shared settings as attributes (``model_config.emb_dim``) and its own with
    ``model_config.section("daian")`` (the frozen dataclass it registered, see
    :mod:`tirec.models.registry`): ``model.daian.uim_attention`` in YAML and ``--set``. A model
    section not given is that dataclass's defaults. Shared are the settings that the model base
    (:class:`tirec.models.base.TirModel`, the embedder) or several models read; a model that
    never reads one lists it in ``TirModel.shared_unread`` and names it in a warning when set.

    Args:
      name: registered model name (``din``, ``daian``, ``gapnet``).
      emb_dim: width of every id embedding (per field); an item is ``[id ‖ side fields]``.
      table_shards: row shards per embedding table (ParameterServer: the partitioner decides).
      din_hidden: DIN attention FFN sizes (every model's DIN attention unit but DAIAN's UIM,
        which keeps the unit's 80-40 sigmoid default: docs/models.md#uim).
      tower: MLP tower sizes.
      activation: ``relu`` or ``dice`` in the tower.
      dropout: tower dropout.
      l2: weight of an L2 penalty ``l2 * sum(W**2)`` on the kernels of the model's Dense
        layers (tower, attention, gate, UIM and I2E projections; not on biases, embedding
        tables or the frozen item table), summed over the kernels the current stage trains and
        added to the stage's data loss. 0 (default) = off.
      hist_buckets: how DIN attention (DIN's, DAIAN's and the UIM's ``din`` pooling), DEI2N's
        sequence attention and GAP-Net's per-view attention run over the behaviour sequences;
        the outputs are the same up to float rounding: ``0`` on the padded sequence, ``k >= 1``
        on the real behaviours compacted into ``k`` groups of samples of similar length (faster
        when histories are shorter than ``L``; not used with ``activation=dice``, whose
        statistics would become per group).
      request_dedup: run the request-level blocks (history and user embeddings; DAIAN's UIM,
        I2E and explicit self-attention; GAP-Net's views, their items sifted once per distinct item) once per distinct request of the batch and gather
        their outputs back to the candidates; the outputs are the same up to float rounding.
        The saving grows with the candidates per request a batch holds: many with
        ``train.shuffle_block`` > 1 (the default) or ``train.shuffle_buffer=0``, few with a
        record-level shuffle (``train.shuffle_block=1``).
      sections: the model sub-sections given, by model name (``model.<name>.*``).
    """

    MOVED_KEYS: ClassVar[dict[str, str]] = {key: f"daian.{key}" for key in DAIAN_MOVED}

    name: str = "daian"
    emb_dim: int = 16
    table_shards: int = 1
    din_hidden: tuple[int, ...] = (80, 40)
    tower: tuple[int, ...] = (512, 256, 128)
    activation: str = "relu"
    dropout: float = 0.0
    l2: float = 0.0
    hist_buckets: int = 16
    request_dedup: bool = True
    sections: Mapping[str, Any] = dataclasses.field(
        default_factory=dict, hash=False,
        metadata={SECTIONS: (_registered_names, _registered_class)})

    def __post_init__(self) -> None:
        check = Checks("model", self)
        check.counts("emb_dim", "table_shards")
        check.one_of("activation", ("relu", "dice"))
        if not 0.0 <= self.dropout < 1.0:
            check.bad("dropout", "must be in [0, 1)")
        check.finite("l2", least=0, note=" (0 = off)")
        check.widths("tower", "din_hidden")
        check.counts("hist_buckets", least=0, note=" (0 = no compaction)")
        check.flags("request_dedup")
        for name, section in self.sections.items():
            expected = _registered_class(name)  # an unknown model name fails listing the valid ones
            if not isinstance(section, expected):
                raise ValueError(f"model.{name}: expected a {expected.__name__}; received {section!r}")

    def section(self, name: str | None = None) -> Any:
        """The settings of model ``name`` (default: ``self.name``): the ``model.<name>``
        sub-section given, else its registered dataclass's defaults."""
        name = name or self.name
        if name in self.sections:
            return self.sections[name]
        return _registered_class(name)()

    def resolved(self) -> "ModelConfig":
        """This config with the section of model ``name`` filled in (its defaults when not
        given), as a run records it in ``config.json``."""
        return dataclasses.replace(self, sections={**self.sections, self.name: self.section()})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Args:
      batch_size: global batch size (split over replicas).
      epochs: epochs per stage (DAIAN trains three stages; ``three_stage=false`` one).
      learning_rate: Adagrad learning rate.
      optimizer: ``adagrad`` or ``adam``.
      three_stage: DAIAN's UIM pretrain -> DIE pretrain -> joint schedule
        (docs/models.md#three-training-stages).
      uim_lr_scale: the UIM's learning-rate factor in stage 3.
      strategy: ``default``, ``mirrored``, ``multiworker`` (TF_CONFIG) or ``ps`` (TF_CONFIG).
      ps_min_shard_bytes: ``ps``: a variable is split over the parameter servers into at most
        one shard per server, each at least this large (256 KiB); an error with another strategy.
      cpu_replicas: logical CPU devices for ``mirrored`` when there is no GPU. 0 (default)
        with ``mirrored`` on a machine without a GPU is an error naming ``--cpu-replicas``
        (1 = knowingly one replica); ignored, with a warning, when there are GPUs; an error
        with another strategy.
      steps_per_epoch: cap on steps per epoch (0 = the whole data; ``ps`` needs a value).
      shuffle_buffer: records shuffled before batching (0 = off; else at least one block).
      shuffle_block: consecutive records of a shard that are shuffled as one unit (1 = each
        record alone). The pipeline writes a request's candidates next to each other, so with
        blocks a batch holds a few hundred whole requests instead of thousands of single
        candidates, and ``model.request_dedup`` runs the request-level blocks far fewer times
        (``benchmarks/bench_train.py``: DAIAN 755 -> 426 ms/step against blocks of 1);
        batches hold fewer distinct users.
      early_stopping_patience: epochs without gain on the ``valid`` split (AUC; DAIAN's
        stage 1: intent KL loss) before a stage stops and keeps its best epoch's weights
        (0 = off). Needs the pipeline's ``valid`` split; never selects on ``eval``.
      backup_every_steps: BackupAndRestore frequency; a killed run resumes from the last backup
        step of the interrupted epoch. Under ``ps``, or when the epoch length is unknown
        (``multiworker`` without ``steps_per_epoch``), backups are at epoch ends (a set value is
        then named as not read).
      seed: random seed.
      precision: ``float32``, or ``mixed_bfloat16`` (the Keras mixed precision policy: layers
        compute in bfloat16, so matmuls use AMX on CPUs that have it and tensor cores on GPUs;
        variables, embedding tables, the frozen item table, softmaxes, losses, metrics and the
        ``ctr``/``intent`` outputs stay float32).
      warm_start: a run folder whose last weights initialise the model before training (the
        same model on a compatible spec: every variable of the model must be in it, else the
        run fails naming the missing ones); "" (default) starts from scratch.
    """

    batch_size: int = 4096
    epochs: int = 1
    learning_rate: float = 0.05
    optimizer: str = "adagrad"
    three_stage: bool = True
    uim_lr_scale: float = 0.1
    strategy: str = "default"
    cpu_replicas: int = 0
    ps_min_shard_bytes: int = 256 << 10
    steps_per_epoch: int = 0
    shuffle_buffer: int = 100_000
    shuffle_block: int = 16
    early_stopping_patience: int = 0
    backup_every_steps: int = 200
    seed: int = 0
    precision: str = "float32"
    warm_start: str = ""

    def __post_init__(self) -> None:
        check = Checks("train", self)
        bad = check.bad
        check.counts("batch_size", "epochs")
        check.finite("learning_rate", above=0)
        check.counts("seed", "cpu_replicas", least=0)
        check.one_of("optimizer", ("adagrad", "adam"))
        check.one_of("strategy", STRATEGIES)
        if self.cpu_replicas and self.strategy != "mirrored":
            bad("cpu_replicas", f"only --strategy mirrored reads it (strategy={self.strategy!r})")
        check.counts("ps_min_shard_bytes")
        if self.strategy != "ps" and self.ps_min_shard_bytes != TrainConfig.ps_min_shard_bytes:
            bad("ps_min_shard_bytes", f"only --strategy ps reads it (strategy={self.strategy!r})")
        check.counts("steps_per_epoch", least=0, note=" (0 = the whole data)")
        if self.strategy == "ps" and self.steps_per_epoch < 1:
            bad("steps_per_epoch", "ParameterServerStrategy needs steps_per_epoch >= 1")
        check.counts("shuffle_block")
        if self.shuffle_buffer < 0 or 0 < self.shuffle_buffer < self.shuffle_block:
            bad("shuffle_buffer", f"must be 0 (off) or >= train.shuffle_block ({self.shuffle_block}): the "
                                  f"buffer holds whole blocks")
        check.counts("early_stopping_patience", least=0, note=" (0 = off)")
        check.counts("backup_every_steps")
        if not 0 < self.uim_lr_scale <= 1:
            bad("uim_lr_scale", "must be in (0, 1]")
        check_precision(self.precision, "train.precision")


def changed_settings(section, fields=None) -> dict:
    """``{field: value}`` of a model section's dataclass ``section`` whose value differs from the
    class's default (over ``fields``, or every field)."""
    default = type(section)()
    names = fields if fields is not None else [f.name for f in dataclasses.fields(section)]
    return {n: getattr(section, n) for n in names if getattr(section, n) != getattr(default, n)}


def setting_text(value) -> str:
    """A setting's value as a warning shows it: ``true`` / ``false`` as written in YAML and
    ``--set``, anything else as its ``repr``."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def warn_unread_settings(logger, name: str, section, rules) -> list[str]:
    """Warns on ``logger``, one line per switch of model section ``name`` that leaves
    non-default settings unread (a config file ablated with one ``--set``); returns the lines.
    ``rules`` is ``((switch, value, fields), ...)``: with ``section.<switch> == value`` the
    ``fields`` are not read."""
    out = []
    for switch, value, fields in rules:
        changed = changed_settings(section, fields)
        if getattr(section, switch) == value and changed:
            given = ", ".join(f"model.{name}.{f}={setting_text(v)}" for f, v in changed.items())
            out.append(f"model.{name}.{switch}={setting_text(value)}: {given} not read")
            logger.warning(out[-1])
    return out


def check_precision(precision, what: str = "precision") -> str:
    """Returns ``precision`` if it is one of :data:`PRECISIONS`, else raises a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what}: must be one of {', '.join(PRECISIONS)}; received {precision!r}")
    return precision


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run's ``RUN/config.json``: the resolved model and train sections and the data
    folder it trained on."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: str = ""


def load_run_config(run_dir: str) -> RunConfig:
    """A run folder's ``config.json``, read by the one config loader. A file written before the
    model sections existed (DAIAN's settings flat in ``model``) loads the same (quietly: the
    user did not write it).

    Raises:
      FileNotFoundError: naming ``run_dir`` when it holds no ``config.json``.
      ValueError: naming ``run_dir`` when its ``config.json`` has no ``model`` section (another
        tool's folder, e.g. a ``tirec pipeline`` output).
    """
    return from_dict(RunConfig, _recorded(run_dir), moved=[])  # moved keys load quietly


def run_settings(run_dir: str) -> dict:
    """The settings a run folder lends as a config (``--config RUN``): its recorded ``model``
    and ``train`` sections, as :func:`load_run_config` reads them. What else it recorded (the
    data folder it trained on; an export's checkpoint) is the run's, not a setting.

    Raises:
      FileNotFoundError / ValueError: as :func:`load_run_config`.
    """
    raw = _recorded(run_dir)
    return {"model": raw["model"], "train": raw["train"]}


def _recorded(run_dir: str) -> dict:
    if not exists(f"{run_dir.rstrip('/')}/{RUN_CONFIG}"):
        raise FileNotFoundError(f"{run_dir}: not a `tirec train` run folder (it has no {RUN_CONFIG})")
    raw = read_mapping(run_dir)
    if "model" not in raw:
        raise ValueError(_not_a_run(run_dir))
    raw["train"] = recorded_train(raw.get("train") or {})
    return raw


def _not_a_run(run_dir: str) -> str:
    """Why ``run_dir``, whose ``config.json`` has no ``model`` section, is not a run folder."""
    pipeline = exists(f"{run_dir.rstrip('/')}/stats.json") and exists(f"{run_dir.rstrip('/')}/spec.json")
    what = "a `tirec pipeline` output (spec.json, stats.json): pass it as --data" if pipeline else \
        f"its {RUN_CONFIG} has no model section"
    return (f"{run_dir}: not a `tirec train` run folder, {what}; a run folder (`tirec train --run`) "
            f"holds {RUN_CONFIG} with model and train sections, spec.json, items.npz and checkpoints")


def recorded_train(train: Mapping) -> dict:
    """A recorded ``train`` section as :class:`TrainConfig` accepts it now: values an earlier
    tirec accepted without reading them (``cpu_replicas`` outside mirrored,
    ``ps_min_shard_bytes`` outside ps) back to their defaults, and a ``shuffle_buffer`` below one
    block raised to one block (the same shuffle: one block at a time)."""
    t = dict(train)
    strategy = t.get("strategy", TrainConfig.strategy)
    if strategy != "mirrored":
        t.pop("cpu_replicas", None)
    if strategy != "ps":
        t.pop("ps_min_shard_bytes", None)
    block = t.get("shuffle_block", TrainConfig.shuffle_block)
    if 0 < t.get("shuffle_buffer", TrainConfig.shuffle_buffer) < block:
        t["shuffle_buffer"] = block
    return t


def model_config_from_dict(d: dict) -> ModelConfig:
    """A ModelConfig from a plain dict (``to_dict`` of one, or an older flat one)."""
    return from_dict(ModelConfig, d, "model")
