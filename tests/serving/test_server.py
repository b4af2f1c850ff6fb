"""gRPC API of `tirec serve` through the official TF Serving stubs, version management, batching,
and the `python -m tirec.serving.server` command."""
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_pb2,
                                     regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from tirec.serving.limits import ServerLimits
from tirec.serving.server import ServingOptions

State = get_model_status_pb2.ModelVersionStatus.State
MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def served(kit, tmp_path_factory):
    """Two models from a config file: ``toy`` (versions 1 and 2, labels stable=1 and canary=2)
    and ``latest2`` (folders 1, 2, 3 under a latest-2 policy)."""
    base = tmp_path_factory.mktemp("served")
    toy = kit.store.install(str(base / "toy"), [1, 2])
    latest2 = kit.store.install(str(base / "latest2"), {1: 1, 2: 2, 3: 2})
    config = base / "models.config"
    config.write_text(kit.model_config_text([
        {"name": "toy", "base_path": toy, "policy": "specific { versions: 1 versions: 2 }",
         "labels": {"stable": 1, "canary": 2}},
        {"name": "latest2", "base_path": latest2, "policy": "latest { num_versions: 2 }"},
    ]))
    server = kit.start_server(model_config_file=str(config), max_examples_per_request=MAX_EXAMPLES,
                              max_message_bytes=1 << 20, allow_version_labels_for_unavailable_models=True)
    stubs = kit.Stubs(server.grpc_port)
    yield server, stubs
    stubs.close()
    server.stop()


def outputs(response) -> dict:
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


X = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
K = np.array([1, 0, 7], dtype=np.int64)


# ---- Predict / Classify / Regress / metadata -----------------------------------------------------

def test_predict_typed_signature_serves_latest_version(kit, served):
    _, stubs = served
    resp = stubs.predict.Predict(kit.predict_request("toy", {"x": X, "k": K}, "predict"), timeout=30)
    assert resp.model_spec.name == "toy"
    assert resp.model_spec.version.value == 2
    assert resp.model_spec.signature_name == "predict"
    out = outputs(resp)
    assert out["y"].shape == (3, 1)
    np.testing.assert_allclose(out["y"][:, 0], kit.expected_y(X, K, 2), rtol=1e-5)
    np.testing.assert_array_equal(out["version"], [2, 2, 2])
    # TF Serving's default encoding: values in the typed field, not tensor_content.
    assert len(resp.outputs["y"].float_val) == 3 and not resp.outputs["y"].tensor_content


def test_predict_serialized_examples_with_output_filter(kit, served):
    _, stubs = served
    examples = np.array([kit.example(x, k) for x, k in zip(X, K)], dtype=object)
    req = kit.predict_request("toy", {"examples": examples}, output_filter=["y"])
    resp = stubs.predict.Predict(req, timeout=30)
    assert set(resp.outputs) == {"y"}
    assert resp.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(outputs(resp)["y"][:, 0], kit.expected_y(X, K, 2), rtol=1e-5)


@pytest.mark.parametrize("version,label,want", [(1, None, 1), (2, None, 2), (None, "stable", 1),
                                                (None, "canary", 2)])
def test_version_by_number_and_label(kit, served, version, label, want):
    _, stubs = served
    req = kit.predict_request("toy", {"x": X, "k": K}, "predict", version=version, label=label)
    resp = stubs.predict.Predict(req, timeout=30)
    assert resp.model_spec.version.value == want
    np.testing.assert_array_equal(outputs(resp)["version"], [want] * 3)
    np.testing.assert_allclose(outputs(resp)["y"][:, 0], kit.expected_y(X, K, want), rtol=1e-5)


def test_classify_example_list_and_context(kit, served):
    _, stubs = served
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    req.model_spec.signature_name = "classify"
    for x, k in zip(X, K):
        req.input.example_list.examples.add().ParseFromString(kit.example(x, k))
    resp = stubs.predict.Classify(req, timeout=30)
    assert resp.model_spec.version.value == 2 and resp.model_spec.signature_name == "classify"
    y = kit.expected_y(X, K, 2)
    assert len(resp.result.classifications) == 3
    for row, want in zip(resp.result.classifications, y):
        assert [c.label for c in row.classes] == ["neg", "pos"]
        np.testing.assert_allclose([c.score for c in row.classes], [1 - want, want], rtol=1e-5)

    # Context features are merged into every example; an example's own feature wins.
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    req.model_spec.signature_name = "classify"
    ctx = req.input.example_list_with_context
    ctx.context.ParseFromString(kit.example([1.0, 2.0, 3.0], 5))
    ctx.examples.add().ParseFromString(kit.example([0.0, 0.0, 0.0]))  # k from the context
    ctx.examples.add()  # everything from the context
    ex = ctx.examples.add()
    ex.features.feature["k"].int64_list.value.append(9)  # overrides the context's k
    resp = stubs.predict.Classify(req, timeout=30)
    got = [row.classes[1].score for row in resp.result.classifications]
    want = kit.expected_y([[0, 0, 0], [1, 2, 3], [1, 2, 3]], [5, 5, 9], 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_regress(kit, served):
    _, stubs = served
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "toy"
    req.model_spec.version.value = 1
    req.model_spec.signature_name = "regress"
    for x, k in zip(X, K):
        req.input.example_list.examples.add().ParseFromString(kit.example(x, k))
    resp = stubs.predict.Regress(req, timeout=30)
    assert resp.model_spec.version.value == 1
    np.testing.assert_allclose([r.value for r in resp.result.regressions], kit.expected_y(X, K, 1),
                               rtol=1e-5)


def test_multi_inference_needs_one_input_tensor_as_in_tf_serving(kit, served):
    _, stubs = served

    def request(*tasks):
        req = inference_pb2.MultiInferenceRequest()
        for sig, method in tasks:
            task = req.tasks.add(method_name=f"tensorflow/serving/{method}")
            task.model_spec.name = "toy"
            task.model_spec.signature_name = sig
        req.input.example_list.examples.add().ParseFromString(kit.example(X[0], K[0]))
        return req

    resp = stubs.predict.MultiInference(request(("classify", "classify")), timeout=30)
    y = kit.expected_y(X[:1], K[:1], 2)[0]
    assert resp.results[0].classification_result.classifications[0].classes[1].score == pytest.approx(y, rel=1e-5)
    resp = stubs.predict.MultiInference(request(("regress", "regress")), timeout=30)
    assert resp.results[0].regression_result.regressions[0].value == pytest.approx(y, rel=1e-5)
    # TF Serving feeds all tasks one tensor: signatures saved as separate functions (each with
    # its own `<signature>_inputs` placeholder) cannot be combined
    e = kit.rpc_error(stubs.predict.MultiInference, request(("classify", "classify"), ("regress", "regress")))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Input tensor must be the same for all Signatures" in e.details() and "regress_inputs" in e.details()
    e = kit.rpc_error(stubs.predict.MultiInference, request(("classify", "classify"), ("classify", "classify")))
    assert "Duplicate evaluation of signature: classify" in e.details()
    e = kit.rpc_error(stubs.predict.MultiInference, request(("serving_default", "predict")))
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED and "Unsupported signature method_name" in e.details()


def test_get_model_metadata_returns_the_saved_model_signature_defs(served):
    _, stubs = served
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "toy"
    resp = stubs.predict.GetModelMetadata(req, timeout=30)
    assert resp.model_spec.name == "toy" and resp.model_spec.version.value == 2
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sdm)
    sigs = sdm.signature_def
    assert {"serving_default", "predict", "score", "classify", "regress"} <= set(sigs)
    assert sigs["classify"].method_name == "tensorflow/serving/classify"
    assert sigs["regress"].method_name == "tensorflow/serving/regress"
    assert sigs["predict"].method_name == "tensorflow/serving/predict"
    x = sigs["predict"].inputs["x"]
    assert x.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in x.tensor_shape.dim] == [-1, 3]
    assert sigs["serving_default"].inputs["examples"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in sigs["serving_default"].outputs["y"].tensor_shape.dim] == [-1, 1]


# ---- status, health, policy ----------------------------------------------------------------------

def _status(stubs, name, version=None, label=None):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    resp = stubs.model.GetModelStatus(req, timeout=30)
    return {s.version: (s.state, s.status.error_code, s.status.error_message) for s in resp.model_version_status}


def test_model_status_and_latest_n_policy(kit, served):
    _, stubs = served
    assert _status(stubs, "toy") == {2: (State.AVAILABLE, 0, ""), 1: (State.AVAILABLE, 0, "")}
    assert _status(stubs, "toy", version=1) == {1: (State.AVAILABLE, 0, "")}
    assert _status(stubs, "toy", label="canary") == {2: (State.AVAILABLE, 0, "")}
    # latest { num_versions: 2 } over folders 1, 2, 3: version 1 is never loaded.
    assert _status(stubs, "latest2") == {3: (State.AVAILABLE, 0, ""), 2: (State.AVAILABLE, 0, "")}
    resp = stubs.predict.Predict(kit.predict_request("latest2", {"x": X, "k": K}, "predict"), timeout=30)
    assert resp.model_spec.version.value == 3
    e = kit.rpc_error(stubs.predict.Predict, kit.predict_request("latest2", {"x": X, "k": K}, "predict", version=1))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Specific(latest2, 1)" in e.details()

    e = kit.rpc_error(stubs.model.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="nope")))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.details()
    req = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="toy"))
    req.model_spec.version.value = 9
    e = kit.rpc_error(stubs.model.GetModelStatus, req)
    assert e.code() == grpc.StatusCode.NOT_FOUND and "version 9 of model toy" in e.details()


def test_health_service(kit, served):
    _, stubs = served
    for service in ("", "toy", "latest2"):
        resp = stubs.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    e = kit.rpc_error(stubs.health.Check, health_pb2.HealthCheckRequest(service="nope"))
    assert e.code() == grpc.StatusCode.NOT_FOUND


# ---- errors --------------------------------------------------------------------------------------

def _bad_tensor_content():
    proto = tf.make_tensor_proto(X)
    proto.tensor_content = proto.tensor_content[:-4]
    return proto


def _huge_broadcast():
    proto = tf.make_tensor_proto([b"x"], dtype=tf.string)
    proto.tensor_shape.dim[0].size = 10**9
    return proto


def _err_cases(kit):
    ex = np.array([kit.example(X[0], 1)], dtype=object)
    p = kit.predict_request
    return {
        "unknown model": (p("nope", {"x": X, "k": K}), "NOT_FOUND", ["Servable not found for request: Latest(nope)"]),
        "unknown version": (p("toy", {"x": X, "k": K}, "predict", version=7), "NOT_FOUND",
                            ["Servable not found for request: Specific(toy, 7)"]),
        "unknown label": (p("toy", {"x": X, "k": K}, "predict", label="beta"), "INVALID_ARGUMENT",
                          ["Unrecognized servable version label: beta"]),
        "empty model name": (p("", {"x": X}), "INVALID_ARGUMENT", ["model_spec.name"]),
        "unknown signature": (p("toy", {"x": X}, "nope"), "INVALID_ARGUMENT", ['"nope"', "'predict'", "'score'"]),
        "missing input": (p("toy", {"x": X}, "predict"), "INVALID_ARGUMENT", ["Missing but required: ['k']"]),
        "extra input": (p("toy", {"x": X, "k": K, "z": K}, "predict"), "INVALID_ARGUMENT", ["Sent extra: ['z']"]),
        "empty request": (p("toy", {}, "predict"), "INVALID_ARGUMENT", ["no inputs", "'k'", "'x'"]),
        "wrong dtype": (p("toy", {"x": X.astype(np.float64), "k": K}, "predict"), "INVALID_ARGUMENT",
                        ["input 'x'", "expects dtype DT_FLOAT, received DT_DOUBLE"]),
        "wrong shape": (p("toy", {"x": np.zeros((2, 4), np.float32), "k": K[:2]}, "predict"), "INVALID_ARGUMENT",
                        ["input 'x'", "expects shape [-1, 3]", "received shape [2, 4]"]),
        "wrong rank": (p("toy", {"examples": ex.reshape(1, 1)}), "INVALID_ARGUMENT",
                       ["input 'examples'", "expects shape [-1]", "received shape [1, 1]"]),
        "undecodable example": (p("toy", {"examples": np.array([b"\xff\x00 not a proto"], dtype=object)}),
                                "INVALID_ARGUMENT", ["parse"]),
        "example missing a feature": (p("toy", {"examples": np.array([b""], dtype=object)}), "INVALID_ARGUMENT",
                                      ["x"]),
        "too many rows": (p("toy", {"x": np.zeros((MAX_EXAMPLES + 1, 3), np.float32),
                                    "k": np.zeros(MAX_EXAMPLES + 1, np.int64)}, "predict"),
                          "INVALID_ARGUMENT", [f"batch size {MAX_EXAMPLES + 1}", f"limit of {MAX_EXAMPLES}"]),
        "huge broadcast": (p("toy", {"examples": _huge_broadcast()}), "INVALID_ARGUMENT", ["batch size 1000000000"]),
        "bad tensor_content": (p("toy", {"x": _bad_tensor_content(), "k": K}, "predict"), "INVALID_ARGUMENT",
                               ["input 'x'", "tensor_content has 32 bytes", "needs 36"]),
        "unknown output": (p("toy", {"x": X, "k": K}, "predict", output_filter=["nope"]), "INVALID_ARGUMENT",
                           ["output tensor alias not found", "nope", "'version'", "'y'"]),
        "message too large": (p("toy", {"x": np.ones((100000, 3), np.float32), "k": np.ones(100000, np.int64)},
                                "predict"), "RESOURCE_EXHAUSTED", []),
    }


@pytest.mark.parametrize("case", ["unknown model", "unknown version", "unknown label", "empty model name",
                                  "unknown signature", "missing input", "extra input", "empty request",
                                  "wrong dtype", "wrong shape", "wrong rank", "undecodable example",
                                  "example missing a feature", "too many rows", "huge broadcast",
                                  "bad tensor_content", "unknown output", "message too large"])
def test_predict_errors(kit, served, case):
    _, stubs = served
    req, code, parts = _err_cases(kit)[case]
    e = kit.rpc_error(stubs.predict.Predict, req)
    assert e.code() == getattr(grpc.StatusCode, code), (case, e.code(), e.details())
    for part in parts:
        assert part in e.details(), (case, e.details())


def _example_request(cls, kit, signature, n=1, model="toy"):
    req = cls()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    for i in range(n):
        req.input.example_list.examples.add().ParseFromString(kit.example(X[i % 3], 1))
    return req


def test_classify_and_regress_errors(kit, served):
    _, stubs = served
    cases = [
        (stubs.predict.Classify, _example_request(classification_pb2.ClassificationRequest, kit, ""),
         "Expected classification signature method_name to be tensorflow/serving/classify. "
         "Was: tensorflow/serving/predict"),
        (stubs.predict.Regress, _example_request(regression_pb2.RegressionRequest, kit, "classify"),
         "Expected regression signature method_name to be tensorflow/serving/regress. "
         "Was: tensorflow/serving/classify"),
        (stubs.predict.Classify, _example_request(classification_pb2.ClassificationRequest, kit, "classify", 0),
         "Input is empty"),
        (stubs.predict.Regress, _example_request(regression_pb2.RegressionRequest, kit, "regress",
                                                 MAX_EXAMPLES + 1), f"limit of {MAX_EXAMPLES}"),
        (stubs.predict.Classify, _example_request(classification_pb2.ClassificationRequest, kit, "nope"),
         'Serving signature key "nope" not found'),
    ]
    for fn, req, part in cases:
        e = kit.rpc_error(fn, req)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (part, e.details())
        assert part in e.details()
    # A tf.Example the model cannot use (feature x of the wrong length) is the model's error.
    req = _example_request(regression_pb2.RegressionRequest, kit, "regress")
    req.input.example_list.examples[0].features.feature["x"].float_list.value.append(1.0)
    e = kit.rpc_error(stubs.predict.Regress, req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "x" in e.details()

    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["foo"])
    req.model_spec.name = "toy"
    e = kit.rpc_error(stubs.predict.GetModelMetadata, req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "Metadata field foo is not supported" in e.details()


# ---- config reload -------------------------------------------------------------------------------

def test_reload_config_adds_and_removes_models(kit, tmp_path):
    toy = kit.store.install(str(tmp_path / "toy"), [1])
    other = kit.store.install(str(tmp_path / "other"), [2])
    server = kit.start_server(model_base_path=toy, model_name="toy", allowed_model_roots=(str(tmp_path),),
                              allow_version_labels_for_unavailable_models=True)
    stubs = kit.Stubs(server.grpc_port)
    try:
        config = model_server_config_pb2.ModelServerConfig()
        mc = config.model_config_list.config.add(name="other", base_path=other, model_platform="tensorflow")
        mc.version_labels["stable"] = 2
        resp = stubs.model.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
        assert resp.status.error_code == 0
        # "other" is available as soon as the call returns; "toy" is gone.
        got = stubs.predict.Predict(kit.predict_request("other", {"x": X, "k": K}, "predict", label="stable"),
                                    timeout=30)
        assert got.model_spec.version.value == 2
        e = kit.rpc_error(stubs.predict.Predict, kit.predict_request("toy", {"x": X, "k": K}, "predict"))
        assert e.code() == grpc.StatusCode.NOT_FOUND
        assert _status(stubs, "toy") == {1: (State.END, 0, "")}
        health = stubs.health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        health = stubs.health.Check(health_pb2.HealthCheckRequest(service="toy"), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

        # Invalid configs change nothing.
        dup = model_server_config_pb2.ModelServerConfig()
        dup.model_config_list.config.add(name="a", base_path=other)
        dup.model_config_list.config.add(name="a", base_path=other)
        e = kit.rpc_error(stubs.model.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest(config=dup))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "model a multiple times" in e.details()
        missing = model_server_config_pb2.ModelServerConfig()
        missing.model_config_list.config.add(name="gone", base_path=str(tmp_path / "missing"),
                                             model_platform="tensorflow")
        e = kit.rpc_error(stubs.model.HandleReloadConfigRequest,
                          model_management_pb2.ReloadConfigRequest(config=missing))
        assert e.code() == grpc.StatusCode.NOT_FOUND and "missing" in e.details()
        # what TF Serving refuses: a relative base path, no platform, both platform fields
        for fields, message in [
                (dict(base_path="models/other", model_platform="tensorflow"),
                 "Expected model other to have an absolute path or URI; got base_path()=models/other"),
                (dict(base_path=other), "Illegal setting neither ModelServerConfig::model_type"),
                (dict(base_path=other, model_platform="tensorflow", model_type=1), "Illegal setting both")]:
            bad = model_server_config_pb2.ModelServerConfig()
            bad.model_config_list.config.add(name="other", **fields)
            e = kit.rpc_error(stubs.model.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest(config=bad))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.details(), e.details()
        deprecated = model_server_config_pb2.ModelServerConfig()
        deprecated.model_config_list.config.add(name="other", base_path=other, model_type=1)  # TENSORFLOW
        stubs.model.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=deprecated), timeout=60)
        assert server.manager.model_names() == ["other"]
    finally:
        stubs.close()
        server.stop()


def test_labels_need_an_available_version_unless_allowed_as_in_tf_serving(kit, tmp_path):
    # TF Serving assigns labels before it loads the config's versions: a config with labels
    # starts only with --allow_version_labels_for_unavailable_models, and a reload may label
    # a loaded version; moving a label to a version not loaded is refused even with the flag
    from tirec.serving.servable import ServingError

    toy = kit.store.install(str(tmp_path / "toy"), [1, 2])
    config = tmp_path / "models.config"
    entry = {"name": "toy", "base_path": toy, "policy": "specific { versions: 1 }"}
    config.write_text(kit.model_config_text([{**entry, "labels": {"stable": 1}}]))
    with pytest.raises(ServingError, match=r"Request to assign label to version 1 of model toy, which is "
                                           r"not currently available .*--allow_version_labels_for_unavail"):
        kit.start_server(model_config_file=str(config))
    config.write_text(kit.model_config_text([entry]))
    server = kit.start_server(model_config_file=str(config))
    stubs = kit.Stubs(server.grpc_port)

    def reload(labels, policy="specific { versions: 1 }"):
        text = kit.model_config_text([{**entry, "policy": policy, "labels": labels}])
        return model_management_pb2.ReloadConfigRequest(config=text_format.Parse(
            text, model_server_config_pb2.ModelServerConfig()))

    try:
        e = kit.rpc_error(stubs.model.HandleReloadConfigRequest, reload({"canary": 2}))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 2 of model toy" in e.details()
        assert stubs.model.HandleReloadConfigRequest(reload({"stable": 1}), timeout=60).status.error_code == 0
        got = stubs.predict.Predict(kit.predict_request("toy", {"x": X, "k": K}, "predict", label="stable"),
                                    timeout=30)
        assert got.model_spec.version.value == 1
        server.manager.allow_unavailable_labels = True
        e = kit.rpc_error(stubs.model.HandleReloadConfigRequest, reload({"stable": 2}))  # moves a label
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "label 'stable'" in e.details()
        assert stubs.model.HandleReloadConfigRequest(reload({"stable": 1, "canary": 2}, "all {}"),
                                                     timeout=60).status.error_code == 0
    finally:
        stubs.close()
        server.stop()


def test_model_config_file_is_polled(kit, tmp_path):
    toy = kit.store.install(str(tmp_path / "toy"), [1])
    config = tmp_path / "models.config"
    config.write_text(kit.model_config_text([{"name": "toy", "base_path": toy}]))
    server = kit.start_server(model_config_file=str(config), model_config_file_poll_wait_seconds=0.1)
    try:
        config.write_text(kit.model_config_text([{"name": "toy", "base_path": toy},
                                                 {"name": "twin", "base_path": toy}]))
        deadline = time.monotonic() + 30
        while not server.manager.is_ready("twin"):
            assert time.monotonic() < deadline, "the changed config file was not picked up"
            time.sleep(0.05)
        assert server.manager.available_versions("twin") == [1]
        # a reload that fails (a base path not there yet) is tried again at every poll, so the
        # same file serves the model once its folder appears
        late = str(tmp_path / "late")
        config.write_text(kit.model_config_text([{"name": "toy", "base_path": toy},
                                                 {"name": "late", "base_path": late}]))
        time.sleep(0.5)
        assert "late" not in server.manager.model_names()
        kit.store.install(late, [1])
        deadline = time.monotonic() + 30
        while not server.manager.is_ready("late"):
            assert time.monotonic() < deadline, "the failed reload was not tried again"
            time.sleep(0.05)
    finally:
        server.stop()


# ---- hot reload ----------------------------------------------------------------------------------

def test_hot_reload_without_failed_requests(kit, tmp_path):
    base = kit.store.install(str(tmp_path / "toy"), [1])
    server = kit.start_server(model_base_path=base, model_name="toy", file_system_poll_wait_seconds=0.1)
    stubs = kit.Stubs(server.grpc_port)
    old = weakref.ref(server.manager.resolve("toy"))
    failures, versions, stop = [], [], threading.Event()

    def client():
        req = kit.predict_request("toy", {"x": X, "k": K}, "predict")
        while not stop.is_set():
            try:
                resp = stubs.predict.Predict(req, timeout=30)
                versions.append(resp.model_spec.version.value)
                y = outputs(resp)["y"][:, 0]
                np.testing.assert_allclose(y, kit.expected_y(X, K, resp.model_spec.version.value), rtol=1e-5)
            except Exception as e:  # any failure counts
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        while len(versions) < 5:
            time.sleep(0.01)
        kit.store.publish(base, 2, 2)
        deadline = time.monotonic() + 60
        while not versions or versions[-1] != 2:
            assert time.monotonic() < deadline, "version 2 was never served"
            time.sleep(0.02)
        n = len(versions)
        while len(versions) < n + 5:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert failures == []
        assert versions[0] == 1 and versions[-1] == 2
        assert versions.index(2) > 0 and 1 not in versions[versions.index(2) + 20:]
        assert _status(stubs, "toy") == {2: (State.AVAILABLE, 0, ""), 1: (State.END, 0, "")}
        e = kit.rpc_error(stubs.predict.Predict, kit.predict_request("toy", {"x": X, "k": K}, "predict", version=1))
        assert e.code() == grpc.StatusCode.NOT_FOUND
        gc.collect()
        assert old() is None, "the unloaded version is still referenced"
    finally:
        stubs.close()
        server.stop()


def test_half_written_and_corrupt_versions_do_not_replace_a_working_one(kit, tmp_path):
    base = kit.store.install(str(tmp_path / "toy"), [1])
    server = kit.start_server(model_base_path=base, model_name="toy", version_settle_seconds=30)
    stubs = kit.Stubs(server.grpc_port)
    try:
        # Folder 3 without saved_model.pb yet (still being copied): ignored.
        os.makedirs(os.path.join(base, "3", "variables"))
        shutil.copy(os.path.join(kit.store.root, "1", "variables", "variables.index"),
                    os.path.join(base, "3", "variables"))
        # Folder 4 complete but just written: left for a later poll.
        shutil.copytree(os.path.join(kit.store.root, "2"), os.path.join(base, "4"), copy_function=shutil.copyfile)
        os.makedirs(os.path.join(base, "not-a-version"))
        server.manager.poll_once()
        assert _status(stubs, "toy") == {1: (State.AVAILABLE, 0, "")}

        # Folder 5: an old, corrupt saved_model.pb -> END with an error; version 1 keeps serving.
        os.makedirs(os.path.join(base, "5"))
        with open(os.path.join(base, "5", "saved_model.pb"), "wb") as fh:
            fh.write(b"\x00\xffnot a saved model")
        os.utime(os.path.join(base, "5", "saved_model.pb"), (time.time() - 60, time.time() - 60))
        server.manager.poll_once()
        status = _status(stubs, "toy")
        assert status[1] == (State.AVAILABLE, 0, "")
        assert status[5][0] == State.END and status[5][1] != 0 and "saved_model.pb" in status[5][2]
        resp = stubs.predict.Predict(kit.predict_request("toy", {"x": X, "k": K}, "predict"), timeout=30)
        assert resp.model_spec.version.value == 1
        server.manager.poll_once()  # a failed version is not retried while its files are unchanged
        assert _status(stubs, "toy")[5][0] == State.END

        # Once folder 4 has settled it loads (5 is still skipped), and replaces version 1.
        server.manager.settle_seconds = 0.0
        server.manager.poll_once()
        assert _status(stubs, "toy")[4] == (State.AVAILABLE, 0, "")
        assert _status(stubs, "toy")[1] == (State.END, 0, "")
        resp = stubs.predict.Predict(kit.predict_request("toy", {"x": X, "k": K}, "predict"), timeout=30)
        assert resp.model_spec.version.value == 4
        health = stubs.health.Check(health_pb2.HealthCheckRequest(service="toy"), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stubs.close()
        server.stop()


def test_warmup_requests_are_replayed_and_a_failing_warmup_fails_the_load(kit, tmp_path):
    base = kit.store.install(str(tmp_path / "toy"), [1])
    good = [kit.predict_request("toy", {"x": X, "k": K}, "predict"),
            kit.predict_request("toy", {"examples": np.array([kit.example(X[0])], dtype=object)})]
    kit.write_warmup(os.path.join(base, "1"), good)
    server = kit.start_server(model_base_path=base, model_name="toy")
    stubs = kit.Stubs(server.grpc_port)
    try:
        servable = server.manager.resolve("toy")
        assert servable.warmup_records == 2 and servable.calls == 2
        path = kit.store.publish(base, 2, 2)
        kit.write_warmup(path, [kit.predict_request("toy", {"x": X}, "predict")])  # misses input k
        kit.age(path)
        server.manager.poll_once()
        status = _status(stubs, "toy")
        assert status[1] == (State.AVAILABLE, 0, "")
        assert status[2][0] == State.END and "warmup record #0" in status[2][2] and "'k'" in status[2][2]
    finally:
        stubs.close()
        server.stop()


def test_warmup_fails_the_load_where_tf_serving_fails_it(kit, tmp_path):
    # more than 1000 records, or a record type not replayed, fail the load instead of being
    # cut or skipped with a warning
    from tensorflow_serving.apis import prediction_log_pb2

    from tirec.serving import inference
    from tirec.serving.servable import Servable, ServingError

    base = kit.store.install(str(tmp_path / "toy"), [1])
    version = os.path.join(base, "1")
    one = kit.predict_request("toy", {"x": X[:1], "k": K[:1]}, "predict")
    kit.write_warmup(version, [one] * 1001)
    servable = Servable.load("toy", 1, version)
    with pytest.raises(ServingError, match=r"Number of warmup records exceeds the maximum \(1000\)"):
        inference.run_warmup(servable)
    kit.write_warmup(version, [one] * 1000)
    assert inference.run_warmup(servable) == 1000
    with tf.io.TFRecordWriter(os.path.join(version, "assets.extra", "tf_serving_warmup_requests")) as w:
        w.write(prediction_log_pb2.PredictionLog(
            session_run_log=prediction_log_pb2.SessionRunLog()).SerializeToString())
    with pytest.raises(ServingError, match="Unsupported log_type for warmup: session_run_log"):
        inference.run_warmup(servable)
    # TF Serving skips the other types (a streamed predict, none set) without failing the load
    with tf.io.TFRecordWriter(os.path.join(version, "assets.extra", "tf_serving_warmup_requests")) as w:
        w.write(prediction_log_pb2.PredictionLog(
            predict_streamed_log=prediction_log_pb2.PredictStreamedLog()).SerializeToString())
        w.write(prediction_log_pb2.PredictionLog().SerializeToString())
        w.write(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
            request=one)).SerializeToString())
    calls = servable.calls
    assert inference.run_warmup(servable) == 1 and servable.calls == calls + 1


def test_multi_inference_warmup_records_replay_as_in_tf_serving(kit, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    from tirec.serving import inference
    from tirec.serving.servable import Servable, ServingError

    base = kit.store.install(str(tmp_path / "toy"), [1])
    version = os.path.join(base, "1")
    servable = Servable.load("toy", 1, version)

    def write(*signatures, name="toy"):
        req = inference_pb2.MultiInferenceRequest()
        for sig in signatures:
            task = req.tasks.add(method_name=f"tensorflow/serving/{sig}")
            task.model_spec.name = name
            task.model_spec.signature_name = sig
        req.input.example_list.examples.add().ParseFromString(kit.example(X[0], K[0]))
        os.makedirs(os.path.join(version, "assets.extra"), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(version, "assets.extra", "tf_serving_warmup_requests")) as w:
            w.write(prediction_log_pb2.PredictionLog(
                multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=req)).SerializeToString())

    write("classify")
    calls = servable.calls
    assert inference.run_warmup(servable) == 1 and servable.calls == calls + 1
    write("classify", "regress")  # two input tensors: refused, as TF Serving does, so the load fails
    with pytest.raises(ServingError, match=r"warmup record #0 \(multi_inference_log\).*Input tensor must be"):
        inference.run_warmup(servable)
    write("classify", name="")  # TF Serving refuses a task without a model name
    with pytest.raises(ServingError, match="Found ModelSpec with an empty model name"):
        inference.run_warmup(servable)


# ---- batching ------------------------------------------------------------------------------------

def test_batching_merges_concurrent_requests_and_splits_results(kit, tmp_path):
    base = kit.store.install(str(tmp_path / "toy"), [1])
    server = kit.start_server(model_base_path=base, model_name="toy", enable_batching=True, max_batch_size=32,
                              batch_timeout_micros=200_000, num_batch_threads=1)
    stubs = kit.Stubs(server.grpc_port)
    try:
        servable = server.manager.resolve("toy")
        calls0 = servable.calls
        rng = np.random.default_rng(0)
        inputs = [(rng.normal(size=(2, 3)).astype(np.float32), rng.integers(0, 9, size=2)) for _ in range(8)]
        futures = [stubs.predict.Predict.future(kit.predict_request("toy", {"x": x, "k": k}, "predict"), timeout=30)
                   for x, k in inputs]
        bad = stubs.predict.Predict.future(kit.predict_request(
            "toy", {"examples": np.array([b"\xffbad"], dtype=object)}), timeout=30)
        good = stubs.predict.Predict.future(kit.predict_request(
            "toy", {"examples": np.array([kit.example(X[0], 3)], dtype=object)}), timeout=30)
        for (x, k), fut in zip(inputs, futures):
            y = outputs(fut.result())["y"][:, 0]
            np.testing.assert_allclose(y, kit.expected_y(x, k, 1), rtol=1e-5)
        with pytest.raises(grpc.RpcError) as info:
            bad.result()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        np.testing.assert_allclose(outputs(good.result())["y"][:, 0], kit.expected_y(X[:1], [3], 1), rtol=1e-5)
        stats = server.batch_stats()
        assert stats["merged_batches"] >= 1 and stats["max_batch_rows"] > 2
        assert servable.calls - calls0 < 8 + 2

        # A request larger than max_batch_size is refused, as TF Serving does.
        big = kit.predict_request("toy", {"x": np.zeros((40, 3), np.float32), "k": np.zeros(40, np.int64)}, "predict")
        e = kit.rpc_error(stubs.predict.Predict, big)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.details() == "Task size 40 is larger than maximum input batch size 32"
        # As in TF Serving, every signature is batched: inputs differing in their first
        # dimension are INVALID_ARGUMENT, naming the shapes
        mixed = kit.predict_request("toy", {"x": np.zeros((2, 3), np.float32), "k": np.zeros(3, np.int64)},
                                    "predict")
        e = kit.rpc_error(stubs.predict.Predict, mixed)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input tensors must have equal 0th-dimension size" in e.details() and "[2, 3]" in e.details()
    finally:
        stubs.close()
        server.stop()


def _classify_request(kit, rows: int):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    req.model_spec.signature_name = "classify"
    for i in range(rows):
        req.input.example_list.examples.add().ParseFromString(kit.example(X[i % 3], i % 7))
    return req


def test_batching_applies_to_classify_regress_and_warmup_as_in_tf_serving(kit, tmp_path):
    # TF Serving's batching session wraps every signature of the model, and the warmup requests
    # replay through it: so Classify / Regress requests are batched and size-checked, and a
    # warmup record whose inputs differ in their first dimension fails the version's load.
    base = kit.store.install(str(tmp_path / "toy"), [1])
    mixed = kit.predict_request("toy", {"x": X[:1], "k": K}, "predict")  # [1, 3] and [3]
    kit.write_warmup(os.path.join(base, "1"), [mixed])
    plain = kit.start_server(model_base_path=base, model_name="toy")
    try:
        assert plain.manager.resolve("toy").warmup_records == 1  # unbatched, [1] broadcasts
    finally:
        plain.stop()
    server = kit.start_server(model_base_path=base, model_name="toy", enable_batching=True, max_batch_size=4,
                              batch_timeout_micros=200_000, num_batch_threads=1)
    stubs = kit.Stubs(server.grpc_port)
    try:
        state, _, message = _status(stubs, "toy")[1]
        assert state == State.END and "warmup record #0" in message
        assert "input tensors must have equal 0th-dimension size" in message
        kit.write_warmup(kit.store.publish(base, 2, 2), [kit.predict_request("toy", {"x": X, "k": K}, "predict")])
        kit.age(os.path.join(base, "2"))
        server.manager.poll_once()
        assert _status(stubs, "toy")[2] == (State.AVAILABLE, 0, "")

        e = kit.rpc_error(stubs.predict.Classify, _classify_request(kit, 5))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.details() == "Task size 5 is larger than maximum input batch size 4"
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "toy"
        regress.model_spec.signature_name = "regress"
        regress.input.CopyFrom(_classify_request(kit, 5).input)
        e = kit.rpc_error(stubs.predict.Regress, regress)
        assert e.details() == "Task size 5 is larger than maximum input batch size 4"

        one_task = inference_pb2.MultiInferenceRequest(input=_classify_request(kit, 5).input)
        task = one_task.tasks.add(method_name="tensorflow/serving/classify")
        task.model_spec.name, task.model_spec.signature_name = "toy", "classify"
        e = kit.rpc_error(stubs.predict.MultiInference, one_task)
        assert e.details() == "Task size 5 is larger than maximum input batch size 4"
        # A call fetching less than a signature's outputs bypasses TF Serving's batcher
        big = {"x": np.zeros((5, 3), np.float32), "k": np.zeros(5, np.int64)}
        e = kit.rpc_error(stubs.predict.Predict, kit.predict_request("toy", big, "predict"))
        assert e.details() == "Task size 5 is larger than maximum input batch size 4"
        filtered = kit.predict_request("toy", big, "predict")
        filtered.output_filter.append("y")
        assert list(outputs(stubs.predict.Predict(filtered, timeout=30))) == ["y"]

        before = server.batch_stats()
        futures = [stubs.predict.Classify.future(_classify_request(kit, 2), timeout=30) for _ in range(4)]
        y = kit.expected_y([X[0], X[1]], [0, 1], 2)
        for fut in futures:
            got = [row.classes[1].score for row in fut.result().result.classifications]
            np.testing.assert_allclose(got, y, rtol=1e-5)
        after = server.batch_stats()
        assert after["batched_requests"] - before["batched_requests"] == 4
        assert after["merged_batches"] > before["merged_batches"]

        # A classify warmup record of more rows than max_batch_size fails the load.
        from tensorflow_serving.apis import prediction_log_pb2

        path = kit.store.publish(base, 3, 2)
        os.makedirs(os.path.join(path, "assets.extra"))
        with tf.io.TFRecordWriter(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) as w:
            w.write(prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(
                request=_classify_request(kit, 5))).SerializeToString())
        kit.age(path)
        server.manager.poll_once()
        state, _, message = _status(stubs, "toy")[3]
        assert state == State.END and "warmup record #0 (classify_log)" in message and "Task size 5" in message
    finally:
        stubs.close()
        server.stop()


def test_batching_parameters_file(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000 }\n"
                    "num_batch_threads { value: 3 }\nmax_enqueued_batches { value: 7 }\n"
                    "allowed_batch_sizes: 16\nallowed_batch_sizes: 64\n")
    opts = ServingOptions(model_base_path="/m", enable_batching=True, batching_parameters_file=str(path))
    b = opts.batching_options()
    assert (b.max_batch_size, b.batch_timeout_micros, b.num_batch_threads, b.max_enqueued_batches,
            b.allowed_batch_sizes) == (64, 2000, 3, 7, (16, 64))
    # Flags override the file; inconsistent values name the field.
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        ServingOptions(model_base_path="/m", enable_batching=True, batching_parameters_file=str(path),
                       max_batch_size=32).batching_options()
    path.write_text("max_batch_size: 3")
    with pytest.raises(ValueError, match="batching.config"):
        opts.batching_options()
    assert ServingOptions(model_base_path="/m").batching_options() is None


def test_options_validation():
    with pytest.raises(ValueError, match="exactly one of --model-base-path and --model-config-file"):
        ServingOptions()
    with pytest.raises(ValueError, match="exactly one"):
        ServingOptions(model_base_path="/m", model_config_file="/c")
    with pytest.raises(ValueError, match="port=70000"):
        ServingOptions(model_base_path="/m", port=70000)
    with pytest.raises(ValueError, match="max_examples_per_request=0"):
        ServerLimits(max_examples_per_request=0)
    with pytest.raises(ValueError, match="max_concurrent_rpcs=True"):
        ServerLimits(max_concurrent_rpcs=True)
    with pytest.raises(ValueError, match="max_message_bytes must be <= 2147483647"):
        ServerLimits(max_message_bytes=2**31)
    with pytest.raises(ValueError, match="empty path"):
        ServingOptions(model_base_path="/m", allowed_model_roots=("/a", ""))


def test_limit_flags_share_the_server_limits_defaults_and_tf_serving_spellings():
    import argparse

    from tirec.serving.server import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert ServingOptions.from_args(parser.parse_args(["--model-base-path", "/m"])).limits == ServerLimits()
    opts = ServingOptions.from_args(parser.parse_args([
        "--model-base-path", "/m", "--max-message-bytes", "1024", "--max-concurrent-rpcs", "8",
        "--grpc_max_threads", "4", "--rest_api_num_threads", "2", "--rest_api_timeout_in_ms", "1500",
        "--rest-max-queued-requests", "0", "--rest-max-connections", "9",
        "--allowed-model-roots", "/a,/b", "--allowed-model-roots", "/c"]))
    assert opts.limits == ServerLimits(max_message_bytes=1024, max_concurrent_rpcs=8, grpc_workers=4,
                                       rest_api_num_threads=2, rest_api_timeout_in_ms=1500,
                                       rest_max_queued_requests=0, rest_max_connections=9)
    assert opts.allowed_model_roots == ("/a", "/b", "/c")
    assert not opts.allow_version_labels_for_unavailable_models
    assert ServingOptions.from_args(parser.parse_args([
        "--model-base-path", "/m", "--allow_version_labels_for_unavailable_models"])
    ).allow_version_labels_for_unavailable_models
    with pytest.raises(ValueError, match="rest_api_timeout_in_ms=0"):
        ServingOptions.from_args(parser.parse_args(["--model-base-path", "/m", "--rest-api-timeout-in-ms", "0"]))


# ---- the command ---------------------------------------------------------------------------------

def test_python_m_server_subprocess(kit, tmp_path):
    import requests

    base = kit.store.install(str(tmp_path / "toy"), [1])
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tirec.serving.server", "--model-base-path", base,
                             "--model-name", "toy", "--port", "0", "--rest-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        ports = {}
        deadline = time.monotonic() + 120
        while len(ports) < 2:
            assert time.monotonic() < deadline, "the server did not announce its ports"
            line = proc.stdout.readline()
            assert line, f"the server exited with {proc.wait()}"
            for kind in ("gRPC", "REST"):
                prefix = f"tirec serve: {kind} listening on 127.0.0.1:"
                if line.startswith(prefix):
                    ports[kind] = int(line[len(prefix):])
        status = requests.get(f"http://127.0.0.1:{ports['REST']}/v1/models/toy", timeout=30).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        stubs = kit.Stubs(ports["gRPC"])
        resp = stubs.predict.Predict(kit.predict_request("toy", {"x": X, "k": K}, "predict"), timeout=30)
        stubs.close()
        np.testing.assert_allclose(outputs(resp)["y"][:, 0], kit.expected_y(X, K, 1), rtol=1e-5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_model_base_path_flag_is_made_absolute_as_tf_serving_needs():
    from tirec.serving.model_manager import single_model_config, validate_config

    (entry,) = validate_config(single_model_config("m", "models/m"))
    assert entry.base_path == os.path.abspath("models/m") and entry.model_platform == "tensorflow"
    (entry,) = validate_config(single_model_config("m", "gs://bucket/models/m"))
    assert entry.base_path == "gs://bucket/models/m"
