"""Training benchmark at the paper's config on this machine's CPUs.

    python benchmarks/bench_train.py [--users 2000] [--steps 20] [--work DIR] [--skip-big-table]

Measures, for DIN and DAIAN (joint stage, the heaviest), at batch 4096, Adagrad 0.05, tower
512-256-128, attention 128 x 4, sequence length 50:
  * ms per training step and examples/s (input excluded: one cached batch repeated);
  * the tf.data input pipeline alone (read, parse, batch), examples/s;
  * forward FLOPs per example (TensorFlow's graph profiler) and achieved GFLOP/s, counting a
    training step as 3x the forward FLOPs, against the 4096^3 fp32 matmul ceiling measured here;
  * peak RSS of a DIN run whose item table has 2^24 rows in 8 shards (a subprocess).
Prints JSON and writes ``--work/bench_train.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tirec.features.spec import TableSpec  # noqa: E402
from tirec.models.base import STAGE_JOINT, model_input_names  # noqa: E402
from tirec.models.config import ModelConfig  # noqa: E402
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset  # noqa: E402
from tirec.models.train import build_model  # noqa: E402

BATCH = 4096


def _data(work: str, users: int) -> str:
    raw, out = f"{work}/raw", f"{work}/tfr"
    if not os.path.exists(f"{out}/spec.json"):
        tirec = os.path.join(os.path.dirname(sys.executable), "tirec")
        subprocess.run([tirec, "generate", "--out", raw, "--users", str(users)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([tirec, "pipeline", "--input", raw, "--format", "synthetic", "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def _matmul_ceiling() -> float:
    a = tf.random.normal([4096, 4096])
    f = tf.function(lambda: tf.matmul(a, a))
    f()
    t = time.perf_counter()
    for _ in range(3):
        f().numpy()
    return 3 * 2 * 4096 ** 3 / (time.perf_counter() - t) / 1e9


def _forward_flops(model, x) -> float:
    spec = {k: tf.TensorSpec([1] + list(v.shape[1:]), v.dtype) for k, v in x.items()}
    graph = tf.function(lambda inp: model(inp, training=False)).get_concrete_function(spec).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    prof = tf.compat.v1.profiler.profile(graph, options=opts)
    return float(prof.total_float_ops)


def bench_model(name: str, data: str, steps: int) -> dict:
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    model = build_model(name, spec, ModelConfig(name=name), ids, vecs)
    model.set_stage(STAGE_JOINT)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.05),
                  uim_optimizer=tf.keras.optimizers.Adagrad(0.005))
    names = set(model_input_names(spec))
    x, y = next(iter(make_dataset(data, "train", spec, BATCH)))
    x = {k: v for k, v in x.items() if k in names}
    step = tf.function(model.train_step)
    step((x, y))  # trace + build
    t = time.perf_counter()
    for _ in range(steps):
        logs = step((x, y))
    float(logs["loss"])
    sec = (time.perf_counter() - t) / steps
    flops = _forward_flops(model, x)
    return {"ms_per_step": round(sec * 1000, 1), "examples_per_s": round(BATCH / sec),
            "forward_mflop_per_example": round(flops / 1e6, 3),
            "train_gflop_per_s": round(3 * flops * BATCH / sec / 1e9, 2),
            "params": int(sum(np.prod(v.shape) for v in model.trainable_variables))}


def bench_input(data: str, batches: int) -> dict:
    spec = load_data_spec(data)
    ds = make_dataset(data, "train", spec, BATCH, repeat=True)
    it = iter(ds)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    sec = time.perf_counter() - t
    return {"examples_per_s": round(batches * BATCH / sec)}


def big_table_child(data: str, steps: int) -> None:
    """Trains DIN with a 2^24-row, 8-shard item table; prints peak RSS (run in a subprocess)."""
    spec = load_data_spec(data)
    item = spec.table("item")
    spec = spec.with_tables([TableSpec("item", 1 << 24, item.dim, 8)])
    ids, vecs, _ = load_item_vectors(data)
    model = build_model("din", spec, ModelConfig(name="din", table_shards=8), ids, vecs)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.05))
    names = set(model_input_names(spec))
    ds = make_dataset(data, "train", spec, BATCH).map(lambda a, b: ({k: v for k, v in a.items() if k in names}, b))
    t = time.perf_counter()
    model.fit(ds.take(steps), epochs=1, verbose=0)
    rows = sum(int(np.prod(v.shape[:1])) for v in model.trainable_variables if "item" in v.name
               and "embed" in v.name)
    print(json.dumps({"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      "item_table_rows": rows, "steps": steps,
                      "seconds": round(time.perf_counter() - t, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--work", default="/tmp/tirec_bench_train")
    ap.add_argument("--skip-big-table", action="store_true")
    ap.add_argument("--big-table-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = _data(args.work, args.users)
    if args.big_table_child:
        big_table_child(data, args.steps)
        return
    out = {"batch": BATCH, "cpus": os.cpu_count(), "matmul_4096_gflop_per_s": round(_matmul_ceiling(), 1)}
    for name in ("din", "daian"):
        out[name] = bench_model(name, data, args.steps)
    out["daian_over_din_step_time"] = round(out["daian"]["ms_per_step"] / out["din"]["ms_per_step"], 2)
    out["input_pipeline"] = bench_input(data, 20)
    out["input_over_daian_trainer"] = round(out["input_pipeline"]["examples_per_s"]
                                            / out["daian"]["examples_per_s"], 1)
    for name in ("din", "daian"):
        out[name]["fraction_of_matmul_ceiling"] = round(
            out[name]["train_gflop_per_s"] / out["matmul_4096_gflop_per_s"], 3)
    if not args.skip_big_table:
        res = subprocess.run([sys.executable, __file__, "--work", args.work, "--users", str(args.users),
                              "--steps", "5", "--big-table-child"], capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        out["big_table"] = json.loads(lines[-1]) if lines else {"error": res.stderr[-2000:]}
    print(json.dumps(out, indent=2))
    with open(f"{args.work}/bench_train.json", "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
