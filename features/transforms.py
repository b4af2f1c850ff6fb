"""Pure labeling functions shared by the Beam job, the pandas reference and the tests.

Everything here is numpy over arrays, with no Beam or model code, so one implementation serves
the distributed job, the single-process reference in ``benchmarks/`` and hand-computed tests.

Conventions:
  * Timestamps are integer Unix seconds.
  * Levels are 0-based: level ``j`` covers ``[lo + j*delta, lo + (j+1)*delta)`` with
    ``delta = (hi - lo) / n``; the top edge ``hi`` belongs to the last level and values outside
    ``[lo, hi]`` are clipped into the first / last level (docs/models.md#similarity-levels).
  * A trigger is the user's most recent click **strictly before** the query time and **at most**
    ``window`` seconds before it: ``query_ts - window <= click_ts < query_ts`` (DIHN's rule; a
    click exactly ``window`` seconds earlier still counts).
  * History holds behaviours with ``query_ts - horizon <= ts < query_ts``, most recent first,
    truncated to ``max_len``.
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-12


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two arrays of vectors.

    A zero vector has similarity 0 with everything (the documented fallback for items with no
    multimodal embedding).

    Args:
      a: float array ``[..., d]``.
      b: float array broadcastable to ``a``.

    Returns:
      float32 array ``[...]`` in ``[-1, 1]``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dot = np.sum(a * b, axis=-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    out = np.where(norms > _EPS, dot / np.maximum(norms, _EPS), 0.0)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def bin_edges(n_levels: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Edges ``[e_0, ..., e_n]`` of ``n_levels`` equal-width levels over ``[lo, hi]``."""
    _check_levels(n_levels, lo, hi)
    return np.linspace(lo, hi, n_levels + 1)


def quantile_range(sims: np.ndarray, q_lo: float = 0.005, q_hi: float = 0.995) -> tuple[float, float]:
    """The ``[lo, hi]`` binning range from training similarities.

    The ``pipeline.sim_range=quantile`` option of docs/models.md#similarity-levels.

    Raises:
      ValueError: when ``sims`` is empty or the quantiles collapse to one value.
    """
    sims = np.asarray(sims, dtype=np.float64)
    sims = sims[np.isfinite(sims)]
    if sims.size == 0:
        raise ValueError("quantile_range needs at least one finite similarity; received none")
    lo, hi = np.quantile(sims, [q_lo, q_hi])
    if not hi > lo:
        raise ValueError(
            f"quantile_range: quantiles {q_lo}/{q_hi} collapse to one value {lo!r}; "
            "use the fixed [-1, 1] range instead")
    return float(lo), float(hi)


def bin_index(sims: np.ndarray, n_levels: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """0-based level of each similarity under equal-width binning of ``[lo, hi]``.

    Example:
      ``bin_index([-1.0, 0.0, 0.32, 1.0], 6)`` is ``[0, 3, 3, 5]`` (edges -1, -2/3, -1/3, 0,
      1/3, 2/3, 1).
    """
    _check_levels(n_levels, lo, hi)
    sims = np.asarray(sims, dtype=np.float64)
    delta = (hi - lo) / n_levels
    idx = np.floor((sims - lo) / delta).astype(np.int64)
    return np.clip(idx, 0, n_levels - 1)


def explicit_threshold(n_levels: int, top_levels: int = 2, lo: float = -1.0, hi: float = 1.0) -> float:
    """Default explicit-intent threshold tau: the lower edge of the top ``top_levels`` levels.

    ``top_levels`` must leave at least one level out: taking all of them would put tau at ``lo``,
    and every behaviour would be explicit intent. Such a tau has to be asked for explicitly.
    """
    _check_levels(n_levels, lo, hi)
    if not 1 <= top_levels <= n_levels:
        raise ValueError(
            f"top_levels must be in [1, n_levels={n_levels}]; received top_levels={top_levels}")
    if top_levels == n_levels:
        raise ValueError(
            f"explicit_threshold: needed with top_levels={top_levels} of n_levels={n_levels}; the default (the lower "
            f"edge of the top levels) would take every level and make every behaviour explicit intent")
    return float(bin_edges(n_levels, lo, hi)[n_levels - top_levels])


def intent_distribution(levels: np.ndarray, labels: np.ndarray, n_levels: int) -> np.ndarray:
    """Ground-truth intent distribution of one request (DAIAN Eq. 1).

    See docs/models.md#intent-distribution.

    ``y_j = c_j / C`` with ``C`` the request's clicks and ``c_j`` the clicks in level ``j``; all
    zeros when the request has no click.

    Args:
      levels: int array ``[k]``, the level of each impression's trigger-target similarity.
      labels: 0/1 array ``[k]``.
      n_levels: number of levels n.

    Returns:
      float32 array ``[n_levels]``.
    """
    counts = intent_counts(levels, labels, n_levels)
    total = counts.sum()
    if total == 0:
        return np.zeros(n_levels, dtype=np.float32)
    return (counts / total).astype(np.float32)


def intent_counts(levels: np.ndarray, labels: np.ndarray, n_levels: int) -> np.ndarray:
    """Clicks per level of one request, ``c_j``; int64 ``[n_levels]``."""
    levels = np.asarray(levels, dtype=np.int64)
    labels = np.asarray(labels)
    _check_labels(labels)
    if levels.size and (levels.min() < 0 or levels.max() >= n_levels):
        bad = levels[(levels < 0) | (levels >= n_levels)][0]
        raise ValueError(f"level {int(bad)} is outside [0, {n_levels}); levels must come from bin_index")
    return np.bincount(levels[labels == 1], minlength=n_levels).astype(np.int64)


def grouped_intent_counts(group: np.ndarray, levels: np.ndarray, labels: np.ndarray,
                          n_levels: int) -> np.ndarray:
    """Per-row click counts by level of the row's request, for many requests at once.

    Args:
      group: int array ``[k]``, a dense request index per row (``0..R-1``).
      levels: int array ``[k]``.
      labels: 0/1 array ``[k]``.
      n_levels: number of levels.

    Returns:
      int64 array ``[k, n_levels]``: row ``i`` holds the counts of request ``group[i]``.
    """
    group = np.asarray(group, dtype=np.int64)
    levels = np.asarray(levels, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if group.size == 0:
        return np.zeros((0, n_levels), dtype=np.int64)
    n_groups = int(group.max()) + 1
    flat = np.bincount(group * n_levels + levels, weights=labels, minlength=n_groups * n_levels)
    return flat.reshape(n_groups, n_levels).astype(np.int64)[group]


def counts_to_distribution(counts: np.ndarray) -> np.ndarray:
    """Normalises click counts ``[..., n]`` to distributions; rows without clicks stay zero."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1.0), 0.0).astype(np.float32)


def decayed_level_distribution(query_ts: np.ndarray, click_ts: np.ndarray, click_levels: np.ndarray,
                               n_levels: int, half_life_s: float) -> np.ndarray:
    """Time-decayed level distribution of the clicks strictly before each query time.

    For a query at time ``T``, the clicks with ``t < T`` weigh ``2 ** (-(T - t) / half_life_s)``;
    ``out[q, j]`` is the weight of those in level ``j`` over the weight of all of them, and the
    row is all zeros when no click is earlier than ``T``. This is DAIAN's label-free stage-2
    intent input ``prior_intent`` (docs/models.md#prior-intent) when the queries are one user's
    requests (``T`` = the request's first impression time) and the clicks that user's clicks
    with a trigger: a click at or after ``T`` (every click of the request itself) never enters.

    Exact and ``O((q + c) * n)`` in time and memory: per level, a running ``log2`` of the sum of
    ``2 ** (t / half_life_s)`` over the clicks in time order (``np.logaddexp2.accumulate``, no
    overflow however long the history), read at each query's last earlier click. A prefix only
    depends on the clicks before it, so adding, removing or changing clicks at or after ``T``
    leaves the row of ``T`` unchanged bit for bit. Times are taken relative to the earliest
    query, so the result does not depend on how large the timestamps are.

    Example:
      Clicks at t = 0 (level 0), 10 (level 1) and 20 (level 1), half-life 10, queries at 20 and
      0: the query at 20 sees the first two only, with weights 1/4 and 1/2, so ``[1/3, 2/3]``;
      the query at 0 sees none, so ``[0, 0]``.

    Args:
      query_ts: int array ``[q]`` of query times (any order).
      click_ts: int array ``[c]`` of click times (any order).
      click_levels: int array ``[c]``, each click's 0-based level in ``[0, n_levels)``.
      n_levels: number of levels n.
      half_life_s: the half-life in seconds (> 0).

    Returns:
      float32 array ``[q, n_levels]``; each row sums to 1 or is all zeros.
    """
    if not half_life_s > 0:
        raise ValueError(f"half_life_s must be positive seconds; received half_life_s={half_life_s!r}")
    query_ts = np.asarray(query_ts, dtype=np.int64)
    click_ts = np.asarray(click_ts, dtype=np.int64)
    click_levels = np.asarray(click_levels, dtype=np.int64)
    if click_ts.shape != click_levels.shape:
        raise ValueError(f"click_ts and click_levels must have the same shape; received "
                         f"{click_ts.shape} and {click_levels.shape}")
    if click_levels.size and (click_levels.min() < 0 or click_levels.max() >= n_levels):
        bad = click_levels[(click_levels < 0) | (click_levels >= n_levels)][0]
        raise ValueError(f"level {int(bad)} is outside [0, {n_levels}); levels must come from bin_index")
    out = np.zeros((query_ts.shape[0], n_levels), dtype=np.float64)
    if query_ts.size == 0 or click_ts.size == 0:
        return out.astype(np.float32)
    ref = query_ts.min()
    q_exp = (query_ts - ref) / float(half_life_s)
    log_w = np.full((query_ts.shape[0], n_levels), -np.inf)
    for j in range(n_levels):
        t = np.sort(click_ts[click_levels == j], kind="stable")
        if t.size == 0:
            continue
        # log2 sum_{i <= k} 2 ** ((t_i - ref) / h); query T reads k = its last click with t < T.
        prefix = np.logaddexp2.accumulate((t - ref) / float(half_life_s))
        k = np.searchsorted(t, query_ts, side="left") - 1
        seen = k >= 0
        log_w[seen, j] = prefix[k[seen]] - q_exp[seen]
    top = log_w.max(axis=1, keepdims=True)
    seen = np.isfinite(top[:, 0])
    w = np.exp2(log_w[seen] - top[seen])  # the largest level weighs 1: no underflow to all zeros
    out[seen] = w / w.sum(axis=1, keepdims=True)
    return out.astype(np.float32)


def explicit_mask(hist_sims: np.ndarray, hist_valid: np.ndarray, tau: float) -> np.ndarray:
    """Which history positions belong to the explicit-intent subsequence.

    See docs/models.md#explicit-intent-subsequence.

    A behaviour is explicit when it is a real (non-padding) position and its multimodal
    similarity to the trigger is at least ``tau``.

    Returns:
      int64 array shaped like ``hist_sims`` with 1 for explicit positions.
    """
    hist_sims = np.asarray(hist_sims)
    hist_valid = np.asarray(hist_valid, dtype=bool)
    return ((hist_sims >= tau) & hist_valid).astype(np.int64)


def assign_triggers(click_ts: np.ndarray, query_ts: np.ndarray, window: int) -> np.ndarray:
    """Index of each query's trigger click, or -1 (DIHN's trigger rule).

    The trigger of a query at time ``T`` is the most recent click with
    ``T - window <= click_ts < T``.

    Args:
      click_ts: int array ``[c]`` of the user's click times, sorted ascending.
      query_ts: int array ``[q]`` of impression (or request) times.
      window: the trigger window in seconds (4 h = 14400 by default).

    Returns:
      int64 array ``[q]`` indexing ``click_ts``; -1 where no click qualifies.
    """
    if window <= 0:
        raise ValueError(f"trigger window must be positive seconds; received window={window}")
    click_ts = np.asarray(click_ts, dtype=np.int64)
    query_ts = np.asarray(query_ts, dtype=np.int64)
    _check_sorted(click_ts, "click_ts")
    idx = np.searchsorted(click_ts, query_ts, side="left") - 1
    ok = idx >= 0
    ok[ok] = click_ts[idx[ok]] >= query_ts[ok] - window
    return np.where(ok, idx, -1).astype(np.int64)


def history_window(event_ts: np.ndarray, query_ts: np.ndarray, horizon: int,
                   max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice bounds of each query's behaviour history.

    History = events with ``query_ts - horizon <= ts < query_ts`` (strictly earlier, so the
    impression itself and anything after it never leak in), truncated to the ``max_len`` most
    recent.

    Args:
      event_ts: int array ``[e]`` sorted ascending.
      query_ts: int array ``[q]``.
      horizon: history span in seconds (14 days by default).
      max_len: maximum sequence length L.

    Returns:
      ``(start, end)`` int64 arrays ``[q]``: the history is ``events[start:end]`` reversed (most
      recent first), with ``end - start <= max_len``.
    """
    if horizon <= 0 or max_len <= 0:
        raise ValueError(
            f"horizon and max_len must be positive; received horizon={horizon}, max_len={max_len}")
    event_ts = np.asarray(event_ts, dtype=np.int64)
    query_ts = np.asarray(query_ts, dtype=np.int64)
    _check_sorted(event_ts, "event_ts")
    end = np.searchsorted(event_ts, query_ts, side="left")
    start = np.searchsorted(event_ts, query_ts - horizon, side="left")
    start = np.maximum(start, end - max_len)
    return start.astype(np.int64), end.astype(np.int64)


def gather_history(values: np.ndarray, start: np.ndarray, end: np.ndarray, max_len: int,
                   pad: float | int = 0) -> np.ndarray:
    """Gathers ``values[start:end]`` most recent first into a padded ``[q, max_len]`` array."""
    values = np.asarray(values)
    q = len(start)
    lengths = end - start
    pos = np.arange(max_len)[None, :]
    src = end[:, None] - 1 - pos
    valid = pos < lengths[:, None]
    out = np.full((q, max_len) + values.shape[1:], pad, dtype=values.dtype)
    if values.shape[0]:
        out[valid] = values[src[valid]]
    return out


def _check_levels(n_levels: int, lo: float, hi: float) -> None:
    if int(n_levels) != n_levels or n_levels < 1:
        raise ValueError(f"n_levels must be a positive integer; received n_levels={n_levels!r}")
    if not hi > lo:
        raise ValueError(f"similarity range needs lo < hi; received lo={lo!r}, hi={hi!r}")


def _check_labels(labels: np.ndarray) -> None:
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = labels[~np.isin(labels, (0, 1))][0]
        raise ValueError(f"labels must be 0 or 1; received label={bad!r}")


def _check_sorted(ts: np.ndarray, name: str) -> None:
    if ts.size > 1 and np.any(np.diff(ts) < 0):
        raise ValueError(f"{name} must be sorted ascending")
