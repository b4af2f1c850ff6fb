"""Training benchmark at the paper's config on this machine's CPUs.

    python benchmarks/bench_train.py [--precision both|float32|mixed_bfloat16] [--rounds 3]
        [--steps 5] [--set KEY=VALUE ...] [--users 2000] [--work DIR] [--skip-big-table]
        [--shuffle-block N]

``--set`` overrides a setting of DAIAN, shared (``model.``) or its own (``model.daian.``), e.g.
``--set explicit_len=20 --set uim_attention=mhta``; DIN always runs with the defaults.

Measures, for DIN and DAIAN (joint stage, the heaviest), at batch 4096, Adagrad 0.05, tower
512-256-128, attention 128 x 4, sequence length 50, at each precision (``train.precision``:
float32 and/or mixed_bfloat16):
  * ms per training step and examples/s (input excluded: one cached batch repeated, the first
    batch ``tirec train`` reads: shuffle buffer and ``--shuffle-block`` as in training, seed 0;
    its distinct requests and users are reported, since ``model.request_dedup`` runs the
    request-level blocks once per distinct request). All
    (model, precision) variants are built first, then timed interleaved for ``--rounds`` rounds
    of ``--steps`` steps; each reports its fastest round (the machine may be shared);
  * the DAIAN/DIN step-time ratio per precision (and mixed DAIAN over float32 DIN);
  * the tf.data input pipeline alone (read, shuffle as in training, batch, parse), examples/s;
  * forward FLOPs per example (TensorFlow's graph profiler, counted on the padded graph,
    ``explicit_buckets=0, hist_buckets=0, request_dedup=false``, whose shapes are static; the timed, compacted
    graphs skip the padding and run the request-level blocks once per distinct request, so they
    do less work than this counts) and the achieved GFLOP/s,
    counting a training step as 3x the forward FLOPs, against the 4096^3 matmul ceiling
    measured here (float32 and bfloat16);
  * peak RSS of a DIN run whose item table has 2^24 rows in 8 shards (a subprocess).
Prints JSON and writes ``--work/bench_train.json``: one section per precision, e.g.
``out["float32"]["daian"]["ms_per_step"]`` and ``out["float32"]["daian_over_din_step_time"]``.
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

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from tirec.compat import keras  # noqa: E402
from tirec.features.jsonio import write_json  # noqa: E402
from tirec.features.spec import TableSpec  # noqa: E402
from tirec.models.base import STAGE_JOINT, model_input_names, request_input_names  # noqa: E402
from tirec.models.config import PRECISIONS, ModelConfig, TrainConfig, model_config_from_dict  # noqa: E402
from tirec.models.layers.sequence import unique_rows  # noqa: E402
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


def _matmul_ceiling(dtype=tf.float32) -> float:
    a = tf.cast(tf.random.normal([4096, 4096]), dtype)
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


TRAIN = TrainConfig()


def _batch(data: str, shuffle_buffer: int = TRAIN.shuffle_buffer, shuffle_block: int = TRAIN.shuffle_block):
    """The first training batch as ``tirec train`` reads it (its shuffle settings, seed 0)."""
    spec = load_data_spec(data)
    names = set(model_input_names(spec))
    x, y = next(iter(make_dataset(data, "train", spec, BATCH, shuffle_buffer=shuffle_buffer,
                                  shuffle_block=shuffle_block, seed=0)))
    return {k: v for k, v in x.items() if k in names}, y


def batch_stats(data: str, x) -> dict:
    """Distinct requests and users of a batch (what ``model.request_dedup`` runs on)."""
    spec = load_data_spec(data)
    first, _ = unique_rows([x[n] for n in request_input_names(spec)])
    return {"distinct_requests": int(first.shape[0]), "distinct_users": int(len(np.unique(x["user_id"].numpy())))}


def model_config(name: str, **settings) -> ModelConfig:
    """The ModelConfig of model ``name`` with ``settings``: the shared ones in the common
    ``model`` section, the others in ``model.<name>``."""
    shared = {f.name for f in dataclasses.fields(ModelConfig)}
    own = {k: v for k, v in settings.items() if k not in shared}
    return model_config_from_dict({"name": name, **{k: v for k, v in settings.items() if k in shared}, name: own})


def build_step(name: str, data: str, precision: str, x, y, **overrides):
    """A traced joint-stage train step of ``name`` at ``precision`` (run twice: trace + build)."""
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    model = build_model(name, spec, model_config(name, **overrides), ids, vecs, precision)
    model.set_stage(STAGE_JOINT)
    model.compile(optimizer=keras.optimizers.Adagrad(0.05),
                  uim_optimizer=keras.optimizers.Adagrad(0.005))
    step = tf.function(model.train_step)
    for _ in range(2):
        float(step((x, y))["loss"])
    return model, step


def time_steps(step, x, y, steps: int) -> float:
    """Seconds per step over ``steps`` steps."""
    t = time.perf_counter()
    for _ in range(steps):
        logs = step((x, y))
    float(logs["loss"])
    return (time.perf_counter() - t) / steps


def bench_models(data: str, precisions: list[str], steps: int, rounds: int,
                 daian_overrides: dict | None = None, shuffle_block: int = TRAIN.shuffle_block) -> dict:
    """DIN and DAIAN at each precision, timed interleaved; the fastest round of each."""
    x, y = _batch(data, shuffle_block=shuffle_block)
    overrides = {"din": {}, "daian": dict(daian_overrides or {})}
    variants = {(p, name): build_step(name, data, p, x, y, **overrides[name])
                for p in precisions for name in ("din", "daian")}
    best = {k: float("inf") for k in variants}
    for _ in range(rounds):
        for key, (_, step) in variants.items():
            best[key] = min(best[key], time_steps(step, x, y, steps))
    flops = {}
    for name in ("din", "daian"):
        spec = load_data_spec(data)
        ids, vecs, _ = load_item_vectors(data)
        unbucketed = {"explicit_buckets": 0} if name == "daian" else {}
        padded = build_model(name, spec, model_config(name, **overrides[name], **unbucketed, hist_buckets=0,
                                                      request_dedup=False), ids, vecs)
        flops[name] = _forward_flops(padded, x)
    out = {"timed_batch": {"shuffle_buffer": TRAIN.shuffle_buffer, "shuffle_block": shuffle_block,
                           **batch_stats(data, x)}}
    for p in precisions:
        sec = {}
        for name in ("din", "daian"):
            model, _ = variants[(p, name)]
            sec[name] = best[(p, name)]
            out.setdefault(p, {})[name] = {
                "ms_per_step": round(sec[name] * 1000, 1), "examples_per_s": round(BATCH / sec[name]),
                "forward_mflop_per_example": round(flops[name] / 1e6, 3),
                "train_gflop_per_s": round(3 * flops[name] * BATCH / sec[name] / 1e9, 2),
                "params": int(sum(np.prod(v.shape) for v in model.trainable_variables))}
        out[p]["daian_over_din_step_time"] = round(sec["daian"] / sec["din"], 2)
    if "float32" in out and "mixed_bfloat16" in out:
        out["mixed_bfloat16"]["daian_over_float32_din_step_time"] = round(
            best[("mixed_bfloat16", "daian")] / best[("float32", "din")], 2)
    return out


def bench_input(data: str, batches: int, shuffle_block: int = TRAIN.shuffle_block) -> dict:
    """Examples/s of the training input (read, shuffle as ``tirec train`` does, batch, parse)."""
    spec = load_data_spec(data)
    ds = make_dataset(data, "train", spec, BATCH, shuffle_buffer=TRAIN.shuffle_buffer,
                      shuffle_block=shuffle_block, repeat=True)
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
    model.compile(optimizer=keras.optimizers.Adagrad(0.05))
    names = set(model_input_names(spec))
    ds = make_dataset(data, "train", spec, BATCH).map(lambda a, b: ({k: v for k, v in a.items() if k in names}, b))
    t = time.perf_counter()
    model.fit(ds.take(steps), epochs=1, verbose=0)
    rows = sum(int(np.prod(v.shape[:1])) for v in model.trainable_variables if "item" in v.name
               and "embed" in v.name)
    print(json.dumps({"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      "item_table_rows": rows, "steps": steps,
                      "seconds": round(time.perf_counter() - t, 1)}))


def parse_settings(ap: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as a dict of YAML-parsed values (``ap.error`` on a bad item)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the fastest counts")
    ap.add_argument("--precision", choices=("both",) + PRECISIONS, default="both")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a DAIAN model setting, e.g. explicit_len=20 (repeatable)")
    ap.add_argument("--work", default="/tmp/tirec_bench_train")
    ap.add_argument("--skip-big-table", action="store_true")
    ap.add_argument("--shuffle-block", type=int, default=TRAIN.shuffle_block,
                    help="train.shuffle_block of the timed batch and the input pipeline "
                         f"(default {TRAIN.shuffle_block}, the training default; 1: record-level shuffle)")
    ap.add_argument("--big-table-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = _data(args.work, args.users)
    if args.big_table_child:
        big_table_child(data, args.steps)
        return
    precisions = list(PRECISIONS) if args.precision == "both" else [args.precision]
    out = {"batch": BATCH, "cpus": os.cpu_count(),
           "matmul_4096_gflop_per_s": round(_matmul_ceiling(), 1),
           "matmul_4096_bf16_gflop_per_s": round(_matmul_ceiling(tf.bfloat16), 1),
           "steps_per_round": args.steps, "rounds": args.rounds}
    daian_overrides = parse_settings(ap, args.set)
    if daian_overrides:
        out["daian_settings"] = daian_overrides
    out.update(bench_models(data, precisions, args.steps, args.rounds, daian_overrides, args.shuffle_block))
    out["input_pipeline"] = bench_input(data, 20, args.shuffle_block)
    for p in precisions:
        out[p]["input_over_daian_trainer"] = round(out["input_pipeline"]["examples_per_s"]
                                                   / out[p]["daian"]["examples_per_s"], 1)
        ceiling = out["matmul_4096_gflop_per_s" if p == "float32" else "matmul_4096_bf16_gflop_per_s"]
        for name in ("din", "daian"):
            out[p][name]["fraction_of_matmul_ceiling"] = round(out[p][name]["train_gflop_per_s"] / ceiling, 3)
    if not args.skip_big_table:
        res = subprocess.run([sys.executable, __file__, "--work", args.work, "--users", str(args.users),
                              "--steps", "5", "--big-table-child"], capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        out["big_table"] = json.loads(lines[-1]) if lines else {"error": res.stderr[-2000:]}
    print(json.dumps(out, indent=2))
    write_json(f"{args.work}/bench_train.json", out)


if __name__ == "__main__":
    main()
