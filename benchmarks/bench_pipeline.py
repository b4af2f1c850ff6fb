"""Feature-pipeline benchmark: synthetic impressions end to end on DirectRunner, vs a pandas reference.

    python benchmarks/bench_pipeline.py [--impressions 1000000] [--workers 2] [--work DIR] [--views]
        [--runner direct|dask]

Steps:
  1. ``tirec generate`` enough users for about ``--impressions`` impressions (Parquet).
  2. ``tirec pipeline`` on DirectRunner (``multi_processing``, ``--workers`` processes), in a
     subprocess whose whole process tree's resident memory is sampled every 0.2 s (peak RSS).
  3. The single-process pandas reference (``benchmarks/reference.py``) on the same input.
  4. Parity: every request's trigger, intent distribution, and the sums over its impressions of
     history length, explicit-mask count and history item ids from the TFRecords must equal the
     reference's (max abs difference of the distributions reported).

``--views`` runs the pipeline with ``--views`` (GAP-Net's ``rt_*`` / ``lt_*`` columns at their
defaults); the reference and the parity check are the same, since the other columns do not
change. Run once with and once without it on the same ``--work`` (the generated input is
reused) to compare speed and size.

``--runner dask`` runs step 2 on Beam's DaskRunner instead (``tirec pipeline --runner dask
--direct_num_workers W``: a local ``dask.distributed`` cluster of ``--workers`` worker
processes, started and closed by the command, whose start counts in the time).

Prints a JSON summary (impressions/s of both, the ratio, peak RSS, parity, the output's GZIP
bytes and the mean serialized record size) and writes it to ``--work/bench_pipeline.json``
(``bench_pipeline_views.json`` with ``--views``). Goals from the issue: >= 20,000
impressions/s and within 5x of the reference.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
from tirec.features.jsonio import read_json, write_json  # noqa: E402

REQUESTS_PER_USER = 8 * 1.2 * 20  # generator defaults: days x requests/day x page size


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def _run_measured(cmd: list[str]) -> tuple[float, int]:
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    return seconds, peak[0]


def _records_by_request(out_dir: str, n_levels: int) -> dict:
    import tensorflow as tf

    from tirec.features.spec import FeatureSpec

    spec = FeatureSpec.load(f"{out_dir}/spec.json")
    keys = ["request_id", "trigger_item_id", "intent_dist", "hist_len", "explicit_mask", "hist_item_ids"]
    parse = {k: v for k, v in spec.parse_example_spec().items() if k in keys}
    files = sorted(f for split in ("train", "valid", "eval") for f in glob.glob(f"{out_dir}/{split}/*.tfrecord.gz"))
    ds = (tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=4)
          .batch(8192).map(lambda x: tf.io.parse_example(x, parse)))
    sizes = (tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=4)
             .batch(8192).map(lambda x: tf.reduce_sum(tf.strings.length(x))))
    record_bytes = int(sum(int(b) for b in sizes.as_numpy_iterator()))
    out, n = {}, 0
    for batch in ds.as_numpy_iterator():
        exp = batch["explicit_mask"].sum(axis=1)
        items = batch["hist_item_ids"].sum(axis=1)
        for i, rid in enumerate(batch["request_id"]):
            key = rid.decode()
            if key not in out:
                out[key] = [int(batch["trigger_item_id"][i]), batch["intent_dist"][i], 0, 0, 0]
            rec = out[key]
            rec[2] += int(batch["hist_len"][i])
            rec[3] += int(exp[i])
            rec[4] += int(items[i])
            n += 1
    return out, n, record_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", default="multi_processing", choices=("multi_processing", "in_memory"),
                    help="DirectRunner's running mode")
    ap.add_argument("--runner", default="direct", choices=("direct", "dask"))
    ap.add_argument("--work", default="/tmp/tirec_bench_pipeline")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--views", action="store_true",
                    help="run the pipeline with --views (GAP-Net's rt_*/lt_* columns)")
    args = ap.parse_args()

    raw, out = f"{args.work}/raw", f"{args.work}/out"
    tirec = os.path.join(os.path.dirname(sys.executable), "tirec")
    users = max(10, int(round(args.impressions / REQUESTS_PER_USER)))
    if not os.path.exists(f"{raw}/generator_config.json"):
        t = time.perf_counter()
        subprocess.run([tirec, "generate", "--out", raw, "--users", str(users), "--seed", str(args.seed)],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"generated {users} users in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    subprocess.run(["rm", "-rf", out], check=True)
    beam = ([f"--direct_running_mode={args.mode}"] if args.runner == "direct" else ["--runner", "dask"]) + [
        f"--direct_num_workers={args.workers}"]
    views = ["--views"] if args.views else []
    seconds, peak = _run_measured([tirec, "pipeline", "--input", raw, "--format", "synthetic",
                                   "--out", out] + views + beam)
    output_gz = sum(os.path.getsize(f) for split in ("train", "valid", "eval")
                    for f in glob.glob(f"{out}/{split}/*.tfrecord.gz"))
    stats = read_json(f"{out}/stats.json")
    imps_in = stats["rows_in"]["impressions"]

    t = time.perf_counter()
    ref = reference.label_requests(raw)
    ref_seconds = time.perf_counter() - t

    recs, n_records, record_bytes = _records_by_request(out, 6)
    ref_map = {r.request_id: r for r in ref.itertuples(index=False)}
    missing = sorted(set(ref_map) ^ set(recs))
    trig_mismatch, hist_mismatch, max_diff = 0, 0, 0.0
    for rid, (trig, dist, hist_len, exp, items) in recs.items():
        r = ref_map.get(rid)
        if r is None:
            continue
        trig_mismatch += int(trig != r.trigger_item_id)
        hist_mismatch += int((hist_len, exp, items) != (r.hist_len_sum, r.explicit_sum, r.hist_item_sum))
        want = np.array([getattr(r, f"intent_{j}") for j in range(6)])
        max_diff = max(max_diff, float(np.abs(want - dist).max()))
    summary = {
        "impressions_in": imps_in,
        "records_written": n_records,
        "users": users,
        "pipeline_seconds": round(seconds, 2),
        "pipeline_impressions_per_s": round(imps_in / seconds),
        "pipeline_peak_rss_gib": round(peak / 2**30, 2),
        "views": bool(args.views),
        "output_bytes_gz": output_gz,
        "output_bytes_gz_per_record": round(output_gz / max(1, n_records), 1),
        "record_bytes_mean": round(record_bytes / max(1, n_records), 1),
        "reference_seconds": round(ref_seconds, 2),
        "reference_impressions_per_s": round(imps_in / ref_seconds),
        "slowdown_vs_reference": round(seconds / ref_seconds, 2),
        "parity": {"requests_pipeline": len(recs), "requests_reference": len(ref_map),
                   "requests_only_in_one": len(missing), "trigger_mismatches": trig_mismatch,
                   "history_or_explicit_mismatches": hist_mismatch,
                   "intent_max_abs_diff": max_diff},
        "runner": (f"DirectRunner {args.mode}" if args.runner == "direct" else "DaskRunner, local cluster")
                  + f", {args.workers} workers",
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    suffix = ("_views" if args.views else "") + (f"_dask{args.workers}" if args.runner == "dask" else "")
    write_json(f"{args.work}/bench_pipeline{suffix}.json", summary)
    if missing or trig_mismatch or hist_mismatch or max_diff > 1e-6:
        raise SystemExit("parity check FAILED")


if __name__ == "__main__":
    main()
