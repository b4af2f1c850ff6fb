"""StatisticsGen's statistics of a span's records and its checks against the previous span.

:func:`compute` reads every split of a ``tirec pipeline`` output and writes
``statistics.json`` (rows per split, click rate, intent histogram, history lengths, distinct
values of each categorical model input) and ``values.npz`` (each categorical input's distinct
values over the span, and its column on the span's newest day, the eval split).
:func:`validate` compares them with the previous span's: missing fields, new categorical values
on the newest day, the click rate, the intent histogram (Jensen-Shannon divergence, natural
log, in [0, ln 2]) and the mean history length, each against ``validation``'s warning and
error thresholds.
"""
from __future__ import annotations

import os

import numpy as np

from tirec.features.jsonio import read_json, write_json

SPLITS = ("train", "valid", "eval")
LENGTH_BUCKETS = 10


def _categorical(spec) -> list[str]:
    """The scalar integer model inputs with an embedding table (ids and categories)."""
    return [f.name for f in spec.select(model_input=True)
            if f.table is not None and f.kind == "scalar" and f.dtype == "int64"]


def _read(examples: str, spec, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    from tirec.models.data import read_columns, shard_files

    out = {}
    for split in SPLITS:
        if os.path.isdir(os.path.join(examples, split)) and shard_files(examples, split):
            out[split] = read_columns(examples, split, spec, names)
    return out


def compute(examples: str, span: int, out: str) -> dict:
    """Writes ``out/statistics.json`` and ``out/values.npz``; returns the statistics."""
    from tirec.models.data import load_data_spec
    from tirec.models.robustness import main_history

    spec = load_data_spec(examples)
    ts = spec.select(group="history", field="ts", history=main_history(spec))[0].name
    intent = spec.select(group="intent", field="dist")[0].name
    cats = _categorical(spec)
    cols = _read(examples, spec, [spec.label, ts, intent] + cats)
    every = {k: np.concatenate([c[k] for c in cols.values()]) for k in [spec.label, ts, intent] + cats}
    lengths = (every[ts] > 0).sum(axis=1)
    counts, edges = np.histogram(lengths, bins=LENGTH_BUCKETS, range=(0, every[ts].shape[1]))
    hist = every[intent].sum(axis=0)
    stats = {"span": span, "features": sorted(f.name for f in spec.features),
             "rows": {s: int(c[spec.label].shape[0]) for s, c in cols.items()},
             "label_rate": float(every[spec.label].mean()),
             "intent_hist": (hist / hist.sum()).tolist() if hist.sum() > 0 else hist.tolist(),
             "seq_len": {"mean": float(lengths.mean()), "hist": counts.tolist(), "edges": edges.tolist()},
             "categorical": {c: {"distinct": int(np.unique(every[c]).size)} for c in cats}}
    newest = cols.get("eval", {})
    np.savez(os.path.join(out, "values.npz"),
             **{f"all:{c}": np.unique(every[c]) for c in cats},
             **{f"eval:{c}": np.asarray(newest[c]).reshape(-1) for c in cats if c in newest})
    write_json(os.path.join(out, "statistics.json"), stats)
    return stats


def _level(value: float, warning: float, error: float) -> str:
    return "error" if value > error else "warning" if value > warning else "ok"


def _relative(now: float, before: float) -> float:
    return abs(now - before) / before if before > 0 else (0.0 if now == before else float("inf"))


def _js(p: list[float], q: list[float]) -> float:
    from tirec.models.metrics import js_divergence

    if len(p) != len(q):
        return float("inf")
    return float(js_divergence(np.asarray(p, np.float64), np.asarray(q, np.float64)))


def measures(current: dict, previous: dict, cur_values, prev_values) -> dict[str, tuple[float, str]]:
    """``{check: (value, threshold family)}`` of the span against the previous one."""
    out = {"label_rate": (_relative(current["label_rate"], previous["label_rate"]), "label_rate"),
           "intent_js": (_js(current["intent_hist"], previous["intent_hist"]), "intent_js"),
           "seq_len": (_relative(current["seq_len"]["mean"], previous["seq_len"]["mean"]), "seq_len")}
    for c in current["categorical"]:
        if f"eval:{c}" in cur_values.files and f"all:{c}" in prev_values.files:
            column = cur_values[f"eval:{c}"]
            new = float(np.mean(~np.isin(column, prev_values[f"all:{c}"]))) if column.size else 0.0
            out[f"new_values:{c}"] = (new, "new_values")
    return out


def validate(current: dict, previous_uri: str | None, out: str, cfg) -> dict:
    """The anomalies of the span in ``out`` against the statistics in ``previous_uri`` (None:
    the first span, nothing to compare)."""
    result = {"errors": [], "warnings": [], "previous": previous_uri, "checks": {}}
    if previous_uri is None:
        result["warnings"].append("no previous span: the statistics are not compared")
        return result
    previous = read_json(os.path.join(previous_uri, "statistics.json"))
    missing = sorted(set(previous["features"]) - set(current["features"]))
    if missing:
        result["errors"].append(f"fields missing against span {previous['span']}: {', '.join(missing)}")
    with np.load(os.path.join(out, "values.npz")) as cur, np.load(os.path.join(previous_uri, "values.npz")) as prev:
        found = measures(current, previous, cur, prev)
    for name, (value, family) in found.items():
        warning, error = getattr(cfg, f"{family}_warning"), getattr(cfg, f"{family}_error")
        level = _level(value, warning, error)
        result["checks"][name] = {"value": value, "warning": warning, "error": error, "level": level}
        if level != "ok":
            result[f"{level}s"].append(f"{name} {value:.4g} > {level} threshold "
                                       f"{error if level == 'error' else warning:g} "
                                       f"(span {current['span']} vs span {previous['span']})")
    return result
