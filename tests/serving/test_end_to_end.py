"""End to end: generate -> pipeline -> train (tiny) -> export -> `tirec serve` (a subprocess on free
ports) -> query through the official gRPC stub, REST and `tirec query` -> parity -> hot reload."""
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tirec import cli
from tirec.serving import client as C
from tirec.serving.export import export_run, read_eval_records

TINY = ["--set", "model.emb_dim=4", "--set", "model.daian.att_units=8", "--set", "model.daian.att_heads=2",
        "--set", "model.tower=[16,8]", "--set", "model.daian.uim_hidden=[8]", "--set", "model.din_hidden=[8,4]",
        "--set", "model.daian.sim_bins=5", "--set", "train.shuffle_buffer=1000",
        "--set", "train.steps_per_epoch=2",
        # 2 length groups: export and serving go through the bucketed graphs (both branches of
        # their tf.cond) without tracing 16 copies of each attention block
        "--set", "model.daian.explicit_buckets=2", "--set", "model.hist_buckets=2"]


def _serve(base: str, log_path: str, model_name: str = "daian") -> tuple[subprocess.Popen, int, int]:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "tirec.cli", "serve", "--model-base-path", base,
                             "--model-name", model_name, "--port", "0", "--rest-port", "0",
                             "--file-system-poll-wait-seconds", "0.5"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    ports = {}
    deadline = time.time() + 120
    while len(ports) < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        for kind in ("gRPC", "REST"):
            if line.startswith(f"tirec serve: {kind} listening on "):
                ports[kind] = int(line.rsplit(":", 1)[1])
    if len(ports) < 2:
        proc.kill()
        raise AssertionError(f"server did not announce its ports; log:\n{open(log_path).read()[-3000:]}")
    return proc, ports["gRPC"], ports["REST"]


@pytest.mark.slow  # 218 s; `tirec run` (tests/orchestration) covers the same steps in make test
def test_generate_pipeline_train_export_serve_query(tmp_path, capsys):
    raw, data, run = str(tmp_path / "raw"), str(tmp_path / "tfr"), str(tmp_path / "run")
    base = str(tmp_path / "models")
    assert cli.main(["generate", "--out", raw, "--users", "30", "--seed", "4"]) == 0
    assert cli.main(["pipeline", "--input", raw, "--format", "synthetic", "--out", data,
                     "--set", "pipeline.max_seq_len=10"]) == 0
    assert cli.main(["train", "--data", data, "--model", "daian", "--run", run, "--batch-size", "256",
                     *TINY]) == 0
    assert cli.main(["export", "--run", run, "--out", base, "--model-name", "daian"]) == 0
    assert cli.main(["make-request", "--data", data, "--out", str(tmp_path / "request.json")]) == 0
    capsys.readouterr()

    proc, grpc_port, rest_port = _serve(os.path.join(base, "daian"), str(tmp_path / "serve.log"))
    target = f"127.0.0.1:{grpc_port}"
    try:
        records = read_eval_records(data, 64)
        # Official gRPC stub, serialized tf.Examples.
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "daian"
        req.inputs["examples"].CopyFrom(tf.make_tensor_proto(records, dtype=tf.string))
        resp = stub.Predict(req, timeout=30)
        ctr = tf.make_ndarray(resp.outputs["ctr"])
        assert ctr.shape == (64, 1) and resp.model_spec.version.value == 1
        assert np.all((ctr > 0) & (ctr < 1))
        # REST :predict with base64 examples gives the same scores.
        body = {"instances": [{"b64": base64.b64encode(r).decode()} for r in records[:8]]}
        r = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/daian:predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        rest_ctr = np.array([p["ctr"] for p in r.json()["predictions"]]).reshape(-1)
        np.testing.assert_allclose(rest_ctr, ctr[:8, 0], atol=1e-6)
        status = requests.get(f"http://127.0.0.1:{rest_port}/v1/models/daian", timeout=10).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"

        # `tirec query` ranks the request's candidates by score, best first.
        assert cli.main(["query", "--target", target, "--model-name", "daian",
                         "--input", str(tmp_path / "request.json"), "--json"]) == 0
        ranked = json.loads(capsys.readouterr().out)
        request = json.load(open(tmp_path / "request.json"))
        assert sorted(c["item_id"] for c in ranked) == sorted(c["item_id"] for c in request["candidates"])
        scores = [c["score"] for c in ranked]
        assert scores == sorted(scores, reverse=True)
        # ... and the raw-tensor and compact `rank` signatures rank the same way.
        with C.PredictClient(target, "daian") as client:
            for signature in ("predict", "rank"):
                other = client.rank(request, signature=signature)
                np.testing.assert_allclose([s for _, s in other], scores, atol=1e-6, err_msg=signature)

        # Parity of served and offline scores over the eval rows.
        assert cli.main(["verify-serving", "--target", target, "--model-name", "daian", "--run", run,
                         "--rows", "300"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] and report["max_abs_diff"]["ctr"] <= 1e-6 and report["versions"] == [1]

        # Hot reload: export version 2 while clients keep sending requests (the same run: a second
        # training would only make the test slower; the served version number tells them apart).
        errors, versions, stop = [], [], threading.Event()

        def hammer():
            with C.PredictClient(target, "daian", timeout=30) as c:
                while not stop.is_set():
                    try:
                        versions.append(int(c.predict(examples=records[:16])["_version"]))
                    except grpc.RpcError as e:  # any failure counts
                        errors.append(f"{e.code().name}: {e.details()}")

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        v2 = export_run(run, base, "daian")
        assert v2.endswith(os.path.join("daian", "2"))
        deadline = time.time() + 90
        while time.time() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert errors == []
        assert versions and versions[-1] == 2 and 1 in versions
        capsys.readouterr()
        assert cli.main(["verify-serving", "--target", target, "--model-name", "daian",
                         "--run", run, "--rows", "100", "--version", "2"]) == 0
        assert json.loads(capsys.readouterr().out)["versions"] == [2]
    finally:
        _stop(proc)


GAPNET = ["--set", "model.emb_dim=4", "--set", "model.gapnet.att_units=8", "--set", "model.gapnet.att_heads=2",
          "--set", "model.gapnet.cgdf_hidden=[4]", "--set", "model.tower=[16,8]", "--set", "train.shuffle_buffer=1000",
          "--set", "train.steps_per_epoch=2", "--set", "model.gapnet.attention_norm=entmax15"]


@pytest.mark.slow  # 140 s
def test_gapnet_with_and_without_views_exports_serves_and_verifies(tmp_path, capsys):
    """GAP-Net (reconstructed) trained on today's records (rt cut from hist; one length group)
    and on records with real rt/lt views (two length groups: the exported graphs hold both
    branches of their tf.cond), served as versions 1 and 2 of one model (2 hot-loaded), each
    version's scores equal to the offline ones (verify-serving)."""
    raw, plain, base = str(tmp_path / "raw"), str(tmp_path / "tfr"), str(tmp_path / "models")
    assert cli.main(["generate", "--out", raw, "--users", "20", "--seed", "4"]) == 0
    assert cli.main(["pipeline", "--input", raw, "--format", "synthetic", "--out", plain,
                     "--set", "pipeline.max_seq_len=10"]) == 0
    views = str(tmp_path / "tfr_views")
    assert cli.main(["pipeline", "--input", raw, "--format", "synthetic", "--out", views, "--views",
                     "--long-seq-len", "20", "--set", "pipeline.realtime_len=4",
                     "--set", "pipeline.max_seq_len=10"]) == 0
    runs = {1: str(tmp_path / "run1"), 2: str(tmp_path / "run2")}
    for version, data in ((1, plain), (2, views)):
        assert cli.main(["train", "--data", data, "--model", "gapnet", "--run", runs[version], "--batch-size", "128",
                         *GAPNET, "--set", f"model.hist_buckets={version}"]) == 0
    spec_v2 = json.load(open(os.path.join(runs[2], "spec.json")))
    assert {"rt_item_ids", "lt_item_ids"} <= {f["name"] for f in spec_v2["features"]}
    assert export_run(runs[1], base, "gapnet").endswith(os.path.join("gapnet", "1"))
    capsys.readouterr()
    proc, grpc_port, _ = _serve(os.path.join(base, "gapnet"), str(tmp_path / "serve.log"), "gapnet")
    target = f"127.0.0.1:{grpc_port}"
    try:
        for version in (1, 2):
            if version == 2:
                assert export_run(runs[2], base, "gapnet").endswith(os.path.join("gapnet", "2"))
                _wait_for_version(target, "gapnet", 2, read_eval_records(views, 4))
            assert cli.main(["verify-serving", "--target", target, "--model-name", "gapnet", "--run", runs[version],
                             "--rows", "200", "--version", str(version)]) == 0
            report = json.loads(capsys.readouterr().out)
            assert report["ok"] and report["max_abs_diff"]["ctr"] <= 1e-6 and report["versions"] == [version]
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server; it must exit cleanly (status 0) within 60 s, else it is killed."""
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _wait_for_version(target: str, name: str, version: int, records, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    with C.PredictClient(target, name, timeout=30) as client:
        while time.time() < deadline:
            if int(client.predict(examples=records)["_version"]) == version:
                return
            time.sleep(0.2)
    raise AssertionError(f"{name} version {version} was not served within {seconds} s")
