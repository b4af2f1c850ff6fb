"""`tirec serve` is safe by default: with its default limits, an oversized body or message, slow
or silent clients and more concurrent callers than the limits get a prompt error (or are
dropped) while the server keeps answering others, stays up and keeps its memory flat; a reload
cannot load models from outside the operator's roots; internal errors do not leak details.

The server runs in this process, so its memory is this process's RSS."""
import http.client
import json
import os
import re
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from tirec.serving.limits import ServerLimits
from tirec.serving.servable import ServingError

LIMITS = ServerLimits()  # the real defaults
X = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
K = [1, 7]


@pytest.fixture(scope="module")
def safe(kit, tmp_path_factory):
    """``toy`` version 1 served over gRPC and REST with the default limits."""
    base = kit.store.install(str(tmp_path_factory.mktemp("safe") / "toy"), [1])
    server = kit.start_server(model_base_path=base, model_name="toy", rest_port=0)
    assert server.options.limits == LIMITS
    stubs = kit.Stubs(server.grpc_port)
    yield server, stubs
    stubs.close()
    server.stop()


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _connect(server, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_port), timeout=timeout)


def _answer(sock: socket.socket) -> tuple[int, dict, dict]:
    """Reads one HTTP response from ``sock``: (status, headers, JSON body)."""
    r = http.client.HTTPResponse(sock)
    r.begin()
    return r.status, dict(r.getheaders()), json.loads(r.read())


def _post_head(length: int, path: str = "/v1/models/toy:predict") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def assert_serving(kit, server, stubs) -> None:
    """Both APIs answer a Predict correctly."""
    url = f"http://127.0.0.1:{server.rest_port}"
    r = requests.post(f"{url}/v1/models/toy:predict", json={"signature_name": "predict", "inputs": {"x": X, "k": K}},
                      timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"]["y"])[:, 0], kit.expected_y(X, K, 1), rtol=1e-5)
    resp = stubs.predict.Predict(kit.predict_request("toy", {"x": np.array(X, np.float32), "k": np.array(K)},
                                                     "predict"), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["y"])[:, 0], kit.expected_y(X, K, 1), rtol=1e-5)


# ---- oversized requests --------------------------------------------------------------------------

def _send_chunked(server, total: int, chunk: int = 1 << 20) -> tuple[int, dict, dict]:
    """POSTs ``total`` bytes as a chunked body; returns the answer."""
    with _connect(server, timeout=10) as s:
        s.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        data = b" " * chunk
        try:
            for _ in range(total // chunk):
                s.sendall(b"%x\r\n%s\r\n" % (chunk, data))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while sending: the answer is already there to read
        return _answer(s)


def test_oversized_rest_body_is_refused_before_it_is_read(kit, safe):
    server, stubs = safe
    limit = LIMITS.max_message_bytes
    # Content-Length over the limit: 413 at once, though not one byte of the body was sent.
    for _ in range(3):
        with _connect(server) as s:
            s.sendall(_post_head(limit + 1))
            status, headers, body = _answer(s)
        assert status == 413 and headers["Connection"] == "close"
        assert f"{limit + 1} bytes exceeds the limit of {limit} bytes (--max-message-bytes)" in body["error"]
    # A body of exactly the limit is read and answered (here: it is not JSON).
    with _connect(server, timeout=30) as s:
        s.sendall(_post_head(limit) + b" " * limit)
        status, _, body = _answer(s)
    assert status == 400 and "JSON Parse error" in body["error"]
    # A chunked body is counted while read, and refused as soon as it crosses the limit.
    assert _send_chunked(server, limit + (1 << 20))[0] == 413  # warm up: the largest buffer the server may keep
    before = _rss_mb()
    for _ in range(3):
        status, _, body = _send_chunked(server, limit + (1 << 20))
        assert status == 413 and "chunked request body exceeds the limit" in body["error"]
    grown = _rss_mb() - before
    assert grown < limit / 2**20, f"RSS grew by {grown:.0f} MB over 3 oversized bodies"
    # A chunked body within the limit is served.
    body = json.dumps({"signature_name": "predict", "inputs": {"x": X, "k": K}}).encode()
    with _connect(server) as s:
        s.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n%s\r\n" % (10, body[:10]) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - 10, body[10:]))
        status, _, out = _answer(s)
    assert status == 200 and len(out["outputs"]["y"]) == 2
    assert_serving(kit, server, stubs)


def test_oversized_grpc_message_is_refused(kit, safe):
    server, stubs = safe
    rows = LIMITS.max_message_bytes // 12 + 1  # float32 [rows, 3]: just over the limit
    big = kit.predict_request("toy", {"x": np.zeros((rows, 3), np.float32), "k": np.zeros(1, np.int64)}, "predict")
    assert big.ByteSize() > LIMITS.max_message_bytes
    e = kit.rpc_error(stubs.predict.Predict, big)  # warm up
    before = _rss_mb()
    for _ in range(5):
        e = kit.rpc_error(stubs.predict.Predict, big)
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
    grown = _rss_mb() - before  # gRPC's buffers come and go by tens of MB; keeping each message would be 320
    assert grown < 2 * LIMITS.max_message_bytes / 2**20, f"RSS grew by {grown:.0f} MB over 5 oversized messages"
    assert_serving(kit, server, stubs)


# ---- example count -------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,where", [
    (":predict", {"signature_name": "score", "instances": [[1.0, 2.0, 3.0]] * LIMITS.max_examples_per_request
                                                         + [["not", "a", "number"]]}, "'instances'"),
    (":predict", {"signature_name": "predict",
                  "inputs": {"k": [0] * (LIMITS.max_examples_per_request + 1),
                             "x": [[1.0, 2.0, 3.0]] * LIMITS.max_examples_per_request + [["bad", 0, 0]]}},
     "input 'k'"),
    (":regress", {"signature_name": "regress", "examples": [{"x": [1.0, 2.0, 3.0]}] * LIMITS.max_examples_per_request
                                                          + [{"x": [1, "mixed"]}]}, "'examples'"),
])
def test_rest_example_count_is_checked_before_decoding(kit, safe, path, body, where):
    """One row too many is refused for the count, although the last row would not even decode."""
    server, stubs = safe
    r = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/toy{path}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    n = LIMITS.max_examples_per_request
    assert r.json()["error"] == (f"{where} has {n + 1} rows, more than the limit of {n} per request "
                                 f"(--max-examples-per-request)")


# ---- slow clients --------------------------------------------------------------------------------

def test_slow_clients_hold_no_thread_and_others_are_served(kit, safe):
    server, stubs = safe
    assert_serving(kit, server, stubs)  # the worker threads exist already
    threads, before = threading.active_count(), _rss_mb()
    slow = []
    try:
        for i in range(60):
            s = _connect(server)
            # A third stop inside their body (holding a request slot), the rest inside their headers.
            s.sendall(_post_head(100) + b'{"inst' if i % 3 == 0 else b"GET /v1/models/toy HTTP/1.1\r\nHo")
            slow.append(s)
        for _ in range(10):
            assert_serving(kit, server, stubs)
        extra = threading.active_count() - threads
        assert extra <= LIMITS.rest_api_num_threads, f"{extra} new threads for {len(slow)} slow clients"
    finally:
        for s in slow:
            s.close()
    assert_serving(kit, server, stubs)
    grown = _rss_mb() - before
    assert grown < 50, f"RSS grew by {grown:.0f} MB with {len(slow)} slow clients"


def _closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Reads until the server closes ``sock``; returns (seconds it took, what was received)."""
    t0, data = time.monotonic(), b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        data += part
    return time.monotonic() - t0, data


def test_silent_and_trickling_clients_are_dropped_after_the_timeout(kit, tmp_path):
    """The one test with a short timeout: it checks the timeout itself."""
    base = kit.store.install(str(tmp_path / "toy"), [1])
    server = kit.start_server(model_base_path=base, model_name="toy", rest_port=0, rest_api_timeout_in_ms=1000)
    stop = threading.Event()
    try:
        silent, partial = _connect(server, timeout=10), _connect(server, timeout=10)
        partial.sendall(b"GET /v1/models/toy HTTP/1.1\r\n")
        trickle = _connect(server, timeout=10)
        trickle.sendall(_post_head(10_000))

        def drip():  # one byte every 0.1 s: never silent for long, never done
            while not stop.wait(0.1):
                try:
                    trickle.sendall(b" ")
                except OSError:
                    return

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        took, data = _closed_after(silent)
        assert took < 3 and data == b"", (took, data)  # idle: closed quietly
        for sock in (partial, trickle):
            took, data = _closed_after(sock)
            assert took < 5, took
            assert data.startswith(b"HTTP/1.1 408 ") and b"--rest-api-timeout-in-ms" in data, data[:200]
        r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/toy", timeout=10)
        assert r.status_code == 200
    finally:
        stop.set()
        server.stop()


# ---- more callers than the limits ----------------------------------------------------------------

def test_rest_callers_beyond_the_limit_get_503_at_once(kit, safe):
    server, stubs = safe
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/toy"
    before = _rss_mb()
    holders = []
    try:
        for _ in range(LIMITS.rest_max_requests):  # each holds a request slot, waiting inside its body
            s = _connect(server)
            s.sendall(_post_head(100) + b"{")
            holders.append(s)
        deadline = time.monotonic() + 10
        while True:
            t0 = time.monotonic()
            r = requests.get(url, timeout=5)
            if r.status_code == 503:
                break
            assert r.status_code == 200 and time.monotonic() < deadline, "the holders never filled the slots"
        assert time.monotonic() - t0 < 2
        assert r.headers["Retry-After"] == "1" and "--rest-max-queued-requests" in r.json()["error"]
        # gRPC is not affected.
        resp = stubs.predict.Predict(kit.predict_request("toy", {"x": np.array(X, np.float32), "k": np.array(K)},
                                                         "predict"), timeout=10)
        assert resp.model_spec.version.value == 1
    finally:
        for s in holders:
            s.close()
    deadline = time.monotonic() + 10
    while requests.get(url, timeout=5).status_code != 200:  # the slots come back as the holders leave
        assert time.monotonic() < deadline, "request slots were not released"
        time.sleep(0.05)
    assert_serving(kit, server, stubs)
    grown = _rss_mb() - before
    assert grown < 50, f"RSS grew by {grown:.0f} MB"


def test_rest_connections_beyond_the_limit_get_503(kit, safe):
    server, stubs = safe
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/toy"
    idle = []
    try:
        idle = [_connect(server) for _ in range(LIMITS.rest_max_connections)]
        deadline = time.monotonic() + 10
        while (r := requests.get(url, timeout=5)).status_code != 503:  # once the server has them all
            assert time.monotonic() < deadline, "the idle connections never filled the limit"
            time.sleep(0.05)
        assert "--rest-max-connections" in r.json()["error"] and r.headers["Retry-After"] == "1"
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while requests.get(url, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "closed connections were not released"
        time.sleep(0.05)
    assert_serving(kit, server, stubs)


def test_grpc_calls_beyond_the_limit_get_resource_exhausted(kit, safe, monkeypatch):
    server, stubs = safe
    gate, running = threading.Event(), []
    predict = server.core.predict

    def held(request):  # the model is busy until the gate opens
        running.append(1)
        gate.wait(60)
        return predict(request)

    monkeypatch.setattr(server.core, "predict", held)
    req = kit.predict_request("toy", {"x": np.array(X, np.float32), "k": np.array(K)}, "predict")
    before = _rss_mb()
    calls = []
    try:
        calls = [stubs.predict.Predict.future(req, timeout=60) for _ in range(LIMITS.max_concurrent_rpcs)]
        deadline = time.monotonic() + 10
        while len(running) < LIMITS.grpc_workers:
            assert time.monotonic() < deadline, f"only {len(running)} calls started"
            time.sleep(0.02)
        time.sleep(0.3)  # the rest wait for a thread
        with pytest.raises(grpc.RpcError) as e:  # at once: the deadline is short
            stubs.predict.Predict(req, timeout=3)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.value.code(), e.value.details())
        # REST is not affected.
        r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/toy", timeout=10)
        assert r.status_code == 200
    finally:
        gate.set()
        versions = [c.result().model_spec.version.value for c in calls]
    assert versions == [1] * LIMITS.max_concurrent_rpcs
    monkeypatch.undo()
    assert_serving(kit, server, stubs)
    grown = _rss_mb() - before
    assert grown < 50, f"RSS grew by {grown:.0f} MB"


# ---- internal errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError("secret /srv/models/x.pb"),
                                   ServingError("INTERNAL", "secret /srv/models/x.pb")])
def test_internal_errors_carry_a_request_id_not_the_details(kit, safe, monkeypatch, caplog, error):
    server, stubs = safe

    def fail(*_args):
        raise error

    monkeypatch.setattr(server.core, "model_status", fail)
    monkeypatch.setattr(server.core, "predict", fail)
    r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/toy", timeout=10)
    assert r.status_code == 500 and "secret" not in r.text
    rest_id = re.fullmatch(r"Internal error \(request id ([0-9a-f]{16})\); the server log has the details",
                           r.json()["error"])
    e = kit.rpc_error(stubs.predict.Predict, kit.predict_request("toy", {"x": np.array(X, np.float32),
                                                                         "k": np.array(K)}, "predict"))
    assert e.code() == grpc.StatusCode.INTERNAL and "secret" not in e.details()
    grpc_id = re.fullmatch(r"Internal error \(request id ([0-9a-f]{16})\); the server log has the details",
                           e.details())
    assert rest_id and grpc_id
    for match in (rest_id, grpc_id):
        logged = [rec for rec in caplog.records if match[1] in rec.getMessage()]
        assert logged and "secret /srv/models/x.pb" in logged[0].getMessage()
    if isinstance(error, RuntimeError):  # a bug: its traceback is logged
        assert all(rec.exc_info for rec in caplog.records if rest_id[1] in rec.getMessage())


# ---- reload ------------------------------------------------------------------------------------

def _reload(stubs, name: str, base_path: str):
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    return stubs.model.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                 timeout=60)


def test_reload_loads_models_only_under_the_operators_roots(kit, tmp_path):
    toy = kit.store.install(str(tmp_path / "models" / "toy"), [1])
    outside = kit.store.install(str(tmp_path / "elsewhere" / "m"), [2])
    os.symlink(outside, os.path.join(toy, "link"))
    server = kit.start_server(model_base_path=toy, model_name="toy")
    stubs = kit.Stubs(server.grpc_port)
    try:
        for path in (outside, f"{toy}/../../elsewhere/m", f"{toy}/link", str(tmp_path / "models")):
            e = kit.rpc_error(lambda req, timeout: _reload(stubs, "evil", path), None)
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (path, e.code(), e.details())
            assert e.details() == (f"model 'evil': base_path {path!r} is not under a model root this server "
                                   f"allows (--model-base-path, the --model-config-file's models, "
                                   f"--allowed-model-roots)")
        assert server.manager.model_names() == ["toy"]  # nothing changed
        assert _reload(stubs, "twin", f"{toy}/.").status.error_code == 0  # under the root: fine
        assert server.manager.model_names() == ["twin"]
    finally:
        stubs.close()
        server.stop()
    server = kit.start_server(model_base_path=toy, model_name="toy",
                              allowed_model_roots=(str(tmp_path / "elsewhere"),))
    stubs = kit.Stubs(server.grpc_port)
    try:
        assert _reload(stubs, "other", f"{toy}/link").status.error_code == 0  # resolves into an allowed root
        assert server.manager.available_versions("other") == [2]
    finally:
        stubs.close()
        server.stop()
