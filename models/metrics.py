"""Exact offline CTR metrics over a whole eval set (docs/models.md#metrics).

Every metric here is computed exactly in numpy, not approximated by a streaming histogram:

* :func:`auc` is the Mann-Whitney rank statistic. Tied scores count one half, which equals
  ranking with average ranks for ties. One ``O(n log n)`` sort and ``O(n)`` counting.
* :func:`gauc` is the impression-weighted mean of per-user AUCs, ``Σ_u n_u·AUC_u / Σ_u n_u``.
  Users whose samples are all one class are skipped (DIN practice). All users are handled
  at once: one sort by (group, score), then per-group tie-aware counts. There is no Python
  loop over users.
* :func:`logloss` is the mean binary cross-entropy of clipped probabilities.
* :func:`rela_impr` is RelaImpr, ``((m - 0.5) / (b - 0.5) - 1) · 100`` in percent.
* :func:`kl_divergence` and :func:`js_divergence` work row by row on distributions, with the
  natural log. ``eps`` is added to every entry, then each row is renormalised.
  :func:`intent_metrics` averages them over the requests that have an intent label.
* :func:`ctr_metrics` is the bundle written to a run's ``metrics.json``.

How the AUC is counted. Sort by score and split the sorted rows into *runs* of equal score.
Each positive in a run beats every negative in an earlier run and ties with every negative in
its own run. So ``2·U = Σ_runs pos_run · (2·neg_before + neg_run)``, which is exact in int64,
and ``AUC = U / (n_pos · n_neg)``. GAUC uses the same count. Rows are sorted by (group, score),
runs also break at group boundaries, and ``neg_before`` counts only the run's own group.

Undefined values are NaN, never exceptions. This covers an AUC with one class (or no rows), a
GAUC where no user has both classes, the logloss and intent means of zero rows, and a
RelaImpr against a base of exactly 0.5. Malformed inputs raise :class:`ValueError`, naming
the argument and an offending value. Malformed means: mismatched lengths, arrays that are not
1-D, labels outside {0, 1}, non-finite scores or probabilities, probabilities outside [0, 1],
or negative distribution entries.
"""
from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "auc",
    "gauc",
    "logloss",
    "rela_impr",
    "kl_divergence",
    "js_divergence",
    "intent_metrics",
    "ctr_metrics",
]


# ---- validation -------------------------------------------------------------------------------

def _first_bad(bad: np.ndarray, values: np.ndarray) -> tuple[int, object]:
    """Flat index and value of the first ``True`` entry of ``bad``."""
    flat = int(np.flatnonzero(bad.ravel())[0])
    return flat, values.ravel()[flat].item()


def _as_1d(name: str, values) -> np.ndarray:
    """``values`` as a 1-D array; raises ``ValueError`` otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    return arr


def _check_lengths(**arrays: np.ndarray) -> None:
    """Raises ``ValueError`` unless all the named arrays have the same length."""
    items = list(arrays.items())
    first_name, first = items[0]
    for name, arr in items[1:]:
        if len(arr) != len(first):
            raise ValueError(f"{name} has length {len(arr)} but {first_name} has length "
                             f"{len(first)}; they must match")


def _check_labels(labels) -> np.ndarray:
    """Labels as a 1-D int8 array of 0/1; raises ``ValueError`` on any other value."""
    arr = _as_1d("labels", labels)
    if arr.dtype == np.bool_:
        return arr.astype(np.int8)
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"labels must be numeric 0/1; got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        idx, val = _first_bad(bad, arr)
        raise ValueError(f"labels must be 0 or 1; found {val!r} at index {idx}")
    return arr.astype(np.int8)


def _check_finite(name: str, values, *, ndim_1: bool = True) -> np.ndarray:
    """``values`` as a float64 array with only finite entries; raises ``ValueError`` otherwise."""
    arr = _as_1d(name, values) if ndim_1 else np.asarray(values)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(
            arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx, val = _first_bad(bad, arr)
        raise ValueError(f"{name} must be finite; found {val!r} at index {idx}")
    return arr


def _check_probs(probs) -> np.ndarray:
    """Probabilities as float64, finite and inside [0, 1]; raises ``ValueError`` otherwise."""
    arr = _check_finite("probs", probs)
    bad = (arr < 0.0) | (arr > 1.0)
    if bad.any():
        idx, val = _first_bad(bad, arr)
        raise ValueError(f"probs must lie in [0, 1]; found {val!r} at index {idx}")
    return arr


def _check_groups(groups) -> np.ndarray:
    """Group keys as a 1-D array; float keys must be finite (NaN never equals itself)."""
    arr = _as_1d("groups", groups)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            idx, val = _first_bad(bad, arr)
            raise ValueError(f"groups must be finite; found {val!r} at index {idx}")
    return arr


def _check_dists(p, q, names: tuple[str, str] = ("p", "q")) -> tuple[np.ndarray, np.ndarray]:
    """Two same-shape distribution arrays (last axis = classes), finite and non-negative."""
    pn, qn = names
    p = _check_finite(pn, p, ndim_1=False)
    q = _check_finite(qn, q, ndim_1=False)
    if p.ndim == 0:
        raise ValueError(f"{pn} must have at least one dimension (the classes); got a scalar")
    if p.shape != q.shape:
        raise ValueError(f"{pn} has shape {p.shape} but {qn} has shape {q.shape}; "
                         "they must match")
    if p.shape[-1] == 0:
        raise ValueError(f"{pn} and {qn} need at least one class on the last axis; got shape "
                         f"{p.shape}")
    for name, arr in ((pn, p), (qn, q)):
        bad = arr < 0.0
        if bad.any():
            idx, val = _first_bad(bad, arr)
            raise ValueError(f"{name} must be non-negative; found {val!r} at flat index {idx}")
    return p, q


# ---- rank statistics --------------------------------------------------------------------------

def _grouped_u(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group Mann-Whitney counts on validated, non-empty inputs.

    Args:
        labels: 1-D int8 array of 0/1.
        scores: 1-D float64 array, finite.
        groups: 1-D array of group keys, or ``None`` for one group holding every row.

    Returns:
        ``(u2, n_pos, n_neg)``, each an int64 array with one entry per group (in sorted key
        order). ``u2`` is twice the Mann-Whitney U statistic of the positives.
    """
    n = labels.shape[0]
    # One sort by (group, score). The scores are sorted first, with an unstable (fast)
    # quicksort, because the order inside a tie does not matter. A stable sort on the
    # groups follows, keeping that score order inside each group. This is a lexsort, but
    # faster than np.lexsort, which uses a stable sort for both keys.
    order = np.argsort(scores)
    if groups is not None:
        order = order[np.argsort(groups[order], kind="stable")]
    s = scores[order]
    neg = labels[order] == 0

    group_break = np.zeros(n, dtype=bool)
    group_break[0] = True
    if groups is not None:
        g = groups[order]
        np.not_equal(g[1:], g[:-1], out=group_break[1:])
    run_break = group_break.copy()
    run_break[1:] |= s[1:] != s[:-1]

    run_start = np.flatnonzero(run_break)
    run_end = np.append(run_start[1:], n)
    group_start = np.flatnonzero(group_break)
    group_end = np.append(group_start[1:], n)

    # cneg[i] = number of negatives among sorted rows [0, i).
    cneg = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(neg, out=cneg[1:])

    neg_run = cneg[run_end] - cneg[run_start]
    pos_run = (run_end - run_start) - neg_run
    run_group = np.cumsum(group_break[run_start]) - 1
    neg_before = cneg[run_start] - cneg[group_start[run_group]]
    u2_run = pos_run * (2 * neg_before + neg_run)

    # Runs are contiguous per group, so each group's total is one reduceat slice.
    first_run_of_group = np.flatnonzero(group_break[run_start])
    u2 = np.add.reduceat(u2_run, first_run_of_group)
    n_neg = cneg[group_end] - cneg[group_start]
    n_pos = (group_end - group_start) - n_neg
    return u2, n_pos, n_neg


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC of validated inputs; NaN when a class is missing."""
    if labels.shape[0] == 0:
        return math.nan
    u2, n_pos, n_neg = _grouped_u(labels, scores, None)
    pairs = int(n_pos[0]) * int(n_neg[0])
    if pairs == 0:
        return math.nan
    return float(int(u2[0]) / (2 * pairs))


def _gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, dict]:
    """GAUC of validated inputs (see :func:`gauc`)."""
    if labels.shape[0] == 0:
        return math.nan, {"users_total": 0, "users_used": 0, "impressions_used": 0}
    u2, n_pos, n_neg = _grouped_u(labels, scores, groups)
    used = (n_pos > 0) & (n_neg > 0)
    stats = {"users_total": int(u2.shape[0]), "users_used": int(used.sum())}
    if not used.any():
        stats["impressions_used"] = 0
        return math.nan, stats
    pairs = (n_pos[used] * n_neg[used]).astype(np.float64)
    user_auc = u2[used].astype(np.float64) / (2.0 * pairs)
    weight = (n_pos[used] + n_neg[used]).astype(np.float64)
    stats["impressions_used"] = int(weight.sum())
    return float(np.dot(weight, user_auc) / weight.sum()), stats


# ---- public API -------------------------------------------------------------------------------

def auc(labels, scores) -> float:
    """Exact ROC AUC: the Mann-Whitney rank statistic, with tied scores counted as one half.

    Args:
        labels: 1-D array of 0/1 (int, float or bool).
        scores: 1-D array of finite real scores, the same length as ``labels``. Only their
            order matters.

    Returns:
        The AUC. NaN when ``labels`` holds only one class, or no rows.

    Raises:
        ValueError: on mismatched lengths, non-1-D inputs, labels outside {0, 1} or non-finite
            scores.
    """
    y = _check_labels(labels)
    s = _check_finite("scores", scores)
    _check_lengths(labels=y, scores=s)
    return _auc(y, s)


def gauc(labels, scores, groups) -> tuple[float, dict]:
    """Group (user) AUC: per-user AUC weighted by the user's number of impressions.

    ``GAUC = Σ_u n_u · AUC_u / Σ_u n_u`` over the users who have both a positive and a
    negative sample. Users whose samples are all one class are skipped (docs/models.md#metrics).

    Args:
        labels: 1-D array of 0/1.
        scores: 1-D array of finite real scores.
        groups: 1-D array of group keys (user ids), any sortable dtype.

    Returns:
        ``(gauc, stats)``. ``gauc`` is NaN when no user has both classes. ``stats`` holds
        ``users_total`` (distinct groups), ``users_used`` (groups that have both classes) and
        ``impressions_used`` (rows of the used groups).

    Raises:
        ValueError: on mismatched lengths, non-1-D inputs, labels outside {0, 1}, non-finite
            scores or non-finite float group keys.
    """
    y = _check_labels(labels)
    s = _check_finite("scores", scores)
    g = _check_groups(groups)
    _check_lengths(labels=y, scores=s, groups=g)
    return _gauc(y, s, g)


def _logloss(labels: np.ndarray, probs: np.ndarray, eps: float) -> float:
    """Mean BCE of validated inputs; NaN when there are no rows."""
    if labels.shape[0] == 0:
        return math.nan
    p = np.clip(probs, eps, 1.0 - eps)
    per_row = np.where(labels == 1, np.log(p), np.log1p(-p))
    return float(-per_row.mean())


def logloss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, ``-mean(y·log p + (1 - y)·log(1 - p))``.

    Args:
        labels: 1-D array of 0/1.
        probs: 1-D array of predicted click probabilities in [0, 1].
        eps: Probabilities are clipped to ``[eps, 1 - eps]`` before the log.

    Returns:
        The logloss in nats. NaN when there are no rows.

    Raises:
        ValueError: on mismatched lengths, non-1-D inputs, labels outside {0, 1}, non-finite
            probabilities, probabilities outside [0, 1], or ``eps`` outside (0, 0.5).
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5); got {eps!r}")
    y = _check_labels(labels)
    p = _check_probs(probs)
    _check_lengths(labels=y, probs=p)
    return _logloss(y, p, eps)


def rela_impr(metric_model: float, metric_base: float) -> float:
    """RelaImpr of an AUC-like metric over a base, in percent (DAIAN Eq. 24).

    See docs/models.md#metrics.

    ``RelaImpr = ((metric_model - 0.5) / (metric_base - 0.5) - 1) · 100``. For example, GAUC
    0.6382 against a base of 0.6432 gives about -3.49 %.

    Args:
        metric_model: The model's AUC or GAUC.
        metric_base: The base model's AUC or GAUC.

    Returns:
        The relative improvement in percent. NaN when either value is NaN, or when the base
        is exactly 0.5 (random), where the ratio is undefined.
    """
    m, b = float(metric_model), float(metric_base)
    if math.isnan(m) or math.isnan(b):
        return math.nan
    if b == 0.5:
        logger.warning("RelaImpr is undefined for a base metric of exactly 0.5; returning NaN")
        return math.nan
    return ((m - 0.5) / (b - 0.5) - 1.0) * 100.0


def _smooth(x: np.ndarray, eps: float) -> np.ndarray:
    """Adds ``eps`` to every entry and renormalises along the last axis."""
    x = x + eps
    return x / x.sum(axis=-1, keepdims=True)


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL of strictly positive, normalised distributions, clamped at 0."""
    return np.maximum((p * (np.log(p) - np.log(q))).sum(axis=-1), 0.0)


def _check_eps(eps: float) -> None:
    """Raises ``ValueError`` unless ``eps`` is a positive finite number."""
    if not eps > 0.0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")


def kl_divergence(p, q, eps: float = 1e-8) -> np.ndarray:
    """Row-wise KL(p ‖ q) with the natural log.

    ``eps`` is added to both inputs, and each row is renormalised to sum to 1, so zeros and
    unnormalised rows are allowed.

    Args:
        p: Array ``(..., n)`` of non-negative weights. The last axis is the distribution.
        q: Array of the same shape.
        eps: Positive smoothing added to every entry before the renormalisation.

    Returns:
        Float64 array of shape ``p.shape[:-1]`` (0-d for 1-D inputs), in nats, ``>= 0``.

    Raises:
        ValueError: on mismatched shapes, scalar inputs, non-finite or negative entries, or a
            non-positive ``eps``.
    """
    _check_eps(eps)
    p, q = _check_dists(p, q)
    return _kl_rows(_smooth(p, eps), _smooth(q, eps))


def _js_rows(p: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    """Row-wise JS of validated inputs, clamped to [0, ln 2]."""
    ps, qs = _smooth(p, eps), _smooth(q, eps)
    m = 0.5 * (ps + qs)
    js = 0.5 * _kl_rows(ps, m) + 0.5 * _kl_rows(qs, m)
    return np.minimum(js, math.log(2.0))


def js_divergence(p, q, eps: float = 1e-8) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence, ``0.5·KL(p ‖ m) + 0.5·KL(q ‖ m)``, ``m = (p + q)/2``.

    Both inputs are smoothed as in :func:`kl_divergence` before ``m`` is formed. The result
    is symmetric and lies in ``[0, ln 2]`` (natural log). Note that
    ``scipy.spatial.distance.jensenshannon`` returns the square root of this value.

    Args:
        p: Array ``(..., n)`` of non-negative weights. The last axis is the distribution.
        q: Array of the same shape.
        eps: Positive smoothing added to every entry before the renormalisation.

    Returns:
        Float64 array of shape ``p.shape[:-1]`` (0-d for 1-D inputs), in nats.

    Raises:
        ValueError: on mismatched shapes, scalar inputs, non-finite or negative entries, or a
            non-positive ``eps``.
    """
    _check_eps(eps)
    p, q = _check_dists(p, q)
    return _js_rows(p, q, eps)


def intent_metrics(true_dist, pred_dist, eps: float = 1e-8) -> dict:
    """Intent fit: mean KL(true ‖ pred) and mean JS over the labelled requests.

    A row whose true distribution sums to 0 is a request without clicks. It has no intent
    label and is skipped (docs/models.md#intent-distribution).

    Args:
        true_dist: Array ``(rows, n)`` of ground-truth intent distributions (all-zero rows
            allowed).
        pred_dist: Array ``(rows, n)`` of predicted intent distributions.
        eps: Smoothing, as in :func:`kl_divergence`.

    Returns:
        ``{"intent_kl": float, "intent_js": float, "intent_rows": int}``. The means are NaN
        when no row is labelled.

    Raises:
        ValueError: when the inputs are not 2-D arrays of the same shape, or hold non-finite
            or negative entries.
    """
    _check_eps(eps)
    t, p = _check_dists(true_dist, pred_dist, ("true_dist", "pred_dist"))
    if t.ndim != 2:
        raise ValueError(f"true_dist must be 2-D (rows, levels); got shape {t.shape}")
    keep = t.sum(axis=1) > 0.0
    rows = int(keep.sum())
    if rows == 0:
        return {"intent_kl": math.nan, "intent_js": math.nan, "intent_rows": 0}
    t, p = t[keep], p[keep]
    kl = _kl_rows(_smooth(t, eps), _smooth(p, eps))
    js = _js_rows(t, p, eps)
    return {"intent_kl": float(kl.mean()), "intent_js": float(js.mean()), "intent_rows": rows}


def ctr_metrics(labels, probs, groups, *, intent_true=None, intent_pred=None) -> dict:
    """All exact eval metrics of a CTR run, as written to ``metrics.json``.

    Args:
        labels: 1-D array of 0/1 clicks.
        probs: 1-D array of predicted click probabilities in [0, 1].
        groups: 1-D array of user ids, for the GAUC.
        intent_true: Optional ``(rows, n)`` ground-truth intent distributions.
        intent_pred: Optional ``(rows, n)`` predicted intent distributions. Give both intent
            arrays or neither.

    Returns:
        A dict with ``auc``, ``gauc``, ``logloss``, ``n`` (rows), ``positives``,
        ``gauc_users_total``, ``gauc_users_used`` and ``gauc_impressions_used``. With the intent
        arrays it also holds ``intent_kl``, ``intent_js`` and ``intent_rows``. Values are
        plain Python floats and ints. Undefined metrics are NaN.

    Raises:
        ValueError: on any input :func:`auc`, :func:`gauc`, :func:`logloss` or
            :func:`intent_metrics` rejects, or when only one intent array is given.
    """
    if (intent_true is None) != (intent_pred is None):
        raise ValueError("intent_true and intent_pred must be given together; got only "
                         + ("intent_true" if intent_pred is None else "intent_pred"))
    y = _check_labels(labels)
    p = _check_probs(probs)
    g = _check_groups(groups)
    _check_lengths(labels=y, probs=p, groups=g)

    value, stats = _gauc(y, p, g)
    out = {
        "auc": _auc(y, p),
        "gauc": value,
        "logloss": _logloss(y, p, 1e-7),
        "n": int(y.shape[0]),
        "positives": int(np.count_nonzero(y)),
        "gauc_users_total": stats["users_total"],
        "gauc_users_used": stats["users_used"],
        "gauc_impressions_used": stats["impressions_used"],
    }
    if intent_true is not None:
        out.update(intent_metrics(intent_true, intent_pred))
    logger.info("eval metrics: n=%d auc=%.6f gauc=%.6f logloss=%.6f (users used %d/%d)",
                out["n"], out["auc"], out["gauc"], out["logloss"], out["gauc_users_used"],
                out["gauc_users_total"])
    return out
