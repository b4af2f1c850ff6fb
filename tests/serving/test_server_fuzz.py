"""Fuzzing `tirec serve` (with its default limits) with malformed gRPC and REST requests: every
answer is a proper error (or a valid result), never a crash, and bad requests leave no memory
behind."""
import json
import urllib.parse

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from tirec.serving.limits import ServerLimits

MAX_EXAMPLES = ServerLimits().max_examples_per_request
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
OK_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def fuzzed(kit, tmp_path_factory):
    base = kit.store.install(str(tmp_path_factory.mktemp("fuzz") / "toy"), [1])
    server = kit.start_server(model_base_path=base, model_name="toy", rest_port=0)
    stubs = kit.Stubs(server.grpc_port)
    session = requests.Session()
    yield server, stubs, session, f"http://127.0.0.1:{server.rest_port}"
    session.close()
    stubs.close()
    server.stop()


def _valid_predict(kit):
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    return kit.predict_request("toy", {"x": x, "k": np.array([2])}, "predict")


def assert_still_serving(kit, stubs):
    resp = stubs.predict.Predict(_valid_predict(kit), timeout=30)
    y = tf.make_ndarray(resp.outputs["y"])[:, 0]
    np.testing.assert_allclose(y, kit.expected_y([[1.0, 2.0, 3.0]], [2], 1), rtol=1e-5)


def call(fn, req):
    """Sends a request; returns None on success or the status code of the error."""
    try:
        fn(req, timeout=60)
        return None
    except grpc.RpcError as e:
        assert e.code() in OK_CODES, (e.code(), e.details(), req)
        assert e.details(), "an error must say what went wrong"
        return e.code()


# ---- strategies ----------------------------------------------------------------------------------

DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64,
          types_pb2.DT_STRING, types_pb2.DT_BOOL, types_pb2.DT_HALF, types_pb2.DT_UINT8,
          types_pb2.DT_COMPLEX64, types_pb2.DT_INVALID, types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, 99]
DIMS = st.one_of(st.integers(0, 4), st.sampled_from([-1, 3, MAX_EXAMPLES + 1, 10**6, 2**40]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def tensor_protos(draw, example_bytes):
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES)))
    for d in draw(st.lists(DIMS, max_size=3)):
        proto.tensor_shape.dim.add().size = d
    if draw(st.integers(0, 20)) == 0:
        proto.tensor_shape.unknown_rank = True
    n = draw(st.integers(0, 12))
    kind = draw(st.sampled_from(["content", "float", "int", "int64", "bool", "string", "half", "none"]))
    if kind == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    elif kind == "float":
        proto.float_val.extend(draw(st.lists(FLOATS, min_size=n, max_size=n)))
    elif kind == "int":
        proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=n, max_size=n)))
    elif kind == "int64":
        proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)))
    elif kind == "bool":
        proto.bool_val.extend(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    elif kind == "string":
        proto.string_val.extend(draw(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(example_bytes)),
                                              min_size=n, max_size=n)))
    elif kind == "half":
        proto.half_val.extend(draw(st.lists(st.integers(0, 2**16 - 1), min_size=n, max_size=n)))
    return proto


@st.composite
def typed_tensors(draw):
    """Well-formed tensors of random dtype and shape (wrong for the signature more often than not)."""
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.bool_]))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    return tf.make_tensor_proto(np.zeros(shape, dtype=dtype) + draw(st.integers(0, 3)).__int__())


def _examples(kit):
    return [kit.example([1.0, 2.0, 3.0], 1), kit.example([0.0, 0.0]), b"", b"\n\x00", b"\xff" * 8]


@st.composite
def predict_requests(draw, kit):
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = draw(st.sampled_from(["toy", "toy", "toy", "nope", ""]))
    req.model_spec.signature_name = draw(st.sampled_from(["", "predict", "score", "serving_default",
                                                          "classify", "regress", "nope"]))
    version = draw(st.sampled_from([None, None, 1, 2, -5]))
    if version is not None:
        req.model_spec.version.value = version
    elif draw(st.integers(0, 10)) == 0:
        req.model_spec.version_label = draw(st.text(max_size=5))
    names = st.one_of(st.sampled_from(["x", "k", "examples", "inputs", "z"]), st.text(max_size=6))
    for name in draw(st.lists(names, max_size=4, unique=True)):
        value = draw(st.one_of(tensor_protos(_examples(kit)), typed_tensors()))
        req.inputs[name].CopyFrom(value)
    req.output_filter.extend(draw(st.lists(st.sampled_from(["y", "version", "scores", "nope"]), max_size=3)))
    return req


@st.composite
def valid_predicts(draw, kit):
    """Well-formed requests for the typed signature, with any float values (NaN included)."""
    n = draw(st.integers(0, 5))
    x = np.array(draw(st.lists(FLOATS, min_size=3 * n, max_size=3 * n)), np.float32).reshape(n, 3)
    k = np.array(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)), np.int64)
    return kit.predict_request("toy", {"x": x, "k": k}, "predict")


# ---- gRPC ----------------------------------------------------------------------------------------

def test_fuzz_predict_requests(kit, fuzzed):
    _, stubs, _, _ = fuzzed
    seen = {"ok": 0, "errors": 0}

    @FUZZ
    @given(req=st.one_of(predict_requests(kit), valid_predicts(kit)))
    def run(req):
        seen["ok" if call(stubs.predict.Predict, req) is None else "errors"] += 1

    run()
    assert seen["errors"] > 0 and seen["ok"] > 0, seen
    assert_still_serving(kit, stubs)


def test_fuzz_serialized_examples(kit, fuzzed):
    """Random bytes, truncated and valid tf.Examples in the serving_default string input."""
    _, stubs, _, _ = fuzzed
    valid = _examples(kit)

    @FUZZ
    @given(rows=st.lists(st.one_of(st.binary(max_size=60), st.sampled_from(valid),
                                   st.sampled_from(valid).map(lambda b: b[: len(b) // 2])), min_size=1,
                         max_size=6))
    def run(rows):
        req = kit.predict_request("toy", {"examples": np.array(rows, dtype=object)})
        call(stubs.predict.Predict, req)

    run()
    # A real oversized batch is refused, not run.
    big = kit.predict_request("toy", {"examples": np.array(valid[:1] * (MAX_EXAMPLES + 1), dtype=object)})
    assert call(stubs.predict.Predict, big) == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(kit, stubs)


FEATURE_VALUES = st.one_of(
    st.lists(FLOATS, max_size=4).map(lambda v: ("float", v)),
    st.lists(st.integers(-2**63, 2**63 - 1), max_size=4).map(lambda v: ("int", v)),
    st.lists(st.binary(max_size=10), max_size=3).map(lambda v: ("bytes", v)))


@st.composite
def example_inputs(draw):
    from tensorflow.core.example import example_pb2

    def ex():
        e = example_pb2.Example()
        for name in draw(st.lists(st.sampled_from(["x", "k", "z"]), max_size=3, unique=True)):
            kind, values = draw(FEATURE_VALUES)
            f = e.features.feature[name]
            {"float": f.float_list, "int": f.int64_list, "bytes": f.bytes_list}[kind].value.extend(values)
        return e

    n = draw(st.integers(0, 4))
    return draw(st.booleans()), ex(), [ex() for _ in range(n)]


def test_fuzz_classify_and_regress(kit, fuzzed):
    _, stubs, _, _ = fuzzed

    @FUZZ
    @given(data=example_inputs(), sig=st.sampled_from(["", "classify", "regress", "predict", "nope"]),
           method=st.sampled_from(["classify", "regress"]))
    def run(data, sig, method):
        with_context, context, examples = data
        cls = classification_pb2.ClassificationRequest if method == "classify" else regression_pb2.RegressionRequest
        req = cls()
        req.model_spec.name = "toy"
        req.model_spec.signature_name = sig
        if with_context:
            req.input.example_list_with_context.context.CopyFrom(context)
            req.input.example_list_with_context.examples.extend(examples)
        elif examples:
            req.input.example_list.examples.extend(examples)
        call(stubs.predict.Classify if method == "classify" else stubs.predict.Regress, req)

    run()
    assert_still_serving(kit, stubs)


# ---- REST ----------------------------------------------------------------------------------------

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8), st.fixed_dictionaries({"b64": st.text(max_size=12)})),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["instances", "inputs", "signature_name", "examples",
                                                             "context", "x", "k", "examples", "b64"]) | st.text(max_size=4),
                                            inner, max_size=4)),
    max_leaves=20)
PATHS = st.sampled_from(["/v1/models/toy:predict", "/v1/models/toy:classify", "/v1/models/toy:regress",
                         "/v1/models/toy/versions/1:predict", "/v1/models/toy/labels/a:predict",
                         "/v1/models/nope:predict", "/v1/models/toy/versions/99999999999999999999:predict"])


@st.composite
def rest_bodies(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=80))
    body = draw(JSON)
    if kind == 1 and isinstance(body, dict):  # nudge toward well-shaped requests
        body.setdefault("signature_name", draw(st.sampled_from(["predict", "score", "classify", "regress"])))
    return json.dumps(body).encode("utf-8")


def _check_rest(r):
    assert r.status_code in (200, 400, 404), (r.status_code, r.text[:300])
    body = r.json()
    if r.status_code != 200:
        assert isinstance(body.get("error"), str) and body["error"]


def test_fuzz_rest(kit, fuzzed):
    _, stubs, session, url = fuzzed

    @FUZZ
    @given(path=PATHS, body=rest_bodies(), segment=st.text(max_size=6))
    def run(path, body, segment):
        _check_rest(session.post(url + path, data=body, timeout=60))
        quoted = urllib.parse.quote(segment, safe="")
        if quoted:
            _check_rest(session.get(f"{url}/v1/models/{quoted}", timeout=60))
            _check_rest(session.post(f"{url}/v1/models/toy/{quoted}", data=body, timeout=60))

    run()
    r = session.post(f"{url}/v1/models/toy:predict",
                     json={"signature_name": "score", "instances": [[1.0, 2.0, 3.0]]}, timeout=60)
    assert r.status_code == 200
    assert_still_serving(kit, stubs)


# ---- memory --------------------------------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_bad_requests_do_not_grow_memory(kit, fuzzed):
    _, stubs, session, url = fuzzed
    p = kit.predict_request
    x = np.zeros((2, 3), np.float32)
    bad = [
        p("toy", {"x": x.astype(np.float64), "k": np.array([1, 2])}, "predict"),
        p("toy", {"x": np.zeros((2, 4), np.float32), "k": np.array([1, 2])}, "predict"),
        p("toy", {"examples": np.array([b"\xffjunk", b"\n\x03abc"], dtype=object)}),
        p("toy", {"examples": np.array([kit.example([0.0])], dtype=object)}),
        p("toy", {"x": x}, "predict"),
        p("toy", {"x": x, "k": np.array([1, 2])}, "nope"),
        p("nope", {"x": x}),
        p("toy", {"x": np.zeros((MAX_EXAMPLES + 1, 3), np.float32), "k": np.zeros(MAX_EXAMPLES + 1, np.int64)},
          "predict"),
    ]
    bodies = [b"{bad", json.dumps({"signature_name": "score", "instances": [[1.0]]}).encode(),
              json.dumps({"instances": [{"b64": "AAAA"}]}).encode()]

    def burst(n):
        for i in range(n):
            assert call(stubs.predict.Predict, bad[i % len(bad)]) is not None
            if i % 8 == 0:
                r = session.post(f"{url}/v1/models/toy:predict", data=bodies[(i // 8) % len(bodies)], timeout=60)
                assert r.status_code == 400

    burst(300)
    before = _rss_mb()
    burst(2400)
    grown = _rss_mb() - before
    assert grown < 50, f"RSS grew by {grown:.1f} MB over 2400 bad requests"
    assert_still_serving(kit, stubs)
