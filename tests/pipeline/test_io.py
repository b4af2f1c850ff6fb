"""Chunked readers: typed conversion and a dead letter, with its reason, for every bad row."""
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tirec.pipeline.io import Column, TableSchema, discover, read_chunks

SCHEMA = TableSchema("impressions", (
    Column("user_id", "id"), Column("item_id", "id"), Column("ts", "ts"), Column("label", "label"),
    Column("request_id", "str", required=False, default=""),
), extra_int_prefix="", extra_match="ctx_")

CSV = """user_id,item_id,ts,label,request_id,ctx_scene
1,10,1700000000,0,r1,2
1,11,1700000000,1,r1,
2,x,1700000000,0,r2,1
3,12,1700000000,0
-4,12,1700000000,0,r3,1
5,12,1700000000000,1,r4,1
6,12,1700000001,2,r5,1
7,,1700000001,1,r5,1
8,13,1700000001,1,r6,1,extra
9,14,1700000002,1,,7
"""


def _read_all(path, schema=SCHEMA, chunk_rows=1000):
    cols, dead, n = {}, [], 0
    for chunk, bad in read_chunks(str(path), schema, chunk_rows):
        dead += bad
        n += len(chunk)
        for k, v in chunk.columns.items():
            cols.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in cols.items()}, dead, n


def test_csv_good_rows_typed_and_each_bad_row_dead_lettered(tmp_path):
    path = tmp_path / "impressions.csv"
    path.write_text(CSV)
    cols, dead, n = _read_all(path)
    assert n == 3 and len(dead) == 7  # 10 data rows in
    np.testing.assert_array_equal(cols["user_id"], [1, 1, 9])
    np.testing.assert_array_equal(cols["ctx_scene"], [2, 0, 7])  # empty optional int -> 0
    assert list(cols["request_id"]) == ["r1", "r1", ""]
    assert cols["ts"].dtype == np.int64
    reasons = sorted((d["reason"], d["field"], d["value"]) for d in dead)
    assert reasons == sorted([
        ("malformed_line", None, "expected 6 columns, got 4"),
        ("malformed_line", None, "expected 6 columns, got 7"),
        ("bad_id", "item_id", "x"),
        ("negative_id", "user_id", "-4"),
        ("bad_timestamp", "ts", "1700000000000"),
        ("bad_label", "label", "2"),
        ("missing_field", "item_id", None),
    ])
    assert all(d["file"] == str(path) and d["table"] == "impressions" for d in dead)
    assert all("raw" in d for d in dead)


def test_gzip_csv_and_chunking(tmp_path):
    rows = ["user_id,item_id,ts,label"] + [f"{i},{i + 1},{1700000000 + i},{i % 2}" for i in range(5000)]
    path = tmp_path / "impressions.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    chunks = list(read_chunks(str(path), SCHEMA, chunk_rows=1000))
    assert sum(len(c) for c, _ in chunks) == 5000
    assert len(chunks) >= 2
    rows_seen = np.concatenate([c.rows for c, _ in chunks])
    np.testing.assert_array_equal(rows_seen, np.arange(5000))


def test_parquet_typed_columns_with_nulls(tmp_path):
    table = pa.table({"user_id": pa.array([1, 2, None, 4], pa.int64()),
                      "item_id": pa.array([5, 6, 7, 8], pa.int64()),
                      "ts": pa.array([1700000000, 1700000001, 1700000002, -1], pa.int64()),
                      "label": pa.array([0, 1, 1, 0], pa.int64())})
    path = tmp_path / "impressions.parquet"
    pq.write_table(table, path)
    cols, dead, n = _read_all(path)
    assert n == 2
    assert sorted(d["reason"] for d in dead) == ["bad_timestamp", "missing_field"]


def test_jsonl_malformed_line_and_vector_column(tmp_path):
    schema = TableSchema("item_embeddings", (Column("item_id", "id"), Column("embedding", "vector")))
    path = tmp_path / "item_embeddings.jsonl"
    path.write_text("\n".join([
        json.dumps({"item_id": 1, "embedding": [0.1, 0.2]}),
        "{not json",
        json.dumps({"item_id": 2, "embedding": [0.3, 0.4]}),
    ]) + "\n")
    cols, dead, n = _read_all(path, schema)
    assert n == 2 and [d["reason"] for d in dead] == ["malformed_line"]
    np.testing.assert_allclose(cols["embedding"][1], [0.3, 0.4])


def test_missing_required_column_fails_naming_it(tmp_path):
    path = tmp_path / "impressions.csv"
    path.write_text("user_id,item_id,label\n1,2,0\n")
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['ts'\]"):
        list(read_chunks(str(path), SCHEMA))


def test_discover_layouts(tmp_path):
    (tmp_path / "impressions").mkdir()
    (tmp_path / "impressions" / "part-00000.parquet").write_bytes(b"")
    (tmp_path / "behaviours-0.csv").write_text("")
    (tmp_path / "users.jsonl").write_text("")
    assert discover(str(tmp_path), "impressions")[0].endswith("impressions/part-00000.parquet")
    assert discover(str(tmp_path), "behaviours")[0].endswith("behaviours-0.csv")
    assert discover(str(tmp_path), "users")[0].endswith("users.jsonl")
    assert discover(str(tmp_path), "items") == []
