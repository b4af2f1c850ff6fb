"""Serving benchmark: a DAIAN SavedModel behind ``tirec serve`` (gRPC) vs the in-process signature.

    python benchmarks/bench_serving.py [--requests 100] [--warmup 10] [--rounds 5] [--work DIR] [--run RUN]
        [--signatures serving_default,rank,predict] [--no-subprocess] [--skip-reload] [--no-floor] [--sizes-only]
        [--server-arg=--enable-batching --server-arg=--batch-timeout-micros=500 ...]

Setup: without ``--run``, builds ``--work/run`` once (``tirec generate`` 300 users, ``tirec
pipeline``, a 5-step DAIAN training with a small tower; reused when already there). Exports
the run as version 1 of ``--work/models/daian/`` (cleared first) and takes the request rows
from the run's eval split: 1 record for a 1-candidate request, 200 for a 200-candidate one.

Measures, for requests of 1 and of 200 candidates, at 1 and 8 concurrent clients:
  * ``grpc``: ``PredictionService.Predict`` through the official stub
    (``tensorflow_serving.apis.prediction_service_pb2_grpc``) against
    :class:`tirec.serving.server.ServingServer`; one channel (own TCP connection) per client
    thread. Only the stub call on a PredictRequest built up front is timed.
  * ``in_process``: ``tf.saved_model.load(version_dir).signatures[SIG](**inputs)`` from as many
    Python threads, on ``tf.constant`` inputs built up front. Only the call (and ``.numpy()`` of
    its outputs, which the server does too) is timed.
Per cell: the timed requests are split into ``--rounds`` rounds (default 5) that alternate
in-process and gRPC, so a machine whose speed drifts during the cell slows both sides alike. In
each round every client sends untimed requests (``--warmup`` in the first round, 2 later), then
all start together and send their share of the ``--requests`` timed ones; p50 / p99 over all
timed requests of a side (``time.perf_counter`` around each call), QPS = its timed requests /
its summed round wall times; ``errors`` counts failed calls, warmup included (failed calls are
not timed). Signatures:
``serving_default`` (serialized tf.Example ``examples``) and, by default also, ``rank`` (the
first record's context as one example, then empty strings: the filled form the client sends;
and one small ``target_*`` example per candidate) and
``predict`` (one raw tensor per model input, parsed from the same records).

Transport floor (unless ``--no-floor``): the 1-client cells also time, in the same rounds, the
same PredictRequest sent to an echo server (this script with ``--echo-server``: a Python gRPC
server with ``tirec serve``'s settings whose handler only sleeps as long as the in-process call
took, median of 20, and answers with as many scores). ``grpc_floor.transport_p50_ms`` is the
median of round trip minus handler time: what a Python gRPC server costs on this machine before
it does any work. ``p50_overhead_beyond_floor_ms`` is what ``tirec serve`` adds on top.

Goal per setting: ``p50(grpc) - p50(in_process) <= 1 ms`` and ``p99(grpc) <= 2 x
p99(in_process)``; each cell records the numbers and the two booleans, ``goals`` the overall
verdict and the cells that miss.

Hot reload (unless ``--skip-reload``): 8 client threads send 200-candidate ``serving_default``
requests continuously; after a few seconds, ``export_run`` writes version 2 into the base path
(atomically, under a temporary name then renamed); the clients keep going until a response
reports version 2 and for ``RELOAD_TAIL_S`` seconds more. Reports total and failed requests
(any ``grpc.RpcError`` counts; goal: zero), seconds from version 2 landing on disk to its first
answer (and from the start of the export), responses per version and the latency of requests
during the whole phase.

Server mode: by default the server runs as a subprocess (``python -m tirec.cli serve
--model-base-path BASE/daian --model-name daian --port 0 --rest-port -1
--file-system-poll-wait-seconds 0.5``, stderr in ``--work/serve.log``), as it is deployed: a
server inside the benchmark process would share the GIL with the 8 client threads, and what
is measured would be that contention rather than the server. ``--no-subprocess`` runs
``ServingServer`` in-process instead. Either way, on a small machine clients and server share
the CPU cores; ``cpus`` is recorded.

``request_bytes[SIG]["candidates_N"]``: the serialized PredictRequest size (``--sizes-only``
prints these and stops).

Prints a JSON summary and writes it to ``--work/bench_serving.json``: ``latency[SIG][
"candidates_N"]["clients_C"]`` holds ``in_process`` and ``grpc`` (``p50_ms``, ``p99_ms``,
``qps``, ...) and the comparison (``p50_overhead_ms``, ``p50_ok``, ``p99_ratio``, ``p99_ok``);
``reload`` the hot-reload counts (``ok`` is true with no failed request and every client ending
on version 2).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tirec import cli  # noqa: E402
from tirec.features.jsonio import write_json  # noqa: E402
from tirec.features.spec import FeatureSpec  # noqa: E402
from tirec.models.config import load_run_config  # noqa: E402
from tirec.serving.client import rank_inputs  # noqa: E402
from tirec.serving.export import export_run, model_parse_spec, read_eval_records  # noqa: E402

MODEL = "daian"
CANDIDATES = (1, 200)
CONCURRENCY = (1, 8)
SIGNATURES = ("serving_default", "rank", "predict")
POLL_WAIT_S = 0.5
RELOAD_CLIENTS = 8
RELOAD_CANDIDATES = 200
RELOAD_LEAD_S = 3.0  # steady load before the export starts
RELOAD_TAIL_S = 3.0  # load kept up after version 2 first answers
RPC_TIMEOUT_S = 60.0
FLOOR_PROBES = 20  # in-process calls timed to set the echo handler's sleep
ROUND_WARMUP = 2  # untimed requests per client when a side resumes in a later round
GOAL_P50_OVERHEAD_MS = 1.0
GOAL_P99_RATIO = 2.0
TRAIN_ARGS = ["--model", "daian", "--epochs", "1", "--batch-size", "1024",
              "--set", "model.daian.att_units=32", "--set", "model.tower=[128,64]",
              "--set", "train.steps_per_epoch=5"]


# ---- setup ---------------------------------------------------------------------------------------

def _cli(argv: list[str]) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON summary
        rc = cli.main(argv)
    if rc != 0:
        raise SystemExit(f"tirec {' '.join(argv)} failed ({rc})")


def ensure_run(work: str) -> str:
    """``work/run``, trained on synthetic data unless a finished run is already there."""
    raw, data, run = f"{work}/raw", f"{work}/data", f"{work}/run"
    if os.path.exists(f"{run}/metrics.json"):
        return run
    t = time.perf_counter()
    if not os.path.exists(f"{raw}/generator_config.json"):
        _cli(["generate", "--out", raw, "--users", "300", "--seed", "7"])
    if not os.path.exists(f"{data}/spec.json"):
        shutil.rmtree(data, ignore_errors=True)
        _cli(["pipeline", "--input", raw, "--format", "synthetic", "--out", data])
    shutil.rmtree(run, ignore_errors=True)
    _cli(["train", "--data", data, "--run", run, *TRAIN_ARGS])
    print(f"built {run} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return run


def run_data_dir(run: str) -> str:
    data = load_run_config(run).data
    if not data:
        raise SystemExit(f"{run}/config.json records no data folder")
    return data


def build_inputs(records: list[bytes], spec: FeatureSpec, signatures: list[str]) -> dict:
    """``(signature, candidates)`` -> the in-process inputs (``tensors``) and the PredictRequest."""
    parse = model_parse_spec(spec)
    out = {}
    for n in CANDIDATES:
        rows = (records * n)[:n]
        for sig in signatures:
            if sig == "serving_default":
                arrays = {"examples": np.array(rows, dtype=object)}
            elif sig == "rank":
                parsed = {k: v.numpy() for k, v in tf.io.parse_example(tf.constant(rows), parse).items()}
                arrays = {k: np.array(v, dtype=object) for k, v in rank_inputs(parsed, spec).items()}
            else:
                arrays = {k: v.numpy() for k, v in tf.io.parse_example(tf.constant(rows), parse).items()}
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.model_spec.signature_name = sig
            for k, v in arrays.items():
                request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
            out[(sig, n)] = {"tensors": {k: tf.constant(v) for k, v in arrays.items()}, "request": request}
    return out


def request_bytes(inputs: dict) -> dict:
    """Serialized PredictRequest size per signature and candidate count (what goes on the wire)."""
    out: dict = {}
    for (sig, n), item in sorted(inputs.items()):
        out.setdefault(sig, {})[f"candidates_{n}"] = item["request"].ByteSize()
    return out


# ---- the server ----------------------------------------------------------------------------------

class Server:
    """``tirec serve`` on a free port, as a subprocess or in this process; ``target`` is host:port."""

    def __init__(self, model_base: str, subprocess_mode: bool, log_path: str, extra_args=()):
        self._proc = self._server = None
        argv = ["--model-base-path", model_base, "--model-name", MODEL, "--port", "0", "--rest-port", "-1",
                "--file-system-poll-wait-seconds", str(POLL_WAIT_S), *extra_args]
        if subprocess_mode:
            self._start_subprocess(argv, log_path)
        else:
            from tirec.serving.server import ServingOptions, ServingServer, add_arguments

            parser = argparse.ArgumentParser()
            add_arguments(parser)
            self._server = ServingServer(ServingOptions.from_args(parser.parse_args(argv))).start()
            self.target = f"127.0.0.1:{self._server.grpc_port}"

    def _start_subprocess(self, argv: list[str], log_path: str) -> None:
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self._log = open(log_path, "w")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tirec.cli", "serve", *argv],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        deadline = time.time() + 300
        while time.time() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            if line.startswith("tirec serve: gRPC listening on "):
                self.target = f"127.0.0.1:{int(line.rsplit(':', 1)[1])}"
                return
        self._proc.kill()
        with open(log_path) as fh:
            raise SystemExit(f"tirec serve did not announce its port; log:\n{fh.read()[-3000:]}")

    def stop(self) -> int | None:
        """Stops the server; the subprocess's exit code (None in-process)."""
        if self._server is not None:
            self._server.stop()
            return None
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()
        finally:
            self._log.close()


def make_stubs(target: str, n: int) -> list:
    """``n`` PredictionService stubs, each on its own channel and TCP connection."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    return [prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target, options=options))
            for _ in range(n)]


def wait_available(stub, request, timeout: float = 120.0) -> int:
    """Retries Predict until the model answers; returns the version that did."""
    deadline = time.time() + timeout
    while True:
        try:
            return stub.Predict(request, timeout=RPC_TIMEOUT_S).model_spec.version.value
        except grpc.RpcError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


# ---- timing --------------------------------------------------------------------------------------

def summarize(latencies: list[float], wall: float, errors: int) -> dict:
    ms = np.array(latencies) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3) if ms.size else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 3) if ms.size else None,
            "mean_ms": round(float(ms.mean()), 3) if ms.size else None,
            "qps": round(len(ms) / wall, 1) if wall > 0 else None,
            "requests": int(ms.size), "errors": errors}


def run_cell(calls: list, requests: int, warmup: int) -> tuple[list[float], float, int]:
    """One client thread per callable: ``warmup`` untimed calls, then ``requests`` timed ones.

    Returns the latencies (s), the wall time from the first timed call to the last answer, and
    the failed calls.
    """
    barrier = threading.Barrier(len(calls))
    latencies = [[] for _ in calls]
    errors = [0] * len(calls)
    spans = [(0.0, 0.0)] * len(calls)

    def client(i: int) -> None:
        call = calls[i]
        for _ in range(warmup):
            try:
                call()
            except Exception:
                errors[i] += 1
        barrier.wait()
        start = time.perf_counter()
        for _ in range(requests):
            t = time.perf_counter()
            try:
                call()
            except Exception:  # counted, not timed
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - t)
        spans[i] = (start, time.perf_counter())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(calls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return [x for lat in latencies for x in lat], wall, sum(errors)


def run_paired(sides: dict[str, list], requests: int, warmup: int, rounds: int) -> dict[str, dict]:
    """Runs the sides (name -> client callables) in ``rounds`` alternating rounds.

    Each round gives every side ``requests / rounds`` timed requests per client (the first round
    after ``warmup`` untimed ones, later rounds after ``ROUND_WARMUP``), so a machine whose speed
    drifts during the cell slows both sides alike. Latencies and wall times are pooled over the
    rounds.
    """
    pooled = {name: ([], 0.0, 0) for name in sides}
    for r in range(rounds):
        n = requests // rounds + (1 if r < requests % rounds else 0)
        for name, calls in sides.items():
            lat, wall, errors = run_cell(calls, n, warmup if r == 0 else ROUND_WARMUP)
            acc = pooled[name]
            pooled[name] = (acc[0] + lat, acc[1] + wall, acc[2] + errors)
    return {name: summarize(*acc) for name, acc in pooled.items()}


def local_call(fn, tensors: dict):
    """The in-process signature call on pre-built tensors, outputs materialized."""
    return lambda: {k: v.numpy() for k, v in fn(**tensors).items()}


def grpc_call(stub, request):
    """The stub call on a pre-built PredictRequest."""
    return lambda: stub.Predict(request, timeout=RPC_TIMEOUT_S)


def compare(in_process: dict, served: dict) -> dict:
    overhead = served["p50_ms"] - in_process["p50_ms"]
    ratio = served["p99_ms"] / in_process["p99_ms"]
    return {"p50_overhead_ms": round(overhead, 3), "p50_ok": bool(overhead <= GOAL_P50_OVERHEAD_MS),
            "p99_ratio": round(ratio, 3), "p99_ok": bool(ratio <= GOAL_P99_RATIO)}


class EchoService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """The transport floor: a Predict that sleeps ``x-sleep-us`` (call metadata) and answers with
    ``x-rows`` zeros and the seconds it spent in the handler (``handler_s``)."""

    def Predict(self, request, context):
        t = time.perf_counter()
        meta = dict(context.invocation_metadata())
        time.sleep(int(meta.get("x-sleep-us", "0")) / 1e6)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.outputs["ctr"].float_val.extend([0.0] * int(meta.get("x-rows", "1")))
        response.outputs["handler_s"].double_val.append(time.perf_counter() - t)
        return response


def echo_server_main() -> None:
    """``bench_serving.py --echo-server``: serves :class:`EchoService` with the gRPC settings of
    ``tirec serve`` on a free port, printed on stdout."""
    from tirec.serving.limits import ServerLimits
    from tirec.serving.server import grpc_server

    server = grpc_server(ServerLimits())
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(EchoService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def floor_call(stub, request, rows: int, sleep_s: float, transport: list):
    """A call to the echo server whose handler sleeps ``sleep_s``; appends the round trip minus
    the handler's own time to ``transport``."""
    metadata = (("x-sleep-us", str(int(sleep_s * 1e6))), ("x-rows", str(rows)))

    def call():
        t = time.perf_counter()
        response = stub.Predict(request, timeout=RPC_TIMEOUT_S, metadata=metadata)
        transport.append(time.perf_counter() - t - response.outputs["handler_s"].double_val[0])
    return call


def bench_latency(version_dir: str, stubs: list, inputs: dict, signatures: list[str],
                  requests: int, warmup: int, rounds: int, floor_stub=None) -> dict:
    loaded = tf.saved_model.load(version_dir)
    out = {}
    for sig in signatures:
        fn = loaded.signatures[sig]
        for n in CANDIDATES:
            tensors, request = inputs[(sig, n)]["tensors"], inputs[(sig, n)]["request"]
            for c in CONCURRENCY:
                local = local_call(fn, tensors)
                sides = {"in_process": [local] * c, "grpc": [grpc_call(s, request) for s in stubs[:c]]}
                transport: list[float] = []
                if floor_stub is not None and c == 1:
                    # The echo handler idles as long as the in-process call takes, so the client
                    # and server wait as long as they do on the real server.
                    sleep_s = float(np.median([_timed(local) for _ in range(FLOOR_PROBES)]))
                    sides["grpc_floor"] = [floor_call(floor_stub, request, n, sleep_s, transport)]
                res = run_paired(sides, requests, warmup, rounds)
                cell = {**res, **compare(res["in_process"], res["grpc"])}
                if transport:
                    floor_ms = float(np.median(transport[warmup:])) * 1000.0  # later rounds' warmups too
                    cell["grpc_floor"].update({"handler_sleep_ms": round(sleep_s * 1000.0, 3),
                                               "transport_p50_ms": round(floor_ms, 3)})
                    cell["p50_overhead_beyond_floor_ms"] = round(cell["p50_overhead_ms"] - floor_ms, 3)
                out.setdefault(sig, {}).setdefault(f"candidates_{n}", {})[f"clients_{c}"] = cell
                extra = (f"; transport floor {cell['grpc_floor']['transport_p50_ms']} ms" if transport else "")
                print(f"{sig} {n} candidates x {c} clients: p50 {res['in_process']['p50_ms']} -> "
                      f"{res['grpc']['p50_ms']} ms, p99 {res['in_process']['p99_ms']} -> "
                      f"{res['grpc']['p99_ms']} ms{extra}", file=sys.stderr)
    return out


def _timed(call) -> float:
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def bench_reload(run: str, base: str, stubs: list, request) -> dict:
    """Exports version 2 while the clients keep sending requests; counts failures."""
    stop = threading.Event()
    results = [[] for _ in stubs]  # (end time, version, seconds)
    failures = [[] for _ in stubs]  # (time, "CODE: details")

    def client(i: int) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                version = stubs[i].Predict(request, timeout=RPC_TIMEOUT_S).model_spec.version.value
            except grpc.RpcError as e:
                failures[i].append((time.perf_counter(), f"{e.code().name}: {e.details()}"))
                continue
            end = time.perf_counter()
            results[i].append((end, version, end - t))

    def first_v2() -> float | None:
        times = [r[0] for res in results for r in list(res) if r[1] == 2]
        return min(times) if times else None

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(stubs))]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    time.sleep(RELOAD_LEAD_S)
    export_start = time.perf_counter()
    export_run(run, base, MODEL)
    written = time.perf_counter()
    deadline = written + 180
    while first_v2() is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    answered = first_v2()
    time.sleep(RELOAD_TAIL_S)
    stop.set()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0

    flat = [r for res in results for r in res]
    versions = {}
    for _, v, _ in flat:
        versions[str(v)] = versions.get(str(v), 0) + 1
    failed = [f for fs in failures for f in fs]
    last = [res[-1][1] if res else None for res in results]
    lat = summarize([r[2] for r in flat], elapsed, len(failed))
    return {
        "clients": len(stubs), "candidates": RELOAD_CANDIDATES,
        "total_requests": len(flat) + len(failed), "failed_requests": len(failed),
        "failures_sample": sorted({msg for _, msg in failed})[:5],
        "export_seconds": round(written - export_start, 2),
        "seconds_written_to_v2_answer": round(answered - written, 2) if answered else None,
        "seconds_export_start_to_v2_answer": round(answered - export_start, 2) if answered else None,
        "responses_by_version": versions,
        "v1_responses_after_first_v2": sum(1 for e, v, _ in flat if answered and v == 1 and e > answered),
        "last_version_per_client": last,
        "phase_seconds": round(elapsed, 1),
        "latency": {k: lat[k] for k in ("p50_ms", "p99_ms", "mean_ms", "qps")},
        "max_latency_ms": round(max(r[2] for r in flat) * 1000, 1) if flat else None,
        "ok": bool(not failed and answered is not None and all(v == 2 for v in last)),
    }


# ---- main ----------------------------------------------------------------------------------------

def goals(latency: dict) -> dict:
    cells = [(f"{sig}/{n}/{c}", cell) for sig, by_n in latency.items()
             for n, by_c in by_n.items() for c, cell in by_c.items()]
    return {"p50_overhead_ms_max": GOAL_P50_OVERHEAD_MS, "p99_ratio_max": GOAL_P99_RATIO,
            "all_p50_ok": all(cell["p50_ok"] for _, cell in cells),
            "all_p99_ok": all(cell["p99_ok"] for _, cell in cells),
            "cells_missing_p50": [k for k, cell in cells if not cell["p50_ok"]],
            "cells_missing_p99": [k for k, cell in cells if not cell["p99_ok"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100, help="timed requests per client per cell")
    ap.add_argument("--warmup", type=int, default=10, help="untimed requests per client per cell")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating in-process / gRPC rounds the timed requests of a cell are split into")
    ap.add_argument("--work", default="/tmp/tirec_bench_serving")
    ap.add_argument("--run", help="a trained run folder (default: build WORK/run)")
    ap.add_argument("--signatures", default=",".join(SIGNATURES),
                    help="comma-separated, of %(default)s")
    ap.add_argument("--subprocess", action=argparse.BooleanOptionalAction, default=True,
                    help="run the server as a subprocess (default) or in this process")
    ap.add_argument("--skip-reload", action="store_true")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the 1-client cells against an echo gRPC server (the transport floor)")
    ap.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server-arg", action="append", default=[], metavar="FLAG",
                    help="extra `tirec serve` flag, repeatable, e.g. --server-arg=--enable-batching")
    ap.add_argument("--sizes-only", action="store_true",
                    help="print the serialized PredictRequest size of each signature and stop")
    args = ap.parse_args()
    if args.echo_server:
        echo_server_main()
        return
    signatures = [s for s in args.signatures.split(",") if s]
    if not signatures or set(signatures) - set(SIGNATURES):
        ap.error(f"--signatures must name some of {','.join(SIGNATURES)}; received {args.signatures!r}")
    if not 1 <= args.rounds <= args.requests:
        ap.error(f"--rounds must be in [1, --requests]; received --rounds {args.rounds} with --requests "
                 f"{args.requests}")

    t_total = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    run = args.run or ensure_run(args.work)
    base = f"{args.work}/models"
    shutil.rmtree(base, ignore_errors=True)
    version_dir = export_run(run, base, MODEL)
    records = read_eval_records(run_data_dir(run), max(CANDIDATES))
    inputs = build_inputs(records, FeatureSpec.load(os.path.join(version_dir, "assets", "spec.json")),
                          signatures)
    sizes = request_bytes(inputs)
    if args.sizes_only:
        print(json.dumps({"request_bytes": sizes}, indent=2))
        return

    echo = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--echo-server"], stdout=subprocess.PIPE,
                            text=True) if args.floor else None
    server = Server(f"{base}/{MODEL}", args.subprocess, f"{args.work}/serve.log", args.server_arg)
    try:
        stubs = make_stubs(server.target, max(max(CONCURRENCY), RELOAD_CLIENTS))
        floor_stub = make_stubs(f"127.0.0.1:{int(echo.stdout.readline())}", 1)[0] if echo else None
        wait_available(stubs[0], inputs[(signatures[0], 1)]["request"])
        latency = bench_latency(version_dir, stubs, inputs, signatures, args.requests, args.warmup, args.rounds,
                                floor_stub)
        reload = None
        if not args.skip_reload:
            sig = "serving_default" if "serving_default" in signatures else signatures[0]
            reload = bench_reload(run, base, stubs[:RELOAD_CLIENTS], inputs[(sig, RELOAD_CANDIDATES)]["request"])
    finally:
        server_rc = server.stop()
        if echo is not None:
            echo.kill()
            echo.wait()

    summary = {
        "server_mode": "subprocess" if args.subprocess else "in-process",
        "server_args": args.server_arg,
        "cpus": os.cpu_count(),
        "settings": {"warmup_requests_per_client": args.warmup, "timed_requests_per_client": args.requests,
                     "rounds": args.rounds,
                     "candidates": list(CANDIDATES), "clients": list(CONCURRENCY),
                     "signatures": signatures, "file_system_poll_wait_seconds": POLL_WAIT_S,
                     "reload_lead_seconds": RELOAD_LEAD_S, "reload_tail_seconds": RELOAD_TAIL_S,
                     "run": run, "records_available": len(records)},
        "request_bytes": sizes,
        "latency": latency,
        "goals": goals(latency),
        "reload": reload,
        "server_exit_code": server_rc,
        "seconds": round(time.perf_counter() - t_total, 1),
    }
    print(json.dumps(summary, indent=2))
    write_json(f"{args.work}/bench_serving.json", summary)


if __name__ == "__main__":
    main()
