"""Shared fixtures for the serving tests: tiny toy SavedModels and gRPC helpers.

The toy model of version ``v`` computes ``y = sigmoid(x . w + 0.1 v + 0.01 k)`` with
``w = [0.5, -0.25, 1.0]`` and also returns ``version = v`` per row, so a test can tell versions
apart. Signatures (method names rewritten in ``saved_model.pb`` like the exporter does):

==================  ====================================  ==================================  ==========
signature           inputs                                outputs                             method
==================  ====================================  ==================================  ==========
``serving_default`` ``examples`` string ``[-1]``          ``y`` ``[-1, 1]``, ``version`` [-1] predict
``predict``         ``x`` float ``[-1, 3]``, ``k`` int64  ``y``, ``version``                  predict
                    ``[-1]``
``score``           ``x`` float ``[-1, 3]``               ``y`` ``[-1, 1]``                   predict
``classify``        ``inputs`` string ``[-1]``            ``scores`` ``[-1, 2]``, ``classes``  classify
``regress``         ``inputs`` string ``[-1]``            ``outputs`` ``[-1]``                regress
==================  ====================================  ==================================  ==========
"""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tirec.serving.export import CLASSIFY_METHOD, REGRESS_METHOD, set_method_names  # noqa: E402

W = np.array([0.5, -0.25, 1.0], dtype=np.float32)


def expected_y(x, k, version: int) -> np.ndarray:
    """The toy model's ``y`` (shape ``[B]``) in numpy."""
    x = np.asarray(x, dtype=np.float32)
    logit = x @ W + np.float32(0.1 * version) + np.float32(0.01) * np.asarray(k, dtype=np.float32)
    return 1.0 / (1.0 + np.exp(-logit))


def example(x, k: int | None = None) -> bytes:
    """A serialized tf.Example with features ``x`` (3 floats) and optionally ``k``."""
    import tensorflow as tf

    feats = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=list(map(float, x))))}
    if k is not None:
        feats["k"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(k)]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def export_toy(export_dir: str, version: int) -> str:
    """Writes the toy SavedModel of ``version`` to ``export_dir``."""
    import tensorflow as tf

    class Toy(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(W)
            self.b = tf.Variable(0.1 * version, dtype=tf.float32)
            self.v = tf.Variable(float(version))

        def _score(self, x, k):
            logit = tf.reduce_sum(x * self.w, axis=-1) + self.b + 0.01 * tf.cast(k, tf.float32)
            y = tf.sigmoid(logit)
            return {"y": y[:, None], "version": tf.fill(tf.shape(k), self.v)}

        def _parse(self, serialized):
            spec = {"x": tf.io.FixedLenFeature([3], tf.float32),
                    "k": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
            return tf.io.parse_example(serialized, spec)

    m = Toy()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serving_default(examples):
        f = m._parse(examples)
        return m._score(f["x"], f["k"])

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.int64, name="k")])
    def predict(x, k):
        return m._score(x, k)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def score(x):
        return {"y": m._score(x, tf.zeros(tf.shape(x)[:1], tf.int64))["y"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        f = m._parse(inputs)
        y = m._score(f["x"], f["k"])["y"]
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(y)[0], 1])
        return {"scores": tf.concat([1.0 - y, y], axis=-1), "classes": classes}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(inputs):
        f = m._parse(inputs)
        return {"outputs": m._score(f["x"], f["k"])["y"][:, 0]}

    sigs = {"serving_default": serving_default.get_concrete_function(),
            "predict": predict.get_concrete_function(), "score": score.get_concrete_function(),
            "classify": classify.get_concrete_function(), "regress": regress.get_concrete_function()}
    tf.saved_model.save(m, export_dir, signatures=sigs)
    set_method_names(export_dir, {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})
    return export_dir


def write_warmup(export_dir: str, requests) -> None:
    """Writes ``assets.extra/tf_serving_warmup_requests`` with PredictLog records."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    extra = os.path.join(export_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(extra, "tf_serving_warmup_requests")) as w:
        for req in requests:
            w.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())


def age(path: str, seconds: float = 3600) -> None:
    """Sets the times of every file under ``path`` to ``seconds`` ago."""
    past = time.time() - seconds
    for root, _dirs, files in os.walk(path):
        for f in files:
            os.utime(os.path.join(root, f), (past, past))


class ToyStore:
    """Toy exports built once per session, copied into per-test base paths.

    Args:
      root: folder holding ``1/`` and ``2/``.
    """

    def __init__(self, root: str):
        self.root = root

    def install(self, base: str, versions: dict[int, int] | list[int]) -> str:
        """Copies toy versions into ``base`` (``{folder version: toy version}`` or a list);
        returns ``base``. The copies are dated an hour back, so they count as settled."""
        os.makedirs(base, exist_ok=True)
        if not isinstance(versions, dict):
            versions = {v: v for v in versions}
        for folder, toy in versions.items():
            dest = os.path.join(base, str(folder))
            shutil.copytree(os.path.join(self.root, str(toy)), dest)
            age(dest)
        return base

    def publish(self, base: str, folder: int, toy: int) -> str:
        """Writes a version the way an exporter does: copy to a hidden temp folder, then rename."""
        tmp = os.path.join(base, f".tmp-{folder}")
        shutil.copytree(os.path.join(self.root, str(toy)), tmp)
        age(tmp)
        final = os.path.join(base, str(folder))
        os.rename(tmp, final)
        return final


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> ToyStore:
    root = tmp_path_factory.mktemp("toy_exports")
    for v in (1, 2):
        export_toy(str(root / str(v)), v)
    return ToyStore(str(root))


def tensor(value, dtype=None):
    """``tf.make_tensor_proto`` shorthand."""
    import tensorflow as tf

    return tf.make_tensor_proto(value, dtype=dtype)


def predict_request(model: str, inputs: dict, signature: str = "", version: int | None = None,
                    label: str | None = None, output_filter=()):
    """A PredictRequest; ``inputs`` values are arrays/lists or ready TensorProtos."""
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if signature:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v if isinstance(v, tensor_pb2.TensorProto) else tensor(v))
    req.output_filter.extend(output_filter)
    return req


class Stubs:
    """The official gRPC stubs on one channel.

    Args:
      port: the server's gRPC port on 127.0.0.1.
    """

    def __init__(self, port: int):
        import grpc
        from grpc_health.v1 import health_pb2_grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def rpc_error(fn, *args, **kwargs):
    """Calls ``fn``; returns the grpc.RpcError it raises (fails the test if none)."""
    import grpc

    try:
        fn(*args, timeout=30, **kwargs)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"{fn} succeeded; an RPC error was expected")


def model_config_text(models: list[dict]) -> str:
    """A ModelServerConfig text proto. Each model: name, base_path, optional policy text and
    labels dict."""
    parts = []
    for m in models:
        labels = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in m.get("labels", {}).items())
        policy = f' model_version_policy {{ {m["policy"]} }}' if m.get("policy") else ""
        parts.append(f'  config {{ name: "{m["name"]}" base_path: "{m["base_path"]}" '
                     f'model_platform: "tensorflow"{policy}{labels} }}')
    return "model_config_list {\n" + "\n".join(parts) + "\n}\n"


def start_server(**options):
    """A started ServingServer on free ports; no REST and no polling unless asked. Options named
    like a :class:`ServerLimits` field (``max_message_bytes=...``) go into its limits."""
    import dataclasses

    from tirec.serving.limits import ServerLimits
    from tirec.serving.server import ServingOptions, ServingServer

    names = {f.name for f in dataclasses.fields(ServerLimits)}
    limits = ServerLimits(**{k: options.pop(k) for k in list(options) if k in names})
    options = {"port": 0, "rest_port": None, "file_system_poll_wait_seconds": 0, "limits": limits, **options}
    return ServingServer(ServingOptions(**options)).start()


@pytest.fixture(scope="session")
def kit(toy_store):
    """The helpers above in one namespace (test modules cannot import this conftest)."""
    import types

    return types.SimpleNamespace(
        store=toy_store, expected_y=expected_y, example=example, tensor=tensor,
        predict_request=predict_request, Stubs=Stubs, rpc_error=rpc_error,
        model_config_text=model_config_text, write_warmup=write_warmup, age=age, start_server=start_server,
        set_method_names=set_method_names)
