"""TF Serving's REST API as served by `tirec serve`."""
import base64
import json
import socket

import numpy as np
import pytest
import requests

X = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
K = [1, 7]


@pytest.fixture(scope="module")
def rest(kit, tmp_path_factory):
    """``toy`` versions 1 and 2 (label stable=1) over REST; yields the base URL."""
    base = tmp_path_factory.mktemp("rest")
    toy = kit.store.install(str(base / "toy"), [1, 2])
    config = base / "models.config"
    config.write_text(kit.model_config_text([{"name": "toy", "base_path": toy,
                                              "policy": "specific { versions: 1 versions: 2 }",
                                              "labels": {"stable": 1}}]))
    server = kit.start_server(model_config_file=str(config), rest_port=0, max_message_bytes=1 << 20,
                              allow_version_labels_for_unavailable_models=True)
    session = requests.Session()
    yield f"http://127.0.0.1:{server.rest_port}", session
    session.close()
    server.stop()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def test_model_status(rest):
    url, s = rest
    one = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                     "status": {"error_code": "OK", "error_message": ""}}]}
    assert s.get(f"{url}/v1/models/toy/versions/1").json() == one
    assert s.get(f"{url}/v1/models/toy/labels/stable").json() == one
    got = s.get(f"{url}/v1/models/toy").json()
    assert [v["version"] for v in got["model_version_status"]] == ["2", "1"]
    r = s.get(f"{url}/v1/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = s.get(f"{url}/v1/models/toy/labels/beta")
    assert r.status_code == 400 and "Unrecognized servable version label: beta" in r.json()["error"]


def test_model_metadata(rest):
    url, s = rest
    r = s.get(f"{url}/v1/models/toy/metadata")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["model_spec"] == {"name": "toy", "signature_name": "", "version": "2"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert sigs["classify"]["method_name"] == "tensorflow/serving/classify"
    x = sigs["predict"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "3"]
    assert s.get(f"{url}/v1/models/toy/versions/1/metadata").json()["model_spec"]["version"] == "1"


def test_predict_row_format_with_b64_examples(kit, rest):
    url, s = rest
    body = {"instances": [b64(kit.example(x, k)) for x, k in zip(X, K)]}
    r = s.post(f"{url}/v1/models/toy:predict", json=body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    y = kit.expected_y(X, K, 2)
    assert [p["version"] for p in preds] == [2.0, 2.0]
    np.testing.assert_allclose([p["y"][0] for p in preds], y, rtol=1e-5)


def test_predict_row_format_named_inputs_and_single_output(kit, rest):
    url, s = rest
    body = {"signature_name": "predict", "instances": [{"x": x, "k": k} for x, k in zip(X, K)]}
    preds = s.post(f"{url}/v1/models/toy/versions/1:predict", json=body).json()["predictions"]
    np.testing.assert_allclose([p["y"][0] for p in preds], kit.expected_y(X, K, 1), rtol=1e-5)
    assert [p["version"] for p in preds] == [1.0, 1.0]
    # One output: predictions is the list of values itself.
    r = s.post(f"{url}/v1/models/toy/labels/stable:predict", json={"signature_name": "score", "instances": X})
    np.testing.assert_allclose(np.array(r.json()["predictions"])[:, 0], kit.expected_y(X, [0, 0], 1), rtol=1e-5)


def test_predict_columnar_format(kit, rest):
    url, s = rest
    r = s.post(f"{url}/v1/models/toy:predict", json={"signature_name": "predict", "inputs": {"x": X, "k": K}})
    out = r.json()["outputs"]
    np.testing.assert_allclose(np.array(out["y"])[:, 0], kit.expected_y(X, K, 2), rtol=1e-5)
    assert out["version"] == [2.0, 2.0]
    r = s.post(f"{url}/v1/models/toy:predict", json={"signature_name": "score", "inputs": X})
    np.testing.assert_allclose(np.array(r.json()["outputs"])[:, 0], kit.expected_y(X, [0, 0], 2), rtol=1e-5)
    r = s.post(f"{url}/v1/models/toy:predict", json={"inputs": {"examples": [b64(kit.example(X[0], 1))]}})
    assert r.json()["outputs"]["y"][0][0] == pytest.approx(kit.expected_y(X[:1], [1], 2)[0], rel=1e-5)


def test_classify_and_regress(kit, rest):
    url, s = rest
    body = {"signature_name": "classify", "context": {"k": 5},
            "examples": [{"x": x} for x in X]}
    r = s.post(f"{url}/v1/models/toy:classify", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    y = kit.expected_y(X, [5, 5], 2)
    assert [[c[0] for c in row] for row in results] == [["neg", "pos"], ["neg", "pos"]]
    np.testing.assert_allclose([row[1][1] for row in results], y, rtol=1e-5)
    body = {"signature_name": "regress", "examples": [{"x": x, "k": k} for x, k in zip(X, K)]}
    r = s.post(f"{url}/v1/models/toy/versions/1:regress", json=body)
    np.testing.assert_allclose(r.json()["results"], kit.expected_y(X, K, 1), rtol=1e-5)


@pytest.mark.parametrize("method,path,body,status,part", [
    ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/toy/versions/9:predict", {"instances": [1]}, 404, "Specific(toy, 9)"),
    ("POST", "/v1/models/toy:predict", {"signature_name": "nope", "instances": [1]}, 400, '"nope" not found'),
    ("POST", "/v1/models/toy:predict", {"signature_name": "predict", "inputs": {"x": X}}, 400,
     "Missing but required: ['k']"),
    ("POST", "/v1/models/toy:predict", {"signature_name": "predict", "instances": [{"x": X[0]}]}, 400,
     "instance #0"),
    ("POST", "/v1/models/toy:predict", {"signature_name": "score", "instances": [[1.0, 2.0], [1.0]]}, 400, "ragged"),
    ("POST", "/v1/models/toy:predict", {"signature_name": "score", "instances": [[1.0, 2.0]]}, 400,
     "expects shape [-1, 3]"),
    ("POST", "/v1/models/toy:predict", {"signature_name": "score", "instances": [["a", "b", "c"]]}, 400,
     "expects a number for DT_FLOAT"),
    ("POST", "/v1/models/toy:predict", {"signature_name": "predict", "inputs": {"x": X, "k": [1.5, 2]}}, 400,
     "loss of precision"),
    ("POST", "/v1/models/toy:predict", {"instances": [{"b64": "!!not base64"}]}, 400, "invalid base64"),
    ("POST", "/v1/models/toy:predict", {"instances": [b64(b"\xff\x00junk")]}, 400, "parse"),
    ("POST", "/v1/models/toy:predict", {"instances": [], "inputs": {}}, 400, "Both 'instances' and 'inputs'"),
    ("POST", "/v1/models/toy:predict", {"signature_name": "score"}, 400, "Missing 'instances' or 'inputs'"),
    ("POST", "/v1/models/toy:predict", [1, 2], 400, "must be a JSON object"),
    ("POST", "/v1/models/toy:classify", {"examples": [{"x": [1.0, 2.0, 3.0]}]}, 400,
     "Expected classification signature method_name to be tensorflow/serving/classify"),
    ("POST", "/v1/models/toy:regress", {"signature_name": "regress", "examples": []}, 400, "'examples'"),
    ("POST", "/v1/models/toy:regress", {"signature_name": "regress", "examples": [{"x": "abc"}]}, 400, "x"),
    ("POST", "/v1/models/toy:regress", {"signature_name": "regress", "context": {"x": [1.0, 2.0, 3.0]},
                                        "examples": [{"x": [1.0, 2.0, 3.0]}]}, 400, "also in 'context'"),
    ("POST", "/v1/models/toy:explode", {}, 400, "Malformed request: POST /v1/models/toy:explode"),
    ("GET", "/v1/models/toy:predict", None, 400, "Malformed request"),
    ("GET", "/v2/whatever", None, 404, "Not found"),
])
def test_errors(rest, method, path, body, status, part):
    url, s = rest
    r = s.request(method, url + path, json=body)
    assert r.status_code == status, r.text
    assert part in r.json()["error"]


@pytest.mark.parametrize("verb,body,unknown,accepted", [
    ("predict", {"signature_nmae": "score", "instances": X}, "['signature_nmae']",
     "['signature_name', 'instances', 'inputs']"),
    ("predict", {"signature_name": "score", "inputs": X, "instance": X, "extra": 1}, "['extra', 'instance']",
     "['signature_name', 'instances', 'inputs']"),
    ("classify", {"signature_nmae": "classify", "examples": [{"x": X[0], "k": 1}]}, "['signature_nmae']",
     "['signature_name', 'examples', 'context']"),
    ("regress", {"signature_name": "regress", "examples": [{"x": X[0], "k": 1}], "contexts": {"k": 1}}, "['contexts']",
     "['signature_name', 'examples', 'context']"),
])
def test_unknown_body_keys_are_refused(rest, verb, body, unknown, accepted):
    """A misspelt body key is a 400 naming it and the accepted keys, not ignored (which would
    answer from the default signature, or without the context)."""
    url, s = rest
    r = s.post(f"{url}/v1/models/toy:{verb}", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == f"Unknown key(s) {unknown} in the {verb} request body; accepted keys: {accepted}"
    fixed = {("signature_name" if k == "signature_nmae" else k): v for k, v in body.items()
             if k in ("signature_name", "signature_nmae", "instances", "inputs", "examples")}
    assert s.post(f"{url}/v1/models/toy:{verb}", json=fixed).status_code == 200


def test_bad_json_and_body_limit(rest):
    url, s = rest
    r = s.post(f"{url}/v1/models/toy:predict", data=b"{not json")
    assert r.status_code == 400 and "JSON Parse error" in r.json()["error"]
    r = s.post(f"{url}/v1/models/toy:predict", data=b"[" * 100000 + b"]" * 100000)
    assert r.status_code == 400
    r = requests.post(f"{url}/v1/models/toy:predict", data=b" " * (2 << 20))
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert s.get(f"{url}/v1/models/toy").status_code == 200


def test_rest_is_concurrent(rest):
    url, s = rest
    host, port = url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stalled:
        stalled.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        r = requests.get(f"{url}/v1/models/toy", timeout=10)  # served while the other one waits
        assert r.status_code == 200


def _raw(url: str, data: bytes) -> bytes:
    """Sends raw bytes; returns everything the server answers until it closes the connection."""
    host, port = url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        out = b""
        while part := s.recv(65536):
            out += part
        return out


PREDICT = json.dumps({"signature_name": "score", "instances": [[1.0, 2.0, 3.0]]}).encode()


@pytest.mark.parametrize("request_bytes,answer", [
    (b"POST /v1/models/toy:predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(PREDICT), PREDICT),
     b"HTTP/1.1 200 OK"),  # HTTP/1.0 without keep-alive: answered, then closed
    (b"POST /v1/models/toy:predict HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\n"
     b"Content-Length: %d\r\n\r\n%s" % (len(PREDICT), PREDICT), b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"),
    (b"POST /v1/models/toy:predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
     b"HTTP/1.1 413 "),  # refused before the client sends the body
    (b"GARBAGE\r\n\r\n", b"HTTP/1.1 400 "),
    (b"GET /v1/models/toy HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", b"HTTP/1.1 431 "),
    (b"POST /v1/models/toy:predict HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"HTTP/1.1 400 "),
    (b"POST /v1/models/toy:predict HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", b"HTTP/1.1 400 "),
    (b"POST /v1/models/toy:predict HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b"HTTP/1.1 501 "),
    (b"POST /v1/models/toy:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"HTTP/1.1 400 "),
])
def test_http_framing(rest, request_bytes, answer):
    url, s = rest
    out = _raw(url, request_bytes)
    assert out.startswith(answer), out[:300]
    body = json.loads(out.split(b"\r\n\r\n")[-1])
    assert ("predictions" in body) if b" 200 " in answer else body["error"]
    assert s.get(f"{url}/v1/models/toy").status_code == 200


def test_nan_and_infinity_round_trip(kit, rest):
    url, s = rest
    body = '{"signature_name": "score", "instances": [[NaN, 0.0, 0.0], [Infinity, 0.0, 0.0]]}'
    r = s.post(f"{url}/v1/models/toy:predict", data=body)
    assert r.status_code == 200, r.text
    preds = json.loads(r.text)["predictions"]
    assert np.isnan(preds[0][0]) and preds[1][0] == 1.0
