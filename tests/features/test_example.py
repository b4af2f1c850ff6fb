"""The vectorised tf.Example encoder matches protobuf's own encoding field for field."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.features.example import ExampleEncoder, decode_example
from tirec.features.spec import tir_feature_spec


def _batch(spec, k, rng, hi=1 << 40):
    cols = {}
    for f in spec.features:
        shape = (k,) if f.kind == "scalar" else (k, f.length)
        if f.dtype == "int64":
            cols[f.name] = rng.integers(-(1 << 62), hi, size=shape)
        elif f.dtype == "float32":
            cols[f.name] = rng.normal(size=shape).astype(np.float32)
        else:
            cols[f.name] = np.array([f"req-{i}-é".encode() for i in range(k)], dtype=object)
    return cols


def _proto(spec, cols, i):
    ex = tf.train.Example()
    for f in spec.features:
        v = cols[f.name][i]
        vals = [v] if np.ndim(v) == 0 else list(v)
        feat = ex.features.feature[f.name]
        if f.dtype == "int64":
            feat.int64_list.value.extend(int(x) for x in vals)
        elif f.dtype == "float32":
            feat.float_list.value.extend(float(x) for x in vals)
        else:
            feat.bytes_list.value.extend(vals)
    return ex


@pytest.mark.parametrize("seq_len", [1, 5, 50])
def test_encoding_equals_protobuf(seq_len):
    spec = tir_feature_spec(user_fields=("gender",), context_fields=("scene",), max_seq_len=seq_len)
    rng = np.random.default_rng(seq_len)
    cols = _batch(spec, 37, rng)
    cols["label"] = rng.integers(0, 2, 37)
    records = ExampleEncoder(spec).encode_batch(cols)
    assert len(records) == 37
    for i in (0, 13, 36):
        assert tf.train.Example.FromString(records[i]) == _proto(spec, cols, i)
        decoded = decode_example(records[i], spec)
        np.testing.assert_array_equal(decoded["hist_item_ids"], cols["hist_item_ids"][i])
    parsed = tf.io.parse_example(records, spec.parse_example_spec())
    np.testing.assert_array_equal(parsed["hist_ts"].numpy(), cols["hist_ts"])
    np.testing.assert_array_equal(parsed["label"].numpy(), cols["label"])
    np.testing.assert_allclose(parsed["intent_dist"].numpy(), cols["intent_dist"])


def test_encoder_errors_name_the_feature():
    spec = tir_feature_spec(max_seq_len=4)
    rng = np.random.default_rng(0)
    cols = _batch(spec, 3, rng)
    enc = ExampleEncoder(spec)
    bad = dict(cols, hist_ts=cols["hist_ts"][:, :3])
    with pytest.raises(ValueError, match="hist_ts.*shape"):
        enc.encode_batch(bad)
    nan = dict(cols, trigger_target_sim=np.array([0.1, np.nan, 0.2], np.float32))
    with pytest.raises(ValueError, match="trigger_target_sim.*non-finite"):
        enc.encode_batch(nan)
    missing = {k: v for k, v in cols.items() if k != "label"}
    with pytest.raises(ValueError, match="missing columns"):
        enc.encode_batch(missing)
    with pytest.raises(ValueError, match="expected integers"):
        enc.encode_batch(dict(cols, label=np.array([0.5, 1.0, 0.0])))
    assert enc.encode_batch({k: v[:0] for k, v in cols.items()}) == []


def test_nonfinite_rows_names_the_feature_and_value_of_each_bad_row():
    spec = tir_feature_spec(max_seq_len=4)
    cols = _batch(spec, 4, np.random.default_rng(1))
    cols["trigger_target_sim"][2] = np.inf
    cols["hist_trigger_sim"][2, 3] = np.nan
    cols["hist_trigger_sim"][0, 1] = -np.inf
    enc = ExampleEncoder(spec)
    found = enc.nonfinite_rows(cols)
    assert sorted(found) == [0, 2]
    assert found[0][0] == "hist_trigger_sim" and found[0][1] == -np.inf
    assert found[2] == ("trigger_target_sim", np.inf)  # the first bad feature in spec order
    keep = [1, 3]
    assert len(enc.encode_batch({k: v[keep] for k, v in cols.items()})) == 2  # the rest encode
