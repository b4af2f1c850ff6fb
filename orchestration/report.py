"""The run report of ``tirec run`` (issue 16): Markdown plus a static HTML page with PNG plots.

Usage::

    tirec report W                 # the newest run in W/runs/, plus span-over-span over all runs
    tirec report W/runs/run-0003   # that run, span-over-span over the runs up to it

    from tirec.orchestration.report import write_report
    paths = write_report("W")      # {"markdown": ..., "html": ..., "images": [...]}

The report is written to ``<run folder>/report/`` unless ``out`` is given: ``report.md``,
``report.html`` (static, images by relative path, no scripts or external resources) and one
PNG per plot. It reads only the files of the artifact contract (ORCH_FORMATS.md): each run's
``run.json``, the Trainer's ``metrics.json`` and the Evaluator's ``evaluation.json``,
``predictions.npz`` and ``baseline_predictions.npz``. The runner's ``metadata.sqlite`` is
never opened.

Sections: run summary and components (cached / ran / failed, seconds), training curves per
stage (loss and AUC, train vs val), ROC (candidate, and baseline when present), reliability
diagram (10 equal-width bins with the bin counts below), GAUC by slice (candidate vs baseline),
intent distributions (mean predicted vs mean ground truth per level, intent models only), the
blessing decision (reasons, thresholds, push) and span-over-span (candidate AUC and GAUC of
every run's span, blessed and pushed marked). A plot whose data is absent (a failed run, a
non-intent model, a single span) is replaced by a one-line note.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch); matplotlib
is imported only when a report is written.
"""
from __future__ import annotations

import datetime
import html
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["write_report", "roc_curve", "reliability_bins", "find_runs"]

N_BINS = 10  # reliability diagram: equal-width probability bins
DPI = 120
IMAGES = {"curves": "training_curves.png", "roc": "roc.png", "calibration": "calibration.png",
          "slices": "gauc_by_slice.png", "intents": "intent_distributions.png",
          "spans": "span_over_span.png"}
_MAX_WIDTH = 12.0  # inches: wider figures get rotated or shorter labels
_CHAR_IN = 0.065  # about the width of one 9 pt character (DejaVu Sans), in inches
_STATUS_WORDS = {"succeeded": "ran", "cached": "cached", "failed": "failed", "skipped": "skipped"}
_RC = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
       "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 12}
_CAND, _BASE, _TRUTH = "#1f77b4", "#ff7f0e", "#2ca02c"


# ---- finding and loading runs -------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    """A JSON file as a dict; ``ValueError`` naming the file when it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _run_id(run_dir: Path, run: dict) -> int:
    """The run id of run.json, else the number of the folder name ``run-NNNN``, else -1."""
    if isinstance(run.get("run_id"), int):
        return run["run_id"]
    m = re.search(r"(\d+)$", run_dir.name)
    return int(m.group(1)) if m else -1


def find_runs(runs_dir: Path) -> list[tuple[int, Path, dict]]:
    """``(run_id, folder, run.json)`` of every folder of ``runs_dir`` with a run.json, oldest first."""
    found = []
    for d in sorted(Path(runs_dir).glob("*/run.json")):
        run = _read_json(d)
        found.append((_run_id(d.parent, run), d.parent, run))
    return sorted(found, key=lambda t: (t[0], t[1].name))


def _resolve(target: str) -> tuple[Path, list[tuple[int, Path, dict]]]:
    """The run folder to report and the runs of its span-over-span history (oldest first).

    A workdir reports its newest run and every run; a run folder reports itself and, when it
    lies in a ``runs/`` folder, its sibling runs up to and including itself.
    """
    path = Path(target).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder or workdir")
    if (path / "run.json").is_file():
        own = _run_id(path, _read_json(path / "run.json"))
        history = [r for r in find_runs(path.parent) if r[0] <= own] if path.parent.name == "runs" else []
        if not any(r[1] == path for r in history):
            history = [(own, path, _read_json(path / "run.json"))]
        return path, history
    runs = find_runs(path / "runs") if (path / "runs").is_dir() else []
    if not runs:
        raise FileNotFoundError(f"{path}: holds no run.json (expected a run folder with run.json "
                                f"or a workdir with runs/run-NNNN/run.json)")
    return runs[-1][1], runs


def _workdir(run_dir: Path) -> Path:
    """The workdir of a run folder ``W/runs/run-NNNN`` (the run folder itself otherwise)."""
    return run_dir.parent.parent if run_dir.parent.name == "runs" else run_dir


def _artifact_dir(run: dict, run_dir: Path, filename: str, component: str) -> Path | None:
    """The output dir holding ``filename``, preferring the outputs of ``component``."""
    execs = sorted(run.get("executions") or [], key=lambda e: e.get("component") != component)
    for ex in execs:
        for uri in (ex.get("outputs") or {}).values():
            d = Path(str(uri))
            d = d if d.is_absolute() else _workdir(run_dir) / d
            if (d / filename).is_file():
                return d
    return None


def _load_npz(path: Path) -> dict | None:
    """The arrays of an ``.npz`` file, or None when it is missing."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable predictions file ({err})") from err


def _load_run(run_dir: Path, run: dict) -> dict:
    """run.json plus whatever of metrics.json, evaluation.json and predictions exist."""
    ev_dir = _artifact_dir(run, run_dir, "evaluation.json", "Evaluator")
    evaluation = _read_json(ev_dir / "evaluation.json") if ev_dir else None
    model_dir = _artifact_dir(run, run_dir, "metrics.json", "Trainer")
    if model_dir is None and evaluation and (evaluation.get("candidate") or {}).get("uri"):
        uri = Path(evaluation["candidate"]["uri"])
        model_dir = uri if (uri / "metrics.json").is_file() else None
    stats_dir = _artifact_dir(run, run_dir, "anomalies.json", "StatisticsGen")
    return {"dir": run_dir, "run": run, "evaluation": evaluation,
            "anomalies": _read_json(stats_dir / "anomalies.json") if stats_dir else None,
            "metrics": _read_json(model_dir / "metrics.json") if model_dir else None,
            "preds": _load_npz(ev_dir / "predictions.npz") if ev_dir else None,
            "base_preds": _load_npz(ev_dir / "baseline_predictions.npz") if ev_dir else None}


# ---- metrics computed here ----------------------------------------------------------------------

def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x, digits: int = 4) -> str:
    """A cell value: n/a for None and NaN, yes/no for booleans, fixed digits for floats."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, (dict, list)):
        return json.dumps(x)
    return str(x)


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Exact AUC (tirec.models.metrics)."""
    from tirec.models.metrics import auc
    return auc(labels, probs)


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray] | None:
    """``(fpr, tpr)`` over every distinct score threshold (ties form one step); None with one class."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0 or y.all() or not y.any():
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last row of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def reliability_bins(labels, probs, n_bins: int = N_BINS) -> dict:
    """Equal-width bins of the predicted probability: counts, mean prediction, click rate, ECE.

    Empty bins have NaN means. ``ece`` is the count-weighted mean ``|mean_pred - click_rate|``.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, p, n_bins) / counts
        rate = np.bincount(idx, y, n_bins) / counts
    full = counts > 0
    ece = float((counts[full] * np.abs(mean_p[full] - rate[full])).sum() / max(counts.sum(), 1))
    return {"edges": edges, "counts": counts, "mean_pred": mean_p, "rate": rate, "ece": ece}


# ---- figures --------------------------------------------------------------------------------------

def _figure(figsize):
    """A matplotlib Figure on an Agg canvas, with the report's font sizes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, rect=None) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _plot_curves(history: dict, path: Path) -> Path:
    """Loss (top row) and AUC (bottom row) per epoch, train vs val, one column per stage."""
    from matplotlib.ticker import MaxNLocator

    stages = list(history)
    fig = _figure((max(6.0, 3.3 * len(stages)), 5.4))
    axes = fig.subplots(2, len(stages), squeeze=False)
    for col, stage in enumerate(stages):
        h = history[stage] or {}
        secs = h.get("seconds")
        for row, (key, name) in enumerate((("loss", "loss"), ("auc", "AUC"))):
            ax = axes[row][col]
            drawn = False
            for k, label, style in ((key, "train", "-"), (f"val_{key}", "val", "--")):
                ys = h.get(k) or []
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, style, marker="o", ms=4, label=label,
                            color=_CAND if label == "train" else _BASE)
                    drawn = True
            if not drawn:
                ax.text(0.5, 0.5, f"no {name} logged", ha="center", va="center", transform=ax.transAxes)
            epochs = max((len(h.get(k) or []) for k in (key, f"val_{key}")), default=0)
            ax.set_xlim(0.5, max(epochs, 1) + 0.5)
            if epochs <= 8:  # every epoch a tick (one epoch: one tick, not fractions)
                ax.set_xticks(range(1, max(epochs, 1) + 1))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.set_title(f"{stage}: {name}" + (f" ({secs:.0f} s)" if _finite(secs) and row == 0 else ""))
    handles = [h for ax in axes.flat for h in ax.get_lines()]
    labels = {h.get_label(): h for h in handles}
    fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=len(labels) or 1,
               frameon=False)
    fig.suptitle("Training curves per stage (train vs validation)")
    return _save(fig, path, rect=(0, 0.05, 1, 1))


def _plot_roc(curves: dict, path: Path) -> Path:
    """ROC curves ``{name: (fpr, tpr, auc)}`` with the chance diagonal."""
    fig = _figure((5.4, 4.8))
    ax = fig.subplots()
    for (name, (fpr, tpr, auc)), color in zip(curves.items(), (_CAND, _BASE)):
        ax.plot(fpr, tpr, color=color, lw=1.8, label=f"{name} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance (AUC 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title="ROC on the eval split")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _plot_calibration(bins: dict, path: Path) -> Path:
    """Reliability diagram (click rate vs mean prediction per bin) over a bar chart of bin counts."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = _figure((6, 5.6))
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1.3)})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    width = 1.0 / N_BINS / (len(bins) + 0.5)
    for i, ((name, b), color) in enumerate(zip(bins.items(), (_CAND, _BASE))):
        ax.plot(b["mean_pred"], b["rate"], "-o", ms=5, color=color, label=f"{name} (ECE {b['ece']:.4f})")
        left = b["edges"][:-1] + width * (i + 0.25)
        axc.bar(left, b["counts"], width=width, align="edge", color=color, alpha=0.8, label=name)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.03, 1.03), ylabel="observed click rate",
           title=f"Reliability diagram ({N_BINS} equal-width bins)")
    ax.grid(alpha=0.3)
    axc.set(xlabel="predicted click probability (bin mean)", ylabel="rows per bin")
    axc.set_yscale("log")
    counts = np.concatenate([b["counts"] for b in bins.values()])
    decades = np.log10(counts.max() / max(counts[counts > 0].min(), 1)) if counts.any() else 0.0
    axc.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,),
                                           numticks=6))
    axc.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axc.yaxis.set_minor_formatter(NullFormatter())
    axc.set_xticks(np.linspace(0, 1, 6))
    axc.grid(alpha=0.3, axis="y")
    ax.tick_params(labelbottom=True)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, frameon=False)
    return _save(fig, path, rect=(0, 0.05, 1, 1))


def _plot_slices(names: list, cand: list, base: list | None, rows: list, path: Path) -> Path:
    """Grouped bars of GAUC per slice, candidate vs baseline, values on the bars."""
    x = np.arange(len(names))
    width_in = min(_MAX_WIDTH, max(6.0, 0.9 * len(names) + 2.5))
    rotate = _CHAR_IN * max(len(n) for n in names) > 0.95 * (width_in - 2.2) / len(names)
    fig = _figure((width_in, 4.2 + (0.06 * max(len(n) for n in names) if rotate else 0)))
    ax = fig.subplots()
    series = [("candidate", cand, _CAND)] + ([("baseline", base, _BASE)] if base else [])
    width = 0.8 / len(series)
    vals = [v for _, s, _ in series for v in s if _finite(v)]
    for i, (label, values, color) in enumerate(series):
        ys = [v if _finite(v) else 0.0 for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=label, color=color)
        if len(names) <= 8:
            ax.bar_label(bars, labels=[f"{v:.3f}" if _finite(v) else "" for v in values],
                         padding=2, fontsize=9, rotation=90 if len(series) > 1 else 0)
    lo = max(0.0, min(vals) - 0.1) if vals else 0.0
    hi = min(1.0, max(vals) + 0.12) if vals else 1.0
    ax.set_ylim(lo, max(hi, lo + 0.1))
    for i, (_, values, _) in enumerate(series):  # undefined (empty or one-class slice)
        for j, v in enumerate(values):
            if not _finite(v):
                ax.text(x[j] + (i - (len(series) - 1) / 2) * width, lo, "n/a", ha="center", va="bottom",
                        fontsize=9, rotation=90 if len(series) > 1 else 0)
    sep = " " if rotate else "\n"
    ax.set_xticks(x, [f"{n}{sep}(n={r})" if r is not None else n for n, r in zip(names, rows)],
                  rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set(xlabel="slice", ylabel="GAUC", title="GAUC by slice")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _plot_intents(true_mean: np.ndarray, pred_mean: np.ndarray, js, rows: int, path: Path) -> Path:
    """Grouped bars: mean ground-truth vs mean predicted intent probability per level."""
    n = true_mean.size
    x = np.arange(n)
    fig = _figure((min(_MAX_WIDTH, max(6.0, 0.55 * n + 2.5)), 4.2))
    ax = fig.subplots()
    ax.bar(x - 0.2, true_mean, 0.4, label="ground truth", color=_TRUTH)
    ax.bar(x + 0.2, pred_mean, 0.4, label="predicted", color=_CAND)
    ax.set_xticks(x, [str(i) for i in x])
    ax.set_ylim(0, max(float(true_mean.max()), float(pred_mean.max())) * 1.15 + 1e-9)
    title = f"Intent distribution, mean over {rows} labelled requests"
    ax.set(xlabel="intent level", ylabel="mean probability",
           title=title + (f"\nmean JS divergence {js:.4f} nats" if _finite(js) else ""))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _plot_spans(points: list[dict], path: Path) -> Path:
    """Candidate AUC and GAUC per run (span), filled when blessed, a star label when pushed."""
    from matplotlib.lines import Line2D

    x = np.arange(len(points))
    many = len(points) > 6  # short labels: rotated ticks, "vN" for a push
    fig = _figure((min(_MAX_WIDTH, max(6.0, 1.1 * len(points) + 2.5)), 4.4 + 0.4 * many))
    ax = fig.subplots()
    for key, name, color, marker in (("auc", "AUC", _CAND, "o"), ("gauc", "GAUC", _BASE, "s")):
        ys = np.array([p[key] if _finite(p[key]) else np.nan for p in points])
        ax.plot(x, ys, "-", color=color, lw=1.5, zorder=1)
        for xi, y, p in zip(x, ys, points):
            ax.scatter(xi, y, s=50, marker=marker, zorder=2, edgecolors=color, linewidths=1.5,
                       facecolors=color if p["blessed"] else "white")
    vals = [p[k] for p in points for k in ("auc", "gauc") if _finite(p[k])]
    pad = max(0.02, 0.15 * (max(vals) - min(vals))) if vals else 0.05
    ax.set_ylim(min(vals) - pad, max(vals) + 2 * pad)
    for xi, p in zip(x, points):
        if p["pushed"] is not None and _finite(p["auc"]):
            ax.annotate(f"v{p['pushed']}" if many else f"pushed v{p['pushed']}", (xi, max(v for v in (p["auc"], p["gauc"]) if _finite(v))),
                        textcoords="offset points", xytext=(0, 9), ha="center", fontsize=9)
    ax.set_xticks(x, [f"span {p['span']}" + (f" (run {p['run_id']})" if many else f"\nrun {p['run_id']}")
                      for p in points], rotation=45 if many else 0, ha="right" if many else "center")
    ax.set_xlim(-0.5, len(points) - 0.5)
    ax.set(xlabel="span (run)", ylabel="candidate metric on its span's eval split",
           title="Span over span: candidate AUC and GAUC")
    ax.grid(alpha=0.3)
    legend = [Line2D([], [], color=_CAND, marker="o", label="AUC"),
              Line2D([], [], color=_BASE, marker="s", label="GAUC"),
              Line2D([], [], ls="", marker="o", color="black", label="blessed"),
              Line2D([], [], ls="", marker="o", mfc="white", color="black", label="not blessed")]
    if many:
        legend.append(Line2D([], [], ls="", label="vN: pushed as\nversion N"))
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


# ---- sections: each returns blocks (see _markdown / _html) ---------------------------------------

def _section_summary(r: dict) -> list:
    run, ev = r["run"], r["evaluation"] or {}
    blessing = run.get("blessing") or ({"blessed": ev["blessed"]} if "blessed" in ev else None)
    pushed = run.get("pushed")
    rows = [("run", f"{r['dir'].name} (id {_fmt(run.get('run_id'))})"), ("span", _fmt(run.get("span"))),
            ("model", _fmt(run.get("model_name") or run.get("model"))), ("status", _fmt(run.get("status"))),
            ("started", _fmt(run.get("started"))), ("finished", _fmt(run.get("finished"))),
            ("blessed", _fmt(blessing.get("blessed")) if blessing else "n/a (no evaluation)"),
            ("pushed", f"version {pushed.get('version')} at {pushed.get('path')}" if pushed
             else _not_pushed(run, "no ({})", "no, already serving as version {} at {}", "no"))]
    comps = [(ex.get("component", "?"), _STATUS_WORDS.get(ex.get("status"), _fmt(ex.get("status"))),
              _fmt(ex.get("seconds"), 1), ex.get("error") or "")
             for ex in run.get("executions") or []]
    blocks = [("h", 2, "Run summary"), ("table", ("field", "value"), rows), ("h", 3, "Components")]
    if comps:
        blocks.append(("table", ("component", "status", "seconds", "error"), comps))
    else:
        blocks.append(("note", "No component executions recorded in run.json."))
    return blocks


def _section_curves(r: dict, out: Path) -> list:
    blocks = [("h", 2, "Training curves")]
    history = (r["metrics"] or {}).get("history")
    if not history:
        return blocks + [("note", "Not plotted: no Trainer metrics.json with a training history.")]
    _plot_curves(history, out / IMAGES["curves"])
    secs = [f"{s}: {_fmt((h or {}).get('seconds'), 1)} s" for s, h in history.items()]
    return blocks + [("img", IMAGES["curves"], "training curves per stage"),
                     ("p", "Stage times: " + "; ".join(secs) + ".")]


def _pairs(r: dict) -> dict:
    """``{"candidate": (labels, probs), "baseline": ...}`` of the predictions that exist."""
    out = {}
    for name, preds in (("candidate", r["preds"]), ("baseline", r["base_preds"])):
        if preds and "label" in preds and "prob" in preds and preds["label"].size:
            out[name] = (preds["label"].ravel(), preds["prob"].ravel())
    return out


def _section_metrics(r: dict) -> list:
    ev = r["evaluation"]
    blocks = [("h", 2, "Evaluation")]
    if not ev:
        return blocks + [("note", "No evaluation.json: the Evaluator did not run or failed.")]
    cand, base = ev.get("candidate") or {}, ev.get("baseline") or None
    keys = [k for k in ("auc", "gauc", "logloss", "intent_js") if k in cand or (base and k in base)]
    rows = []
    for k in keys:
        c, b = cand.get(k), (base or {}).get(k)
        rows.append((k, _fmt(c), _fmt(b), _fmt(c - b, 4) if _finite(c) and _finite(b) else "n/a"))
    text = "No baseline: this is the first model." if base is None else \
        f"Baseline: the model serving when it was evaluated ({base.get('uri', 'n/a')}) scored on this span's eval split."
    return blocks + [("p", f"Candidate {cand.get('uri', 'n/a')} on span {_fmt(ev.get('span'))}. " + text),
                     ("table", ("metric", "candidate", "baseline", "candidate - baseline"), rows)]


def _section_roc(r: dict, out: Path) -> list:
    blocks = [("h", 2, "ROC")]
    curves = {}
    for name, (y, p) in _pairs(r).items():
        c = roc_curve(y, p)
        if c is not None:
            curves[name] = (*c, _auc(y, p))
    if not curves:
        return blocks + [("note", "Not plotted: no predictions.npz with both classes.")]
    _plot_roc(curves, out / IMAGES["roc"])
    return blocks + [("img", IMAGES["roc"], "ROC curves")]


def _section_calibration(r: dict, out: Path) -> list:
    blocks = [("h", 2, "Calibration")]
    bins = {name: reliability_bins(y, p) for name, (y, p) in _pairs(r).items()}
    if not bins:
        return blocks + [("note", "Not plotted: no predictions.npz.")]
    _plot_calibration(bins, out / IMAGES["calibration"])
    text = "; ".join(f"{n}: ECE {b['ece']:.4f}, mean prediction {np.nanmean(p):.4f} vs click rate "
                     f"{np.mean(y):.4f}" for (n, b), (y, p) in zip(bins.items(), _pairs(r).values()))
    return blocks + [("img", IMAGES["calibration"], "reliability diagram"), ("p", text + ".")]


def _section_slices(r: dict, out: Path) -> list:
    blocks = [("h", 2, "GAUC by slice")]
    ev = r["evaluation"] or {}
    cs = (ev.get("candidate") or {}).get("slices") or {}
    bs = (ev.get("baseline") or {}).get("slices") if ev.get("baseline") else None
    if not cs:
        return blocks + [("note", "Not plotted: the evaluation has no slices.")]
    names = list(cs)
    cand = [cs[n].get("gauc") for n in names]
    base = [(bs.get(n) or {}).get("gauc") for n in names] if bs else None
    rows = [cs[n].get("rows") for n in names]
    _plot_slices(names, cand, base, rows, out / IMAGES["slices"])
    table = [(n, _fmt(rw), _fmt(c), _fmt(b) if base else "n/a", _fmt(cs[n].get("auc")))
             for n, rw, c, b in zip(names, rows, cand, base or [None] * len(names))]
    return blocks + [("img", IMAGES["slices"], "GAUC by slice"),
                     ("table", ("slice", "rows", "candidate GAUC", "baseline GAUC", "candidate AUC"), table)]


def _section_intents(r: dict, out: Path) -> list:
    blocks = [("h", 2, "Intent distributions")]
    preds = r["preds"] or {}
    if "intent_true" not in preds or "intent_pred" not in preds:
        return blocks + [("note", "Not plotted: no intent arrays in predictions.npz (not an intent model, "
                                  "or no evaluation).")]
    t, p = np.asarray(preds["intent_true"], float), np.asarray(preds["intent_pred"], float)
    keep = t.sum(axis=1) > 0  # requests without clicks have no intent label (models.metrics)
    if t.ndim != 2 or t.shape != p.shape or not keep.any():
        return blocks + [("note", "Not plotted: no labelled intent rows in predictions.npz.")]
    js = ((r["evaluation"] or {}).get("candidate") or {}).get("intent_js")
    tm, pm = t[keep].mean(axis=0), p[keep].mean(axis=0)
    _plot_intents(tm, pm, js, int(keep.sum()), out / IMAGES["intents"])
    table = [(str(i), f"{a:.4f}", f"{b:.4f}") for i, (a, b) in enumerate(zip(tm, pm))]
    return blocks + [("img", IMAGES["intents"], "intent distributions"),
                     ("table", ("level", "mean ground truth", "mean predicted"), table)]


def _section_validation(r: dict) -> list:
    """StatisticsGen's checks of the span against the previous one: errors, warnings, values."""
    blocks = [("h", 2, "Data validation (StatisticsGen)")]
    a = r.get("anomalies")
    if a is None:
        return blocks + [("note", "No statistics: StatisticsGen did not run.")]
    blocks.append(("p", f"Compared with: {a.get('previous') or 'nothing (the first span)'}."))
    for level in ("errors", "warnings"):
        if a.get(level):
            blocks += [("h", 3, level.capitalize()), ("list", list(a[level]))]
    rows = [(name, _fmt(c.get("value")), _fmt(c.get("warning")), _fmt(c.get("error")), c.get("level", ""))
            for name, c in (a.get("checks") or {}).items()]
    if rows:
        blocks.append(("table", ("check", "value", "warning above", "error above", "level"), rows))
    return blocks


def _section_blessing(r: dict) -> list:
    run, ev = r["run"], r["evaluation"] or {}
    blessing = run.get("blessing") or ({"blessed": ev["blessed"], "reasons": ev.get("reasons", [])}
                                       if "blessed" in ev else None)
    blocks = [("h", 2, "Blessing decision")]
    if blessing is None:
        return blocks + [("note", "No blessing: the run has no evaluation.")]
    verdict = "BLESSED" if blessing.get("blessed") else "NOT BLESSED"
    first = " (first model: no baseline to compare with)" if ev.get("first_model") else ""
    blocks += [("p", f"Decision: {verdict}{first}."), ("h", 3, "Reasons")]
    reasons = list(dict.fromkeys((blessing.get("reasons") or []) + (ev.get("reasons") or [])))  # both records
    blocks.append(("list", reasons) if reasons else ("note", "No reasons recorded."))
    if ev.get("thresholds"):
        blocks += [("h", 3, "Thresholds"),
                   ("table", ("threshold", "value"), [(k, f"{v:g}" if _finite(v) else _fmt(v))
                                                          for k, v in ev["thresholds"].items()])]
    pushed = run.get("pushed")
    push = (f"Pushed as version {pushed.get('version')} to {pushed.get('path')}." if pushed
            else _not_pushed(run, "Push refused: {}.", "Not pushed: already serving as version {} at {}.",
                             "Not pushed."))
    return blocks + [("h", 3, "Push"), ("p", push)]


def _not_pushed(run: dict, refused: str, serving: str, other: str) -> str:
    """Why a run pushed nothing, in one of three templates: refused (the reason), already serving
    (pushed by an earlier run, or found serving; version and path), or neither."""
    if run.get("already_serving"):
        return serving.format(run["already_serving"].get("version"), run["already_serving"].get("path"))
    return refused.format(run["refused_push"]) if run.get("refused_push") else other


def _span_point(run_id: int, run_dir: Path, run: dict) -> dict:
    """One row of span-over-span: the run's candidate metrics, blessing and push."""
    ev_dir = _artifact_dir(run, run_dir, "evaluation.json", "Evaluator")
    ev = _read_json(ev_dir / "evaluation.json") if ev_dir else {}
    cand, base = ev.get("candidate") or {}, ev.get("baseline") or {}
    blessing = run.get("blessing") or {}
    return {"run_id": run_id, "span": run.get("span", ev.get("span")), "status": run.get("status"),
            "auc": cand.get("auc"), "gauc": cand.get("gauc"), "base_auc": base.get("auc"),
            "blessed": bool(blessing.get("blessed", ev.get("blessed", False))),
            "evaluated": bool(ev), "pushed": (run.get("pushed") or {}).get("version")}


def _section_spans(history: list, out: Path) -> list:
    blocks = [("h", 2, "Span over span")]
    points = [_span_point(*h) for h in history]
    table = [(str(p["run_id"]), _fmt(p["span"]), _fmt(p["status"]), _fmt(p["auc"]), _fmt(p["gauc"]),
              _fmt(p["base_auc"]), _fmt(p["blessed"]) if p["evaluated"] else "n/a",
              f"v{p['pushed']}" if p["pushed"] is not None else "no") for p in points]
    plotted = [p for p in points if _finite(p["auc"]) or _finite(p["gauc"])]
    if len({p["span"] for p in plotted}) < 2:
        blocks.append(("note", f"Not plotted: {len(plotted)} evaluated run(s) over "
                               f"{len({p['span'] for p in plotted})} span(s); span-over-span needs two spans."))
    else:
        _plot_spans(plotted, out / IMAGES["spans"])
        blocks.append(("img", IMAGES["spans"], "span over span"))
    return blocks + [("table", ("run", "span", "status", "candidate AUC", "candidate GAUC",
                                "baseline AUC", "blessed", "pushed"), table)]


# ---- rendering ----------------------------------------------------------------------------------

def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list) -> str:
    lines = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "note":
            lines += [f"_{b[1]}_", ""]
        elif kind == "list":
            lines += [f"- {_md_cell(item)}" for item in b[1]] + [""]
        elif kind == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
        elif kind == "table":
            lines.append("| " + " | ".join(map(_md_cell, b[1])) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b[2]] + [""]
    return "\n".join(lines)


_CSS = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left}th{background:#f2f2f2}img{max-width:100%;height:auto;display:block;margin:.5em 0}"
        ".note{color:#666;font-style:italic}")


def _html(blocks: list, title: str) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "note":
            parts.append(f'<p class="note">{e(b[1])}</p>')
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b[1]) + "</ul>")
        elif kind == "img":
            parts.append(f'<img src="{e(b[1])}" alt="{e(b[2])}">')
        elif kind == "table":
            head = "".join(f"<th>{e(str(c))}</th>" for c in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- entry point --------------------------------------------------------------------------------

def write_report(target: str, out: str | None = None) -> dict:
    """Writes the report of a run (or of a workdir's newest run) and returns its paths.

    Args:
        target: a workdir ``W`` (its newest run in ``W/runs/``, span-over-span over all runs) or
            one run folder ``W/runs/run-NNNN`` (span-over-span over the runs up to it).
        out: the report folder; ``<run folder>/report/`` by default.

    Returns:
        ``{"markdown": path, "html": path, "images": [paths of the PNGs written]}``.

    Raises:
        FileNotFoundError: when ``target`` does not exist or holds no run.json.
        ValueError: when a run.json or another contract file is not valid JSON.
    """
    run_dir, history = _resolve(target)
    r = _load_run(run_dir, _read_json(run_dir / "run.json"))
    out_dir = Path(out).expanduser().resolve() if out else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in IMAGES.values():  # no stale plot of an earlier report survives
        (out_dir / name).unlink(missing_ok=True)
    run = r["run"]
    title = f"tirec run report: {run_dir.name}, span {_fmt(run.get('span'))}, " \
            f"{_fmt(run.get('model_name') or run.get('model'))}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks = [("h", 1, title), ("p", f"Run folder {run_dir}; report written {stamp}.")]
    import matplotlib

    with matplotlib.rc_context(_RC):  # the report's font sizes, without touching global settings
        blocks += _section_summary(r) + _section_curves(r, out_dir) + _section_metrics(r)
        blocks += _section_roc(r, out_dir) + _section_calibration(r, out_dir) + _section_slices(r, out_dir)
        blocks += _section_intents(r, out_dir) + _section_validation(r) + _section_blessing(r)
        blocks += _section_spans(history, out_dir)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(_markdown(blocks), encoding="utf-8")
    page.write_text(_html(blocks, title), encoding="utf-8")
    images = [str(out_dir / b[1]) for b in blocks if b[0] == "img"]
    return {"markdown": str(md), "html": str(page), "images": images}
