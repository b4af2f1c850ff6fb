"""Bad input: every kind of malformed row reaches the dead-letter output with its reason."""
import collections
import glob
import json

import pandas as pd
import pytest

from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig

TS = 1_700_600_000


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    raw, out = base / "raw", str(base / "out")
    synthetic.generate(synthetic.GeneratorConfig(users=25, seed=11, format="csv"), str(raw))
    imp_file = sorted(glob.glob(f"{raw}/impressions/*.csv"))[0]
    beh_file = sorted(glob.glob(f"{raw}/behaviours/*.csv"))[0]
    imp_cols = pd.read_csv(imp_file, nrows=1).columns.tolist()
    items = pd.read_csv(raw / "items.csv")
    known_item = int(items["item_id"].iloc[0])
    unknown_item = int(items["item_id"].max()) + 1000

    def row(cols, **values):
        return ",".join(str(values.get(c, 0)) for c in cols)

    good = dict(user_id=1, item_id=known_item, ts=TS, label=0, request_id="rbad", ctx_scene=1)
    bad_imps = [
        "1,2,3",                                                    # malformed_line
        row(imp_cols, **{**good, "item_id": "abc"}),                # bad_id
        row(imp_cols, **{**good, "user_id": -5}),                   # negative_id
        row(imp_cols, **{**good, "ts": "yesterday"}),               # bad_timestamp
        row(imp_cols, **{**good, "ts": TS * 1000}),                 # bad_timestamp (milliseconds)
        row(imp_cols, **{**good, "label": 3}),                      # bad_label
        row(imp_cols, **{**good, "item_id": ""}),                   # missing_field
        row(imp_cols, **{**good, "item_id": unknown_item}),         # unknown_item (in the job)
    ]
    with open(imp_file) as fh:
        bad_imps.append(fh.read().splitlines()[1])                  # duplicate_row of data row 0
    with open(imp_file, "a") as fh:
        fh.write("\n".join(bad_imps) + "\n")
    bad_behs = [
        f"1,{unknown_item},{TS},click",                             # unknown_item
        f"1,{known_item},-7,click",                                 # bad_timestamp
        f"1,{known_item},{TS},",                                    # missing_field (btag)
    ]
    with open(beh_file) as fh:
        bad_behs.append(fh.read().splitlines()[1])                  # repeated: kept and counted
    with open(beh_file, "a") as fh:
        fh.write("\n".join(bad_behs) + "\n")
    with open(raw / "items.csv", "a") as fh:
        fh.write(f"{known_item},1,1,1\n")                           # duplicate_id
        fh.write("999999,notacat,1,1\n")                            # bad_id
    emb = pd.read_csv(raw / "item_embeddings.csv")
    dim = len(str(emb["embedding"].iloc[0]).split())
    victim_nan, victim_size = int(emb["item_id"].iloc[1]), int(emb["item_id"].iloc[2])
    emb = emb[~emb["item_id"].isin([victim_nan, victim_size])]
    extra = pd.DataFrame({"item_id": [victim_nan, victim_size],
                          "embedding": [" ".join(["nan"] + ["0.1"] * (dim - 1)), " ".join(["0.1"] * (dim + 3))]})
    pd.concat([emb, extra]).to_csv(raw / "item_embeddings.csv", index=False)
    users = pd.read_csv(raw / "users.csv")
    dup = users.iloc[[0]]
    pd.concat([users, dup]).to_csv(raw / "users.csv", index=False)  # duplicate user row
    stats = job.run(PipelineConfig(input=str(raw), format="generic", out=out))
    dead = []
    for path in glob.glob(f"{out}/deadletter/*.jsonl"):
        with open(path) as fh:
            dead += [json.loads(line) for line in fh if line.strip()]
    return stats, dead, (victim_nan, victim_size), (imp_file, beh_file)


def test_each_bad_row_has_its_reason(bad_run):
    stats, dead, _, _ = bad_run
    got = collections.Counter((d["table"], d["reason"]) for d in dead)
    want = collections.Counter({
        ("impressions", "malformed_line"): 1, ("impressions", "bad_id"): 1,
        ("impressions", "negative_id"): 1, ("impressions", "bad_timestamp"): 2,
        ("impressions", "bad_label"): 1, ("impressions", "missing_field"): 1,
        ("impressions", "unknown_item"): 1, ("impressions", "duplicate_row"): 1,
        ("behaviours", "unknown_item"): 1, ("behaviours", "bad_timestamp"): 1,
        ("behaviours", "missing_field"): 1,
        ("items", "duplicate_id"): 1, ("items", "bad_id"): 1,
        ("item_embeddings", "nan_embedding"): 1, ("item_embeddings", "wrong_embedding_size"): 1,
        ("users", "duplicate_id"): 1,
    })
    assert got == want
    assert stats["deadletter"] == {f"{t}/{r}": c for (t, r), c in want.items()}
    assert stats["deadletter_total"] == sum(want.values())
    for d in dead:
        assert d["reason"] and "table" in d
        if d["reason"] not in ("malformed_line", "duplicate_id", "duplicate_row"):
            assert d["field"], d


def test_counts_balance_and_fallback_is_counted(bad_run):
    stats, dead, (victim_nan, victim_size), _ = bad_run
    acc = stats["accounting"]
    assert acc["balanced"] and acc["behaviours_balanced"], acc
    assert acc["deadlettered"] == 9
    # the two items whose vectors were rejected get the documented fallback
    assert stats["embedding"]["fallback_items"] >= 2
    values = {d.get("value") for d in dead if d["table"] == "impressions"}
    assert "abc" in values and "-5" in values


def test_a_row_written_twice_is_dead_lettered_naming_the_row_kept(bad_run):
    stats, dead, _, (imp_file, _) = bad_run
    dups = {d["table"]: d for d in dead if d["reason"] == "duplicate_row"}
    assert dups["impressions"]["value"] == f"same as row 0 of {imp_file}"
    assert dups["impressions"]["file"] == imp_file and dups["impressions"]["row"] > 0
    assert set(dups) == {"impressions"}  # two equal behaviours can be two clicks: kept, counted
    assert stats["input_columns"]["repeated_rows"] == {"behaviours": 1}


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory):
    """A JSONL log whose impressions carry an unread column, an empty context value and, in
    later rows, a context key the file's first row lacks and an unread key it lacks."""
    base = tmp_path_factory.mktemp("jsonl")
    raw, out = base / "raw", str(base / "out")
    synthetic.generate(synthetic.GeneratorConfig(users=25, seed=11, format="jsonl"), str(raw))
    imp_file = sorted(glob.glob(f"{raw}/impressions/*.jsonl"))[0]
    with open(imp_file) as fh:
        rows = [json.loads(line) for line in fh]
    rows = [{**r, "device": 3} for r in rows]
    rows[1]["ctx_scene"] = None
    rows[2]["ctx_device"] = 4
    rows[3]["browser"] = "firefox"  # not read: the row is kept, the key listed as ignored
    with open(imp_file, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    stats = job.run(PipelineConfig(input=str(raw), format="generic", out=out))
    with open(f"{out}/deadletter/deadletter-00000-of-00001.jsonl") as fh:
        dead = [json.loads(line) for line in fh if line.strip()]
    return stats, dead, imp_file


def test_jsonl_row_with_a_key_the_first_row_lacks_is_dead_lettered(jsonl_run):
    stats, dead, imp_file = jsonl_run
    late = [d for d in dead if d["reason"] == "unexpected_field"]
    assert [(d["table"], d["field"], d["file"], d["row"]) for d in late] == [
        ("impressions", "ctx_device", imp_file, 2)]
    assert "not in the file's first row" in late[0]["value"]
    assert stats["accounting"]["balanced"]


def test_empty_optional_values_and_unread_columns_are_counted(jsonl_run):
    stats, _, _ = jsonl_run
    assert stats["input_columns"]["filled_default"] == {"impressions/ctx_scene": 1}
    assert stats["input_columns"]["ignored"] == {"behaviours": [], "impressions": ["browser", "device"]}
    assert stats["input_columns"]["repeated_rows"] == {"behaviours": 0}
