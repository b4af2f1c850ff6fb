"""DAIAN's eval quality after stage 2 and after stage 3 on MovieLens (ml-latest-small).

    PYTHONPATH=<checkout> python benchmarks/bench_daian_stages.py --work DIR [--label NAME]
        [--input ../shared/data/ml-latest-small] [--seed 0] [--epochs 2] [--batch-size 1024]
        [--emb-dim 16] [--att-units 32] [--tower 128,64] [--set pipeline.k=v ...]

Steps: ``tirec pipeline --format movielens`` (plus the ``--set`` overrides; pass the split
explicitly when comparing checkouts: the old main took ``--set pipeline.eval_days=365``, today's
the same split as ``--set pipeline.split=days --set pipeline.eval_days=365 --set
pipeline.valid_days=0``) -> DAIAN's three stages with the fixed config above
(``tirec.models.train.train_run``) -> exact eval AUC / GAUC / logloss:

* **after stage 2**: the stage-2 weights (``RUN/stage_2/weights``) in stage 2 with stage 2's
  inputs (``model.stage_forward(x)`` on each eval batch; ``model._stage_inputs(x, y)`` on older
  checkouts), i.e. what stage 2 optimised;
* **after stage 3**: the final model (``train_run``'s own metrics).

Also reports the per-epoch validation AUC of every stage, the wall time of the pipeline and of
the training, and a leak diagnostic: the eval AUC of the single feature "the intent fed in stage
2 is empty" as a click score (0.5 when that input says nothing about the row's label).

The script runs on any checkout whose stage 2 goes through ``TirModel.stage_forward`` or
``TirModel._stage_inputs``: it reads the fed intent from ``true_intent`` (the old leave-one-out
input) or ``prior_intent``. Writes
``WORK/result.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def run_pipeline(args, data_dir: str) -> float:
    """Runs ``tirec pipeline`` (MovieLens) into ``data_dir`` unless done; returns its seconds."""
    if os.path.exists(os.path.join(data_dir, "spec.json")):
        return float("nan")
    cmd = [sys.executable, "-m", "tirec.cli", "pipeline", "--input", args.input, "--format",
           "movielens", "--out", data_dir, "--set", f"pipeline.seed={args.seed}"]
    for o in args.overrides:
        cmd += ["--set", o]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"pipeline failed: {' '.join(cmd)}\n{res.stderr[-4000:]}")
    return time.time() - t0


def fed_intent(x_stage: dict):
    """The intent tensor stage 2 feeds DAIAN (old key ``true_intent``, new ``prior_intent``)."""
    for key in ("true_intent", "prior_intent"):
        if key in x_stage:
            return x_stage[key]
    raise KeyError(f"no stage-2 intent input among {sorted(x_stage)}")


def stage2_metrics(run_dir: str, data_dir: str, batch_size: int) -> dict:
    """Exact eval metrics of the stage-2 weights with stage 2's inputs, plus the leak diagnostic."""
    import tensorflow as tf

    from tirec.models import metrics as M
    from tirec.models.base import STAGE_DIE, model_input_names
    from tirec.models.data import make_dataset
    from tirec.models.train import load_run

    model, spec, _ = load_run(run_dir)
    model.load_weights(os.path.join(run_dir, "stage_2", "weights")).expect_partial()
    model.set_stage(STAGE_DIE)
    names = set(model_input_names(spec))

    staged = hasattr(model, "stage_forward")  # the stage feeds its inputs to forward

    @tf.function
    def step(x):
        return model.stage_forward(x, training=False) if staged else model(x, training=False)

    out = {"label": [], "prob": [], "user": [], "empty": []}
    for x, y in make_dataset(data_dir, "eval", spec, batch_size):
        x_stage = x if staged else model._stage_inputs(x, y)
        intent = fed_intent(x_stage)
        keep = names | (set(x_stage) - set(x)) | {"prior_intent"}
        pred = step({k: v for k, v in x_stage.items() if k in keep})
        out["label"].append(y["ctr"].numpy()[:, 0])
        out["prob"].append(pred["ctr"].numpy()[:, 0])
        out["user"].append(x["user_id"].numpy())
        out["empty"].append((tf.reduce_sum(intent, axis=-1) <= 0).numpy().astype(np.float64))
    p = {k: np.concatenate(v) for k, v in out.items()}
    labels = p["label"].astype(np.int64)
    metrics = M.ctr_metrics(labels, p["prob"], p["user"])
    metrics["fed_intent_empty_auc"] = float(M.auc(labels, p["empty"]))
    metrics["fed_intent_empty_share"] = float(p["empty"].mean())
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                    "shared", "data", "ml-latest-small"))
    ap.add_argument("--work", required=True)
    ap.add_argument("--label", default="", help="name of this run in the table (e.g. before/after)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per stage")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--emb-dim", type=int, default=16)
    ap.add_argument("--att-units", type=int, default=32)
    ap.add_argument("--tower", default="128,64")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra pipeline overrides, e.g. pipeline.no_trigger=pad")
    args = ap.parse_args()

    import tirec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from tirec.features.jsonio import read_json, write_json
    from tirec.models.config import TrainConfig, model_config_from_dict
    from tirec.models.train import train_run

    os.makedirs(args.work, exist_ok=True)
    data_dir, run_dir = os.path.join(args.work, "tfr"), os.path.join(args.work, "daian")
    pipeline_s = run_pipeline(args, data_dir)
    model_cfg = model_config_from_dict({"name": "daian", "emb_dim": args.emb_dim,
                                        "tower": [int(v) for v in args.tower.split(",")],
                                        "daian": {"att_units": args.att_units}})
    train_cfg = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, seed=args.seed)
    t0 = time.time()
    final = train_run(data_dir, "daian", run_dir, model_cfg, train_cfg)
    train_s = time.time() - t0
    t0 = time.time()
    s2 = stage2_metrics(run_dir, data_dir, args.batch_size)
    stats = read_json(os.path.join(data_dir, "stats.json"))
    result = {
        "label": args.label, "input": args.input, "seed": args.seed,
        "pipeline": {"overrides": args.overrides, "split": stats.get("split"), "written": stats["written"],
                     "ctr": stats["ctr"], "seconds": round(pipeline_s, 1)},
        "model": {"emb_dim": args.emb_dim, "att_units": args.att_units, "tower": args.tower},
        "train": {"batch_size": args.batch_size, "epochs_per_stage": args.epochs,
                  "seconds": round(train_s, 1)},
        "after_stage2": {k: s2[k] for k in ("auc", "gauc", "logloss", "fed_intent_empty_auc",
                                            "fed_intent_empty_share")},
        "after_stage3": {k: final[k] for k in ("auc", "gauc", "logloss", "intent_js") if k in final},
        "val_auc_per_epoch": {stage: h.get("val_auc") for stage, h in final["history"].items()},
        "stage2_eval_seconds": round(time.time() - t0, 1),
    }
    write_json(os.path.join(args.work, "result.json"), result)
    print("| run | stage-2 AUC | stage-2 GAUC | stage-3 AUC | stage-3 GAUC | 'fed intent empty' AUC "
          "| val AUC per epoch (stage 2; stage 3) |\n|---|---|---|---|---|---|---|")
    hist = result["val_auc_per_epoch"]
    fmt = lambda v: ", ".join(f"{a:.4f}" for a in (v or []))  # noqa: E731
    print(f"| {args.label} | {s2['auc']:.4f} | {s2['gauc']:.4f} | {final['auc']:.4f} | {final['gauc']:.4f} "
          f"| {s2['fed_intent_empty_auc']:.4f} | {fmt(hist.get('die_pretrain'))}; {fmt(hist.get('joint'))} |")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
