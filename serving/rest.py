"""TF Serving's REST API, served by :class:`RestServer` with bounded resources.

=========================================================================  =================================
``GET  /v1/models/NAME[/versions/V|/labels/L]``                             model status (GetModelStatus)
``GET  /v1/models/NAME[/versions/V|/labels/L]/metadata``                    signature defs (GetModelMetadata)
``POST /v1/models/NAME[/versions/V|/labels/L]:predict``                     ``{"instances": ...}`` (row) or
                                                                            ``{"inputs": ...}`` (columnar)
``POST /v1/models/NAME[/versions/V|/labels/L]:classify`` / ``:regress``     ``{"examples": [...], "context": {...}}``
=========================================================================  =================================

Request and response bodies follow TF Serving's JSON mapping: binary strings are
``{"b64": "..."}`` (serialized tf.Example inputs must be sent that way), output tensors whose
alias ends in ``_bytes`` are returned that way, ``NaN``/``Infinity`` are accepted and produced.
Errors are ``{"error": message}`` with the HTTP status TF Serving maps the status code to
(INVALID_ARGUMENT 400, NOT_FOUND 404, ...); the messages are those of the gRPC API, as both
share one implementation. Each body also accepts ``signature_name``; any other top-level key
(e.g. a misspelt ``signature_name``) is INVALID_ARGUMENT naming it, where TF Serving ignores it.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import http
import http.client
import io
import json
import logging
import re
import socket
import threading
import urllib.parse
from concurrent import futures

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_pb2,
                                     regression_pb2)

from tirec.serving.limits import ServerLimits
from tirec.serving.servable import (DEFAULT_SIGNATURE, INTERNAL_CODES, ServingError, check_input_keys,
                                    internal_error, invalid)

log = logging.getLogger(__name__)

HTTP_STATUS = {  # TF Serving's status code -> HTTP status mapping
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}
_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?::(?P<verb>predict|classify|regress)|/(?P<sub>metadata))?")
_INT_RANGES = {
    types_pb2.DT_INT8: (-2**7, 2**7 - 1), types_pb2.DT_UINT8: (0, 2**8 - 1),
    types_pb2.DT_INT16: (-2**15, 2**15 - 1), types_pb2.DT_UINT16: (0, 2**16 - 1),
    types_pb2.DT_INT32: (-2**31, 2**31 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_INT64: (-2**63, 2**63 - 1), types_pb2.DT_UINT64: (0, 2**64 - 1),
}
# The top-level keys of each verb's request body; any other key is refused (_check_body_keys).
_BODY_KEYS = {"predict": ("signature_name", "instances", "inputs"),
              "classify": ("signature_name", "examples", "context"),
              "regress": ("signature_name", "examples", "context")}
_FLOATS = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
           types_pb2.DT_HALF: np.float16}
_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


# ---- JSON <-> arrays -----------------------------------------------------------------------------

def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _b64decode(value, where: str) -> bytes:
    data = value["b64"]
    if not isinstance(data, str):
        raise invalid(f"{where}: the b64 value must be a string; received {type(data).__name__}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid(f"{where}: invalid base64 in {{\"b64\": ...}}: {e}") from None


def _leaf(value, dtype: int, where: str):
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if _is_b64(value):
            return _b64decode(value, where)
        raise invalid(f"{where}: expects a string or {{\"b64\": ...}} for DT_STRING; received {value!r:.80}")
    if isinstance(value, bool):
        if dtype == types_pb2.DT_BOOL:
            return value
        raise invalid(f"{where}: expects a number for {types_pb2.DataType.Name(dtype)}; received {value!r}")
    if dtype == types_pb2.DT_BOOL:
        raise invalid(f"{where}: expects true/false for DT_BOOL; received {value!r:.80}")
    if not isinstance(value, (int, float)):
        raise invalid(f"{where}: expects a number for {types_pb2.DataType.Name(dtype)}; received {value!r:.80}")
    if dtype in _FLOATS:
        try:
            return float(value)
        except OverflowError:
            raise invalid(f"{where}: {value} is out of range for {types_pb2.DataType.Name(dtype)}") from None
    lo, hi = _INT_RANGES[dtype]
    if isinstance(value, float):
        if not value.is_integer():
            raise invalid(f"{where}: {value!r} cannot be converted to {types_pb2.DataType.Name(dtype)} "
                          f"without loss of precision")
        value = int(value)
    if not lo <= value <= hi:
        raise invalid(f"{where}: {value} is out of range for {types_pb2.DataType.Name(dtype)}")
    return value


def json_to_array(value, dtype: int, where: str) -> np.ndarray:
    """A (nested) JSON list as an array of the given TF dtype.

    Args:
      value: a JSON value: a scalar, ``{"b64": ...}`` or nested lists of those.
      dtype: the signature's DataType enum.
      where: names the value in error messages (e.g. ``input 'x'``).

    Raises:
      ServingError: INVALID_ARGUMENT for ragged lists, wrong value types, bad base64, values out
        of range, or a dtype the JSON mapping does not cover.
    """
    if dtype != types_pb2.DT_STRING and dtype != types_pb2.DT_BOOL and dtype not in _FLOATS \
            and dtype not in _INT_RANGES:
        raise invalid(f"{where}: dtype {types_pb2.DataType.Name(dtype)} has no JSON mapping")
    shape = []
    v = value
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    flat = []

    def walk(item, depth):
        if depth == len(shape):
            if isinstance(item, list):
                raise invalid(f"{where}: ragged nested list; expected shape {shape}")
            flat.append(_leaf(item, dtype, where))
            return
        if not isinstance(item, list) or len(item) != shape[depth]:
            raise invalid(f"{where}: ragged nested list; expected shape {shape}, found "
                          f"{'a list of ' + str(len(item)) if isinstance(item, list) else 'a scalar'} "
                          f"at depth {depth}")
        for x in item:
            walk(x, depth + 1)

    walk(value, 0)
    if dtype == types_pb2.DT_STRING:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    if dtype == types_pb2.DT_BOOL:
        np_dtype = np.bool_
    elif dtype in _FLOATS:
        np_dtype = _FLOATS[dtype]
    else:
        np_dtype = {types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT16: np.int16,
                    types_pb2.DT_UINT16: np.uint16, types_pb2.DT_INT32: np.int32,
                    types_pb2.DT_UINT32: np.uint32, types_pb2.DT_INT64: np.int64,
                    types_pb2.DT_UINT64: np.uint64}[dtype]
    return np.asarray(flat, dtype=np_dtype).reshape(shape)


def _json_value(x, binary: bool):
    if isinstance(x, (bytes, np.bytes_)):
        if not binary:
            try:
                return bytes(x).decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(bytes(x)).decode("ascii")}
    if isinstance(x, str):
        return x
    return x


def array_to_json(arr: np.ndarray, name: str):
    """An output array as JSON values; aliases ending in ``_bytes`` (and non-UTF-8 strings) are
    ``{"b64": ...}``."""
    if arr.dtype.kind in "OSU":
        binary = name.endswith("_bytes")
        flat = [_json_value(x, binary) for x in arr.ravel().tolist()]
        if arr.ndim == 0:
            return flat[0]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape).tolist()
    if arr.dtype.kind == "c":
        raise invalid(f"output '{name}': complex values have no JSON mapping")
    if arr.dtype in (np.float32, np.float16):
        # Shortest decimal that round-trips in the array's own precision (0.1, not 0.100000001).
        return arr.astype(str).astype(np.float64).tolist()
    return arr.tolist()


# ---- predict -------------------------------------------------------------------------------------

def _check_count(where: str, values, max_examples: int) -> None:
    """Raises INVALID_ARGUMENT when the JSON list ``values`` has more rows than allowed; runs
    before anything is decoded, so an oversized request costs no more than its JSON."""
    if isinstance(values, list) and len(values) > max_examples:
        raise invalid(f"{where} has {len(values)} rows, more than the limit of {max_examples} per request "
                      f"(--max-examples-per-request)")


def _row_inputs(instances, sig, key: str, max_examples: int) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list (one entry per row)")
    _check_count("'instances'", instances, max_examples)
    names = sorted(sig.inputs)
    named = all(isinstance(x, dict) and not _is_b64(x) for x in instances)
    if len(names) == 1 and not named:
        if any(isinstance(x, dict) and not _is_b64(x) for x in instances):
            raise invalid("'instances' mixes objects and values")
        name = names[0]
        return {name: json_to_array(instances, sig.inputs[name].dtype, f"input '{name}'")}
    if not named:
        raise invalid(f"'instances' must be a list of objects keyed by input name for signature '{key}' "
                      f"with inputs {names}")
    columns: dict[str, list] = {}
    for i, inst in enumerate(instances):
        try:
            check_input_keys(key, sig, inst.keys())
        except ServingError as e:
            raise invalid(f"instance #{i}: {e.message}") from None
        for name in names:
            columns.setdefault(name, []).append(inst[name])
    return {name: json_to_array(col, sig.inputs[name].dtype, f"input '{name}'") for name, col in columns.items()}


def _columnar_inputs(inputs, sig, key: str, max_examples: int) -> dict[str, np.ndarray]:
    names = sorted(sig.inputs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        check_input_keys(key, sig, inputs.keys())
        for name in names:
            _check_count(f"input '{name}'", inputs[name], max_examples)
        return {name: json_to_array(inputs[name], sig.inputs[name].dtype, f"input '{name}'") for name in names}
    if len(names) != 1:
        raise invalid(f"'inputs' must be an object keyed by input name for signature '{key}' with "
                      f"inputs {names}")
    _check_count(f"input '{names[0]}'", inputs, max_examples)
    return {names[0]: json_to_array(inputs, sig.inputs[names[0]].dtype, f"input '{names[0]}'")}


def _predict(core, servable, body: dict) -> dict:
    key = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(key, str):
        raise invalid(f"'signature_name' must be a string; received {key!r:.80}")
    sig = servable.signature(key)
    if "instances" in body and "inputs" in body:
        raise invalid("Both 'instances' and 'inputs' were specified; send one of them")
    if "instances" in body:
        row, arrays = True, _row_inputs(body["instances"], sig, key, core.max_examples)
    elif "inputs" in body:
        row, arrays = False, _columnar_inputs(body["inputs"], sig, key, core.max_examples)
    else:
        raise invalid("Missing 'instances' or 'inputs' key in the request body")
    outputs = core.predict_arrays(servable, key, arrays)
    if not row:
        if len(outputs) == 1:
            (name, arr), = outputs.items()
            return {"outputs": array_to_json(arr, name)}
        return {"outputs": {name: array_to_json(arr, name) for name, arr in outputs.items()}}
    if len(outputs) == 1:
        (name, arr), = outputs.items()
        return {"predictions": array_to_json(arr, name)}
    batch = None
    for name, arr in outputs.items():
        size = arr.shape[0] if arr.ndim else None
        if batch is None:
            batch = size
        if size is None or size != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}; "
                          f"use the columnar 'inputs' format for this signature")
    columns = {name: array_to_json(arr, name) for name, arr in outputs.items()}
    return {"predictions": [{name: col[i] for name, col in columns.items()} for i in range(batch)]}


# ---- classify / regress --------------------------------------------------------------------------

def _feature(feature, value, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    if not values:
        return
    if all(isinstance(v, str) or _is_b64(v) for v in values):
        feature.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else _b64decode(v, where)
                                        for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if any(not _INT64_MIN <= v <= _INT64_MAX for v in values):
            raise invalid(f"{where}: integer out of int64 range")
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if any(isinstance(v, int) and not -3.4e38 <= v <= 3.4e38 for v in values):
            raise invalid(f"{where}: number out of float range")
        feature.float_list.value.extend(float(v) for v in values)
    else:
        raise invalid(f"{where}: values must be all numbers or all strings/{{\"b64\": ...}}; "
                      f"received {value!r:.80}")


def _example(obj, where: str) -> example_pb2.Example:
    if not isinstance(obj, dict):
        raise invalid(f"{where} must be an object of feature name -> value(s); received {obj!r:.80}")
    ex = example_pb2.Example()
    for name, value in obj.items():
        _feature(ex.features.feature[name], value, f"{where} feature '{name}'")
    return ex


def _example_request(msg, model_spec, body: dict, max_examples: int) -> None:
    msg.model_spec.CopyFrom(model_spec)
    key = body.get("signature_name", "")
    if not isinstance(key, str):
        raise invalid(f"'signature_name' must be a string; received {key!r:.80}")
    msg.model_spec.signature_name = key
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid("'examples' must be a non-empty list of objects")
    _check_count("'examples'", examples, max_examples)
    context = body.get("context")
    if context is not None:
        ctx = _example(context, "'context'")
        target = msg.input.example_list_with_context
        target.context.CopyFrom(ctx)
        for i, obj in enumerate(examples):
            if isinstance(obj, dict):
                both = sorted(set(obj) & set(context))
                if both:
                    raise invalid(f"example #{i}: features {both} are also in 'context'; a feature may "
                                  f"appear in one of them only")
            target.examples.append(_example(obj, f"example #{i}"))
    else:
        target = msg.input.example_list
        for i, obj in enumerate(examples):
            target.examples.append(_example(obj, f"example #{i}"))


# ---- dispatch ------------------------------------------------------------------------------------

def _check_body_keys(verb: str, body: dict) -> None:
    """Raises INVALID_ARGUMENT naming the body's unknown top-level keys (a misspelt
    ``signature_name`` would otherwise be ignored and the default signature answer)."""
    unknown = sorted(set(body) - set(_BODY_KEYS[verb]))
    if unknown:
        raise invalid(f"Unknown key(s) {unknown} in the {verb} request body; accepted keys: "
                      f"{list(_BODY_KEYS[verb])}")


def _model_spec(name: str, version: str | None, label: str | None):
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        v = int(version)
        if v > _INT64_MAX:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        spec.version.value = v
    elif label is not None:
        spec.version_label = label
    return spec


def _to_dict(msg) -> dict:
    """JSON of a proto as TF Serving prints it: proto field names, default values included."""
    try:
        return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26 spells the option differently
        return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                         including_default_value_fields=True)


def handle(core, method: str, path: str, body: bytes) -> tuple[int, dict]:
    """Serves one REST request; returns (HTTP status, JSON body).

    Args:
      core: the server's request core (``resolve``, ``predict_arrays``, ``classify``,
        ``regress``, ``metadata``, ``model_status``, ``max_examples``).
      method: HTTP method.
      path: request path (a query string is ignored).
      body: request body.

    Answers of HTTP status 500 carry a generic message with a request id; the details are
    logged under that id (see :func:`~tirec.serving.servable.internal_error`).
    """
    path = path.split("?", 1)[0]
    try:
        if not path.startswith("/v1/"):
            return 404, {"error": f"Not found: {method} {path}; the API lives under /v1/models/"}
        m = _PATH.fullmatch(path)
        if m is None or method not in ("GET", "POST") or (method == "POST") != bool(m["verb"]):
            raise invalid(f"Malformed request: {method} {path}")
        name = urllib.parse.unquote(m["name"])
        label = urllib.parse.unquote(m["label"]) if m["label"] else None
        spec = _model_spec(name, m["version"], label)
        if method == "GET":
            if m["sub"] == "metadata":
                req = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec,
                                                                     metadata_field=["signature_def"])
                resp = core.metadata(req)
                sdm = get_model_metadata_pb2.SignatureDefMap()
                resp.metadata["signature_def"].Unpack(sdm)
                return 200, {"model_spec": _to_dict(resp.model_spec),
                             "metadata": {"signature_def": _to_dict(sdm)}}
            return 200, _to_dict(core.model_status(spec))
        try:
            payload = json.loads(body) if body else None
        except (ValueError, RecursionError) as e:
            raise invalid(f"JSON Parse error: {e}") from None
        if not isinstance(payload, dict):
            raise invalid("The request body must be a JSON object")
        _check_body_keys(m["verb"], payload)
        if m["verb"] == "predict":
            servable = core.resolve(spec)
            return 200, _predict(core, servable, payload)
        if m["verb"] == "classify":
            req = classification_pb2.ClassificationRequest()
            _example_request(req, spec, payload, core.max_examples)
            resp = core.classify(req)
            return 200, {"results": [[[c.label, c.score] for c in row.classes]
                                     for row in resp.result.classifications]}
        req = regression_pb2.RegressionRequest()
        _example_request(req, spec, payload, core.max_examples)
        resp = core.regress(req)
        return 200, {"results": [r.value for r in resp.result.regressions]}
    except ServingError as e:
        if e.code in INTERNAL_CODES:
            return 500, {"error": internal_error(f"REST {method} {path}", str(e))}
        return HTTP_STATUS.get(e.code, 500), {"error": e.message}
    except RecursionError:
        return 400, {"error": "request JSON is nested too deeply"}
    except Exception as e:  # never let a request kill the server
        return 500, {"error": internal_error(f"REST {method} {path}", f"{type(e).__name__}: {e}", exc_info=True)}


def _dumps(payload: dict) -> bytes:
    try:
        return json.dumps(payload).encode("utf-8")
    except (ValueError, TypeError):  # e.g. a float the encoder cannot write
        return json.dumps(payload, default=str).encode("utf-8")


# ---- HTTP/1.1 server -----------------------------------------------------------------------------

MAX_HEAD_BYTES = 64 << 10  # request line and headers together; beyond: 431
_LINGER_SECONDS = 2.0  # after refusing a request, how long its unread rest is drained


class _HttpError(Exception):
    """A request refused by the HTTP layer, before :func:`handle`; the connection is closed after
    the answer, since the rest of the request was not read."""

    def __init__(self, status: int, message: str, retry_after: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclasses.dataclass
class _Head:
    """Request line and headers of one request."""

    method: str
    target: str
    version: str
    headers: http.client.HTTPMessage

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("Connection", "").lower()
        return "keep-alive" in conn if self.version == "HTTP/1.0" else "close" not in conn


def _parse_head(data: bytes) -> _Head:
    line, _, rest = data.partition(b"\r\n")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise _HttpError(400, f"malformed request line: {line[:200].decode('latin-1')!r}")
    try:
        headers = http.client.parse_headers(io.BytesIO(rest))
    except http.client.HTTPException as e:
        raise _HttpError(431, f"request headers rejected: {e}") from None
    return _Head(parts[0], parts[1], parts[2], headers)


def _response(status: int, data: bytes, close: bool, retry_after: bool = False) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:  # 499, TF Serving's CANCELLED
        reason = "Client Closed Request"
    head = [f"HTTP/1.1 {status} {reason}", "Server: tirec-serve", "Content-Type: application/json",
            f"Content-Length: {len(data)}"]
    if close:
        head.append("Connection: close")
    if retry_after:
        head.append("Retry-After: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


class RestServer:
    """TF Serving's REST API on ``host:port``, bounded in every resource a client can claim.

    One event loop thread reads requests and writes responses, so a slow or silent client
    costs a socket, never a thread; a bounded pool of worker threads runs :func:`handle`.

    * A request is admitted once its headers are read; beyond ``rest_api_num_threads +
      rest_max_queued_requests`` admitted requests, it gets 503 with ``Retry-After: 1`` at once.
    * A body longer than ``max_message_bytes`` gets 413: a ``Content-Length`` over the limit
      before any of the body is read, a chunked body as soon as it crosses the limit.
    * After its first byte a request must arrive in full within ``rest_api_timeout_in_ms``
      (else 408), a response must be taken within it, and a kept-alive connection idle for it
      is closed. Beyond ``rest_max_connections`` open connections, a new one gets 503.

    Args:
      core: the server's request core (see :func:`handle`).
      host: address to bind.
      port: port to bind; 0 picks a free one (see :attr:`port`).
      limits: the :class:`~tirec.serving.limits.ServerLimits`.
    """

    def __init__(self, core, host: str = "127.0.0.1", port: int = 8501, limits: ServerLimits | None = None):
        self._core = core
        self.limits = limits or ServerLimits()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = socket.create_server((host, port), family=family, backlog=128)
        except OSError as e:
            raise OSError(f"--rest-port: cannot bind REST to {host}:{port}: {e.strerror or e}") from None
        self._pool = futures.ThreadPoolExecutor(self.limits.rest_api_num_threads, thread_name_prefix="tirec-rest")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()
        self._admitted = 0  # requests holding a slot; touched on the loop thread only

    @property
    def port(self) -> int:
        """The bound port."""
        return self._socket.getsockname()[1]

    def start(self) -> "RestServer":
        """Serves in a background thread."""
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, sock=self._socket, limit=MAX_HEAD_BYTES))
        self._thread = threading.Thread(target=self._loop.run_forever, name="tirec-rest-io", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops accepting, drops open connections, waits for running requests, closes the socket."""
        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._loop.close()
        self._socket.close()

    async def _close(self) -> None:
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # -- one connection --

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            if len(self._connections) > self.limits.rest_max_connections:  # answer and close at once
                error = _HttpError(503, f"more than {self.limits.rest_max_connections} open connections "
                                        f"(--rest-max-connections)", retry_after=True)
                await self._write(writer, _response(503, _dumps({"error": error.message}), True, True))
                return
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError) as e:  # the client hung up
            log.debug("REST client %s: %s", writer.get_extra_info("peername"), e)
        except Exception:  # a bug in this layer: drop the connection, keep serving
            log.exception("REST connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serves one request; returns whether the connection stays open for another."""
        timeout = self.limits.rest_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                first = await reader.read(1)
        except TimeoutError:
            return False  # idle: close quietly
        if not first:
            return False
        admitted, refused = False, None
        try:
            try:
                async with asyncio.timeout(timeout):
                    head = await self._read_head(reader, first)
                    admitted = self._admit()
                    body = await self._read_body(reader, writer, head)
            except TimeoutError:
                raise _HttpError(408, f"the request did not arrive within {self.limits.rest_api_timeout_in_ms} "
                                      f"ms (--rest-api-timeout-in-ms)") from None
            status, data = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._run, head.method, head.target, body)
        except _HttpError as e:
            # A copy: the original's traceback reaches this frame, a cycle that would keep the
            # request's frames, and its body, alive until the garbage collector runs.
            refused = _HttpError(e.status, e.message, e.retry_after)
        finally:
            if admitted:
                self._admitted -= 1
        if refused is not None:
            await self._refuse(reader, writer, refused)
            return False
        keep_alive = head.keep_alive
        if head.method == "HEAD":
            data = b""
        return await self._write(writer, _response(status, data, not keep_alive)) and keep_alive

    def _admit(self) -> bool:
        if self._admitted >= self.limits.rest_max_requests:
            raise _HttpError(503, f"the server is busy: {self.limits.rest_max_requests} requests are running or "
                                  f"queued (--rest-api-num-threads, --rest-max-queued-requests); retry later",
                             retry_after=True)
        self._admitted += 1
        return True

    def _run(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        status, payload = handle(self._core, method, target, body)
        return status, _dumps(payload)

    async def _read_head(self, reader: asyncio.StreamReader, first: bytes) -> _Head:
        try:
            data = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _HttpError(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes") from None
        return _parse_head(data)

    async def _read_body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: _Head) -> bytes:
        limit = self.limits.max_message_bytes
        too_big = f"exceeds the limit of {limit} bytes (--max-message-bytes)"
        encoding, length = head.headers.get("Transfer-Encoding"), head.headers.get("Content-Length")
        if encoding is not None:
            if length is not None:
                raise _HttpError(400, "a request must not have both Transfer-Encoding and Content-Length")
            if encoding.strip().lower() != "chunked":
                raise _HttpError(501, f"Transfer-Encoding {encoding!r} is not supported (only chunked)")
            self._continue(writer, head)
            return await self._read_chunked(reader, limit, too_big)
        if length is None:
            return b""
        if len(head.headers.get_all("Content-Length")) > 1 or not length.strip().isdigit():
            raise _HttpError(400, f"invalid Content-Length: {length!r}")
        n = int(length)
        if n > limit:
            raise _HttpError(413, f"request body of {n} bytes {too_big}")
        self._continue(writer, head)
        return await reader.readexactly(n)

    @staticmethod
    def _continue(writer: asyncio.StreamWriter, head: _Head) -> None:
        if head.headers.get("Expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader, limit: int, too_big: str) -> bytearray:
        body = bytearray()
        while True:
            try:
                size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
            except ValueError:  # not hex, or a size line longer than MAX_HEAD_BYTES
                raise _HttpError(400, "malformed chunked body: bad chunk size line") from None
            if size < 0:
                raise _HttpError(400, "malformed chunked body: negative chunk size")
            if size == 0:
                break
            if len(body) + size > limit:
                raise _HttpError(413, f"chunked request body {too_big}")
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise _HttpError(400, "malformed chunked body: a chunk does not end with CRLF")
        while (await reader.readline()).strip():  # trailer fields, ignored
            pass
        return body

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: _HttpError) -> None:
        """Answers ``error``, then closes. The client may still be sending the request: its rest
        is read and dropped for a moment, so that closing does not reset the connection before
        the client has read the answer."""
        data = _dumps({"error": error.message})
        if not await self._write(writer, _response(error.status, data, close=True, retry_after=error.retry_after)):
            return
        if writer.can_write_eof():
            writer.write_eof()
        try:
            async with asyncio.timeout(_LINGER_SECONDS):
                while await reader.read(1 << 16):
                    pass
        except (TimeoutError, ConnectionError):
            pass

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Writes ``data``; False when the client does not take it within the timeout."""
        writer.write(data)
        try:
            async with asyncio.timeout(self.limits.rest_timeout_seconds):
                await writer.drain()
        except TimeoutError:
            log.debug("REST client %s did not read its response in time", writer.get_extra_info("peername"))
            return False
        return True


__all__ = ["RestServer", "handle", "json_to_array", "array_to_json", "HTTP_STATUS", "MAX_HEAD_BYTES"]
