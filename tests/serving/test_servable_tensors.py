"""Request TensorProto decoding: the direct paths agree with ``tf.make_ndarray`` for every dtype
and encoding, and bad payloads are INVALID_ARGUMENT naming the input."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from tirec.serving.servable import ServingError, tensor_proto_to_array

DTYPES = [tf.float32, tf.float64, tf.int32, tf.int16, tf.int8, tf.uint8, tf.uint16, tf.int64, tf.uint32,
          tf.uint64, tf.bool, tf.string, tf.float16, tf.complex64]


def _info(dtype: tf.DType, shape) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name="x:0", dtype=dtype.as_datatype_enum)
    for d in shape:
        info.tensor_shape.dim.add().size = d
    return info


def _values(dtype: tf.DType, shape) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    if dtype == tf.string:
        return np.array([f"v{i}".encode() * (i % 3) for i in range(n)], dtype=object).reshape(shape)
    if dtype == tf.bool:
        return (rng.integers(0, 2, n) == 1).reshape(shape)
    if dtype.is_complex:
        return (rng.normal(size=n) + 1j * rng.normal(size=n)).astype(dtype.as_numpy_dtype).reshape(shape)
    if dtype.is_floating:
        return rng.normal(size=n).astype(dtype.as_numpy_dtype).reshape(shape)
    return rng.integers(dtype.min if dtype.min > -100 else -100, min(dtype.max, 100), n).astype(
        dtype.as_numpy_dtype).reshape(shape)


def _typed_values_proto(arr: np.ndarray, dtype: tf.DType) -> tensor_pb2.TensorProto:
    """``arr`` in the typed ``*_val`` field (make_tensor_proto prefers tensor_content)."""
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for d in arr.shape:
        proto.tensor_shape.dim.add().size = d
    field = {tf.float32: "float_val", tf.float64: "double_val", tf.int64: "int64_val", tf.uint32: "uint32_val",
             tf.uint64: "uint64_val", tf.bool: "bool_val", tf.string: "string_val",
             tf.float16: "half_val", tf.complex64: "scomplex_val"}.get(dtype, "int_val")
    flat = arr.ravel()
    if dtype == tf.float16:
        flat = flat.view(np.uint16)
    elif dtype.is_complex:
        flat = np.stack([flat.real, flat.imag], -1).ravel()
    getattr(proto, field).extend(flat.tolist())
    return proto


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("encoding", ["tensor_content", "typed_values", "padded"])
def test_decode_matches_make_ndarray(dtype, encoding):
    shape = [3, 4]
    arr = _values(dtype, shape)
    if encoding == "tensor_content":
        proto = tf.make_tensor_proto(arr, dtype=dtype)
    else:
        proto = _typed_values_proto(arr, dtype)
        if encoding == "padded":  # fewer values than elements: TF repeats the last one
            proto = _typed_values_proto(arr.ravel()[:5], dtype)
            del proto.tensor_shape.dim[:]
            for d in shape:
                proto.tensor_shape.dim.add().size = d
    got = tensor_proto_to_array("x", proto, _info(dtype, [-1, 4]), max_rows=10)
    want = tf.make_ndarray(proto)
    assert got.shape == tuple(shape) and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    if encoding != "padded":
        np.testing.assert_array_equal(got, arr)


def test_decode_errors_name_the_input():
    info = _info(tf.float32, [-1, 2])
    bad = tf.make_tensor_proto(np.zeros((2, 2), np.float32))
    bad.tensor_content = bad.tensor_content[:-1]
    with pytest.raises(ServingError, match="input 'q': tensor_content has 15 bytes") as e:
        tensor_proto_to_array("q", bad, info, 10)
    assert e.value.code == "INVALID_ARGUMENT"
    small = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT8)
    small.tensor_shape.dim.add().size = 2
    small.int_val.extend([1, 300])  # out of int8 range
    with pytest.raises(ServingError, match="input 'q': cannot decode tensor"):
        tensor_proto_to_array("q", small, _info(tf.int8, [-1]), 10)
