"""Quality check on planted synthetic data: DAIAN vs DIN over several seeds.

    python benchmarks/quality.py [--seeds 1 2 3] [--users 1000] [--epochs 2] [--work DIR] [--set k=v ...]

For each seed: ``tirec generate --users U --seed S`` -> ``tirec pipeline`` -> train ``din`` and
``daian`` (three stages) with the same settings -> exact eval metrics. Reports mean ± std over
the seeds of AUC, GAUC, logloss and (DAIAN) the intent JS divergence — against each request's
empirical click distribution (``intent_js``, what training fits) and against the generator's
planted per-user preference (``planted_intent_js``) — and RelaImpr of DAIAN over DIN. Writes ``--work/quality.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-4000:]}")


def planted_intent_js(data_dir: str, raw_dir: str, run_dir: str) -> dict:
    """JS divergence of DAIAN's predicted intent, averaged per eval user, to the generator's
    planted per-user preference over the similarity levels (the true intent), overall and by
    user type. The per-request label the training uses is a noisy draw from it (1-2 clicks)."""
    import pandas as pd

    from tirec.models import metrics as M
    from tirec.models.train import load_run, predict_eval

    model, spec, _ = load_run(run_dir)
    pred = predict_eval(model, data_dir, spec, 4096)
    users = pred["user_id"]
    uniq, inv = np.unique(users, return_inverse=True)
    mean_pred = np.zeros((len(uniq), pred["intent_pred"].shape[1]))
    np.add.at(mean_pred, inv, pred["intent_pred"])
    mean_pred /= np.bincount(inv)[:, None]
    truth = pd.read_parquet(f"{raw_dir}/ground_truth_intent.parquet").set_index("user_id").loc[uniq]
    planted = truth[[f"pref_{j}" for j in range(mean_pred.shape[1])]].to_numpy()
    js = M.js_divergence(planted, mean_pred)
    out = {"all": float(js.mean()), "users": int(len(uniq))}
    # Noise floor of the per-request metric: the planted preference itself, scored like the
    # model against each clicked request's empirical distribution.
    has = pred["intent_true"].sum(axis=1) > 0
    oracle = M.js_divergence(pred["intent_true"][has], planted[inv][has])
    model = M.js_divergence(pred["intent_true"][has], pred["intent_pred"][has])
    out["oracle_request_js"] = float(oracle.mean())
    request_type = truth["user_type"].to_numpy()[inv][has]
    for kind in ("specific", "broad"):
        sel = (truth["user_type"] == kind).to_numpy()
        out[kind] = float(js[sel].mean()) if sel.any() else float("nan")
        # The per-request metric and its noise floor within each user type.
        rsel = request_type == kind
        out[f"request_js_{kind}"] = float(model[rsel].mean()) if rsel.any() else float("nan")
        out[f"oracle_request_js_{kind}"] = float(oracle[rsel].mean()) if rsel.any() else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default="/tmp/tirec_quality")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    tirec = [sys.executable, "-m", "tirec.cli"]
    rows = {"din": [], "daian": []}
    for seed in args.seeds:
        base = f"{args.work}/seed{seed}"
        if not os.path.exists(f"{base}/tfr/spec.json"):
            _run(tirec + ["generate", "--out", f"{base}/raw", "--users", str(args.users), "--seed", str(seed)])
            _run(tirec + ["pipeline", "--input", f"{base}/raw", "--format", "synthetic", "--out", f"{base}/tfr"])
        for name in ("din", "daian"):
            run = f"{base}/{name}"
            if not os.path.exists(f"{run}/metrics.json"):
                sets = [x for o in args.overrides for x in ("--set", o)]
                _run(tirec + ["train", "--data", f"{base}/tfr", "--model", name, "--out", run,
                              "--epochs", str(args.epochs), "--set", f"train.seed={seed}"] + sets)
            with open(f"{run}/metrics.json") as fh:
                m = json.load(fh)
            if name == "daian":
                m["planted_js"] = planted_intent_js(f"{base}/tfr", f"{base}/raw", run)
            rows[name].append(m)
            print(f"seed {seed} {name}: auc {m['auc']:.4f} gauc {m['gauc']:.4f}"
                  + (f" intent_js {m['intent_js']:.4f}" if "intent_js" in m else ""), file=sys.stderr)
    summary = {"seeds": args.seeds, "users": args.users, "epochs_per_stage": args.epochs,
               "overrides": args.overrides}
    for name, ms in rows.items():
        summary[name] = {k: [float(np.mean([m[k] for m in ms])), float(np.std([m[k] for m in ms]))]
                         for k in ("auc", "gauc", "logloss", "intent_js", "intent_kl") if k in ms[0]}
    summary["daian"]["planted_intent_js"] = {
        k: [float(np.mean([m["planted_js"][k] for m in rows["daian"]])),
            float(np.std([m["planted_js"][k] for m in rows["daian"]]))]
        for k in ("all", "specific", "broad", "oracle_request_js", "request_js_specific",
                  "oracle_request_js_specific", "request_js_broad", "oracle_request_js_broad")}
    for key in ("auc", "gauc"):
        impr = [((d[key] - 0.5) / (b[key] - 0.5) - 1) * 100 for d, b in zip(rows["daian"], rows["din"])]
        summary[f"rela_impr_{key}_pct"] = [float(np.mean(impr)), float(np.std(impr))]
    summary["daian_beats_din"] = {key: [bool(d[key] > b[key]) for d, b in zip(rows["daian"], rows["din"])]
                                  for key in ("auc", "gauc")}
    with open(f"{args.work}/quality.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    print("| model | AUC | GAUC | logloss | intent JS |\n|---|---|---|---|---|")
    for name in ("din", "daian"):
        s = summary[name]
        js = f"{s['intent_js'][0]:.4f} ± {s['intent_js'][1]:.4f}" if "intent_js" in s else "—"
        print(f"| {name} | {s['auc'][0]:.4f} ± {s['auc'][1]:.4f} | {s['gauc'][0]:.4f} ± {s['gauc'][1]:.4f} "
              f"| {s['logloss'][0]:.4f} ± {s['logloss'][1]:.4f} | {js} |")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("din", "daian")}, indent=2))


if __name__ == "__main__":
    main()
