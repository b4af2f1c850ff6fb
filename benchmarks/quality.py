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

from tirec.features.jsonio import read_json, write_json


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-4000:]}")


def _eval_predictions(model, data_dir: str, spec, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """DAIAN's intent output on every eval record, with the record's user, request, level and
    ground-truth intent (the records parsed whole, so the meta column ``request_id`` is there)."""
    import tensorflow as tf

    from tirec.models.base import model_input_names
    from tirec.models.data import shard_files

    names = model_input_names(spec)
    parse = spec.parse_example_spec()

    @tf.function
    def step(batch):
        x = tf.io.parse_example(batch, parse)
        out = model({k: v for k, v in x.items() if k in names}, training=False)
        return x, out["intent"]

    cols = {k: [] for k in ("user_id", "request_id", "level", "intent_true", "intent_pred")}
    records = tf.data.TFRecordDataset(shard_files(data_dir, "eval"), compression_type="GZIP")
    for batch in records.batch(batch_size):
        x, intent = step(batch)
        cols["user_id"].append(x["user_id"].numpy().reshape(-1))
        cols["request_id"].append(x["request_id"].numpy().reshape(-1))
        cols["level"].append(x["trigger_target_level"].numpy().reshape(-1))
        cols["intent_true"].append(model.intent_target(x["intent_dist"]).numpy())
        cols["intent_pred"].append(intent.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def reachable_levels(request_ids: np.ndarray, levels: np.ndarray, n_levels: int) -> np.ndarray:
    """``[rows, n]`` bool: the levels that some candidate of the row's request has. A request's
    click distribution can only put mass on these levels."""
    _, req = np.unique(request_ids, return_inverse=True)
    per_request = np.zeros((req.max() + 1 if req.size else 0, n_levels), dtype=bool)
    per_request[req, levels] = True
    return per_request[req]


def restrict(dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``dist`` with the mass outside ``mask`` removed, renormalised (rows whose mask holds no
    mass of ``dist`` become uniform over the mask)."""
    kept = np.where(mask, dist, 0.0)
    total = kept.sum(axis=1, keepdims=True)
    uniform = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)
    return np.where(total > 0, kept / np.where(total > 0, total, 1.0), uniform)


def planted_intent_js(data_dir: str, raw_dir: str, run_dir: str) -> dict:
    """DAIAN's intent against the generator's planted per-user preference (the true intent).

    ``all`` / ``specific`` / ``broad``: JS of the prediction averaged per eval user to the
    user's planted preference over the similarity levels, overall and by user type.

    Per request (what ``tirec evaluate`` reports as ``intent_js``, over rows of requests with a
    click): ``request_js*`` is the model against each request's empirical click distribution
    (1-2 clicks, a noisy draw). Two reference predictors are scored the same way, so the
    model's figure can be read against them; neither is a lower bound for every predictor:

    * ``oracle_request_js*``: the planted preference itself. It is what a request-level
      predictor (the UIM sees user, trigger and history, not the candidates) could know at
      best about the user; it spreads mass over levels that no candidate of the request has.
    * ``oracle_reachable_request_js*``: the planted preference restricted to the levels the
      request's candidates reach, renormalised; what a predictor that also saw the candidates'
      levels could know.
    """
    import pandas as pd

    from tirec.models import metrics as M
    from tirec.models.train import load_run

    model, spec, _ = load_run(run_dir)
    pred = _eval_predictions(model, data_dir, spec)
    users = pred["user_id"]
    uniq, inv = np.unique(users, return_inverse=True)
    n = pred["intent_pred"].shape[1]
    mean_pred = np.zeros((len(uniq), n))
    np.add.at(mean_pred, inv, pred["intent_pred"])
    mean_pred /= np.bincount(inv)[:, None]
    truth = pd.read_parquet(f"{raw_dir}/ground_truth_intent.parquet").set_index("user_id").loc[uniq]
    planted = truth[[f"pref_{j}" for j in range(n)]].to_numpy()
    js = M.js_divergence(planted, mean_pred)
    out = {"all": float(js.mean()), "users": int(len(uniq))}
    has = pred["intent_true"].sum(axis=1) > 0
    label = pred["intent_true"][has]
    reach = reachable_levels(pred["request_id"], pred["level"], n)[has]
    scores = {
        "request_js": M.js_divergence(label, pred["intent_pred"][has]),
        "oracle_request_js": M.js_divergence(label, planted[inv][has]),
        "oracle_reachable_request_js": M.js_divergence(label, restrict(planted[inv][has], reach)),
    }
    request_type = truth["user_type"].to_numpy()[inv][has]
    for key, values in scores.items():
        out[key] = float(values.mean())
    for kind in ("specific", "broad"):
        sel = (truth["user_type"] == kind).to_numpy()
        out[kind] = float(js[sel].mean()) if sel.any() else float("nan")
        rsel = request_type == kind
        for key, values in scores.items():
            out[f"{key}_{kind}"] = float(values[rsel].mean()) if rsel.any() else float("nan")
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
                _run(tirec + ["train", "--data", f"{base}/tfr", "--model", name, "--run", run,
                              "--epochs", str(args.epochs), "--set", f"train.seed={seed}"] + sets)
            m = read_json(f"{run}/metrics.json")
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
        for k in ("all", "specific", "broad")
        + tuple(f"{key}{kind}" for key in ("request_js", "oracle_request_js", "oracle_reachable_request_js")
                for kind in ("", "_specific", "_broad"))}
    for key in ("auc", "gauc"):
        impr = [((d[key] - 0.5) / (b[key] - 0.5) - 1) * 100 for d, b in zip(rows["daian"], rows["din"])]
        summary[f"rela_impr_{key}_pct"] = [float(np.mean(impr)), float(np.std(impr))]
    summary["daian_beats_din"] = {key: [bool(d[key] > b[key]) for d, b in zip(rows["daian"], rows["din"])]
                                  for key in ("auc", "gauc")}
    write_json(f"{args.work}/quality.json", summary)
    def ms(pair):
        return f"{pair[0]:.4f} ± {pair[1]:.4f}"

    planted = summary["daian"]["planted_intent_js"]
    print("| model | AUC | GAUC | logloss | intent JS per request (`tirec evaluate`) "
          "| planted preference per request | planted, reachable levels per request "
          "| intent JS vs planted preference (per user) |\n|---|---|---|---|---|---|---|---|")
    for name in ("din", "daian"):
        s = summary[name]
        js = [ms(s["intent_js"]), ms(planted["oracle_request_js"]),
              ms(planted["oracle_reachable_request_js"]), ms(planted["all"])] if name == "daian" else ["—"] * 4
        print(f"| {name} | {ms(s['auc'])} | {ms(s['gauc'])} | {ms(s['logloss'])} | " + " | ".join(js) + " |")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("din", "daian")}, indent=2))


if __name__ == "__main__":
    main()
