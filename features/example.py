"""Vectorised ``tf.train.Example`` encoding for a :class:`FeatureSpec`.

Building one ``tf.train.Example`` proto per record costs tens of microseconds in Python, which
would dominate the Beam job. :class:`ExampleEncoder` instead writes the protobuf wire format for a
whole batch of records with numpy (packed varints for int64, little-endian float32, length
prefixes computed per row) and slices the result into one ``bytes`` per record. The output parses
with ``tf.io.parse_example`` and ``tf.train.Example.FromString``; the tests check it is
field-for-field identical to the proto-built encoding.

Example:
  >>> enc = ExampleEncoder(spec)
  >>> records = enc.encode_batch({"label": np.array([0, 1]), ...})  # one array per feature
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from tirec.features.spec import FeatureSpec

_U8 = np.uint8


class ExampleEncoder:
    """Encodes column batches into serialized ``tf.train.Example`` records.

    Args:
      spec: the schema; every feature must be present in each batch, with shape ``[k]`` for a
        scalar and ``[k, length]`` otherwise.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self._int = [i for i, f in enumerate(spec.features) if f.dtype == "int64"]
        self._float = [i for i, f in enumerate(spec.features) if f.dtype == "float32"]
        self._packed = np.array([f.dtype != "string" for f in spec.features])
        # Constant bytes, one buffer: per feature the map-entry key prefix (field 1, the key)
        # followed by the entry's field-2 tag, and the Feature oneof tag for its list kind.
        kind_tag = {"int64": b"\x1a", "float32": b"\x12", "string": b"\x0a"}
        consts = [b"\x0a"]
        self._key_at, self._key_len, self._kind_at = [], [], []
        offset = 1
        for f in spec.features:
            key = f.name.encode("utf-8")
            prefix = b"\x0a" + _varint_scalar(len(key)) + key + b"\x12"
            self._key_at.append(offset)
            self._key_len.append(len(prefix))
            consts.append(prefix)
            offset += len(prefix)
            self._kind_at.append(offset)
            consts.append(kind_tag[f.dtype])
            offset += 1
        self._consts = np.frombuffer(b"".join(consts), dtype=_U8)
        self._prefix_len = np.array(self._key_len, dtype=np.int64)

    def encode_batch(self, columns: Mapping[str, np.ndarray]) -> list[bytes]:
        """Serializes ``k`` records given as one array per feature.

        Raises:
          ValueError: naming the feature when a column is missing, has the wrong shape or dtype,
            or holds non-finite floats.
        """
        feats = self.spec.features
        missing = [f.name for f in feats if f.name not in columns]
        if missing:
            raise ValueError(f"encode_batch: missing columns {missing}")
        extra = sorted(set(columns) - set(self.spec.names))
        if extra:
            raise ValueError(f"encode_batch: columns not in the spec {extra}")
        k = len(columns[feats[0].name])
        if k == 0:
            return []
        cols = []
        for f in feats:
            col = np.asarray(columns[f.name])
            want = (k,) if f.kind == "scalar" else (k, f.length)
            if col.shape != want:
                raise ValueError(f"feature {f.name!r}: expected shape {want}, received {col.shape}")
            if f.dtype == "int64" and col.dtype.kind not in "iub":
                raise ValueError(f"feature {f.name!r}: expected integers, received dtype {col.dtype}")
            if f.dtype == "float32":
                if col.dtype.kind not in "fiu":
                    raise ValueError(f"feature {f.name!r}: expected floats, received dtype {col.dtype}")
                if not np.isfinite(col).all():
                    bad = col[~np.isfinite(col)].reshape(-1)[0]
                    raise ValueError(f"feature {f.name!r}: non-finite value {bad!r}")
            cols.append(col.reshape(k, -1))

        n_feat = len(feats)
        blocks = []  # (flat bytes, start [k, j], length [k, j]) with j pieces per row
        plen = np.zeros((k, n_feat), dtype=np.int64)
        pstart = np.zeros((k, n_feat), dtype=np.int64)
        pflat = [None] * n_feat
        # int64: one varint pass over all int columns side by side (row-major = record order).
        if self._int:
            stacked = np.concatenate([cols[i] for i in self._int], axis=1).astype(np.int64)
            flat, nb = _varints(stacked)
            nb = nb.reshape(k, -1)
            widths = [cols[i].shape[1] for i in self._int]
            per = np.add.reduceat(nb, np.cumsum([0] + widths[:-1]), axis=1)
            starts = (np.cumsum(per.reshape(-1)) - per.reshape(-1)).reshape(per.shape)
            for j, i in enumerate(self._int):
                plen[:, i], pstart[:, i], pflat[i] = per[:, j], starts[:, j], 0
            int_flat = flat
        if self._float:
            stacked = np.ascontiguousarray(
                np.concatenate([cols[i] for i in self._float], axis=1), dtype="<f4")
            widths = np.array([cols[i].shape[1] for i in self._float]) * 4
            row_bytes = int(widths.sum())
            offs = np.cumsum(widths) - widths
            for j, i in enumerate(self._float):
                plen[:, i] = widths[j]
                pstart[:, i] = np.arange(k) * row_bytes + offs[j]
                pflat[i] = 1
            float_flat = stacked.view(_U8).reshape(-1)
        str_flats = []
        for i, f in enumerate(feats):
            if f.dtype == "string":
                flat, lens = _bytes_list(cols[i])
                plen[:, i], pstart[:, i], pflat[i] = lens, np.cumsum(lens) - lens, 2 + len(str_flats)
                str_flats.append(flat)

        # Lengths of the nested messages, innermost first.
        list_len = np.where(self._packed[None, :], 1 + _varint_len(plen) + plen, plen)
        feat_len = 1 + _varint_len(list_len) + list_len
        entry_len = self._prefix_len[None, :] + _varint_len(feat_len) + feat_len
        seg_len = 1 + _varint_len(entry_len) + entry_len
        total = seg_len.sum(axis=1)
        # All header varints of a row in one pass: total, then per feature 4 values.
        hv = np.concatenate([total[:, None],
                             np.stack([entry_len, feat_len, list_len, plen], axis=2).reshape(k, -1)],
                            axis=1)
        hflat, hnb = _varints(hv)
        hnb = hnb.reshape(k, -1)
        hstart = (np.cumsum(hnb.reshape(-1)) - hnb.reshape(-1)).reshape(hnb.shape)

        sources = [self._consts, hflat]
        src_ids = {"const": 0, "hdr": 1}
        if self._int:
            src_ids["int"] = len(sources)
            sources.append(int_flat)
        if self._float:
            src_ids["float"] = len(sources)
            sources.append(float_flat)
        src_ids["str0"] = len(sources)
        sources.extend(str_flats)
        payload_src = {0: src_ids.get("int"), 1: src_ids.get("float")}

        ones = np.ones(k, dtype=np.int64)
        zeros = np.zeros(k, dtype=np.int64)
        piece_src, piece_start, piece_len = [], [], []

        def add(src, start, length):
            piece_src.append(src)
            piece_start.append(start)
            piece_len.append(length)

        add(0, zeros, ones)                       # Example.features tag
        add(1, hstart[:, 0], hnb[:, 0])           # its length
        for i in range(n_feat):
            h = 1 + 4 * i
            add(0, zeros, ones)                   # Features.feature (map entry) tag
            add(1, hstart[:, h], hnb[:, h])       # entry length
            add(0, np.full(k, self._key_at[i]), np.full(k, self._key_len[i]))  # key + value tag
            add(1, hstart[:, h + 1], hnb[:, h + 1])  # Feature length
            add(0, np.full(k, self._kind_at[i]), ones)  # Feature oneof tag
            add(1, hstart[:, h + 2], hnb[:, h + 2])  # list length
            if self._packed[i]:
                add(0, zeros, ones)               # packed values tag
                add(1, hstart[:, h + 3], hnb[:, h + 3])  # packed payload length
            src = payload_src[pflat[i]] if pflat[i] in (0, 1) else src_ids["str0"] + pflat[i] - 2
            add(src, pstart[:, i], plen[:, i])    # the values
        bases = np.cumsum([0] + [s.shape[0] for s in sources[:-1]])
        seg_start = np.stack([bases[s] + st for s, st in zip(piece_src, piece_start)], axis=1).reshape(-1)
        seg_len = np.stack(piece_len, axis=1).reshape(-1)
        out_start = np.cumsum(seg_len) - seg_len
        idx = np.repeat(seg_start - out_start, seg_len) + np.arange(int(seg_len.sum()))
        buf = np.concatenate(sources)[idx].tobytes()
        lengths = 1 + _varint_len(total) + total
        ends = np.cumsum(lengths)
        starts = ends - lengths
        return [buf[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


def decode_example(record: bytes, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Parses one serialized record into numpy arrays (for tests and inspection tools)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(record)
    out = {}
    for f in spec.features:
        if f.name not in ex.features.feature:
            raise ValueError(f"record has no feature {f.name!r}")
        feat = ex.features.feature[f.name]
        if f.dtype == "int64":
            vals = np.array(feat.int64_list.value, dtype=np.int64)
        elif f.dtype == "float32":
            vals = np.array(feat.float_list.value, dtype=np.float32)
        else:
            vals = np.array(list(feat.bytes_list.value), dtype=object)
        if vals.shape[0] != f.length:
            raise ValueError(f"feature {f.name!r}: {vals.shape[0]} values, spec says {f.length}")
        out[f.name] = vals[0] if f.kind == "scalar" else vals
    return out


# ---- wire-format helpers: a "rows" value is (flat uint8 array, per-row byte lengths) ---------

def _varint_scalar(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of a flat int64 array: (flat bytes in order, bytes per value).

    Negative int64 values take 10 bytes (two's complement as uint64), as protobuf encodes them.
    """
    v = np.asarray(values, dtype=np.int64).reshape(-1).view(np.uint64)
    nbytes = np.ones(v.shape[0], dtype=np.int64)
    rest = v >> np.uint64(7)
    while True:
        more = rest > 0
        if not more.any():
            break
        nbytes += more
        rest = rest >> np.uint64(7)
    pos = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=_U8)
    sel = np.arange(v.shape[0])
    cur = v
    for i in range(10):
        cont = nbytes[sel] > i + 1
        out[pos[sel] + i] = (cur & np.uint64(0x7F)).astype(_U8) | (cont.astype(_U8) << 7)
        if not cont.any():
            break
        sel = sel[cont]
        cur = cur[cont] >> np.uint64(7)
    return out, nbytes


def _varint_len(values: np.ndarray) -> np.ndarray:
    """Bytes a non-negative int64 takes as a varint (elementwise)."""
    v = np.asarray(values, dtype=np.int64)
    return 1 + sum((v >= (1 << (7 * i))).astype(np.int64) for i in range(1, 9))


def _bytes_list(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts, lengths = [], []
    for row in rows:
        chunk = b"".join(b"\x0a" + _varint_scalar(len(s)) + s
                         for s in (x if isinstance(x, bytes) else str(x).encode("utf-8") for x in row))
        parts.append(chunk)
        lengths.append(len(chunk))
    flat = np.frombuffer(b"".join(parts), dtype=_U8)
    return flat, np.asarray(lengths, dtype=np.int64)
