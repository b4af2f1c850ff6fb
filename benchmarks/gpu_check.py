"""The measuring part of ``benchmarks/gpu_check.sh``: training speed and serving latency.

    python benchmarks/gpu_check.py --out FILE [--work DIR] [--users 2000] [--batch 4096]
        [--steps 5] [--rounds 3] [--precision both|float32|mixed_bfloat16] [--latency-runs 50]
        [--set KEY=VALUE ...] [--no-matmul] [--pytest-log FILE --pytest-rc N] [--nvidia-smi FILE]
        [--mode gpu|dry-run]

Nothing here is a new measurement method; it runs the existing benchmarks' pieces in one process
on whatever device TensorFlow places ops on (the first GPU when there is one):

* training speed: ``bench_train.bench_models`` for DIN and DAIAN (joint stage) at the paper
  config (emb 16, tower 512-256-128, attention 128 x 4, L = 50, Adagrad 0.05) on the
  ``bench_train`` data of ``--users`` users (``bench_train._data``: ``tirec generate`` +
  ``tirec pipeline``), one cached batch of ``--batch`` rows (``bench_train.BATCH``, 4096 unless
  a dry run makes it smaller), all variants built first, then ``--rounds`` interleaved rounds of
  ``--steps`` steps, the fastest round counting; and ``bench_train._matmul_ceiling`` (4096^3
  matmul, float32 and bfloat16) unless ``--no-matmul``. One device: ``bench_train`` times the
  bare train step, not MirroredStrategy (the ``gpu`` tests train under it).
* serving latency: ``bench_quality.latency_ms``, the median of ``--latency-runs`` in-process
  calls of the ``rank`` signature (the function ``tirec export`` saves) with 1 context and 200
  candidate tf.Examples, outputs copied to the host, after 3 warm-up calls; for DIN and DAIAN at
  the paper config in float32 (what ``tirec export`` serves), built on the same data with
  untrained weights (the latency does not depend on their values).

``--mode dry-run`` (the CPU smoke test) also builds every model with one length group
(:data:`DRY_RUN_SETTINGS`) so the graphs trace fast; the real run uses the defaults.

Writes the summary JSON to ``--out`` (with the devices TensorFlow sees, the ``nvidia-smi`` text
and the ``gpu`` tests' result line when given) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

import bench_train  # noqa: E402  (the sibling benchmarks' pieces)
from bench_quality import CANDIDATES, latency_ms  # noqa: E402
from tirec.features.jsonio import write_json  # noqa: E402
from tirec.models.base import model_input_names  # noqa: E402
from tirec.models.config import PRECISIONS  # noqa: E402
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset  # noqa: E402
from tirec.models.registry import model_spec  # noqa: E402
from tirec.models.train import build_model  # noqa: E402

MODELS = ("din", "daian")
# --mode dry-run (a CPU smoke test of this script): one length group instead of 16 buckets, so
# the graphs trace in seconds; the outputs are the same up to float rounding, only faster to build.
DRY_RUN_SETTINGS = {"din": {"hist_buckets": 1}, "daian": {"hist_buckets": 1, "explicit_buckets": 1}}


def use_settings(settings: dict[str, dict]) -> None:
    """Makes ``bench_train.model_config`` (which builds every timed and latency model) add
    ``settings[name]`` under the explicit ones (the padded FLOP count keeps its own)."""
    base = bench_train.model_config
    if settings:
        bench_train.model_config = lambda name, **s: base(name, **{**settings.get(name, {}), **s})


def devices(nvidia_smi: str | None = None) -> dict:
    """What TensorFlow sees (and ``nvidia-smi``'s text, when a file of it is given)."""
    gpus = tf.config.list_physical_devices("GPU")
    out = {"tensorflow": tf.__version__, "built_with_cuda": tf.test.is_built_with_cuda(),
           "gpus": [d.name for d in gpus], "cpus": os.cpu_count(), "host": platform.node()}
    details = []
    for d in gpus:
        try:
            details.append(tf.config.experimental.get_device_details(d))
        except Exception as err:  # noqa: BLE001  (details are informative only)
            details.append({"error": str(err)})
    if details:
        out["gpu_details"] = details
    if nvidia_smi and os.path.exists(nvidia_smi):
        out["nvidia_smi"] = open(nvidia_smi, encoding="utf-8", errors="replace").read().strip()
    return out


def train_speed(data: str, precisions: list[str], steps: int, rounds: int, batch: int,
                daian_overrides: dict, matmul: bool) -> dict:
    """``bench_train``'s figures for DIN and DAIAN at ``batch`` rows per step."""
    bench_train.BATCH = batch  # read at call time by bench_train's functions
    out = {"batch": batch, "steps_per_round": steps, "rounds": rounds, "models": list(MODELS)}
    if daian_overrides:
        out["daian_settings"] = daian_overrides
    if matmul:
        out["matmul_4096_gflop_per_s"] = round(bench_train._matmul_ceiling(), 1)
        out["matmul_4096_bf16_gflop_per_s"] = round(bench_train._matmul_ceiling(tf.bfloat16), 1)
    out.update(bench_train.bench_models(data, precisions, steps, rounds, daian_overrides,
                                        models=MODELS, views=None))
    return out


def serving_latency(data: str, runs: int, config: str) -> dict:
    """Median ms of one in-process ``rank`` call at 200 candidates, per model (float32)."""
    data_spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    out = {"signature": "rank", "candidates": CANDIDATES, "runs": runs, "precision": "float32",
           "config": config,
           "weights": "untrained (the latency does not depend on their values)"}
    for name in MODELS:
        spec = model_spec(name, data_spec)
        model = build_model(name, spec, bench_train.model_config(name), ids, vecs)
        names = set(model_input_names(spec))
        x, _ = next(iter(make_dataset(data, "eval", spec, 2)))
        model({k: v for k, v in x.items() if k in names}, training=False)  # build the variables
        t = time.perf_counter()
        ms = latency_ms(model, spec, data, runs)
        out[name] = {"median_ms": round(ms, 3), "seconds_with_tracing": round(time.perf_counter() - t, 1)}
    return out


def pytest_result(log: str | None, rc: int | None) -> dict | None:
    """The ``gpu`` tests' exit status and pytest's last summary line."""
    if log is None:
        return None
    lines = [ln.strip() for ln in open(log, encoding="utf-8", errors="replace") if ln.strip()] \
        if os.path.exists(log) else []
    summary = next((ln.strip("= ") for ln in reversed(lines)
                    if any(w in ln for w in (" passed", " failed", " skipped", " error", "collected",
                                             "no tests ran", " deselected"))), lines[-1] if lines else "")
    return {"rc": rc, "summary": summary, "log": log}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="summary JSON to write")
    ap.add_argument("--work", default="/tmp/tirec_gpu_check/bench", help="bench_train's data folder")
    ap.add_argument("--mode", default="gpu", choices=("gpu", "dry-run"))
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=bench_train.BATCH)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=("both",) + PRECISIONS, default="both")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a DAIAN model setting for the speed figures (as bench_train.py --set)")
    ap.add_argument("--no-matmul", action="store_true", help="skip the 4096^3 matmul ceilings")
    ap.add_argument("--pytest-log")
    ap.add_argument("--pytest-rc", type=int)
    ap.add_argument("--nvidia-smi", help="a file holding nvidia-smi's output")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.mode == "dry-run":
        use_settings(DRY_RUN_SETTINGS)
    summary = {"mode": args.mode, "devices": devices(args.nvidia_smi)}
    tests = pytest_result(args.pytest_log, args.pytest_rc)
    if tests is not None:
        summary["gpu_tests"] = tests
    seconds: dict = {}
    summary["seconds"] = seconds

    def phase(name: str, run) -> None:
        """Runs one phase and writes the summary so far (a run cut short keeps what it measured)."""
        t = time.perf_counter()
        summary[name] = run()
        seconds[name] = round(time.perf_counter() - t, 1)
        seconds["total"] = round(time.perf_counter() - t0, 1)
        write_json(args.out, summary)

    precisions = list(PRECISIONS) if args.precision == "both" else [args.precision]
    overrides = bench_train.parse_settings(ap, args.set)
    phase("data", lambda: {"dir": bench_train._data(args.work, args.users), "users": args.users})
    if args.mode == "dry-run":
        summary["dry_run_settings"] = DRY_RUN_SETTINGS
    data = summary["data"]["dir"]
    phase("train_speed", lambda: train_speed(data, precisions, args.steps, args.rounds, args.batch, overrides,
                                             not args.no_matmul))
    config = "paper, one length group (dry run)" if args.mode == "dry-run" else "paper"
    phase("serving_latency", lambda: serving_latency(data, args.latency_runs, config))
    print(json.dumps(summary, indent=2))
    print("\n".join(digest(summary)))
    return 0


def digest(summary: dict) -> list[str]:
    """The headline figures, one line each."""
    speed, lat = summary["train_speed"], summary["serving_latency"]
    lines = [f"devices: {', '.join(summary['devices']['gpus']) or 'no GPU'} (TensorFlow "
             f"{summary['devices']['tensorflow']}); batch {speed['batch']}"]
    for p in PRECISIONS:
        if p in speed:
            lines.append(f"train {p}: " + "; ".join(
                f"{m} {speed[p][m]['ms_per_step']} ms/step, {speed[p][m]['examples_per_s']} examples/s"
                for m in MODELS) + f"; DAIAN/DIN step time {speed[p]['daian_over_din_step_time']}")
    lines.append(f"serving {lat['signature']} at {lat['candidates']} candidates, median of {lat['runs']}: "
                 + "; ".join(f"{m} {lat[m]['median_ms']} ms" for m in MODELS))
    return lines


if __name__ == "__main__":
    sys.exit(main())
