"""Training benchmark at the paper's config on this machine's CPUs.

    python benchmarks/bench_train.py [--precision both|float32|mixed_bfloat16] [--rounds 3]
        [--steps 5] [--set KEY=VALUE ...] [--users 2000] [--work DIR] [--skip-big-table]
        [--shuffle-block N] [--models din,daian,gapnet] [--views RT,LT]

``--set`` overrides a setting of DAIAN, shared (``model.``) or its own (``model.daian.``), e.g.
``--set explicit_len=20 --set uim_attention=mhta``; DIN and GAP-Net always run with the defaults.

Measures, for DIN, DAIAN (joint stage, the heaviest) and GAP-Net (reconstructed), each on the
records narrowed to the sequences it reads (``registry.model_spec``), at batch 4096, Adagrad
0.05, tower 512-256-128, attention 128 x 4, sequence length 50, at each precision
(``train.precision``: float32 and/or mixed_bfloat16). GAP-Net runs on the generated records,
which have no views (rt cut from ``hist``), and, as ``gapnet_views``, on the same batch with
real-time and long-term views of ``--views`` lengths (default 10 and 200) added by hand: rt =
the first 10 ``hist`` positions, lt = ``hist`` repeated (the synthetic logs are too short for
200 distinct behaviours; the work per position is the same). Figures:
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
``out["float32"]["daian"]["ms_per_step"]`` and ``out["float32"]["daian_over_din_step_time"]``
(``gapnet_over_din_step_time``, ``gapnet_views_over_din_step_time``).
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

from tirec.compat import keras  # noqa: E402
from tirec.features.config_io import parse_yaml  # noqa: E402
from tirec.features.jsonio import write_json  # noqa: E402
from tirec.features.spec import LONG_TERM, REALTIME, Feature, TableSpec  # noqa: E402
from tirec.models.base import STAGE_JOINT, model_input_names, request_input_names  # noqa: E402
from tirec.models.config import PRECISIONS, ModelConfig, TrainConfig, model_config_from_dict  # noqa: E402
from tirec.models.layers.sequence import unique_rows  # noqa: E402
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset  # noqa: E402
from tirec.models.registry import model_spec  # noqa: E402
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


def with_views(spec, x, rt_len: int, lt_len: int):
    """``spec`` and the batch ``x`` with GAP-Net's rt and lt views added, as the pipeline's view
    columns (``rt_*``, ``lt_*``: the item fields and ``ts``): rt = the first ``rt_len`` ``hist``
    positions; lt (``lt_len`` positions) = the request's ``hist`` followed by the ``hist`` of the
    next distinct requests of the batch (other users' behaviours: the synthetic logs are too short
    for 200 behaviours of one user), the same for every candidate of a request."""
    hist = [f for f in spec.select(group="history", history="hist", kind="sequence", model_input=True)
            if f.field in {"ts"} | {g.field for g in spec.select(group="target")}]
    features, x = list(spec.features), dict(x)
    for view, n in ((REALTIME, rt_len), (LONG_TERM, lt_len)):
        for f in hist:
            name = f"{view}_{f.name[len('hist_'):]}"
            features.append(Feature(name, f.dtype, "sequence", n, f.table, group="history", scope="request",
                                    field=f.field, history=view, model_input=True))
            x[name] = x[f.name][:, :n] if view == REALTIME else _long_view(spec, x, f.name, n)
    return dataclasses.replace(spec, features=tuple(features)), x


def _long_view(spec, x, column: str, n: int):
    """``column`` of every row's request followed by that of the next requests, cut to ``n``."""
    first, index = unique_rows([x[c] for c in request_input_names(spec)])
    per_request = tf.gather(x[column], first)
    reps = -(-n // per_request.shape[1])
    joined = tf.concat([tf.roll(per_request, -k, axis=0) for k in range(reps)], axis=1)[:, :n]
    return tf.gather(joined, index)


def build_step(name: str, data: str, precision: str, x, y, spec=None, **overrides):
    """A traced joint-stage train step of ``name`` at ``precision`` (run twice: trace + build)
    on ``spec`` (default: the data's) narrowed to the sequences ``name`` reads."""
    spec = model_spec(name, spec or load_data_spec(data))
    x = {k: v for k, v in x.items() if k in set(model_input_names(spec))}
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


def _variants(data: str, models: list[str], x, views: tuple[int, int] | None) -> dict:
    """``{variant: (model name, spec, batch)}``; ``gapnet_views``: GAP-Net on the batch with
    real rt/lt views (:func:`with_views`)."""
    spec = load_data_spec(data)
    out = {name: (name, spec, x) for name in models}
    if "gapnet" in models and views:
        out["gapnet_views"] = ("gapnet",) + with_views(spec, x, *views)
    return out


def _padded_flops(data: str, name: str, spec, x, overrides: dict) -> float:
    """Forward FLOPs of ``name`` on the padded graph (no compaction, no dedup)."""
    ids, vecs, _ = load_item_vectors(data)
    unbucketed = {"explicit_buckets": 0} if name == "daian" else {}
    spec = model_spec(name, spec)
    padded = build_model(name, spec, model_config(name, **overrides, **unbucketed, hist_buckets=0,
                                                  request_dedup=False), ids, vecs)
    return _forward_flops(padded, {k: v for k, v in x.items() if k in set(model_input_names(spec))})


def bench_models(data: str, precisions: list[str], steps: int, rounds: int,
                 daian_overrides: dict | None = None, shuffle_block: int = TRAIN.shuffle_block,
                 models: tuple[str, ...] = ("din", "daian", "gapnet"), views: tuple[int, int] | None = (10, 200)) -> dict:
    """The models (DIN first: the ratios' base) at each precision, timed interleaved; the
    fastest round of each."""
    x, y = _batch(data, shuffle_block=shuffle_block)
    cases = _variants(data, list(models), x, views)
    overrides = {v: dict(daian_overrides or {}) if name == "daian" else {} for v, (name, _, _) in cases.items()}
    variants = {(p, v): build_step(name, data, p, xv, y, spec=spec, **overrides[v])
                for p in precisions for v, (name, spec, xv) in cases.items()}
    best = {k: float("inf") for k in variants}
    for _ in range(rounds):
        for key, (_, step) in variants.items():
            best[key] = min(best[key], time_steps(step, x_of(cases, key[1]), y, steps))
    flops = {v: _padded_flops(data, name, spec, xv, overrides[v]) for v, (name, spec, xv) in cases.items()}
    out = {"timed_batch": {"shuffle_buffer": TRAIN.shuffle_buffer, "shuffle_block": shuffle_block,
                           **batch_stats(data, x)}}
    if "gapnet_views" in cases:
        out["timed_batch"]["gapnet_views"] = {"rt": views[0], "lt": views[1], **item_stats(cases["gapnet_views"])}
    for p in precisions:
        for v in cases:
            model, _ = variants[(p, v)]
            sec = best[(p, v)]
            out.setdefault(p, {})[v] = {
                "ms_per_step": round(sec * 1000, 1), "examples_per_s": round(BATCH / sec),
                "forward_mflop_per_example": round(flops[v] / 1e6, 3),
                "train_gflop_per_s": round(3 * flops[v] * BATCH / sec / 1e9, 2),
                "params": int(sum(np.prod(w.shape) for w in model.trainable_variables))}
            if v != "din" and "din" in cases:
                out[p][f"{v}_over_din_step_time"] = round(sec / best[(p, "din")], 2)
    if "float32" in out and "mixed_bfloat16" in out and "din" in cases:
        for v in cases:
            if v != "din":
                out["mixed_bfloat16"][f"{v}_over_float32_din_step_time"] = round(
                    best[("mixed_bfloat16", v)] / best[("float32", "din")], 2)
    return out


def item_stats(case) -> dict:
    """Behaviour positions and distinct items of a batch's views, per distinct request (GAP-Net
    sifts each distinct item once with ``model.request_dedup``)."""
    _, spec, x = case
    first, _ = unique_rows([x[c] for c in request_input_names(spec)])
    ids = tf.concat([tf.reshape(tf.gather(x[f"{v}_item_ids"], first), [-1]) for v in ("rt", "hist", "lt")], 0)
    return {"view_positions": int(ids.shape[0]), "distinct_items": int(tf.size(tf.unique(ids)[0]))}


def x_of(cases: dict, variant: str) -> dict:
    """The batch of ``variant`` narrowed to its model's inputs (as its step was traced)."""
    name, spec, x = cases[variant]
    return {k: v for k, v in x.items() if k in set(model_input_names(model_spec(name, spec)))}


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
        try:  # the package's YAML rules (config_io's loader), as for every tirec --set
            settings[key.strip()] = parse_yaml(value, f"--set {item!r}")
        except ValueError as err:
            ap.error(str(err))
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
    ap.add_argument("--models", default="din,daian,gapnet",
                    help="comma-separated models to time (DIN is the ratios' base; default %(default)s)")
    ap.add_argument("--views", default="10,200",
                    help="RT,LT lengths of the hand-added views GAP-Net is also timed with (0: skip)")
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
    models = tuple(m for m in args.models.split(",") if m)
    views = tuple(int(v) for v in args.views.split(",")) if args.views not in ("", "0") else None
    out.update(bench_models(data, precisions, args.steps, args.rounds, daian_overrides, args.shuffle_block,
                            models, views))
    out["input_pipeline"] = bench_input(data, 20, args.shuffle_block)
    for p in precisions:
        if "daian" in out[p]:
            out[p]["input_over_daian_trainer"] = round(out["input_pipeline"]["examples_per_s"]
                                                       / out[p]["daian"]["examples_per_s"], 1)
        ceiling = out["matmul_4096_gflop_per_s" if p == "float32" else "matmul_4096_bf16_gflop_per_s"]
        for name, figures in out[p].items():
            if isinstance(figures, dict):
                figures["fraction_of_matmul_ceiling"] = round(figures["train_gflop_per_s"] / ceiling, 3)
    if not args.skip_big_table:
        res = subprocess.run([sys.executable, __file__, "--work", args.work, "--users", str(args.users),
                              "--steps", "5", "--big-table-child"], capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        out["big_table"] = json.loads(lines[-1]) if lines else {"error": res.stderr[-2000:]}
    print(json.dumps(out, indent=2))
    write_json(f"{args.work}/bench_train.json", out)


if __name__ == "__main__":
    main()
