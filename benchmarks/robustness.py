"""Robustness to interaction noise and intent drift: AUC / GAUC vs noise level, per model.

    PYTHONPATH=<checkout> python benchmarks/robustness.py --out DIR [--models din daian gapnet]
        [--seeds 1 2 3] [--datasets synthetic movielens] [--levels 0 10 20 30 50]
        [--users 600] [--epochs 3] [--patience 1] [--input ../shared/data/ml-latest-small]
        [--set model.k=v ...]

Data sets (converted once into ``OUT/data/``):

Both are converted with ``--views`` (GAP-Net's real-time and long-term views; DIN and DAIAN do
not read them, ``--no-views`` leaves them out and GAP-Net cuts its real-time view from ``hist``).

* ``synthetic``: the planted generator (``tirec generate --users U --seed 1`` -> ``tirec
  pipeline``, as ``benchmarks/quality.py``), whose clicks follow the trigger-candidate
  similarity level and the user's long-term interest;
* ``movielens``: ``tirec pipeline --format movielens`` of ``--input`` (read in place).

For each (data set, model, seed): ``train_run`` with the same small config for every model
(emb 16, attention 32 x 2 heads for DAIAN and GAP-Net, tower 128-64, batch 1024, Adagrad 0.05, one length group,
``--epochs`` per stage
with early stopping on the ``valid`` split, patience ``--patience``; DAIAN trains its three
stages), then the final (best-epoch) weights are scored on eval at each noise level P
(:class:`tirec.models.robustness.HistoryNoise`, noise seed = the training seed) with the
``drift`` slice. Each result is cached as ``OUT/results/<data>__<model>__seed<S>.json``: a rerun
resumes, and models can be added later (``--models gapnet``); the table and plot cover every
cached result. A model that is not registered is skipped with a message.

Writes ``OUT/robustness.md`` (mean ± std over seeds) and ``OUT/robustness.png`` (AUC vs P, one
line per model, error bars = std over seeds, one panel per data set). matplotlib comes from the
``bench`` extra (``pip install tirec[bench]``).
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import numpy as np

LABELS = {"din": "DIN", "daian": "DAIAN", "gapnet": "GAP-Net (reconstructed)", "dien": "DIEN", "dihn": "DIHN",
          "dian": "DIAN", "dei2n": "DEI2N", "poso": "POSO", "mwuf": "MWUF", "tin": "TIN", "qin": "QIN"}
TITLES = {"synthetic": "planted synthetic data", "movielens": "MovieLens ml-latest-small"}
CONFIG = ["model.emb_dim=16", "model.daian.att_units=32", "model.daian.att_heads=2",
          "model.gapnet.att_units=32", "model.gapnet.att_heads=2",
          "model.tower=[128,64]", "train.batch_size=1024", "train.learning_rate=0.05",
          "train.optimizer=adagrad", "train.shuffle_buffer=100000",
          # speed-only switches (same outputs up to float rounding, docs/models.md): one length
          # group traces one graph instead of 16, which dominates these short runs
          "model.hist_buckets=1", "model.daian.explicit_buckets=1"]


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-4000:]}")


def prepare(name: str, args) -> str:
    """The pipeline output folder of data set ``name`` (converted unless already there)."""
    out = os.path.join(args.out, "data", name)
    if os.path.exists(os.path.join(out, "tfr", "spec.json")):
        return os.path.join(out, "tfr")
    tirec = [sys.executable, "-m", "tirec.cli"]
    views = ["--views"] if args.views else []  # GAP-Net's rt / lt views; DIN and DAIAN do not read them
    t0 = time.time()
    if name == "synthetic":
        _run(tirec + ["generate", "--out", f"{out}/raw", "--users", str(args.users), "--seed", "1"])
        _run(tirec + ["pipeline", "--input", f"{out}/raw", "--format", "synthetic", "--out", f"{out}/tfr"]
             + views)
    elif name == "movielens":
        _run(tirec + ["pipeline", "--input", args.input, "--format", "movielens", "--out", f"{out}/tfr",
                      "--set", "pipeline.seed=0"] + views)
    else:
        raise SystemExit(f"--datasets: unknown data set {name!r}; valid: synthetic, movielens")
    print(f"{name}: converted in {time.time() - t0:.1f} s", file=sys.stderr)
    return os.path.join(out, "tfr")


def run_one(data_dir: str, dataset: str, model: str, seed: int, args) -> dict:
    """Trains one (model, seed) on ``data_dir`` and scores it at every noise level."""
    from tirec.config import load_config
    from tirec.models import robustness as R
    from tirec.models.train import evaluate_model, load_run, train_run

    run = os.path.join(args.out, "runs", f"{dataset}__{model}__seed{seed}")
    sets = CONFIG + [f"train.epochs={args.epochs}", f"train.early_stopping_patience={args.patience}",
                     f"train.seed={seed}"] + list(args.overrides)
    cfg = load_config(None, sets)
    t0 = time.time()
    train_run(data_dir, model, run, cfg.model, cfg.train)
    train_s = time.time() - t0
    net, spec, _ = load_run(run)
    catalogue = R.load_catalogue(data_dir)
    levels = {}
    t1 = time.time()
    for p in args.levels:
        noise = R.HistoryNoise(spec, catalogue, p, seed) if p else None
        m = evaluate_model(net, data_dir, spec, cfg.train.batch_size, noise=noise, slices=["drift"])
        levels[str(p)] = {"auc": m["auc"], "gauc": m["gauc"], "logloss": m["logloss"], "n": m["n"],
                          "drift": m["slices"]["drift"]}
    return {"dataset": dataset, "model": model, "seed": seed, "config": sets,
            "train_seconds": round(train_s, 1), "eval_seconds": round(time.time() - t1, 1),
            "levels": levels}


def load_results(out: str) -> list[dict]:
    from tirec.features.jsonio import read_json

    return [read_json(p) for p in sorted(glob.glob(os.path.join(out, "results", "*.json")))]


def _group(results: list[dict]) -> dict:
    """``{(dataset, model): [result per seed]}`` in data set then model order."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    order = list(TITLES) + sorted({d for d, _ in groups} - set(TITLES))
    models = list(LABELS) + sorted({m for _, m in groups} - set(LABELS))
    return {k: groups[k] for k in sorted(groups, key=lambda k: (order.index(k[0]), models.index(k[1])))}


def _stat(values) -> tuple[float, float]:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    if np.all(np.isnan(v)):
        return float("nan"), float("nan")
    return float(np.nanmean(v)), float(np.nanstd(v))


def _cell(values) -> str:
    m, s = _stat(values)
    return "—" if np.isnan(m) else f"{m:.4f} ± {s:.4f}"


def table(results: list[dict], levels: list) -> str:
    """The Markdown tables: AUC and GAUC per noise level, the AUC drop 0 -> 30, the drift slice."""
    lines = []
    for metric in ("auc", "gauc"):
        head = " | ".join(f"P={p}" for p in levels)
        lines += [f"**{metric.upper()} vs noise P (% of history positions replaced)**", "",
                  f"| data set | model | seeds | {head} | drop P=0→30 |",
                  "|---|---|---|" + "---|" * len(levels) + "---|"]
        for (dataset, model), rs in _group(results).items():
            cells = [_cell([r["levels"].get(str(p), {}).get(metric) for r in rs]) for p in levels]
            drop = "—"
            if all("0" in r["levels"] and "30" in r["levels"] for r in rs):
                drop = _cell([r["levels"]["0"][metric] - r["levels"]["30"][metric] for r in rs])
            lines.append(f"| {dataset} | {LABELS.get(model, model)} | {len(rs)} | " + " | ".join(cells)
                         + f" | {drop} |")
        lines.append("")
    lines += ["**Drift slice** (trigger category absent from the last 10 behaviours; "
              "`tirec evaluate --slice drift`)", "",
              "| data set | model | seeds | impressions | users | AUC P=0 | GAUC P=0 | AUC P=30 | GAUC P=30 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (dataset, model), rs in _group(results).items():
        d0 = [r["levels"].get("0", {}).get("drift", {}) for r in rs]
        d30 = [r["levels"].get("30", {}).get("drift", {}) for r in rs]
        lines.append(f"| {dataset} | {LABELS.get(model, model)} | {len(rs)} | {d0[0].get('n', '—')} | "
                     f"{d0[0].get('users', '—')} | {_cell([d.get('auc') for d in d0])} | "
                     f"{_cell([d.get('gauc') for d in d0])} | {_cell([d.get('auc') for d in d30])} | "
                     f"{_cell([d.get('gauc') for d in d30])} |")
    secs = [(r["dataset"], r["model"], r["train_seconds"], r["eval_seconds"]) for r in results]
    lines += ["", "Seconds per run (train + all noise levels' evaluation): "
              + "; ".join(f"{d}/{m} {t:.0f}+{e:.0f}" for d, m, t, e in secs)]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], levels: list, path: str) -> None:
    """AUC vs P, one line per model with std error bars, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(results)
    datasets = list(dict.fromkeys(d for d, _ in groups))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets), 4.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for (d, model), rs in groups.items():
            if d != dataset:
                continue
            ps = [p for p in levels if all(str(p) in r["levels"] for r in rs)]
            stats = [_stat([r["levels"][str(p)]["auc"] for r in rs]) for p in ps]
            ax.errorbar(ps, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=4,
                        label=f"{LABELS.get(model, model)} ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
        ax.set_title(f"AUC under history noise — {TITLES.get(dataset, dataset)}", fontsize=12)
        ax.set_xlabel("noise P: % of behaviour positions replaced by random items", fontsize=11)
        ax.set_ylabel("eval AUC (mean ± std over seeds)", fontsize=11)
        ax.set_xticks(levels)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results, table, plot (and the converted data) go here")
    ap.add_argument("--models", nargs="+", default=["din", "daian", "gapnet"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--datasets", nargs="+", default=["synthetic", "movielens"])
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 10, 20, 30, 50])
    ap.add_argument("--users", type=int, default=600, help="synthetic users")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per stage (early stopping on valid)")
    ap.add_argument("--patience", type=int, default=1)
    ap.add_argument("--views", action=argparse.BooleanOptionalAction, default=True,
                    help="write GAP-Net's real-time and long-term views (tirec pipeline --views); "
                         "--no-views: GAP-Net cuts its real-time view from the history")
    ap.add_argument("--input", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                     "shared", "data", "ml-latest-small"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides k=v")
    args = ap.parse_args()
    from tirec.features.jsonio import write_json
    from tirec.models.registry import model_names

    known = model_names()
    models = []
    for m in args.models:
        if m in known:
            models.append(m)
        else:
            print(f"skipping model {m!r}: not registered in this checkout (registered: {known})", file=sys.stderr)
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    data_dirs = {dataset: prepare(dataset, args) for dataset in args.datasets}
    # Seed by seed, so that an interrupted run leaves whole seeds of every model.
    for seed in args.seeds:
        for dataset, data_dir in data_dirs.items():
            for model in models:
                path = os.path.join(args.out, "results", f"{dataset}__{model}__seed{seed}.json")
                if os.path.exists(path):
                    continue
                result = run_one(data_dir, dataset, model, seed, args)
                write_json(path, result)
                auc = {p: round(v["auc"], 4) for p, v in result["levels"].items()}
                print(f"{dataset} {model} seed {seed}: train {result['train_seconds']} s, eval "
                      f"{result['eval_seconds']} s, AUC by P {auc}", file=sys.stderr)
    results = load_results(args.out)
    text = table(results, args.levels)
    with open(os.path.join(args.out, "robustness.md"), "w") as fh:
        fh.write(text)
    plot(results, args.levels, os.path.join(args.out, "robustness.png"))
    print(text)


if __name__ == "__main__":
    main()
