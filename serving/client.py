"""Client for a served tirec model: TIR requests in, ranked candidates out.

Uses only the official ``tensorflow_serving.apis`` stubs, so it talks to the real
``tensorflow_model_server`` and to ``tirec serve`` alike.

A **TIR request** (JSON) describes one user visit and the candidates to rank::

    {
      "user":       {"user_id": 17, "user_gender": 1, ...},          # user_id + the spec's user_* fields
      "context":    {"impression_ts": 1700000000, "ctx_hour": 13, ...},  # + the spec's ctx_* fields
      "trigger":    {"item_id": 5, "cate_id": 2, "brand_id": 40, "price_bucket": 3},  # or null
      "history":    [{"item_id": 3, "ts": 1699990000, "cate_id": 2, ...}, ...],  # most recent first
      "candidates": [{"item_id": 9, "cate_id": 4, ...}, ...]
    }

Items carry ``item_id`` plus every item side field of the FeatureSpec (``cate_id``, ...);
history items also carry ``ts`` (seconds). A missing field is an error naming it. A history
longer than the model's sequence length keeps its most recent entries (logged).

    client = PredictClient("127.0.0.1:8500", "daian")
    ranked = client.rank(request)   # [(candidate, score), ...] best first; the request schema
                                    # comes from the served model's metadata
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from tirec.features.jsonio import read_text
from tirec.features.spec import FeatureSpec
from tirec.models.base import context_fields, item_fields, model_input_names, user_fields

log = logging.getLogger(__name__)


# ---- requests -> features ------------------------------------------------------------------------

def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"request: {where} must be an integer; received {value!r}")
    return int(value)


def _field(obj: Mapping, key: str, where: str) -> int:
    if not isinstance(obj, Mapping):
        raise ValueError(f"request: {where} must be an object; received {obj!r}")
    if key not in obj:
        raise ValueError(f"request: {where}.{key} is missing (have {sorted(obj)})")
    return _int(obj[key], f"{where}.{key}")


class RequestSchema:
    """What a served model needs from a TIR request: its input names, dtypes and sequence length.

    Built from a FeatureSpec (:meth:`from_spec`), or from the served model itself
    (:meth:`from_signature`, the ``predict`` signature of GetModelMetadata), so a client needs no
    local files to query a server.
    """

    def __init__(self, dtypes: Mapping[str, str], seq_len: int):
        self.dtypes = dict(dtypes)
        self.seq_len = int(seq_len)
        names = list(self.dtypes)
        need = {"user_id", "impression_ts", "has_trigger", "trigger_item_id", "target_item_id",
                "hist_item_ids", "hist_ts"}
        missing = sorted(need - set(names))
        if missing:
            raise ValueError(f"RequestSchema: not a TIR model; inputs {missing} are missing from {names}")
        self.user_fields = [n for n in names if n.startswith("user_") and n != "user_id"]
        self.context_fields = [n for n in names if n.startswith("ctx_")]
        self.item_fields = [n[len("target_"):] for n in names
                            if n.startswith("target_") and n != "target_item_id"]

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "RequestSchema":
        return cls({n: spec.feature(n).dtype for n in model_input_names(spec)}, spec.max_seq_len)

    @classmethod
    def from_signature(cls, signature_def: Mapping[str, Any]) -> "RequestSchema":
        """From the JSON form of a SignatureDef (``PredictClient.metadata()["signature_def"]
        ["signatureDef"]["predict"]``)."""
        dtypes, seq_len = {}, 0
        names = {"DT_INT64": "int64", "DT_FLOAT": "float32", "DT_STRING": "string"}
        for name, info in signature_def.get("inputs", {}).items():
            dtypes[name] = names.get(info.get("dtype"), info.get("dtype"))
            dims = info.get("tensorShape", {}).get("dim", [])
            if len(dims) == 2:
                seq_len = int(dims[1]["size"])
        return cls(dtypes, seq_len)


def request_features(schema: RequestSchema | FeatureSpec, request: Mapping[str, Any]
                     ) -> dict[str, np.ndarray]:
    """The model inputs of every candidate of a TIR request, one row per candidate.

    Returns one numpy array per model input: ``[C]`` for scalars, ``[C, L]`` for sequences
    (zero-padded), in the model's dtypes.

    Raises:
      ValueError: naming the field for a missing or mistyped field, or no candidates.
    """
    if isinstance(schema, FeatureSpec):
        schema = RequestSchema.from_spec(schema)
    if not isinstance(request, Mapping):
        raise ValueError(f"request: must be a JSON object; received {type(request).__name__}")
    unknown = sorted(set(request) - {"user", "context", "trigger", "history", "candidates"})
    if unknown:
        raise ValueError(f"request: unknown keys {unknown}; expected user, context, trigger, "
                         f"history, candidates")
    cands = request.get("candidates")
    if not isinstance(cands, Sequence) or isinstance(cands, (str, bytes)) or not cands:
        raise ValueError(f"request: candidates must be a non-empty list; received {cands!r}")
    L = schema.seq_len
    fields = schema.item_fields
    user = request.get("user", {})
    ctx = request.get("context", {})
    row: dict[str, Any] = {"user_id": _field(user, "user_id", "user"),
                           "impression_ts": _field(ctx, "impression_ts", "context")}
    for f in schema.user_fields:
        row[f] = _field(user, f, "user")
    for f in schema.context_fields:
        row[f] = _field(ctx, f, "context")

    trigger = request.get("trigger")
    row["has_trigger"] = int(trigger is not None)
    row["trigger_item_id"] = 0 if trigger is None else _field(trigger, "item_id", "trigger")
    for f in fields:
        row[f"trigger_{f}"] = 0 if trigger is None else _field(trigger, f, "trigger")

    history = request.get("history") or []
    if not isinstance(history, Sequence) or isinstance(history, (str, bytes)):
        raise ValueError(f"request: history must be a list; received {history!r}")
    if len(history) > L:
        log.warning("request: history has %d entries; keeping the %d most recent", len(history), L)
        history = history[:L]
    seq = {k: np.zeros(L, np.int64) for k in ["hist_item_ids", "hist_ts"] + [f"hist_{f}" for f in fields]}
    for i, h in enumerate(history):
        where = f"history[{i}]"
        seq["hist_item_ids"][i] = _field(h, "item_id", where)
        ts = _field(h, "ts", where)
        if ts <= 0:
            raise ValueError(f"request: {where}.ts must be > 0 (0 marks padding); received {ts}")
        seq["hist_ts"][i] = ts
        for f in fields:
            seq[f"hist_{f}"][i] = _field(h, f, where)

    n = len(cands)
    out: dict[str, np.ndarray] = {}
    for name, kind in schema.dtypes.items():
        dtype = np.float32 if kind == "float32" else np.int64
        if name in seq:
            out[name] = np.tile(seq[name][None, :], (n, 1)).astype(dtype)
        elif name.startswith("target_"):
            f = "item_id" if name == "target_item_id" else name[len("target_"):]
            out[name] = np.array([_field(c, f, f"candidates[{i}]") for i, c in enumerate(cands)], dtype)
        elif name in row:
            out[name] = np.full(n, row[name], dtype)
        else:
            raise ValueError(f"request: the model needs input {name!r}, which a TIR request does not "
                             f"describe")
    return out


def to_examples(features: Mapping[str, np.ndarray]) -> list[bytes]:
    """Serialized ``tf.train.Example`` records, one per row of ``features``."""
    import tensorflow as tf

    n = len(next(iter(features.values())))
    out = []
    for i in range(n):
        feat = {}
        for k, v in features.items():
            x = np.atleast_1d(v[i])
            if x.dtype.kind == "f":
                feat[k] = tf.train.Feature(float_list=tf.train.FloatList(value=x.tolist()))
            elif x.dtype.kind in "SUO":
                feat[k] = tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[s if isinstance(s, bytes) else str(s).encode() for s in x.tolist()]))
            else:
                feat[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=x.tolist()))
        out.append(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    return out


def rank_inputs(features: Mapping[str, np.ndarray]) -> dict[str, list[bytes]]:
    """Inputs of the ``rank`` signature for one request's :func:`request_features`.

    Returns ``{"context": [one serialized tf.Example], "candidates": [one per candidate]}``: the
    context example holds every input but the ``target_*`` ones (taken from the first row: they
    are the same for every candidate of a request), each candidate example its ``target_*``
    inputs.
    """
    context = {k: v[:1] for k, v in features.items() if not k.startswith("target_")}
    candidates = {k: v for k, v in features.items() if k.startswith("target_")}
    return {"context": to_examples(context), "candidates": to_examples(candidates)}


def request_from_records(spec: FeatureSpec, records: Sequence[bytes],
                         request_id: str | None = None) -> dict:
    """A TIR request JSON rebuilt from pipeline records of one request.

    Picks ``request_id`` (default: the request with the most candidates among ``records``).
    Used for the demo's sample query and for ``tirec make-request``.
    """
    import tensorflow as tf

    parse = spec.parse_example_spec(include_label=False)
    cols = {k: v.numpy() for k, v in tf.io.parse_example(tf.constant(list(records)), parse).items()}
    rids = cols["request_id"].astype(str)
    if request_id is None:
        values, counts = np.unique(rids, return_counts=True)
        request_id = str(values[np.argmax(counts)])
    rows = np.flatnonzero(rids == request_id)
    if rows.size == 0:
        raise ValueError(f"request_from_records: request_id={request_id!r} not in the records")
    r = rows[0]
    fields = item_fields(spec)
    hist_n = int((cols["hist_ts"][r] > 0).sum())
    req = {
        "user": {"user_id": int(cols["user_id"][r]), **{f: int(cols[f][r]) for f in user_fields(spec)}},
        "context": {"impression_ts": int(cols["impression_ts"][r]),
                    **{f: int(cols[f][r]) for f in context_fields(spec)}},
        "trigger": None if not cols["has_trigger"][r] else {
            "item_id": int(cols["trigger_item_id"][r]),
            **{f: int(cols[f"trigger_{f}"][r]) for f in fields}},
        "history": [{"item_id": int(cols["hist_item_ids"][r][i]), "ts": int(cols["hist_ts"][r][i]),
                     **{f: int(cols[f"hist_{f}"][r][i]) for f in fields}} for i in range(hist_n)],
        "candidates": [{"item_id": int(cols["target_item_id"][i]),
                        **{f: int(cols[f"target_{f}"][i]) for f in fields}} for i in rows],
    }
    return req


# ---- the gRPC client -----------------------------------------------------------------------------

class PredictClient:
    """A thin client over the official PredictionService / ModelService stubs.

    Args:
      target: ``host:port`` of the gRPC endpoint.
      model: the served model name.
      version: pin a version (default: the server's latest).
      version_label: pin a label such as ``stable`` (exclusive with ``version``).
      timeout: per-call deadline in seconds.
      max_message_bytes: gRPC message size limit for both directions.
    """

    def __init__(self, target: str, model: str, version: int | None = None,
                 version_label: str | None = None, timeout: float = 10.0,
                 max_message_bytes: int = 64 << 20):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if version is not None and version_label is not None:
            raise ValueError("PredictClient: give version or version_label, not both")
        self.model, self.version, self.version_label, self.timeout = model, version, version_label, timeout
        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel(target, options=opts)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, msg, signature: str | None = None) -> None:
        msg.model_spec.name = self.model
        if self.version is not None:
            msg.model_spec.version.value = int(self.version)
        if self.version_label is not None:
            msg.model_spec.version_label = self.version_label
        if signature is not None:
            msg.model_spec.signature_name = signature

    def predict_request(self, *, examples: Sequence[bytes] | None = None,
                        tensors: Mapping[str, np.ndarray] | None = None,
                        signature: str | None = None):
        """A ``PredictRequest`` for serialized examples (``serving_default``) or raw tensors
        (``predict``)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        if (examples is None) == (tensors is None):
            raise ValueError("predict_request: give exactly one of examples or tensors")
        req = predict_pb2.PredictRequest()
        self._spec(req, signature or ("serving_default" if examples is not None else "predict"))
        if examples is not None:
            req.inputs["examples"].CopyFrom(tf.make_tensor_proto(list(examples), dtype=tf.string))
        else:
            for k, v in tensors.items():
                req.inputs[k].CopyFrom(tf.make_tensor_proto(np.asarray(v)))
        return req

    def predict(self, *, examples: Sequence[bytes] | None = None,
                tensors: Mapping[str, np.ndarray] | None = None,
                signature: str | None = None) -> dict[str, np.ndarray]:
        """Scores a batch; returns the signature's outputs as numpy arrays."""
        import tensorflow as tf

        req = self.predict_request(examples=examples, tensors=tensors, signature=signature)
        resp = self.predictions.Predict(req, timeout=self.timeout)
        out = {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}
        out["_version"] = np.int64(resp.model_spec.version.value)
        return out

    def schema(self) -> RequestSchema:
        """The request schema of the served model, from its ``predict`` signature."""
        sigs = self.metadata()["signature_def"].get("signatureDef", {})
        if "predict" not in sigs:
            raise ValueError(f"model {self.model!r} has no `predict` signature (signatures: "
                             f"{sorted(sigs)}); was it exported by `tirec export`?")
        return RequestSchema.from_signature(sigs["predict"])

    def rank(self, request: Mapping[str, Any], schema: RequestSchema | FeatureSpec | None = None,
             signature: str = "serving_default") -> list[tuple[dict, float]]:
        """Scores every candidate of a TIR request; returns ``(candidate, ctr)`` best first.

        ``schema`` defaults to the served model's own (one GetModelMetadata call).
        """
        feats = request_features(schema if schema is not None else self.schema(), request)
        if signature == "predict":
            out = self.predict(tensors=feats, signature=signature)
        elif signature == "rank":
            out = self.predict(tensors={k: np.array(v, dtype=object) for k, v in rank_inputs(feats).items()},
                               signature=signature)
        else:
            out = self.predict(examples=to_examples(feats), signature=signature)
        scores = np.asarray(out["ctr"]).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        return [(request["candidates"][i], float(scores[i])) for i in order]

    def metadata(self) -> dict:
        """The model's signature defs (GetModelMetadata) as a JSON-able dict."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        req = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(req)
        req.metadata_field.append("signature_def")
        resp = self.predictions.GetModelMetadata(req, timeout=self.timeout)
        sig = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sig)
        return {"version": resp.model_spec.version.value, "signature_def": json_format.MessageToDict(sig)}

    def status(self) -> list[dict]:
        """Version states of the model (GetModelStatus)."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = self.model
        if self.version is not None:
            req.model_spec.version.value = int(self.version)
        if self.version_label is not None:
            req.model_spec.version_label = self.version_label
        resp = self.models.GetModelStatus(req, timeout=self.timeout)
        return [json_format.MessageToDict(s) for s in resp.model_version_status]


def load_request(path: str) -> dict:
    """Reads a TIR request JSON file (``-`` for stdin)."""
    import sys

    try:
        return json.loads(sys.stdin.read()) if path == "-" else json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"request: {path} is not valid JSON: {err}") from None
