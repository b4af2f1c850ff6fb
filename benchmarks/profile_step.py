"""Where a training step's time goes: TensorFlow's profiler over a few steps, summed by module.

    python benchmarks/profile_step.py [--model daian] [--steps 3] [--set KEY=VALUE ...]
        [--data DIR] [--precision float32|mixed_bfloat16] [--top 25] [--shuffle-block 16]

Builds the model at the paper's config (``--set`` overrides a ``model.`` setting), traces its
joint-stage train step on one cached batch of 4096 (the data of ``bench_train.py``, generated on
first use), runs ``--steps`` steps under ``tf.profiler.experimental`` and reads the trace
(``*.xplane.pb``) back. Prints three tables in thread-milliseconds per step (the sum over the
executor threads, so about ``cores`` x the wall time when the step keeps every core busy): by
op type, by module (``model/<layer>``, forward and gradient together, optimizer updates under
their own names) and the slowest op instances.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import bench_train  # noqa: E402


def op_times(logdir: str, steps: int) -> dict[str, float]:
    """Thread-milliseconds per step of every op instance in the trace under ``logdir``."""
    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise SystemExit(f"no profiler trace under {logdir}")
    space = xplane_pb2.XSpace()
    with open(files[0], "rb") as fh:
        space.ParseFromString(fh.read())
    times: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if line.name == "python":  # the Python tracer's line, not TF ops
                continue
            for event in line.events:
                name = names[event.metadata_id].name
                if name.startswith(("ExecutorState::", "ParallelFor")):  # executor wrappers
                    continue
                times[name] += event.duration_ps / 1e9 / steps
    return dict(times)


def module_of(op_name: str, model_name: str) -> str:
    """``model/<layer>`` for ops of a layer (forward and gradient), else the op's top scope."""
    parts = op_name.split(":")[0].replace("gradient_tape/", "").split("/")
    if parts[0] == model_name and len(parts) > 2:
        return f"{model_name}/{parts[1]}"
    return parts[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="daian")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model setting")
    ap.add_argument("--data", help="pipeline output (default: bench_train.py's data, built once)")
    ap.add_argument("--users", type=int, default=2000, help="users of the generated data")
    ap.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--shuffle-block", type=int, default=bench_train.TRAIN.shuffle_block,
                    help="train.shuffle_block of the profiled batch (1: record-level shuffle)")
    args = ap.parse_args()
    overrides = bench_train.parse_settings(ap, args.set)
    data = args.data or bench_train._data("/tmp/tirec_bench_train", args.users)
    x, y = bench_train._batch(data, shuffle_block=args.shuffle_block)
    model, step = bench_train.build_step(args.model, data, args.precision, x, y, **overrides)
    bench_train.time_steps(step, x, y, 2)
    logdir = tempfile.mkdtemp(prefix="tirec_profile_")
    try:
        tf.profiler.experimental.start(logdir)
        seconds = bench_train.time_steps(step, x, y, args.steps)
        tf.profiler.experimental.stop()
        times = op_times(logdir, args.steps)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)

    by_type, by_module = collections.Counter(), collections.Counter()
    for name, ms in times.items():
        by_type[name.rsplit(":", 1)[-1]] += ms
        by_module[module_of(name, model.name)] += ms
    total = sum(times.values())
    print(f"{args.model} {overrides or ''}: {seconds * 1000:.1f} ms/step wall (profiled), "
          f"{total:.1f} thread-ms/step in ops")
    for title, table in (("by op type", by_type), ("by module", by_module),
                         ("slowest op instances", collections.Counter(times))):
        print(f"\n{title} (thread-ms/step, % of all ops):")
        for name, ms in table.most_common(args.top):
            print(f"  {ms:8.1f}  {100 * ms / total:5.1f}%  {name[:120]}")


if __name__ == "__main__":
    main()
