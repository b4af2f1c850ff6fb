"""Chunked, validating readers for the raw tables (CSV, Parquet, JSONL; local or remote paths).

Every table is read in chunks of ``chunk_rows`` rows. Each column is converted to its declared
type with vectorised checks; a row that fails any check (malformed line, missing required field,
unparsable or negative id, bad timestamp, label not 0/1, ...) is removed from the chunk and
returned as a dead-letter record naming the table, file, row, reason, field and value. Nothing is
dropped silently: for every chunk, ``rows in = rows kept + dead letters``.

Paths go through Beam's ``FileSystems``, so ``gs://`` / ``s3://`` inputs work on Dataflow and
other runners, and ``.gz`` files are decompressed transparently.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from tirec.pipeline.reasons import dead_reason

log = logging.getLogger(__name__)

EXTENSIONS = (".csv", ".csv.gz", ".parquet", ".jsonl", ".jsonl.gz", ".json")
# Upper bound on plausible Unix-second timestamps (year 2100); larger values are usually
# milliseconds and are rejected with reason ``bad_timestamp``.
MAX_TS = 4_102_444_800
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # an undecodable byte under errors="surrogateescape"


@dataclasses.dataclass(frozen=True)
class Column:
    """A typed column of a raw table.

    Args:
      name: the normalised name used downstream.
      kind: ``id`` (int >= 0), ``int``, ``ts`` (Unix seconds), ``label`` (0/1), ``float``,
        ``str`` or ``vector`` (list of floats).
      required: a missing column or empty value dead-letters the row; optional columns get
        ``default``.
      source: the column's name in the file, when it differs from ``name``.
      default: value for an optional column that is absent or empty.
    """

    name: str
    kind: str
    required: bool = True
    source: str | None = None
    default: object = None

    @property
    def raw(self) -> str:
        return self.source or self.name


@dataclasses.dataclass(frozen=True)
class TableSchema:
    """Columns of one raw table.

    Args:
      name: table name (used in dead letters and stats).
      columns: declared columns.
      extra_int_prefix: when set, every undeclared column of the file is read as an ``int``
        field and named ``<prefix><column>`` (user profile fields, extra item side fields).
      extra_match: only undeclared columns starting with this are taken (e.g. ``ctx_``).
    """

    name: str
    columns: tuple[Column, ...]
    extra_int_prefix: str | None = None
    extra_match: str = ""

    def reads(self, column: str) -> bool:
        """Whether a file column named ``column`` is read (declared, or an extra column taken)."""
        return (any(c.raw == column for c in self.columns)
                or self.extra_int_prefix is not None and column.startswith(self.extra_match))


@dataclasses.dataclass
class Chunk:
    """A validated chunk: typed column arrays plus provenance of each kept row."""

    table: str
    file: str
    columns: dict[str, np.ndarray]
    rows: np.ndarray  # 0-based data-row index within the file, per kept row
    filled: dict[str, int] = dataclasses.field(default_factory=dict)  # optional column the file
    # has (JSONL: a key of its first row) -> kept rows whose empty value became its default
    unread: tuple[str, ...] = ()  # columns holding a value in this chunk that are not read (JSONL:
    # also a key only later rows carry, which the file's first row cannot announce)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def provenance(cols: dict, i: int, files: Sequence[str]) -> dict:
    """The ``file`` and ``row`` of row ``i`` of columns carrying ``_file`` (an index into
    ``files``) and ``_row``, as :func:`dead_letter` takes them (None where unknown)."""
    return {"file": files[int(cols["_file"][i])] if "_file" in cols else None,
            "row": int(cols["_row"][i]) if "_row" in cols else None}


def dead_letter(table: str, reason: str, *, field: str | None = None, value=None,
                file: str | None = None, row: int | None = None, raw: str | None = None) -> dict:
    """One dead-letter record (written as a JSON line under ``OUT/deadletter/``).

    Raises:
      ValueError: ``reason`` is not a :class:`~tirec.pipeline.reasons.DeadReason`.
    """
    rec = {"table": table, "reason": dead_reason(reason), "field": field,
           "value": None if value is None else _short(value), "file": file, "row": row}
    if raw is not None:
        rec["raw"] = _short(raw, 500)
    return rec


def discover(directory: str, table: str) -> list[str]:
    """Files of ``table`` in ``directory``: ``<table>.<ext>``, ``<table>/*`` or ``<table>-*``."""
    from apache_beam.io.filesystems import FileSystems

    patterns = []
    for ext in EXTENSIONS:
        patterns += [f"{directory}/{table}{ext}", f"{directory}/{table}/*{ext}",
                     f"{directory}/{table}-*{ext}"]
    found = set()
    for res in FileSystems.match(patterns):
        found.update(m.path for m in res.metadata_list)
    return sorted(found)


def read_chunks(path: str, schema: TableSchema, chunk_rows: int = 65536
                ) -> Iterator[tuple[Chunk, list[dict]]]:
    """Reads one file in chunks, yielding ``(valid chunk, dead letters)`` pairs.

    Row numbers (``Chunk.rows`` and a dead letter's ``row``) are 0-based data rows of the file,
    counting the rows skipped as malformed: in a CSV file the header and blank lines are not
    rows (``row + 2`` is the line number when the file has no blank lines); in a JSONL file
    every line is a row (``row + 1`` is the line number); in Parquet, the record index.

    Raises:
      ValueError: when a required column is absent from the file's header (the whole file is
        unusable; the message names the column and the file).
    """
    fmt = _format_of(path)
    offset = 0
    for table, malformed, rows, counted in _raw_batches(path, fmt, chunk_rows, schema):
        dead = [dead_letter(schema.name, m.get("reason", "malformed_line"), file=path, field=m.get("field"),
                            row=m.get("row"), raw=m.get("text"), value=m.get("error"))
                for m in malformed]
        if rows is None:  # no line was skipped: rows follow on from the previous batch
            rows = np.arange(offset, offset + table.num_rows, dtype=np.int64)
        offset = int(rows[-1]) + 1 if len(rows) else offset
        chunk, more = _convert(table, schema, path, rows, counted)
        yield chunk, dead + more


def file_columns(path: str, schema: TableSchema) -> list[str]:
    """A file's column names: its CSV header, its Parquet schema, its JSONL first row's keys
    (read without the data, but for that row)."""
    fmt = _format_of(path)
    if fmt != "jsonl":
        with _open(path) as fh:
            if fmt == "csv":
                return _csv_header(fh, path)[1]
            import pyarrow.parquet as pq

            return pq.ParquetFile(fh if hasattr(fh, "seek") else io.BytesIO(fh.read())).schema_arrow.names
    for table, _, _, _ in _jsonl_batches(path, 1, schema):
        return list(table.column_names)
    return []


# ---- raw batches -----------------------------------------------------------------------------

def _format_of(path: str) -> str:
    p = path.lower()
    for ext, fmt in ((".parquet", "parquet"), (".csv.gz", "csv"), (".csv", "csv"),
                     (".jsonl.gz", "jsonl"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if p.endswith(ext):
            return fmt
    raise ValueError(f"unsupported file type {path!r}; expected one of {EXTENSIONS}")


def _open(path: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)  # compression inferred from the suffix (.gz)


def _raw_batches(path: str, fmt: str, chunk_rows: int, schema: TableSchema):
    """Yields ``(pyarrow table, malformed rows, row numbers, counted)``; row numbers None:
    consecutive; ``counted``: the columns the file has (its header; None: all the table's),
    whose empty values :class:`Chunk` counts as ``filled``."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with _open(path) as fh:
            pf = pq.ParquetFile(io.BytesIO(fh.read()) if not hasattr(fh, "seek") else fh)
            names = pf.schema_arrow.names
            _check_header(names, schema, path)
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield pa.Table.from_batches([batch]), [], None, None
    elif fmt == "csv":
        yield from _csv_batches(path, chunk_rows, schema)
    else:
        yield from _jsonl_batches(path, chunk_rows, schema)


def _csv_batches(path: str, chunk_rows: int, schema: TableSchema):
    import pyarrow.csv as pcsv

    malformed: list[dict] = []
    skipped = _SkippedRows()

    def on_invalid(row) -> str:
        # Single-threaded reading numbers each row (its non-blank line, header = 1), so the
        # rows after a skipped one keep their own numbers (see _SkippedRows).
        index = None if row.number is None else row.number - 2
        skipped.add(index)
        malformed.append({"row": index, "text": row.text,
                          "error": f"expected {row.expected_columns} columns, got {row.actual_columns}"})
        return "skip"

    with _open(path) as fh:
        head, names = _csv_header(fh, path)
        _check_header(names, schema, path)
        stream = io.BufferedReader(_Prepend(head, fh), buffer_size=1 << 20)
        # Header names are stripped (real files carry e.g. "new_user_class_level "), so give
        # pyarrow the stripped names and skip the header row.
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(block_size=max(1 << 16, min(1 << 24, chunk_rows * 64)),
                                          column_names=names, skip_rows=1, use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=True))
        pending, parsed = None, 0
        for batch in reader:
            table = pa.Table.from_batches([batch])
            pending = table if pending is None else pa.concat_tables([pending, table])
            while pending.num_rows >= chunk_rows:
                # pyarrow parses the next block ahead on its own thread, calling on_invalid
                # while this generator waits at the yield: drop only the rows reported here.
                report = malformed[:]
                yield pending.slice(0, chunk_rows), report, skipped.rows(parsed, chunk_rows), None
                del malformed[:len(report)]
                pending, parsed = pending.slice(chunk_rows), parsed + chunk_rows
        if (pending is not None and pending.num_rows) or malformed:
            table = pending if pending is not None else _empty(names)
            yield table, malformed[:], skipped.rows(parsed, table.num_rows), None


def _csv_header(fh, path: str) -> tuple[bytes, list[str]]:
    """Reads up to the end of the header line; returns the bytes read and the stripped names.

    The header is parsed as CSV (quoted names, commas inside quotes), like the data rows.
    """
    import csv

    head = fh.read(1 << 16)
    while b"\n" not in head:
        more = fh.read(1 << 16)
        if not more:
            break
        head += more
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: the CSV header is not valid UTF-8 ({err})") from None
    names = next(csv.reader([text]), [])
    return head, [n.strip() for n in names]


class _SkippedRows:
    """Data-row numbers of a CSV file around the rows pyarrow skipped as malformed.

    pyarrow returns only the rows it kept; the ``p``-th kept row (0-based) is data row
    ``p + k``, ``k`` the number of skipped rows before it.
    """

    def __init__(self):
        self._skipped: list[int] = []
        self._unknown = False

    def add(self, index: int | None) -> None:
        if index is None:
            self._unknown = True
        else:
            self._skipped.append(index)

    def rows(self, first: int, n: int) -> np.ndarray:
        """Data-row numbers of kept rows ``first .. first + n - 1``."""
        kept = np.arange(first, first + n, dtype=np.int64)
        if self._unknown:
            raise RuntimeError("pyarrow did not number a malformed CSV row; row numbers unknown")
        if not self._skipped:
            return kept
        s = np.sort(np.asarray(self._skipped, dtype=np.int64))
        return kept + np.searchsorted(s - np.arange(len(s)), kept, side="right")


class _Prepend(io.RawIOBase):
    """A readable stream that first returns ``head`` and then the rest of ``fh``."""

    def __init__(self, head: bytes, fh):
        self._head, self._fh = head, fh

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._fh.read(len(b))
        b[:len(data)] = data
        return len(data)


def _jsonl_batches(path: str, chunk_rows: int, schema: TableSchema):
    rows, numbers, malformed = [], [], []
    header = None
    with _open(path) as fh:
        # Undecodable bytes become lone surrogates (U+DC80..U+DCFF), so a line holding one is
        # dead-lettered as bad_encoding instead of being read with replaced characters.
        for lineno, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape")):
            if not line.strip():
                continue
            bad_byte = _BAD_BYTE.search(line)
            if bad_byte:
                raw = line.rstrip("\n").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                malformed.append({"row": lineno, "text": raw, "reason": "bad_encoding",
                                  "error": f"invalid UTF-8 byte 0x{ord(bad_byte.group()) - 0xDC00:02x} "
                                           f"at character {bad_byte.start()}"})
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                malformed.append({"row": lineno, "text": line.rstrip("\n"), "error": str(err)})
                continue
            if header is None:
                _check_header(list(obj), schema, path)
                header = list(obj)
            late = _late_extra_keys(obj, header, schema)
            if late:
                malformed.append({"row": lineno, "text": line.rstrip("\n"), "reason": "unexpected_field",
                                  "field": late[0], "error": f"keys {late} are not in the file's first row, "
                                  f"whose extra keys are the file's fields (write each in every row, null "
                                  f"where empty)"})
                continue
            rows.append(obj)
            numbers.append(lineno)
            if len(rows) >= chunk_rows:
                yield (_rows_to_table(rows, schema, header), malformed, np.asarray(numbers, dtype=np.int64),
                       set(header))
                rows, numbers, malformed = [], [], []
    if rows or malformed:
        yield (_rows_to_table(rows, schema, header or []), malformed, np.asarray(numbers, dtype=np.int64),
               set(header or []))


def _late_extra_keys(obj: dict, header: list[str], schema: TableSchema) -> list[str]:
    """The undeclared keys of a JSONL row that ``schema`` reads (``ctx_*``, profile fields) and
    the file's first row lacks: the fields a table has are fixed by its files' first rows (as a
    CSV file's by its header; :func:`tirec.pipeline.formats.header_fields`). A declared
    optional key (``request_id``) may come and go."""
    beyond = [k for k in obj if k not in header]
    if not beyond:  # the usual row: nothing more to look at
        return []
    declared = {c.raw for c in schema.columns}
    return sorted(k for k in beyond if k not in declared and schema.reads(k))


def _rows_to_table(rows: list[dict], schema: TableSchema, header: list[str]) -> pa.Table:
    """The rows as string columns (vectors as lists): the file's first-row keys, then any other
    key a row holds; a key a row lacks is null there."""
    names = list(dict.fromkeys([*header, *(k for r in rows for k in r)]))
    cols = {}
    vector_cols = {c.raw for c in schema.columns if c.kind == "vector"}
    for name in names:
        vals = [r.get(name) for r in rows]
        if name in vector_cols:
            cols[name] = pa.array([v if isinstance(v, list) else None for v in vals],
                                  type=pa.list_(pa.float64()), from_pandas=True) \
                if all(v is None or isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
                       for v in vals) else pa.array([None if v is None else json.dumps(v) for v in vals])
        else:
            cols[name] = pa.array([None if v is None else str(v) for v in vals], type=pa.string())
    return pa.table(cols) if cols else _empty([])


def _empty(names: Sequence[str]) -> pa.Table:
    return pa.table({n: pa.array([], type=pa.string()) for n in names})


def _check_header(names: Sequence[str], schema: TableSchema, path: str) -> None:
    missing = [c.raw for c in schema.columns if c.required and c.raw not in names]
    if missing:
        raise ValueError(f"{schema.name} file {path} lacks required column(s) {missing}; "
                         f"its columns are {list(names)}")


# ---- typed conversion --------------------------------------------------------------------------

def _convert(table: pa.Table, schema: TableSchema, path: str, rows: np.ndarray,
             counted: set[str] | None = None) -> tuple[Chunk, list[dict]]:
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    reason = np.full(n, None, dtype=object)
    field = np.full(n, None, dtype=object)
    value = np.full(n, None, dtype=object)
    out: dict[str, np.ndarray] = {}
    filled: dict[str, np.ndarray] = {}

    def flag(mask: np.ndarray, why: str, col: str, vals) -> None:
        new = mask & ~bad
        if new.any():
            idx = np.flatnonzero(new)
            reason[idx], field[idx] = why, col
            for i, v in zip(idx, _pick(vals, idx)):
                value[i] = v
            bad[idx] = True

    columns = list(schema.columns)
    if schema.extra_int_prefix is not None:
        declared = {c.raw for c in schema.columns}
        columns += [Column(schema.extra_int_prefix + name, "int", required=False, source=name, default=0)
                    for name in table.column_names
                    if name not in declared and name.startswith(schema.extra_match)]
    for col in columns:
        if col.raw not in table.column_names:
            if col.required:
                raise ValueError(f"{schema.name}: column {col.raw!r} missing in {path}")
            if col.default is not None:
                out[col.name] = np.full(n, col.default, dtype=_np_dtype(col.kind))
            continue
        arr = table.column(col.raw)
        values, missing, invalid, raw = _typed(arr, col.kind)
        if col.required:
            flag(missing, "missing_field", col.raw, raw)
        elif col.default is not None and col.kind != "vector":
            values = np.where(missing, col.default, values)
            if counted is None or col.raw in counted:
                filled[col.raw] = missing
        flag(invalid, f"bad_{_reason_kind(col.kind)}", col.raw, raw)
        if col.kind in ("id",):
            flag(~missing & ~invalid & (values < 0), "negative_id", col.raw, raw)
        if col.kind == "ts":
            flag(~missing & ~invalid & ((values <= 0) | (values > MAX_TS)), "bad_timestamp", col.raw, raw)
        if col.kind == "label":
            flag(~missing & ~invalid & ~np.isin(values, (0, 1)), "bad_label", col.raw, raw)
        out[col.name] = values
    keep = ~bad
    dead = [dead_letter(schema.name, reason[i], field=field[i], value=value[i], file=path,
                        row=int(rows[i]), raw=_row_text(table, int(i)))
            for i in np.flatnonzero(bad)]
    counts = {k: int((m & keep).sum()) for k, m in filled.items()}
    unread = tuple(c for c in table.column_names if not schema.reads(c) and table.column(c).null_count < n)
    chunk = Chunk(schema.name, path, {k: v[keep] for k, v in out.items()}, rows[keep],
                  {k: n for k, n in counts.items() if n}, unread)
    return chunk, dead


def _reason_kind(kind: str) -> str:
    return {"id": "id", "int": "int", "ts": "timestamp", "label": "label", "float": "float",
            "str": "string", "vector": "embedding"}[kind]


def _np_dtype(kind: str):
    return {"id": np.int64, "int": np.int64, "ts": np.int64, "label": np.int64,
            "float": np.float64, "str": object, "vector": object}[kind]


def _typed(arr: pa.ChunkedArray, kind: str):
    """(values, missing mask, invalid mask, raw values for messages) for one column."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    import pyarrow.compute as pc

    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        empty = pc.equal(pc.utf8_trim_whitespace(arr), "").fill_null(False)
        missing |= np.asarray(empty.to_numpy(zero_copy_only=False), dtype=bool)
    if kind == "str":
        vals = np.array(["" if v is None else str(v) for v in arr.to_pylist()], dtype=object)
        return vals, missing, np.zeros(n, dtype=bool), vals
    if kind == "vector":
        return _typed_vector(arr, missing)
    if kind == "float":
        vals, invalid, raw = _parse_numbers(arr, missing, float)
        return vals, missing, invalid, raw
    vals, invalid, raw = _parse_numbers(arr, missing, int)
    return vals, missing, invalid, raw


def _parse_numbers(arr: pa.Array, missing: np.ndarray, typ):
    """Fast path: a vectorised cast; slow path (only for chunks with bad values): per value."""
    import pyarrow.compute as pc

    target = pa.int64() if typ is int else pa.float64()
    n = len(arr)
    if pa.types.is_integer(arr.type) and typ is int:
        vals = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return vals, np.zeros(n, dtype=bool), vals
    if (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)) and typ is float:
        vals = arr.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
        return vals, ~missing & ~np.isfinite(vals), vals
    if pa.types.is_floating(arr.type) and typ is int:
        f = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        invalid = ~missing & (~np.isfinite(f) | (f != np.round(f)))
        return np.where(invalid | missing, 0, f).astype(np.int64), invalid, f
    try:
        filled = pc.if_else(pa.array(missing), pa.scalar("0", arr.type) if pa.types.is_string(arr.type)
                            else pa.scalar(0, arr.type), arr) if missing.any() else arr
        vals = pc.cast(pc.utf8_trim_whitespace(filled) if pa.types.is_string(arr.type) else filled,
                       target).to_numpy(zero_copy_only=False)
        invalid = np.zeros(n, dtype=bool)
        if typ is float:
            invalid = ~missing & ~np.isfinite(vals)
        return vals.astype(np.int64 if typ is int else np.float64), invalid, arr
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    raw = np.array(arr.to_pylist(), dtype=object)
    vals = np.zeros(n, dtype=np.int64 if typ is int else np.float64)
    invalid = np.zeros(n, dtype=bool)
    for i, v in enumerate(raw):
        if missing[i]:
            continue
        try:
            x = typ(str(v).strip())
            if typ is float and not np.isfinite(x):
                raise ValueError
            if typ is int and not -(1 << 63) <= x < (1 << 63):
                raise ValueError
            vals[i] = x
        except (ValueError, TypeError, OverflowError):
            invalid[i] = True
    return vals, invalid, raw


def _typed_vector(arr: pa.Array, missing: np.ndarray):
    n = len(arr)
    invalid = np.zeros(n, dtype=bool)
    vals = np.empty(n, dtype=object)
    raw = np.empty(n, dtype=object)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or \
            pa.types.is_fixed_size_list(arr.type):
        for i, v in enumerate(arr.to_pylist()):
            raw[i] = v
            if v is None:
                continue
            try:
                vals[i] = np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
            except (TypeError, ValueError):
                invalid[i] = True
        return vals, missing, invalid, raw
    for i, v in enumerate(arr.to_pylist()):
        raw[i] = v
        if v is None or missing[i]:
            continue
        text = str(v).strip()
        try:
            if text.startswith("["):
                vals[i] = np.asarray(json.loads(text), dtype=np.float64)
            else:
                vals[i] = np.asarray([float(x) for x in text.replace(",", " ").split()], dtype=np.float64)
        except (TypeError, ValueError):
            invalid[i] = True
    return vals, missing, invalid, raw


def _pick(vals, idx: np.ndarray) -> list:
    """Values at ``idx`` of a pyarrow or numpy array, as Python objects for messages."""
    if isinstance(vals, (pa.Array, pa.ChunkedArray)):
        return [vals[int(i)].as_py() for i in idx]
    vals = np.asarray(vals, dtype=object)
    return list(vals[idx]) if vals.shape else [vals.item()] * len(idx)


def _row_text(table: pa.Table, i: int) -> str:
    row = table.slice(i, 1).to_pylist()[0]
    return json.dumps(row, default=str)


def _short(v, limit: int = 200) -> str:
    s = v if isinstance(v, str) else (json.dumps(v, default=str) if isinstance(v, (list, dict))
                                      else str(v))
    return s if len(s) <= limit else s[:limit] + "..."


def write_jsonl(path: str, records: Sequence[dict]) -> None:
    """Writes dead letters (or any records) as JSON lines, creating the folder."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as fh:
        for r in records:
            fh.write((json.dumps(r, default=str) + "\n").encode("utf-8"))
