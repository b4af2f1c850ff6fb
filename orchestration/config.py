"""The configuration of ``tirec run``: the package sections plus ``run``, ``validation`` and
``blessing``.

``tirec run --config pipeline.yaml`` reads the same YAML as every command (sections
``generator``, ``pipeline``, ``model``, ``train``) plus three of its own, on top of the package
defaults; without a file the built-in synthetic config (:func:`builtin_overrides`) applies: a
generated log of ``generator.days`` days written one shard per day, each span's records split by
day (eval = the span's day, valid = the day before), a small DAIAN. The settings ``tirec run``
sets itself (``model.name``, ``pipeline.input`` / ``out`` / ``format``, ``train.warm_start``:
:data:`RUNNER_SETS`) are refused when given.
"""
from __future__ import annotations

import dataclasses
import logging

from tirec.config import TirecConfig, config_mapping, load_config

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "logs")
SLICES = ("new_user", "returning_user", "drift", "no_drift", "intent_specific", "intent_broad")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What ``tirec run`` trains and where it reads.

    Args:
      source: ``synthetic`` (the built-in generator, ``generator`` section) or ``logs``
        (``input``: raw logs in the generic schema whose impression and behaviour shards carry
        their day in the name, ``*-day<DDDD>.<ext>``, as ``tirec generate`` writes them with
        ``generator.day_files``).
      input: the raw logs folder (``source=logs``).
      format: the pipeline's ``--format`` of ``input``.
      first_span: the span (day of the log) a run without ``--span`` trains on.
      model: the registered model to train.
      model_name: the served model's name (default: ``model``).
      warm_start: initialise each candidate from the model serving now (the highest version
        the Pusher wrote whose folder is still there).
    """

    source: str = "synthetic"
    input: str = ""
    format: str = "synthetic"
    first_span: int = 8
    model: str = "daian"
    model_name: str = ""
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"run.source: must be one of {', '.join(SOURCES)}; received {self.source!r}")
        if self.source == "logs" and not self.input:
            raise ValueError("run.input: source=logs needs the raw logs folder; received ''")
        if isinstance(self.first_span, bool) or not isinstance(self.first_span, int) or self.first_span < 3:
            raise ValueError(f"run.first_span: must be an integer >= 3 (train, valid and eval days); "
                             f"received {self.first_span!r}")
        self._check_names()

    def _check_names(self) -> None:
        """The model, the format and the served name, checked here rather than by the component
        that reads them (after the pipeline has run)."""
        from tirec.models.registry import model_names
        from tirec.pipeline.config import FORMATS
        from tirec.serving.export import is_plain_name

        if self.model not in model_names():
            raise ValueError(f"run.model: not a registered model; registered: {', '.join(model_names())}; "
                             f"received {self.model!r}")
        if self.format not in FORMATS:
            raise ValueError(f"run.format: must be one of {', '.join(FORMATS)}; received {self.format!r}")
        name = self.model_name
        if name and not is_plain_name(name):
            raise ValueError(f"run.model_name: the served model's name is a folder under serving/ and must be "
                             f"a plain folder name; received {name!r}")

    @property
    def served_name(self) -> str:
        return self.model_name or self.model


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """StatisticsGen's checks of a span against the previous span: ``*_error`` fails the run,
    ``*_warning`` goes to the report.

    Args:
      new_values_error / new_values_warning: share of the span's newest day's rows whose value
        of a categorical feature the previous span never had.
      label_rate_error / label_rate_warning: relative change of the click rate.
      intent_js_error / intent_js_warning: Jensen-Shannon divergence of the intent histograms
        in nats (natural log: from 0, equal, to ln 2 = 0.693, disjoint).
      seq_len_error / seq_len_warning: relative change of the mean history length.
    """

    new_values_error: float = 0.5
    new_values_warning: float = 0.1
    label_rate_error: float = 0.5
    label_rate_warning: float = 0.2
    intent_js_error: float = 0.2
    intent_js_warning: float = 0.05
    seq_len_error: float = 0.5
    seq_len_warning: float = 0.2

    def __post_init__(self) -> None:
        for name in ("new_values", "label_rate", "intent_js", "seq_len"):
            err, warn = getattr(self, f"{name}_error"), getattr(self, f"{name}_warning")
            if not 0 <= warn <= err:
                raise ValueError(f"validation.{name}_warning / _error: need 0 <= warning <= error; "
                                 f"received {warn!r} / {err!r}")


@dataclasses.dataclass(frozen=True)
class BlessingConfig:
    """The Evaluator's rule: a candidate is blessed when it is not worse than the model serving
    now, scored on the same eval day, beyond these drops, overall and on every slice with
    ``min_slice_rows`` rows and both labels; the first model needs ``min_auc``.

    Args:
      min_auc: the absolute floor of the first model's eval AUC.
      max_auc_drop / max_gauc_drop: allowed drop of AUC / GAUC against the model serving now.
      max_slice_auc_drop: allowed AUC drop on each slice.
      slices: the slices compared (``tirec evaluate --slice`` names); those the data lacks are
        reported as skipped.
      min_slice_rows: smaller slices are reported, not compared.
    """

    min_auc: float = 0.55
    max_auc_drop: float = 0.005
    max_gauc_drop: float = 0.01
    max_slice_auc_drop: float = 0.02
    slices: tuple[str, ...] = SLICES
    min_slice_rows: int = 200

    def __post_init__(self) -> None:
        for name in ("min_auc", "max_auc_drop", "max_gauc_drop", "max_slice_auc_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"blessing.{name}: must be in [0, 1]; received {getattr(self, name)!r}")
        from tirec.models.robustness import SLICES as KNOWN

        unknown = [name for name in self.slices if name not in KNOWN]
        if unknown:
            raise ValueError(f"blessing.slices: unknown slice {', '.join(map(repr, unknown))}; allowed: "
                             f"{', '.join(KNOWN)}; received {list(self.slices)!r}")
        rows = self.min_slice_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"blessing.min_slice_rows: must be an integer >= 0; received {rows!r}")


@dataclasses.dataclass(frozen=True)
class RunnerConfig(TirecConfig):
    """``tirec run``'s whole config: the package sections and the runner's three."""

    run: RunSettings = dataclasses.field(default_factory=RunSettings)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    blessing: BlessingConfig = dataclasses.field(default_factory=BlessingConfig)

    def __post_init__(self) -> None:
        for key, (instead, same_as) in RUNNER_SETS.items():
            section, field = key.split(".")
            value = getattr(getattr(self, section), field)
            if value != _unset(self, section, field) and not (same_as and value == getattr(self.run, same_as)):
                raise ValueError(f"{key}: tirec run sets it itself and does not read it; set {instead} "
                                 f"instead; received {value!r}")
        if self.run.source == "synthetic" and self.run.input:
            raise ValueError(f"run.input: read only with run.source=logs (the built-in generator writes "
                             f"the logs); received {self.run.input!r}")


# What tirec run sets itself: KEY -> (the setting to use instead, the run.* field a value may
# equal). A value given would be silently replaced, so it is refused.
RUNNER_SETS = {
    "model.name": ("run.model", "model"),
    "pipeline.format": ("run.format", "format"),
    "pipeline.input": ("run.input", "input"),
    "pipeline.out": ("--workdir (each span's examples/ are written there)", None),
    "train.warm_start": ("run.warm_start (the model serving now)", None),
}


def builtin_overrides(model: str = "daian") -> list[str]:
    """The built-in synthetic config (the demo): 10 days of logs, one shard per day, each span
    split by day, a small model for one epoch per stage (DAIAN's own settings only when
    ``model`` is daian, so that another model is not told of settings it does not read)."""
    out = ["generator.days=10", "generator.day_files=true", "pipeline.split=days", "pipeline.eval_days=1",
           "pipeline.valid_days=1", "model.tower=[128,64]", "model.hist_buckets=4", "train.batch_size=1024",
           "train.epochs=1"]
    if model == "daian":
        out += ["model.daian.att_units=32", "model.daian.explicit_buckets=4"]
    return out


def load_runner_config(path: str | None = None, overrides=(), users: int | None = None) -> RunnerConfig:
    """Without ``path``, the built-in demo config (:func:`builtin_overrides` for the ``run.model``
    the overrides name) with ``overrides`` on top; with ``path``, the package defaults, the
    file, then ``overrides`` (the demo's settings do not apply). ``--users`` comes last."""
    extra = [f"generator.users={users}"] if users is not None else []
    if path is not None:
        cfg = check_spans(load_config(path, list(overrides) + extra, cls=RunnerConfig))
        given = list(overrides) + file_settings(path)
        return check_unread(check_runner_sets_given(cfg, given), overrides, users, file_generator=True)
    model = load_config(None, list(overrides), cls=RunnerConfig).run.model
    cfg = load_config(None, builtin_overrides(model=model) + list(overrides) + extra, cls=RunnerConfig)
    return check_unread(check_runner_sets_given(check_spans(cfg), overrides), overrides, users)


def check_runner_sets_given(cfg: RunnerConfig, overrides) -> RunnerConfig:
    """Refuses a ``--set`` (or a config file's setting, as :func:`file_settings` shows it) of a
    setting tirec run sets itself (:data:`RUNNER_SETS`) unless it equals the ``run.*`` setting it
    comes from, even a value equal to the package default, which :class:`RunnerConfig`'s own
    check cannot tell from unset."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in RUNNER_SETS:
            continue
        instead, same_as = RUNNER_SETS[key]
        section, field = key.split(".")
        if same_as is None or getattr(getattr(cfg, section), field) != getattr(cfg.run, same_as):
            raise ValueError(f"{key}: tirec run sets it itself and does not read it; set {instead} instead; "
                             f"received {item!r}")
    return cfg


def _unset(cfg, section: str, field: str):
    """The package default of ``section.field`` of ``cfg`` (its section class's default)."""
    return getattr(type(getattr(cfg, section))(), field)


def file_settings(path: str) -> list[str]:
    """``key=value (in path)`` of each :data:`RUNNER_SETS` key that config ``path`` sets, e.g.
    ``["model.name='din' (in run.yaml)"]``; a key with no ``run.*`` counterpart only when its
    value is not the package default (``''``: unset, as a run folder records it)."""
    raw, out = config_mapping(path), []
    for key, (_, same_as) in RUNNER_SETS.items():
        section, field = key.split(".")
        block = raw.get(section)
        if not isinstance(block, dict) or field not in block:
            continue
        if same_as is None and block[field] == _unset(RunnerConfig(), section, field):
            continue
        out.append(f"{key}={block[field]!r} (in {path})")
    return out


def check_unread(cfg: RunnerConfig, overrides, users: int | None, file_generator: bool = False) -> RunnerConfig:
    """Returns ``cfg`` unless ``--users`` or a ``--set generator.*`` is given with
    ``run.source=logs``, which reads ``run.input`` and no generator setting (then a ValueError
    names it). A config file's generator section (``file_generator``) is left unread with one
    info line, as every command does with the sections of a shared file it does not read."""
    if cfg.run.source != "logs":
        return cfg
    given = ([f"--users {users}"] if users is not None else []) + \
        [o for o in overrides if o.split("=", 1)[0].strip().startswith("generator.")]
    if file_generator and cfg.generator != type(cfg.generator)():
        log.info("the config file's generator section is not read: run.source=logs reads run.input")
    if given:
        raise ValueError(f"{given[0].split('=')[0].split(' ')[0]}: a generator setting, read only with "
                         f"run.source=synthetic; run.source=logs reads run.input; received {given[0]!r}")
    return cfg


def check_spans(cfg: RunnerConfig) -> RunnerConfig:
    """Returns ``cfg`` if it can run span after span (:func:`check_span_split`, and with the
    built-in generator ``generator.day_files``, the day shards spans read), else raises a
    ValueError naming the setting."""
    check_span_split(cfg)
    if cfg.run.source == "synthetic" and not cfg.generator.day_files:
        raise ValueError("generator.day_files: tirec run's LogGen writes the logs one shard per day, which "
                         "each span reads up to its day; set generator.day_files=true; received false")
    return cfg


def check_span_split(cfg: RunnerConfig) -> RunnerConfig:
    """Returns ``cfg`` if its pipeline splits each span by day with one eval day (the span's day,
    which the Evaluator compares models on), else raises a ValueError naming the settings."""
    p = cfg.pipeline
    if p.split != "days" or p.eval_days not in (None, 1):
        raise ValueError(f"pipeline.split / pipeline.eval_days: tirec run evaluates each span on its own "
                         f"day and needs pipeline.split=days with eval_days unset or 1; received "
                         f"split={p.split!r}, eval_days={p.eval_days!r}")
    return cfg
