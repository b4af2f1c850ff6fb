"""The synthetic TIR log generator: schema, determinism, trigger timing and planted intent."""
import glob
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tirec.pipeline import synthetic
from tirec.pipeline.synthetic import GeneratorConfig

H = 3600


def read_table(out: str, table: str, fmt: str = "parquet") -> pd.DataFrame:
    """Reads one table (single file or shards) with pandas."""
    paths = sorted(glob.glob(f"{out}/{table}/part-*.{fmt}")) or [f"{out}/{table}.{fmt}"]
    frames = []
    for path in paths:
        if fmt == "parquet":
            frames.append(pd.read_parquet(path))
        elif fmt == "csv":
            frames.append(pd.read_csv(path, dtype={"request_id": str, "btag": str}))
        else:
            frames.append(pd.read_json(path, lines=True, dtype=False))
    return pd.concat(frames, ignore_index=True)


def levels_of(out: str, imps: pd.DataFrame, requests: pd.DataFrame) -> np.ndarray:
    emb = pd.read_parquet(f"{out}/item_embeddings.parquet")
    vec = np.zeros((emb["item_id"].max() + 1, len(emb["embedding"].iloc[0])))
    vec[emb["item_id"].to_numpy()] = np.stack(emb["embedding"].to_numpy())
    trig = imps["request_id"].map(requests.set_index("request_id")["trigger_item_id"]).to_numpy()
    sim = np.einsum("ij,ij->i", vec[trig], vec[imps["item_id"].to_numpy()])
    return synthetic.similarity_level(sim)


def all_requests(cfg: GeneratorConfig) -> pd.DataFrame:
    return pd.concat([pd.DataFrame(c.requests) for c in synthetic.iter_chunks(cfg)], ignore_index=True)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """users=200 in three shards, parquet."""
    out = str(tmp_path_factory.mktemp("medium"))
    cfg = GeneratorConfig(users=200, seed=5, chunk_users=70)
    summary = synthetic.generate(cfg, out)
    return cfg, out, summary


def test_layout_and_summary(medium):
    cfg, out, summary = medium
    for name in ("items.parquet", "item_embeddings.parquet", "users.parquet",
                 "ground_truth_intent.parquet", "generator_config.json"):
        assert os.path.isfile(f"{out}/{name}"), name
    assert len(glob.glob(f"{out}/impressions/part-*.parquet")) == 3
    assert len(glob.glob(f"{out}/behaviours/part-*.parquet")) == 3
    assert sorted(summary["files"]) == sorted(
        os.path.relpath(p, out) for p in glob.glob(f"{out}/**/*.*", recursive=True))
    for table in ("impressions", "behaviours", "items", "item_embeddings", "users"):
        assert summary["rows"][table] == len(read_table(out, table)), table
    assert summary["rows"]["ground_truth_intent"] == cfg.users
    with open(f"{out}/generator_config.json") as fh:
        assert json.load(fh) == {**vars(cfg)}
    assert summary["items"] == cfg.n_items == 800


def test_schema_and_dtypes(medium):
    cfg, out, _ = medium
    ints = pa.int64()
    expected = {
        "items": {"item_id": ints, "cate_id": ints, "brand_id": ints, "price_bucket": ints},
        "item_embeddings": {"item_id": ints, "embedding": pa.list_(pa.float32())},
        "users": {"user_id": ints, "gender": ints, "age_level": ints, "city_level": ints,
                  "activity_level": ints},
        "ground_truth_intent": {"user_id": ints, "user_type": pa.string(),
                                **{f"pref_{j}": pa.float64() for j in range(6)}},
    }
    for table, cols in expected.items():
        schema = pq.read_schema(f"{out}/{table}.parquet")
        assert {f.name: f.type for f in schema} == cols, table
    for path in glob.glob(f"{out}/impressions/*.parquet"):
        schema = pq.read_schema(path)
        assert {f.name: f.type for f in schema} == {
            "user_id": ints, "item_id": ints, "ts": ints, "label": ints,
            "request_id": pa.string(), "ctx_scene": ints}
    for path in glob.glob(f"{out}/behaviours/*.parquet"):
        schema = pq.read_schema(path)
        assert {f.name: f.type for f in schema} == {
            "user_id": ints, "item_id": ints, "ts": ints, "btag": pa.string()}


def test_values_ids_and_embeddings(medium):
    cfg, out, _ = medium
    items = read_table(out, "items")
    n = cfg.n_items
    assert items["item_id"].tolist() == list(range(1, n + 1))
    assert items["cate_id"].between(1, cfg.categories).all()
    assert items["brand_id"].between(1, cfg.brands).all()
    assert items["price_bucket"].between(0, 9).all()
    assert items["cate_id"].nunique() == cfg.categories

    emb = read_table(out, "item_embeddings")
    assert emb["item_id"].tolist() == list(range(1, n + 1))
    vec = np.stack(emb["embedding"].to_numpy())
    assert vec.shape == (n, cfg.emb_dim) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)

    users = read_table(out, "users")
    assert users["user_id"].tolist() == list(range(1, cfg.users + 1))
    assert users[["gender", "age_level", "city_level", "activity_level"]].ge(0).all().all()
    assert users[["gender", "age_level", "city_level", "activity_level"]].le(6).all().all()

    imps, behs = read_table(out, "impressions"), read_table(out, "behaviours")
    for df in (imps, behs):
        assert df["user_id"].between(1, cfg.users).all()
        assert df["item_id"].between(1, n).all()
        assert df["ts"].between(cfg.start_ts, cfg.start_ts + cfg.days * 86400 - 1).all()
    assert set(imps["label"].unique()) <= {0, 1}
    assert set(behs["btag"].unique()) <= {"click", "cart", "fav", "buy"}
    assert (behs["btag"] == "click").mean() > 0.6
    assert imps["ctx_scene"].between(0, 2).all()
    # every request: one user, one ts, page_size distinct candidates; ids globally unique
    per_req = imps.groupby("request_id").agg(users=("user_id", "nunique"), ts=("ts", "nunique"),
                                             rows=("item_id", "size"), uniq=("item_id", "nunique"))
    assert (per_req["users"] == 1).all() and (per_req["ts"] == 1).all()
    assert (per_req["rows"] == cfg.page_size).all()
    assert (per_req["uniq"] >= cfg.page_size - 1).mean() > 0.99
    # behaviours sorted by (user, ts) inside each shard
    for path in sorted(glob.glob(f"{out}/behaviours/*.parquet")):
        b = pd.read_parquet(path)
        assert (b.sort_values(["user_id", "ts"], kind="stable").index == b.index).all()

    truth = read_table(out, "ground_truth_intent")
    assert truth["user_id"].tolist() == list(range(1, cfg.users + 1))
    assert set(truth["user_type"]) == {"specific", "broad"}
    prefs = truth[[f"pref_{j}" for j in range(6)]].to_numpy()
    np.testing.assert_allclose(prefs.sum(1), 1.0, atol=1e-9)
    assert (prefs > 0).all()


def test_ctr_and_clicked_requests(medium):
    _, out, summary = medium
    imps = read_table(out, "impressions")
    ctr = imps["label"].mean()
    assert 0.01 < ctr < 0.15
    assert summary["ctr"] == pytest.approx(ctr)
    clicked = imps.groupby("request_id")["label"].max().mean()
    assert 0.25 < clicked < 0.85
    assert summary["requests_with_click"] == int(imps.groupby("request_id")["label"].max().sum())


def test_candidates_cover_similarity_levels(medium):
    cfg, out, _ = medium
    imps = read_table(out, "impressions")
    level = levels_of(out, imps, all_requests(cfg))
    share = np.bincount(level, minlength=6) / len(level)
    assert (share[2:] > 0.05).all(), share


def test_trigger_is_the_most_recent_click(medium):
    cfg, out, _ = medium
    requests = all_requests(cfg)
    behs = read_table(out, "behaviours")
    clicks = behs[behs["btag"] == "click"].sort_values("ts", kind="stable")
    reqs = requests.sort_values("ts", kind="stable")
    last = pd.merge_asof(reqs, clicks.rename(columns={"ts": "click_ts", "item_id": "click_item"}),
                         left_on="ts", right_on="click_ts", by="user_id",
                         allow_exact_matches=False, direction="backward")
    assert last["click_ts"].notna().all()
    gap = last["ts"] - last["click_ts"]
    assert ((gap >= 5) & (gap <= 30 * 60) & (gap <= 4 * H)).all()
    # the most recent click before T is the planted trigger: nothing lies in between
    assert (last["click_ts"].astype(np.int64) == last["trigger_ts"]).all()
    assert (last["click_item"].astype(np.int64) == last["trigger_item_id"]).all()
    # exactly one click in [trigger_ts, T]
    m = clicks.merge(reqs[["user_id", "ts", "trigger_ts", "request_id"]], on="user_id",
                     suffixes=("", "_req"))
    inside = m[(m["ts"] >= m["trigger_ts"]) & (m["ts"] <= m["ts_req"])]
    assert inside.groupby("request_id").size().reindex(reqs["request_id"]).eq(1).all()
    # requests of one user are far enough apart for the previous clicks to end before the trigger
    assert (reqs.sort_values(["user_id", "ts"]).groupby("user_id")["ts"].diff().dropna()
            >= 40 * 60).all()


def test_clicked_impressions_become_later_behaviour_clicks(medium):
    _, out, _ = medium
    imps = read_table(out, "impressions")
    behs = read_table(out, "behaviours")
    pos = imps[imps["label"] == 1].reset_index(drop=True)
    pos["row"] = np.arange(len(pos))
    clicks = behs[behs["btag"] == "click"]
    m = pos.merge(clicks, on=["user_id", "item_id"], suffixes=("", "_beh"))
    delay = m["ts_beh"] - m["ts"]
    found = m[(delay >= 1) & (delay <= 120)]["row"].unique()
    assert len(pos) > 100 and len(found) == len(pos)


def test_specific_users_click_closer_to_the_trigger(tmp_path):
    cfg = GeneratorConfig(users=400, seed=13, days=4, requests_per_user_day=2.5)
    out = str(tmp_path)
    synthetic.generate(cfg, out)
    imps = read_table(out, "impressions")
    level = levels_of(out, imps, all_requests(cfg))
    truth = read_table(out, "ground_truth_intent").set_index("user_id")
    kind = imps["user_id"].map(truth["user_type"]).to_numpy()
    click = imps["label"].to_numpy() == 1
    spec, broad = level[click & (kind == "specific")], level[click & (kind == "broad")]
    assert len(spec) > 300 and len(broad) > 300
    top_s, top_b = (spec >= 4).mean(), (broad >= 4).mean()
    pooled = (spec >= 4).tolist() + (broad >= 4).tolist()
    p = np.mean(pooled)
    z = (top_s - top_b) / np.sqrt(p * (1 - p) * (1 / len(spec) + 1 / len(broad)))
    assert top_s - top_b > 0.2 and z > 6, (top_s, top_b, z)
    assert spec.mean() > broad.mean() + 0.4
    # the planted preferences differ in the same direction
    prefs = truth[[f"pref_{j}" for j in range(6)]]
    top_mass = prefs["pref_4"] + prefs["pref_5"]
    assert top_mass[truth["user_type"] == "specific"].mean() > 0.7
    assert top_mass[truth["user_type"] == "broad"].mean() < 0.55


def test_determinism(tmp_path):
    cfg = GeneratorConfig(users=30, seed=3)
    a, b, c = (str(tmp_path / k) for k in "abc")
    synthetic.generate(cfg, a)
    synthetic.generate(cfg, b)
    synthetic.generate(GeneratorConfig(users=30, seed=4), c)
    files_a = sorted(os.path.relpath(p, a) for p in glob.glob(f"{a}/**/*.*", recursive=True))
    files_b = sorted(os.path.relpath(p, b) for p in glob.glob(f"{b}/**/*.*", recursive=True))
    assert files_a == files_b
    for rel in files_a:
        with open(f"{a}/{rel}", "rb") as fa, open(f"{b}/{rel}", "rb") as fb:
            assert fa.read() == fb.read(), rel
    for table in ("impressions", "behaviours", "items", "users"):
        pd.testing.assert_frame_equal(read_table(a, table), read_table(b, table))
        assert not read_table(a, table).equals(read_table(c, table)), table


def test_chunking_gives_the_same_tables(tmp_path):
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    s1 = synthetic.generate(GeneratorConfig(users=30, seed=9), one)
    s2 = synthetic.generate(GeneratorConfig(users=30, seed=9, chunk_users=7), many)
    assert len(glob.glob(f"{one}/impressions/*.parquet")) == 1
    shards = sorted(glob.glob(f"{many}/impressions/*.parquet"))
    assert len(shards) == 5 and len(glob.glob(f"{many}/behaviours/*.parquet")) == 5
    assert s1["rows"] == s2["rows"]
    for table in ("impressions", "behaviours", "users", "ground_truth_intent"):
        pd.testing.assert_frame_equal(read_table(one, table), read_table(many, table))
    # each shard holds only its own users, in order
    for k, path in enumerate(shards):
        users = pd.read_parquet(path)["user_id"]
        assert users.between(7 * k + 1, 7 * k + 7).all()


def test_day_files_split_each_shard_by_day_and_keep_every_row(tmp_path):
    plain, daily = str(tmp_path / "plain"), str(tmp_path / "daily")
    s1 = synthetic.generate(GeneratorConfig(users=20, seed=5, days=4), plain)
    s2 = synthetic.generate(GeneratorConfig(users=20, seed=5, days=4, day_files=True), daily)
    assert s1["rows"] == s2["rows"]
    for table in ("impressions", "behaviours"):
        shards = sorted(glob.glob(f"{daily}/{table}/*.parquet"))
        assert [os.path.basename(p) for p in shards] == [f"part-00000-day{d:04d}.parquet" for d in (1, 2, 3, 4)]
        for path in shards:  # each shard holds exactly its day
            day = int(path[-12:-8])
            ts = pd.read_parquet(path)["ts"].to_numpy()
            assert (synthetic.day_of(ts, GeneratorConfig()) == day).all()
        a, b = read_table(plain, table), read_table(daily, table)
        cols = [c for c in a.columns if a[c].dtype != object]
        pd.testing.assert_frame_equal(a.sort_values(cols).reset_index(drop=True),
                                      b.sort_values(cols).reset_index(drop=True))
    with pytest.raises(ValueError, match="day_files"):
        GeneratorConfig(day_files=1)


def test_progress_callback(tmp_path):
    seen = []
    synthetic.generate(GeneratorConfig(users=25, seed=1, chunk_users=10), str(tmp_path),
                       progress=seen.append)
    assert seen == [10, 10, 5]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_formats_hold_the_same_tables(tmp_path, fmt):
    base, text = str(tmp_path / "parquet"), str(tmp_path / fmt)
    synthetic.generate(GeneratorConfig(users=30, seed=2), base)
    summary = synthetic.generate(GeneratorConfig(users=30, seed=2, format=fmt), text)
    assert os.path.isfile(f"{text}/item_embeddings.{fmt}")
    assert os.path.isfile(f"{text}/ground_truth_intent.parquet")
    assert all(not f.endswith(".parquet") or f == "ground_truth_intent.parquet"
               for f in summary["files"])
    for table in ("impressions", "behaviours", "items", "users"):
        pd.testing.assert_frame_equal(read_table(text, table, fmt), read_table(base, table),
                                      check_dtype=False, check_column_type=False)
    emb = read_table(text, "item_embeddings", fmt)
    if fmt == "csv":
        vec = np.stack([np.array(s.split(), dtype=np.float32) for s in emb["embedding"]])
    else:
        vec = np.array(emb["embedding"].tolist(), dtype=np.float32)
    ref = np.stack(read_table(base, "item_embeddings")["embedding"].to_numpy())
    np.testing.assert_array_equal(vec, ref)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_generic_reader_accepts_every_format(tmp_path, fmt):
    io = pytest.importorskip("tirec.pipeline.io")
    formats = pytest.importorskip("tirec.pipeline.formats")
    summary = synthetic.generate(GeneratorConfig(users=12, seed=6, format=fmt), str(tmp_path))
    schemas = {"impressions": formats.IMPRESSIONS, "behaviours": formats.BEHAVIOURS,
               "users": formats.USERS, "items": formats.ITEMS,
               "item_embeddings": formats.ITEM_EMBEDDINGS}
    for table, schema in schemas.items():
        paths = io.discover(str(tmp_path), table)
        assert paths, table
        rows = 0
        for path in paths:
            for chunk, dead in io.read_chunks(path, schema):
                assert dead == [], (table, dead[:2])
                rows += len(chunk)
        assert rows == summary["rows"][table] > 0, table


def test_stale_files_of_another_format_are_removed(tmp_path):
    synthetic.generate(GeneratorConfig(users=20, seed=1, format="csv", chunk_users=5), str(tmp_path))
    synthetic.generate(GeneratorConfig(users=20, seed=1), str(tmp_path))
    assert not glob.glob(f"{tmp_path}/**/*.csv", recursive=True)
    assert len(glob.glob(f"{tmp_path}/impressions/*")) == 1


@pytest.mark.parametrize("field,value", [
    ("users", 0), ("seed", -1), ("items", 5), ("categories", 0), ("emb_dim", 1), ("days", 0),
    ("start_ts", 1_700_000_000), ("requests_per_user_day", -1.0), ("page_size", 0),
    ("noise_frac", 1.5), ("specific_frac", -0.1), ("drift", 2.0), ("target_ctr", 0.0),
    ("format", "xml"), ("chunk_users", 0), ("users", "many"), ("target_ctr", float("nan")),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"GeneratorConfig\.{field}="):
        GeneratorConfig(**{field: value})  # validated when built: no invalid config exists
