"""The train / valid / eval split by time: a rule that follows the data, and its checks.

Records are split by impression time into ``train`` < ``valid_from_ts`` <= ``valid`` <
``eval_from_ts`` <= ``eval``: the eval split is the newest window, the valid split (for early
stopping and model selection) the window right before it, carved from what would be train.

The split is planned in the launcher, before the Beam job writes any record, from a
:class:`TimeProfile` of the event times of the impressions (or, for formats whose impressions
are derived per user, such as MovieLens, of the behaviours they are derived from).

Rules (``pipeline.split``):

* ``days``: the last ``eval_days`` [1] calendar days (UTC) are eval and the ``valid_days`` [1]
  days before them are valid (0: no valid split).
* ``fraction``: the newest ``eval_fraction`` [0.1] of the events are eval and the
  ``valid_fraction`` [0.1] before them valid (0: no valid split), cut at event times.
* ``auto`` (the default) picks one of the two from the data. It takes the smallest number of
  whole last days that hold at least ``eval_fraction`` of the events (and, before them, at least
  ``valid_fraction``), and keeps those day cuts when each window holds at most twice its share
  and at least one day is left for train; otherwise (data spanning a few days, or a last day
  holding most events) it cuts at event times, as ``fraction`` does. On the synthetic demo data
  (8 even days) that is eval = day 8, valid = day 7; on ml-latest-small (22 years, the last
  days holding a handful of ratings) eval = the last 461 days (10.0 % of the ratings), valid =
  the 456 days before (10.0 %).

A cut at event times keeps every event of one time bucket on one side: buckets are single
seconds unless the data holds more than 2**20 distinct seconds, then ``2**k`` seconds (the
profile's ``bucket_seconds``). The valid window never takes the oldest bucket, so train keeps
at least one; its share may then fall short of ``valid_fraction``.

The job fails with :class:`SplitError`, naming the option to change, when train or eval would
be empty (before the Beam job, from the event counts; and after it, from the records written,
since labeling drops impressions without a trigger). An empty valid split is an error when the
user set ``valid_days`` / ``valid_fraction``, and is reported (log and ``stats.json``) when the
rule was left to its defaults.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from tirec.pipeline.io import TableSchema, read_chunks

log = logging.getLogger(__name__)

DAY = 86_400
TRAIN, VALID, EVAL = 0, 1, 2
SPLITS = ("train", "valid", "eval")
RULES = ("auto", "days", "fraction")
DEFAULT_DAYS = 1
DEFAULT_FRACTION = 0.1
MAX_SHARE_FACTOR = 2.0   # auto keeps day cuts when a window holds at most this x its share
MAX_BUCKETS = 1 << 20


class SplitError(ValueError):
    """A split that would leave train or eval (or an explicitly requested valid) empty."""


def assign(ts: np.ndarray, eval_from_ts: int, valid_from_ts: int | None) -> np.ndarray:
    """Split id per time: :data:`TRAIN`, :data:`VALID` or :data:`EVAL` (int8)."""
    ts = np.asarray(ts)
    out = np.full(ts.shape, TRAIN, dtype=np.int8)
    if valid_from_ts is not None:
        out[ts >= valid_from_ts] = VALID
    out[ts >= eval_from_ts] = EVAL
    return out


class _Counter:
    """Counts of int64 keys, merged in batches (bounded work per added array)."""

    def __init__(self):
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    def add(self, keys: np.ndarray, flush_at: int) -> None:
        self._pending.append(np.asarray(keys, np.int64))
        self._n_pending += len(keys)
        if self._n_pending >= flush_at:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        new = np.concatenate(self._pending)
        self._pending, self._n_pending = [], 0
        keys = np.concatenate([self.keys, new])
        weights = np.concatenate([self.counts, np.ones(len(new), np.int64)])
        self.regroup(keys, weights)

    def regroup(self, keys: np.ndarray, weights: np.ndarray) -> None:
        uniq, inv = np.unique(keys, return_inverse=True)
        self.keys = uniq
        self.counts = np.bincount(inv.reshape(-1), weights=weights, minlength=len(uniq)).astype(np.int64)


class TimeProfile:
    """Event counts by UTC day and by fine time bucket, in bounded memory.

    Fine buckets are ``2**shift`` seconds wide; ``shift`` starts at 0 and grows whenever more
    than ``max_buckets`` distinct buckets would be kept.

    Example:
      >>> prof = TimeProfile(); prof.add(np.array([0, 86_400, 86_401]))
      >>> prof.days()
      (array([0, 1]), array([1, 2]))
    """

    def __init__(self, max_buckets: int = MAX_BUCKETS):
        self.max_buckets = int(max_buckets)
        self.shift = 0
        self._fine, self._days = _Counter(), _Counter()
        self.n = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def add(self, ts: np.ndarray) -> None:
        """Counts the event times ``ts`` (Unix seconds)."""
        ts = np.asarray(ts, np.int64)
        if not ts.size:
            return
        self.n += int(ts.size)
        lo, hi = int(ts.min()), int(ts.max())
        self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
        self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        self._days.add(ts // DAY, flush_at=4 * self.max_buckets)
        self._fine.add(ts >> self.shift, flush_at=4 * self.max_buckets)
        if self._fine.keys.size > self.max_buckets:
            self._coarsen()

    def _coarsen(self) -> None:
        while self._fine.keys.size > self.max_buckets:
            self.shift += 1
            self._fine.regroup(self._fine.keys >> 1, self._fine.counts)

    def fine(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket start times, counts), ascending."""
        self._fine.flush()
        self._coarsen()
        return self._fine.keys << self.shift, self._fine.counts

    def days(self) -> tuple[np.ndarray, np.ndarray]:
        """(UTC day numbers, counts), ascending; day ``d`` starts at ``d * 86400``."""
        self._days.flush()
        return self._days.keys, self._days.counts

    @classmethod
    def from_files(cls, paths: list[str], schema: TableSchema, chunk_rows: int) -> "TimeProfile":
        """The profile of the ``ts`` column of a table's files.

        Only the ``ts`` column is converted: rows whose time is invalid are left out (the job
        dead-letters them); rows the job dead-letters for another field are counted.
        """
        ts_col = next(c for c in schema.columns if c.name == "ts")
        projection = TableSchema(schema.name, (ts_col,))
        prof = cls()
        for path in paths:
            for chunk, _ in read_chunks(path, projection, chunk_rows):
                prof.add(chunk.columns["ts"])
        return prof


@dataclasses.dataclass(frozen=True)
class SplitSettings:
    """The split options of a pipeline config (None: not set by the user)."""

    rule: str = "auto"
    eval_days: int | None = None
    valid_days: int | None = None
    eval_fraction: float | None = None
    valid_fraction: float | None = None

    @property
    def valid_explicit(self) -> bool:
        return self.valid_days is not None or self.valid_fraction is not None

    def fractions(self) -> tuple[float, float]:
        f_eval = DEFAULT_FRACTION if self.eval_fraction is None else float(self.eval_fraction)
        f_valid = DEFAULT_FRACTION if self.valid_fraction is None else float(self.valid_fraction)
        return f_eval, f_valid

    def day_counts(self) -> tuple[int, int]:
        eval_days = DEFAULT_DAYS if self.eval_days is None else int(self.eval_days)
        valid_days = DEFAULT_DAYS if self.valid_days is None else int(self.valid_days)
        return eval_days, valid_days

    def options(self, rule: str, which: str = "eval") -> str:
        """The options that size the ``which`` window under ``rule``, for messages."""
        if rule == "days" and self.rule == "days":
            return f"pipeline.{which}_days"
        names = f"pipeline.{which}_fraction"
        return names if self.rule == "fraction" else f"{names} (or pipeline.split=days with pipeline.{which}_days)"


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The split applied: cutoffs, the rule and why, and the events each window holds.

    Args:
      rule: ``days`` or ``fraction``, the rule applied.
      settings: the options it came from.
      eval_from_ts: impressions at or after this time are eval.
      valid_from_ts: impressions in ``[valid_from_ts, eval_from_ts)`` are valid; None: no valid
        split.
      events: events of the profiled table per split.
      reason: why the rule was applied (for ``auto``: why this one).
      source: the profiled table (``impressions`` or ``behaviours``).
      span: first / last event time, calendar days spanned, days holding events, bucket width.
      warnings: notes for the log and ``stats.json`` (e.g. an empty valid split).
    """

    rule: str
    settings: SplitSettings
    eval_from_ts: int
    valid_from_ts: int | None
    events: dict[str, int]
    reason: str
    source: str
    span: dict
    warnings: tuple[str, ...] = ()

    def to_stats(self, written: dict[str, int] | None = None) -> dict:
        """The ``split`` section of ``stats.json``."""
        n = max(1, sum(self.events.values()))
        last_day = self.span["last_ts"] // DAY
        out = {
            "rule": self.rule, "requested": self.settings.rule, "reason": self.reason,
            "source": self.source,
            "eval_from_ts": int(self.eval_from_ts),
            "valid_from_ts": None if self.valid_from_ts is None else int(self.valid_from_ts),
            "eval_days": int(last_day - self.eval_from_ts // DAY + 1) if self.rule == "days" else None,
            "valid_days": (int((self.eval_from_ts - self.valid_from_ts) // DAY)
                           if self.rule == "days" and self.valid_from_ts is not None else None),
            "eval_from": _date(self.eval_from_ts, seconds=self.rule != "days"),
            "valid_from": (None if self.valid_from_ts is None
                           else _date(self.valid_from_ts, seconds=self.rule != "days")),
            "time_span": dict(self.span),
            "events": dict(self.events),
            "event_shares": {k: round(v / n, 4) for k, v in self.events.items()},
            "warnings": list(self.warnings),
        }
        if written is not None:
            total = max(1, sum(written.values()))
            out["record_shares"] = {k: round(written.get(k, 0) / total, 4) for k in SPLITS}
        return out

    def written_issues(self, written: dict[str, int]) -> tuple[list[str], list[str]]:
        """(errors, warnings) about the records written per split.

        Errors: no train or eval record, or no record of a valid split the user asked for
        (labeling drops impressions without a trigger, so a window holding events can still
        come out empty). Warning: an empty valid split under the default settings.
        """
        errors = []
        for name in ("train", "eval"):
            if not written.get(name, 0):
                errors.append(
                    f"no {name} record was written: the {name} window holds {self.events[name]} "
                    f"{self.source} row(s), but every impression in it was dropped (no trigger, "
                    f"see stats 'dropped') or dead-lettered; change "
                    f"{self.settings.options(self.rule, 'eval')}, or keep impressions without a "
                    f"trigger with pipeline.no_trigger=pad")
        if self.valid_from_ts is None or written.get("valid", 0):
            return errors, []
        msg = (f"no valid record was written: the valid window holds {self.events['valid']} "
               f"{self.source} row(s), all dropped (no trigger) or dead-lettered")
        if self.settings.valid_explicit:
            return errors + [f"{msg}; change {self.settings.options(self.rule, 'valid')}"], []
        return errors, [f"{msg}; no valid split is written"]


def plan_split(profile: TimeProfile, settings: SplitSettings, source: str) -> SplitPlan:
    """Plans the split of ``profile``'s events under ``settings`` (module docstring).

    Raises:
      SplitError: naming the option to change when train or eval would be empty, or a valid
        split the user asked for would be.
    """
    if profile.n == 0:
        raise SplitError(f"no {source} row with a valid timestamp: nothing to split "
                         f"(see the dead letters; check pipeline.input and pipeline.format)")
    span = _span(profile)
    if settings.rule == "days":
        plan = _days_plan(profile, settings, source, span)
    elif settings.rule == "fraction":
        plan = _fraction_plan(profile, settings, source, span, "pipeline.split=fraction")
    else:
        plan = _auto_plan(profile, settings, source, span)
    return _checked(plan)


def _auto_plan(profile: TimeProfile, settings: SplitSettings, source: str, span: dict) -> SplitPlan:
    f_eval, f_valid = settings.fractions()
    days, counts = profile.days()
    i_eval, i_valid = _cut(counts, f_eval, f_valid)
    n = profile.n
    eval_share = counts[i_eval:].sum() / n
    valid_share = counts[i_valid:i_eval].sum() / n if i_valid is not None else 0.0
    k_eval = int(days[-1] - days[i_eval] + 1)
    fits = (i_eval >= 1 and eval_share <= MAX_SHARE_FACTOR * f_eval
            and (f_valid == 0 or (i_valid is not None and valid_share <= MAX_SHARE_FACTOR * f_valid)))
    if fits:
        valid_from = None if i_valid is None else int(days[i_valid] * DAY)
        why = (f"auto: the last {k_eval} calendar day(s) hold {eval_share:.1%} of the {source} "
               f"(target >= {f_eval:.0%}, at most {MAX_SHARE_FACTOR * f_eval:.0%})")
        if valid_from is not None:
            why += (f" and the {int(days[i_eval] - days[i_valid])} day(s) before them "
                    f"{valid_share:.1%} (target >= {f_valid:.0%})")
        return _plan("days", settings, int(days[i_eval] * DAY), valid_from, profile, source, span,
                     why + "; cut at UTC midnights")
    why = (f"auto: whole days do not fit (the last {k_eval} calendar day(s) needed for "
           f"{f_eval:.0%} of the {source} hold {eval_share:.1%}"
           + ("" if f_valid == 0 else f", the valid days {valid_share:.1%}")
           + f"; at most {MAX_SHARE_FACTOR:g} x the target share, and train keeps >= 1 day); "
           f"cut at event times")
    return _fraction_plan(profile, settings, source, span, why)


def _fraction_plan(profile: TimeProfile, settings: SplitSettings, source: str, span: dict,
                   why: str) -> SplitPlan:
    f_eval, f_valid = settings.fractions()
    starts, counts = profile.fine()
    i_eval, i_valid = _cut(counts, f_eval, f_valid)
    valid_from = None if i_valid is None else int(starts[i_valid])
    warnings = ()
    if f_valid > 0 and i_valid is None and i_eval >= 1:
        msg = (f"the valid split would be empty: the {source} before the eval window "
               f"fall in one time bucket ({_date(int(starts[0]), seconds=True)} UTC), which "
               f"train keeps")
        if settings.valid_explicit:
            raise SplitError(f"{msg}; change {settings.options('fraction', 'valid')}")
        warnings = (f"{msg}; no valid split is written",)
    why += f" (newest {f_eval:.0%} of the {source} -> eval" + (
        f", the {f_valid:.0%} before -> valid)" if f_valid > 0 else ", no valid split)")
    plan = _plan("fraction", settings, int(starts[i_eval]), valid_from, profile, source, span, why)
    return dataclasses.replace(plan, warnings=warnings)


def _days_plan(profile: TimeProfile, settings: SplitSettings, source: str, span: dict) -> SplitPlan:
    eval_days, valid_days = settings.day_counts()
    last_day = profile.last_ts // DAY
    eval_from = int((last_day - eval_days + 1) * DAY)
    valid_from = eval_from - valid_days * DAY if valid_days > 0 else None
    why = (f"pipeline.split=days: the last {eval_days} calendar day(s) (UTC) -> eval"
           + (f", the {valid_days} before -> valid" if valid_from is not None else ", no valid split"))
    return _plan("days", settings, eval_from, valid_from, profile, source, span, why)


def _cut(counts: np.ndarray, f_eval: float, f_valid: float) -> tuple[int, int | None]:
    """Bucket indices where eval and valid start (valid None: no bucket left for it).

    Eval: the newest buckets holding at least ``f_eval`` of the events; valid: the buckets
    before them holding at least ``f_valid``, but never bucket 0 (train keeps it).
    """
    n = counts.sum()
    tail = np.cumsum(counts[::-1])[::-1]  # events in buckets >= i
    i_eval = int(np.flatnonzero(tail >= f_eval * n)[-1])
    if f_valid <= 0 or i_eval < 2:
        return i_eval, None
    before = tail[:i_eval] - tail[i_eval]  # events in buckets [i, i_eval)
    reach = np.flatnonzero(before >= f_valid * n)
    return i_eval, max(int(reach[-1]) if reach.size else 0, 1)


def _plan(rule, settings, eval_from, valid_from, profile, source, span, why) -> SplitPlan:
    days, counts = profile.days() if rule == "days" else profile.fine()
    times = days * DAY if rule == "days" else days
    ids = assign(times, eval_from, valid_from)
    events = {name: int(counts[ids == k].sum()) for k, name in enumerate(SPLITS)}
    return SplitPlan(rule=rule, settings=settings, eval_from_ts=int(eval_from),
                     valid_from_ts=valid_from, events=events, reason=why, source=source, span=span)


def _checked(plan: SplitPlan) -> SplitPlan:
    """Raises when train or eval is empty, or a requested valid split; reports an automatic
    empty valid split and turns it off."""
    s, span = plan.settings, plan.span
    facts = (f"the {plan.source} span {span['days']} calendar day(s) "
             f"({span['first']} .. {span['last']} UTC, {span['days_with_events']} with events)")
    if not plan.events["eval"]:
        raise SplitError(f"the eval split would be empty: {facts}; change "
                         f"{s.options(plan.rule, 'eval')}")
    if not plan.events["train"]:
        which = "eval and valid" if plan.valid_from_ts is not None else "eval"
        opts = s.options(plan.rule, "eval")
        if plan.valid_from_ts is not None:
            opts += f" / {s.options(plan.rule, 'valid')}"
        raise SplitError(f"the train split would be empty: {facts}, and the {which} window(s) "
                         f"({plan.reason}) take all of them; lower {opts}")
    if plan.valid_from_ts is None or plan.events["valid"]:
        return plan
    if s.valid_explicit:
        raise SplitError(f"the valid split would be empty: no {plan.source} event in "
                         f"[{_date(plan.valid_from_ts)}, {_date(plan.eval_from_ts)}) UTC; {facts}; "
                         f"change {s.options(plan.rule, 'valid')}")
    note = (f"valid split empty: no {plan.source} event in [{_date(plan.valid_from_ts)}, "
            f"{_date(plan.eval_from_ts)}) UTC; no valid split is written")
    return dataclasses.replace(plan, valid_from_ts=None, warnings=plan.warnings + (note,))


def _span(profile: TimeProfile) -> dict:
    days, _ = profile.days()
    first, last = int(profile.first_ts), int(profile.last_ts)
    return {"first_ts": first, "last_ts": last, "first": _date(first, seconds=True),
            "last": _date(last, seconds=True), "days": int(last // DAY - first // DAY + 1),
            "days_with_events": int(days.size), "bucket_seconds": 1 << profile.shift}


def _date(ts: int, seconds: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d", time.gmtime(int(ts)))
