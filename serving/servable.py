"""One loaded SavedModel version, and the tensor checks shared by the gRPC and REST front ends.

A :class:`Servable` is what TF Serving calls a servable: one version of one model, loaded with
plain ``tf.saved_model.load``. Its signature defs are read from ``saved_model.pb`` itself (not
from the loaded object), so GetModelMetadata returns the real ``SignatureDefMap`` and
Classify/Regress can dispatch on each signature's ``method_name``.

Requests never retrace anything: they call the concrete signature functions of
``loaded.signatures`` with tensors whose dtype and shape were checked in numpy first, so bad
requests leave no state behind (no growing function caches).

Errors that reach a client are :class:`ServingError` values carrying a canonical status code
name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...); the servers turn them into a gRPC status
or an HTTP status with ``{"error": message}``.
"""
from __future__ import annotations

import logging
import threading
import uuid
from typing import Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import message as pb_message
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

log = logging.getLogger(__name__)

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# A tensor may carry fewer values than its shape has elements (TF pads with the last value, or
# zeros when none). Cap what such a request may make the server allocate.
MAX_PADDED_ELEMENTS = 1 << 20

# Canonical status codes (google.rpc.Code / tensorflow.error.Code share the numbers).
STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
_CODE_NAMES = {v: k for k, v in STATUS_CODES.items()}
# Codes whose message is the server's own business (HTTP 500): clients get a request id instead.
INTERNAL_CODES = frozenset({"UNKNOWN", "INTERNAL", "DATA_LOSS"})

# TensorProto value field per dtype, and how many proto values make one element.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", 1), types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_INT32: ("int_val", 1), types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT8: ("int_val", 1), types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1), types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1), types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1), types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_HALF: ("half_val", 1), types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2), types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}


# Dtypes whose values decode straight into numpy (``half_val`` holds bit patterns and complex
# values come in pairs: those take tf.make_ndarray).
_NUMPY_DTYPES = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_,
}


class ServingError(Exception):
    """An error returned to the client with a canonical status code.

    Args:
      code: status code name, one of :data:`STATUS_CODES` (e.g. ``"INVALID_ARGUMENT"``).
      message: what went wrong, naming the field and the value received.
    """

    def __init__(self, code: str, message: str):
        if code not in STATUS_CODES or code == "OK":
            raise ValueError(f"ServingError: code must be a non-OK status code name; received code={code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @staticmethod
    def from_tf(err: tf.errors.OpError, prefix: str = "") -> "ServingError":
        """The ServingError for a TensorFlow runtime error, keeping its status code."""
        code = _CODE_NAMES.get(getattr(err, "error_code", 2), "UNKNOWN")
        if code == "OK":
            code = "UNKNOWN"
        return ServingError(code, f"{prefix}{err.message}")


def internal_error(where: str, detail: str, exc_info: bool = False) -> str:
    """Logs an internal failure under a fresh request id; returns the message the client gets.

    The client sees only ``Internal error (request id ID) ...``: exception text, file paths and
    stack traces stay in the server log, next to the same id, where the operator can find them.

    Args:
      where: what failed (e.g. ``REST POST /v1/models/m:predict``), for the log.
      detail: the internal message, for the log.
      exc_info: also log the traceback of the exception being handled.
    """
    request_id = uuid.uuid4().hex[:16]
    log.error("%s failed (request id %s): %s", where, request_id, detail, exc_info=exc_info)
    return f"Internal error (request id {request_id}); the server log has the details"


def invalid(message: str) -> ServingError:
    """Shorthand for an INVALID_ARGUMENT :class:`ServingError`."""
    return ServingError("INVALID_ARGUMENT", message)


def dtype_name(enum: int) -> str:
    """``DT_FLOAT`` style name of a DataType enum (``DT_<number>`` when unknown)."""
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"DT_{enum}"


def shape_text(shape_proto) -> str:
    """``[-1, 3]`` for a TensorShapeProto, ``<unknown rank>`` when the rank is unknown."""
    if shape_proto.unknown_rank:
        return "<unknown rank>"
    return "[" + ", ".join(str(d.size) for d in shape_proto.dim) + "]"


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


# ---- SavedModel files ----------------------------------------------------------------------------

def saved_model_file(export_dir: str) -> str | None:
    """Path of ``saved_model.pb`` (or ``.pbtxt``) in ``export_dir``; None when neither exists."""
    for name in SAVED_MODEL_FILES:
        path = tf.io.gfile.join(export_dir, name)
        if tf.io.gfile.exists(path):
            return path
    return None


def read_meta_graph(export_dir: str) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef served from ``export_dir``: the one tagged ``serve``, else the only one.

    Args:
      export_dir: a SavedModel folder.

    Raises:
      ServingError: NOT_FOUND without a saved_model.pb, DATA_LOSS when it does not parse,
        INVALID_ARGUMENT when no meta graph can be chosen.
    """
    path = saved_model_file(export_dir)
    if path is None:
        raise ServingError("NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export "
                                        f"directory path: {export_dir}")
    sm = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(path, "rb") as fh:
            data = fh.read()
        if path.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), sm)
        else:
            sm.ParseFromString(data)
    except (pb_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
        raise ServingError("DATA_LOSS", f"{path} does not parse as a SavedModel: {e}") from None
    graphs = list(sm.meta_graphs)
    for mg in graphs:
        if "serve" in mg.meta_info_def.tags:
            return mg
    if len(graphs) == 1:
        return graphs[0]
    raise invalid(f"{path}: no meta graph tagged 'serve' among {len(graphs)} meta graphs")


# ---- tensors -------------------------------------------------------------------------------------

def check_shape(kind: str, name: str, dims, info: meta_graph_pb2.TensorInfo) -> None:
    """Raises INVALID_ARGUMENT when ``dims`` does not fit the TensorInfo's shape.

    Args:
      kind: ``"input"`` or ``"output"`` (for the message).
      name: the tensor's alias in the signature.
      dims: the received shape.
      info: the signature's TensorInfo.
    """
    want = info.tensor_shape
    if want.unknown_rank or info.WhichOneof("encoding") not in (None, "name"):
        return
    ok = len(dims) == len(want.dim) and all(w.size < 0 or w.size == d for w, d in zip(want.dim, dims))
    if not ok:
        raise invalid(f"{kind} '{name}': expects shape {shape_text(want)} ({dtype_name(info.dtype)}), "
                      f"received shape {_dims_text(dims)}")


def check_rows(name: str, dims, max_rows: int) -> None:
    """Raises INVALID_ARGUMENT when the batch dimension of ``dims`` exceeds ``max_rows``."""
    if dims and dims[0] > max_rows:
        raise invalid(f"input '{name}': batch size {dims[0]} exceeds the limit of {max_rows} rows per "
                      f"request (--max-examples-per-request)")


def tensor_proto_to_array(name: str, proto: tensor_pb2.TensorProto, info: meta_graph_pb2.TensorInfo,
                          max_rows: int) -> np.ndarray:
    """Decodes one request TensorProto after checking it against the signature.

    Checks, in order: dtype (exact, as TF Serving: no casting), shape against the signature's
    TensorSpec, the batch size limit, and that the payload fits the shape; only then decodes.

    Args:
      name: the input alias.
      proto: the request tensor.
      info: the signature's TensorInfo for ``name``.
      max_rows: the largest batch dimension accepted.

    Raises:
      ServingError: INVALID_ARGUMENT naming the input and the expected vs received value.
    """
    if proto.dtype != info.dtype:
        raise invalid(f"input '{name}': expects dtype {dtype_name(info.dtype)}, received "
                      f"{dtype_name(proto.dtype)}")
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{name}': tensor_shape has unknown rank; a request tensor needs a "
                      f"fully known shape (expected {shape_text(info.tensor_shape)})")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input '{name}': negative dimension in shape {_dims_text(dims)}")
    check_shape("input", name, dims, info)
    check_rows(name, dims, max_rows)
    field = _VALUE_FIELDS.get(proto.dtype)
    if field is None:
        raise invalid(f"input '{name}': dtype {dtype_name(proto.dtype)} is not supported by this server")
    n = 1
    for d in dims:
        n *= d
    if proto.tensor_content:
        if proto.dtype == types_pb2.DT_STRING:
            raise invalid(f"input '{name}': DT_STRING values must be in string_val, not tensor_content")
        want = n * tf.as_dtype(proto.dtype).size
        if len(proto.tensor_content) != want:
            raise invalid(f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes; shape "
                          f"{_dims_text(dims)} of {dtype_name(proto.dtype)} needs {want}")
    else:
        attr, per = field
        count = len(getattr(proto, attr))
        if count % per:
            raise invalid(f"input '{name}': {attr} has {count} values, not a multiple of {per}")
        count //= per
        if count > n:
            raise invalid(f"input '{name}': {count} values in {attr} but shape {_dims_text(dims)} has "
                          f"{n} elements")
        if count < n and n > MAX_PADDED_ELEMENTS:
            raise invalid(f"input '{name}': {count} values for {n} elements; padding a tensor past "
                          f"{MAX_PADDED_ELEMENTS} elements is refused")
    try:
        return _decode(proto, dims, n)
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid(f"input '{name}': cannot decode tensor: {e}") from None


def _decode(proto: tensor_pb2.TensorProto, dims: list[int], n: int) -> np.ndarray:
    """The array of a TensorProto already checked against its shape (``n`` elements).

    The common encodings are read directly (``tensor_content`` as a buffer; a full
    ``string_val`` or numeric ``*_val`` list); padding, half floats and complex values go
    through ``tf.make_ndarray``, which implements them.
    """
    np_dtype = _NUMPY_DTYPES.get(proto.dtype)
    if np_dtype is not None and proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(dims)
    if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == n:
        arr = np.empty(n, dtype=object)
        arr[:] = list(proto.string_val)
        return arr.reshape(dims)
    if np_dtype is not None:
        values = getattr(proto, _VALUE_FIELDS[proto.dtype][0])
        if len(values) == n:
            return np.array(values, dtype=np_dtype).reshape(dims)
    return tf.make_ndarray(proto)


def array_to_tensor_proto(arr) -> tensor_pb2.TensorProto:
    """Encodes an output array the way TF Serving does by default (values in the typed ``*_val``
    fields, not ``tensor_content``)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OSU":
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode("utf-8")
                                for v in arr.ravel().tolist())
    else:
        dt = tf.as_dtype(arr.dtype).as_datatype_enum
        field = _VALUE_FIELDS.get(dt)
        if field is None:
            return tf.make_tensor_proto(arr)
        proto = tensor_pb2.TensorProto(dtype=dt)
        flat = arr.ravel()
        if dt in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
            flat = flat.view(np.uint16)
        elif dt in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
            flat = np.stack([flat.real, flat.imag], axis=-1).ravel()
        getattr(proto, field[0]).extend(flat.tolist())
    for d in arr.shape:
        proto.tensor_shape.dim.add().size = d
    return proto


def check_input_keys(signature_name: str, sig: meta_graph_pb2.SignatureDef, keys) -> None:
    """Raises INVALID_ARGUMENT unless ``keys`` are exactly the signature's input aliases."""
    expected = set(sig.inputs)
    got = set(keys)
    if not got and expected:
        raise invalid(f"request has no inputs; signature '{signature_name}' expects inputs "
                      f"{sorted(expected)}")
    if got != expected:
        extra = sorted(got - expected)
        missing = sorted(expected - got)
        raise invalid(f"input size does not match signature '{signature_name}': {len(got)}!={len(expected)} "
                      f"len({sorted(got)}) != len({sorted(expected)}). Sent extra: {extra}. "
                      f"Missing but required: {missing}.")


# ---- the servable --------------------------------------------------------------------------------

class Servable:
    """One loaded version of one model.

    Build with :meth:`load`. The object stays usable as long as anything references it: the
    model manager dropping it (unload) does not disturb requests still running on it.

    Args:
      name: served model name.
      version: integer version.
      path: the version folder.
      meta_graph: its MetaGraphDef (signature defs).
      loaded: the ``tf.saved_model.load`` result.
    """

    def __init__(self, name: str, version: int, path: str, meta_graph: meta_graph_pb2.MetaGraphDef,
                 loaded):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs: Mapping[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        self.loaded = loaded
        self._functions = {k: loaded.signatures[k] for k in self.signature_defs
                           if k in getattr(loaded, "signatures", {})}
        self._input_dtypes = {k: {name: tf.as_dtype(info.dtype)
                                  for name, info in self.signature_defs[k].inputs.items()}
                              for k in self._functions}
        self._count_lock = threading.Lock()
        self.calls = 0  # signature function calls (each batch counts once)
        self.warmup_records = 0

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version})"

    @classmethod
    def load(cls, name: str, version: int, path: str) -> "Servable":
        """Loads ``path`` with ``tf.saved_model.load``.

        Raises:
          ServingError: when the folder holds no readable SavedModel.
        """
        meta = read_meta_graph(path)
        tags = list(meta.meta_info_def.tags) or None
        try:
            loaded = tf.saved_model.load(path, tags=tags)
        except tf.errors.OpError as e:
            raise ServingError.from_tf(e, f"loading {path}: ") from None
        except (ValueError, TypeError, OSError, KeyError, pb_message.DecodeError) as e:
            raise ServingError("UNKNOWN", f"loading {path}: {type(e).__name__}: {e}") from None
        return cls(name, version, path, meta, loaded)

    @property
    def signature_names(self) -> list[str]:
        """Signatures requests can call (``__saved_model_init_op`` and the like excluded)."""
        return sorted(self._functions)

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef called ``name`` (default ``serving_default`` when empty).

        Raises:
          ServingError: INVALID_ARGUMENT naming the signature and listing the available ones.
        """
        key = name or DEFAULT_SIGNATURE
        if key not in self._functions:
            raise invalid(f"Serving signature key \"{key}\" not found in model '{self.name}' version "
                          f"{self.version}; available signatures: {self.signature_names}")
        return self.signature_defs[key]

    def call(self, signature_name: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one signature on already-checked numpy inputs; returns numpy outputs.

        Args:
          signature_name: the signature key (empty for ``serving_default``).
          arrays: input alias -> array of the signature's dtype.

        Raises:
          ServingError: a TensorFlow runtime error keeps its status code (a tf.Example that does
            not parse is INVALID_ARGUMENT); a call the function rejects is INVALID_ARGUMENT.
        """
        key = signature_name or DEFAULT_SIGNATURE
        sig = self.signature(key)
        fn, dtypes = self._functions[key], self._input_dtypes[key]
        try:
            tensors = {k: tf.constant(v, dtype=dtypes[k]) for k, v in arrays.items()}
        except (TypeError, ValueError, OverflowError) as e:
            raise invalid(f"signature '{key}': cannot convert inputs: {e}") from None
        with self._count_lock:
            self.calls += 1
        try:
            out = fn(**tensors)
        except tf.errors.OpError as e:
            raise ServingError.from_tf(e) from None
        except UnicodeDecodeError:
            # TensorFlow quoted raw input bytes in its error and could not decode its own message.
            raise invalid(f"signature '{key}' rejected the request; TensorFlow's error message quotes raw "
                          f"input bytes (not UTF-8), which typically means a DT_STRING input could not be "
                          f"parsed (e.g. bytes that are not a serialized tf.Example)") from None
        except (TypeError, ValueError) as e:
            raise invalid(f"signature '{key}': {e}") from None
        if not isinstance(out, Mapping):
            out = {next(iter(sig.outputs), "output_0"): out}
        return {k: v.numpy() for k, v in out.items()}
