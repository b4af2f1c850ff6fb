"""The Evaluator's blessing rule: a candidate is blessed when it is not worse than the blessed
model beyond ``blessing``'s thresholds, overall and on every comparable slice (both scored on
the same eval split); the first model is held to an absolute AUC floor. Every check is one
line of ``reasons`` (``ok`` or ``FAIL``), so the decision explains itself."""
from __future__ import annotations

import math


def _check(name: str, value, floor: float, rule: str) -> tuple[bool, str]:
    ok = value is not None and not math.isnan(value) and value >= floor
    shown = "undefined" if value is None or math.isnan(value) else f"{value:.4f}"
    return ok, f"{'ok' if ok else 'FAIL'}: {name} {shown} {'>=' if ok else '<'} {floor:.4f} ({rule})"


def _comparable(metrics: dict | None, min_rows: int) -> bool:
    return bool(metrics) and "skipped" not in metrics and metrics.get("auc") is not None \
        and metrics.get("n", 0) >= min_rows


def _slice_checks(candidate: dict, baseline: dict, cfg) -> list[tuple[bool | None, str]]:
    out = []
    for name in cfg.slices:
        cur, base = candidate.get("slices", {}).get(name), baseline.get("slices", {}).get(name)
        if not (_comparable(cur, cfg.min_slice_rows) and _comparable(base, cfg.min_slice_rows)):
            why = (cur or {}).get("skipped") or (cur or {}).get("reason") or f"fewer than {cfg.min_slice_rows} rows"
            out.append((None, f"skipped: slice {name} ({why})"))
            continue
        out.append(_check(f"slice {name} AUC", cur["auc"], base["auc"] - cfg.max_slice_auc_drop,
                          f"blessed {base['auc']:.4f} - {cfg.max_slice_auc_drop:g}"))
    return out


def decide(candidate: dict, baseline: dict | None, cfg) -> tuple[bool, list[str]]:
    """(blessed, reasons) of ``candidate`` against ``baseline`` (None: the first model)."""
    if baseline is None:
        ok, line = _check("AUC", candidate["auc"], cfg.min_auc, "first model: the absolute floor blessing.min_auc")
        return ok, [line]
    checks = [_check("AUC", candidate["auc"], baseline["auc"] - cfg.max_auc_drop,
                     f"blessed {baseline['auc']:.4f} - {cfg.max_auc_drop:g}"),
              _check("GAUC", candidate["gauc"], baseline["gauc"] - cfg.max_gauc_drop,
                     f"blessed {baseline['gauc']:.4f} - {cfg.max_gauc_drop:g}")]
    checks += _slice_checks(candidate, baseline, cfg)
    blessed = all(ok for ok, _ in checks if ok is not None)
    return blessed, [line for _, line in checks]
