"""Typed configuration of the feature pipeline (the ``pipeline:`` section of a tirec config).

A config validates itself when it is built (``__post_init__``): one that exists is valid.
"""
from __future__ import annotations

import dataclasses
import math
import re

FORMATS = ("synthetic", "generic", "movielens", "alimama")
EMBEDDING_PROVIDERS = ("auto", "precomputed", "tfidf-svd", "cooccurrence-svd", "minilm")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float, field: str = "duration") -> int:
    """Seconds in ``'4h'``, ``'14d'``, ``'30m'``, ``'90s'`` or a plain number of seconds.

    Raises:
      ValueError: naming ``field`` and the value when it cannot be parsed or is not positive.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"{field}: cannot parse duration {text!r}; use e.g. '4h', '14d', '30m'")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"{field}: duration must be a positive whole number of seconds; "
                         f"received {text!r}")
    return int(seconds)


@dataclasses.dataclass(frozen=True)
class MovieLensConfig:
    """TIR conversion of MovieLens ratings.

    Args:
      click_threshold: a rating >= this is a click.
      negatives_per_rating: popularity-sampled unrated movies added per rated impression.
      seed: seed of the negative sampler (mixed with the user id, so any runner gives the same
        negatives).
    """

    click_threshold: float = 4.0
    negatives_per_rating: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(field, why):
            raise ValueError(f"pipeline.movielens.{field}: {why}; received {getattr(self, field)!r}")

        if not 0 < self.click_threshold < math.inf:
            bad("click_threshold", "must be a finite rating > 0")
        if not 0 <= self.negatives_per_rating < math.inf:
            bad("negatives_per_rating", "must be a finite number >= 0")
        if self.seed < 0:
            bad("seed", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of ``tirec pipeline``.

    Args:
      input: raw input directory.
      format: ``synthetic``/``generic``, ``movielens`` or ``alimama``.
      out: output directory.
      intent_levels: n, the number of equal-width similarity levels.
      sim_range: ``fixed`` (``[sim_lo, sim_hi]``) or ``quantile`` (0.5/99.5 % of train sims).
      trigger_window: how far back a click may be to serve as trigger: ``'4h'``, ``'30m'`` or
        seconds.
      history_days: behaviour history span in days.
      max_seq_len: behaviour sequence length L (the ``hist_*`` columns: GAP-Net's short-term
        view).
      views: also write GAP-Net's real-time (``rt_*``) and long-term (``lt_*``) behaviour views
        (:func:`tirec.features.spec.tir_feature_spec`, ``pipeline/SCHEMA.md``). Off by default:
        they add ``realtime_len + long_seq_len`` values to each of their id, time and side-field
        columns, which makes every record several times larger and the job slower; models that
        read only ``hist`` (DIN, DAIAN) neither parse nor serve them.
      realtime_window: ``views``: how far back (before the request's trigger query time) a click
        may be to enter the real-time view, a duration like ``trigger_window``; at least
        ``trigger_window``, so that the trigger is always the view's first entry.
      realtime_len: ``views``: the real-time view's length (the most recent clicks).
      long_seq_len: ``views``: the long-term view's length (the most recent behaviours over the
        whole log, no day limit).
      explicit_top_levels: tau defaults to the lower edge of this many top levels.
      explicit_threshold: an explicit tau, overriding ``explicit_top_levels``.
      split: how impressions are split by time into train / valid / eval
        (:mod:`tirec.pipeline.split`): ``auto`` (whole last days when they hold a fitting share
        of the events, else a cut at event times), ``days`` or ``fraction``.
      eval_days: ``split=days``: the last this-many calendar days (UTC) are eval (None: 1).
      valid_days: ``split=days``: this many days before eval are valid (None: 1; 0: no valid
        split).
      eval_fraction: ``split=auto|fraction``: the share of events (newest) for eval (None: 0.1).
      valid_fraction: ``split=auto|fraction``: the share of events before eval for valid (None:
        0.1; 0: no valid split).
      no_trigger: ``drop`` impressions without a trigger (counted) or ``pad`` them
        (``has_trigger`` = 0).
      prior_intent_half_life: half-life of the time decay in the ``prior_intent`` column (the
        user's click levels before each request, DAIAN's stage-2 intent input), a duration such
        as ``'7d'`` or ``'12h'``.
      click_btags: behaviour types that count as clicks (trigger candidates).
      trigger_from: take trigger clicks from ``behaviours``, ``impressions`` (label 1) or ``both``.
      max_events_per_user: cap on a user's behaviours and, separately, impressions; the oldest
        beyond it are dropped and counted.
      embedding_provider: item vector source; ``auto`` picks the format's default.
      embedding_path: file for ``precomputed`` when not inside the input directory.
      emb_dim: dimension for computed embeddings.
      chunk_rows: rows per read chunk.
      num_shards: shards, and TFRecord files per split (0: one per 200,000 events of the split
        plan's table over all splits, at least one); also the job's unit of parallelism and
        memory after the shuffle.
      seed: seed of the computed item vectors (``tfidf-svd``, ``cooccurrence-svd``; MovieLens'
        negative sampling has ``movielens.seed``).
      movielens: MovieLens conversion settings.
    """

    input: str = ""
    format: str = "synthetic"
    out: str = ""
    intent_levels: int = 6
    sim_range: str = "fixed"
    sim_lo: float = -1.0
    sim_hi: float = 1.0
    trigger_window: str | int = "4h"
    history_days: int = 14
    max_seq_len: int = 50
    views: bool = False
    realtime_window: str | int = "4h"
    realtime_len: int = 10
    long_seq_len: int = 200
    explicit_top_levels: int = 2
    explicit_threshold: float | None = None
    split: str = "auto"
    eval_days: int | None = None
    valid_days: int | None = None
    eval_fraction: float | None = None
    valid_fraction: float | None = None
    no_trigger: str = "drop"
    prior_intent_half_life: str = "7d"
    click_btags: tuple[str, ...] = ("click",)
    trigger_from: str = "auto"
    max_events_per_user: int = 100_000
    embedding_provider: str = "auto"
    embedding_path: str = ""
    emb_dim: int = 64
    chunk_rows: int = 65536
    num_shards: int = 0
    seed: int = 0
    movielens: MovieLensConfig = dataclasses.field(default_factory=MovieLensConfig)

    @property
    def trigger_window_s(self) -> int:
        return parse_duration(self.trigger_window, "pipeline.trigger_window")

    @property
    def realtime_window_s(self) -> int:
        return parse_duration(self.realtime_window, "pipeline.realtime_window")

    @property
    def prior_intent_half_life_s(self) -> int:
        return parse_duration(self.prior_intent_half_life, "pipeline.prior_intent_half_life")

    @property
    def history_s(self) -> int:
        return self.history_days * 86400

    def __post_init__(self) -> None:
        """Validates the config as it is built: raises ValueError naming the first bad field
        and its value."""
        def bad(field, why):
            raise ValueError(f"pipeline.{field}: {why}; received {getattr(self, field)!r}")

        if self.format not in FORMATS:
            bad("format", f"must be one of {FORMATS}")
        if not 2 <= self.intent_levels <= 100:
            bad("intent_levels", "must be an integer in [2, 100]")
        if self.sim_range not in ("fixed", "quantile"):
            bad("sim_range", "must be 'fixed' or 'quantile'")
        for field in ("sim_lo", "sim_hi"):  # the range of a cosine
            if not -1.0 <= getattr(self, field) <= 1.0:
                bad(field, "must be in [-1, 1] (a cosine similarity)")
        if not self.sim_hi > self.sim_lo:
            bad("sim_hi", f"must exceed sim_lo={self.sim_lo}")
        for field in ("sim_lo", "sim_hi"):
            if self.sim_range == "quantile" and getattr(self, field) != getattr(PipelineConfig, field):
                bad(field, "applies to sim_range=fixed only (quantile takes the range from the train sims)")
        self.trigger_window_s  # parses or raises
        self.prior_intent_half_life_s  # parses or raises
        if self.history_days < 1:
            bad("history_days", "must be >= 1")
        if self.max_seq_len < 1:
            bad("max_seq_len", "must be >= 1")
        self._validate_views(bad)
        if not 1 <= self.explicit_top_levels <= self.intent_levels:
            bad("explicit_top_levels", f"must be in [1, intent_levels={self.intent_levels}]")
        if self.explicit_threshold is not None and not -1.0 <= self.explicit_threshold <= 1.0:
            bad("explicit_threshold", "must be in [-1, 1]")
        if self.explicit_threshold is None and self.explicit_top_levels == self.intent_levels:
            bad("explicit_top_levels", f"equals pipeline.intent_levels={self.intent_levels}, so the default tau "
                                       f"would be the bottom of the similarity range and the explicit-intent "
                                       f"subsequence (nearly) the whole history; lower "
                                       f"pipeline.explicit_top_levels, or set pipeline.explicit_threshold to "
                                       f"the tau you mean (-1 keeps the whole history on purpose)")
        self._validate_split(bad)
        if self.no_trigger not in ("drop", "pad"):
            bad("no_trigger", "must be 'drop' or 'pad'")
        if self.trigger_from not in ("auto", "behaviours", "impressions", "both"):
            bad("trigger_from", "must be auto, behaviours, impressions or both")
        if self.max_events_per_user < 1:
            bad("max_events_per_user", "must be >= 1")
        if self.embedding_provider not in EMBEDDING_PROVIDERS:
            bad("embedding_provider", f"must be one of {EMBEDDING_PROVIDERS}")
        if self.emb_dim < 2:
            bad("emb_dim", "must be >= 2")
        if self.chunk_rows < 1:
            bad("chunk_rows", "must be >= 1")
        if self.num_shards < 0:
            bad("num_shards", "must be >= 0")
        if self.seed < 0:
            bad("seed", "must be >= 0")
        if not self.click_btags:
            bad("click_btags", "must name at least one behaviour type")

    def _validate_views(self, bad) -> None:
        if not isinstance(self.views, bool):
            bad("views", "must be true or false")
        for field in ("realtime_len", "long_seq_len"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(field, "must be an integer >= 1")
        if self.views and self.realtime_window_s < self.trigger_window_s:
            bad("realtime_window", f"must be at least pipeline.trigger_window "
                                   f"({self.trigger_window!r}) when views are on, so that the "
                                   f"trigger is the real-time view's first entry")
        self.realtime_window_s  # parses or raises
        if not self.views:  # the views' settings: a value given (other than the default) is not read
            given = {"realtime_window": self.realtime_window_s != parse_duration(PipelineConfig.realtime_window, ""),
                     "realtime_len": self.realtime_len != PipelineConfig.realtime_len,
                     "long_seq_len": self.long_seq_len != PipelineConfig.long_seq_len}
            for field in (f for f, changed in given.items() if changed):
                bad(field, "applies to views=true only (GAP-Net's rt and lt views); set pipeline.views=true")

    def _validate_split(self, bad) -> None:
        if self.split not in ("auto", "days", "fraction"):
            bad("split", "must be 'auto', 'days' or 'fraction'")
        if self.eval_days is not None and self.eval_days < 1:
            bad("eval_days", "must be >= 1 (every run writes an eval split)")
        if self.valid_days is not None and self.valid_days < 0:
            bad("valid_days", "must be >= 0 (0: no valid split)")
        if self.eval_fraction is not None and not 0 < self.eval_fraction <= 0.5:
            bad("eval_fraction", "must be in (0, 0.5]")
        if self.valid_fraction is not None and not 0 <= self.valid_fraction <= 0.5:
            bad("valid_fraction", "must be in [0, 0.5] (0: no valid split)")
        for field in ("eval_days", "valid_days"):
            if getattr(self, field) is not None and self.split != "days":
                bad(field, f"applies to split='days' only, and split is {self.split!r}; set "
                           f"pipeline.split=days (split='auto' picks whole days from the data)")
        for field in ("eval_fraction", "valid_fraction"):
            if getattr(self, field) is not None and self.split == "days":
                bad(field, "applies to split='auto' or 'fraction', and split is 'days'; use "
                           "pipeline.eval_days / pipeline.valid_days")
