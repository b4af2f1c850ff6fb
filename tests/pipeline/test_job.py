"""The Beam job on DirectRunner: every written record keeps the labeling invariants."""
import glob
import json

import numpy as np
import pytest
import tensorflow as tf

from tirec.features import transforms
from tirec.features.spec import FeatureSpec
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.embeddings import EmbeddingArtifact

H, DAY = 3600, 86400


def read_records(out: str, split: str) -> dict:
    spec = FeatureSpec.load(f"{out}/spec.json")
    files = sorted(glob.glob(f"{out}/{split}/*.tfrecord.gz"))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(100_000)
    cols = {}
    for batch in ds:
        parsed = tf.io.parse_example(batch, spec.parse_example_spec())
        for k, v in parsed.items():
            cols.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("job")
    raw, out = str(base / "raw"), str(base / "out")
    synthetic.generate(synthetic.GeneratorConfig(users=60, seed=3), raw)
    stats = job.run(PipelineConfig(input=raw, format="synthetic", out=out))
    return raw, out, stats


def test_layout_and_stats(run):
    raw, out, stats = run
    for path in ("spec.json", "stats.json", "config.json", "item_embeddings/ids.npy",
                 "item_embeddings/vectors.npy"):
        assert glob.glob(f"{out}/{path}"), path
    for split in ("train", "valid", "eval"):
        assert glob.glob(f"{out}/{split}/*.tfrecord.gz"), split
    assert glob.glob(f"{out}/deadletter/*.jsonl")
    with open(f"{out}/stats.json") as fh:
        on_disk = json.load(fh)
    assert on_disk["accounting"] == stats["accounting"]
    acc = stats["accounting"]
    assert acc["balanced"] and acc["behaviours_balanced"]
    assert acc["impressions_in"] == acc["written"] + acc["dropped"] + acc["deadlettered"]
    assert stats["deadletter_total"] == 0
    assert 0.005 < stats["ctr"]["train"] < 0.2
    assert abs(sum(stats["intent_histogram"]) - 1.0) < 1e-5  # rounded to 6 decimals
    assert stats["embedding"]["provider"] == "precomputed"
    assert sum(stats["seq_len_histogram"]["counts"]) == sum(stats["written"].values())
    assert set(stats["written"]) == set(stats["clicks"]) == set(stats["ctr"]) == {"train", "valid", "eval"}


def test_stats_json_keys_stay(run):
    # dashboards read stats.json by these keys, in this order; drops by their historical names
    _, out, _ = run
    with open(f"{out}/stats.json") as fh:
        on_disk = json.load(fh)
    assert list(on_disk) == [
        "format", "input", "seconds", "rows_in", "written", "deadletter", "deadletter_total",
        "dropped", "ctr", "clicks", "requests", "requests_with_click", "impressions_with_trigger",
        "intent_histogram", "level_histogram_all", "level_histogram_clicked", "seq_len_histogram",
        "explicit_len_histogram", "behaviours_used", "users_with_profile", "users_without_profile",
        "eval_from_ts", "split", "sim_range", "explicit_threshold", "embedding", "notes",
        "accounting", "level_warnings", "input_columns"]
    assert list(on_disk["dropped"]) == ["impressions_dropped_no_trigger",
                                        "impressions_dropped_user_cap", "behaviours_dropped_user_cap"]
    assert list(on_disk["accounting"]) == ["impressions_in", "written", "dropped", "deadlettered",
                                           "balanced", "behaviours_balanced"]


def test_level_warnings_name_empty_and_crowded_levels_and_the_remedy():
    from tirec.pipeline.job import level_warnings

    movielens = [0, 3, 34400, 116447, 21476, 5014]  # ml-latest-small's levels, fixed range
    notes = level_warnings(movielens, "fixed", -1.0, 1.0)
    assert notes[0] == "2 of 6 similarity levels hold under 1% of the rows (levels [0, 1])"
    assert notes[1] == "level 3 holds 66% of the rows"
    assert "pipeline.sim_range=quantile" in notes[2]
    assert level_warnings([10, 12, 9, 11], "fixed", -1.0, 1.0) == []  # spread: nothing to say
    assert len(level_warnings(movielens, "quantile", 0.0, 0.4)) == 2  # no remedy to suggest
    assert level_warnings([0, 0, 0], "fixed", -1.0, 1.0) == []


def test_every_record_keeps_the_invariants(run):
    raw, out, stats = run
    spec = FeatureSpec.load(f"{out}/spec.json")
    art = EmbeddingArtifact.load(f"{out}/item_embeddings")
    n, L, tau = spec.intent_levels, spec.max_seq_len, spec.explicit_threshold
    train, valid, ev = (read_records(out, s) for s in ("train", "valid", "eval"))
    for name, recs in (("train", train), ("valid", valid), ("eval", ev)):
        assert len(recs["label"]) == stats["written"][name], name
    split = stats["split"]
    assert split["eval_from_ts"] == stats["eval_from_ts"]
    assert ev["impression_ts"].min() >= stats["eval_from_ts"] > valid["impression_ts"].max()
    assert valid["impression_ts"].min() >= split["valid_from_ts"] > train["impression_ts"].max()
    r = {k: np.concatenate([train[k], valid[k], ev[k]]) for k in train}
    ts = r["impression_ts"]

    assert set(np.unique(r["label"])) <= {0, 1}
    # trigger: strictly earlier, within 4 h (inclusive)
    assert (r["has_trigger"] == 1).all()
    gap = ts - r["trigger_ts"]
    assert (gap > 0).all() and (gap <= 4 * H).all()
    # history: strictly earlier, within 14 days, most recent first, padding after the real ones
    valid = r["hist_ts"] > 0
    assert (valid.sum(1) == r["hist_len"]).all() and (r["hist_len"] <= L).all()
    pos = np.arange(L)[None, :]
    assert (valid == (pos < r["hist_len"][:, None])).all()
    assert (np.where(valid, r["hist_ts"], 0) < ts[:, None]).all()
    assert (np.where(valid, r["hist_ts"], ts[:, None]) >= ts[:, None] - 14 * DAY).all()
    assert (np.diff(np.where(valid, r["hist_ts"], 0), axis=1) <= 0).all()
    assert (r["hist_item_ids"][~valid] == 0).all()
    # similarity and level
    tv, _ = art.lookup(r["trigger_item_id"])
    cv, _ = art.lookup(r["target_item_id"])
    np.testing.assert_allclose(r["trigger_target_sim"], np.einsum("ij,ij->i", tv, cv), atol=1e-5)
    np.testing.assert_array_equal(r["trigger_target_level"],
                                  transforms.bin_index(r["trigger_target_sim"], n, *spec.sim_range))
    hv, _ = art.lookup(r["hist_item_ids"].reshape(-1))
    hsim = np.einsum("ijk,ik->ij", hv.reshape(len(ts), L, -1), tv)
    np.testing.assert_allclose(np.where(valid, r["hist_trigger_sim"], 0), np.where(valid, hsim, 0), atol=1e-5)
    # explicit mask
    np.testing.assert_array_equal(r["explicit_mask"], ((r["hist_trigger_sim"] >= tau) & valid).astype(int))
    # intent distribution: recomputed from the records of each request
    rid = r["request_id"]
    _, group = np.unique(rid, return_inverse=True)
    counts = transforms.grouped_intent_counts(group, r["trigger_target_level"], r["label"], n)
    np.testing.assert_array_equal(r["intent_counts"], counts)
    clicks = counts.sum(1)
    np.testing.assert_allclose(r["intent_dist"].sum(1), (clicks > 0).astype(float), atol=1e-6)
    np.testing.assert_allclose(r["intent_dist"], transforms.counts_to_distribution(counts), atol=1e-6)
    # clicks in the trigger's category: recomputed per request, one by one
    assert [f.name for f in spec.features].index("intent_cate_clicks") == \
        [f.name for f in spec.features].index("prior_intent") + 1
    same_cate = r["target_cate_id"] == r["trigger_cate_id"]
    click = (r["label"] == 1) & (r["has_trigger"] == 1)
    want = [int((click & same_cate)[group == g].sum()) for g in range(group.max() + 1)]
    np.testing.assert_array_equal(r["intent_cate_clicks"], np.array(want)[group])
    assert 0 < (r["intent_cate_clicks"] > 0).sum() < (clicks > 0).sum()  # both label values occur
    # all impressions of a request share user and trigger
    for key in ("user_id", "trigger_item_id", "trigger_ts"):
        first = np.zeros(group.max() + 1, dtype=r[key].dtype)
        first[group] = r[key]
        assert (first[group] == r[key]).all(), key
    # prior intent: recomputed pairwise from all records of the user (train and eval), so a user
    # split over two finalize batches would show
    np.testing.assert_allclose(r["prior_intent"], _prior_intent_by_pairs(r, group, n, 7 * DAY),
                               rtol=1e-5, atol=1e-6)
    assert (r["prior_intent"].sum(1) > 0).mean() > 0.5


def _prior_intent_by_pairs(r: dict, group: np.ndarray, n: int, half_life: int) -> np.ndarray:
    """Reference prior_intent: for each request, every earlier click of its user, one by one."""
    start = np.full(group.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(start, group, r["impression_ts"])
    user = np.zeros(group.max() + 1, dtype=np.int64)
    user[group] = r["user_id"]
    click = (r["label"] == 1) & (r["has_trigger"] == 1)
    by_request = np.zeros((group.max() + 1, n))
    for q, t in enumerate(start):
        earlier = click & (r["user_id"] == user[q]) & (r["impression_ts"] < t)
        w = np.zeros(n)
        age = t - r["impression_ts"][earlier]
        np.add.at(w, r["trigger_target_level"][earlier], 2.0 ** (-age / half_life))
        by_request[q] = w / w.sum() if w.sum() > 0 else 0.0
    return by_request[group]


def test_quantile_range_and_pad_mode(tmp_path, run):
    raw, _, _ = run
    out = str(tmp_path / "q")
    stats = job.run(PipelineConfig(input=raw, format="synthetic", out=out, sim_range="quantile",
                                   no_trigger="pad", intent_levels=4))
    spec = FeatureSpec.load(f"{out}/spec.json")
    lo, hi = spec.sim_range
    assert -1.0 < lo < hi < 1.0 and stats["sim_range"] == [lo, hi]
    assert spec.explicit_threshold == pytest.approx(transforms.explicit_threshold(4, 2, lo, hi))
    assert stats["dropped"]["impressions_dropped_no_trigger"] == 0
    assert stats["accounting"]["balanced"]
    r = read_records(out, "train")
    np.testing.assert_array_equal(r["trigger_target_level"], transforms.bin_index(r["trigger_target_sim"], 4, lo, hi))


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("small") / "raw")
    synthetic.generate(synthetic.GeneratorConfig(users=15, seed=5, days=3), raw)
    return raw


def test_non_finite_floats_are_dead_lettered_and_the_job_succeeds(small_raw, tmp_path, monkeypatch):
    import pandas as pd

    from tirec.pipeline import labeling

    real = labeling.finalize

    def poisoned(cols, *args, **kwargs):
        out, stats = real(cols, *args, **kwargs)
        ts = out["impression_ts"]
        out["trigger_target_sim"] = np.where(ts % 7 == 0, np.nan, out["trigger_target_sim"])
        out["hist_trigger_sim"][ts % 11 == 0, 0] = np.inf
        return out, stats

    monkeypatch.setattr(labeling, "finalize", poisoned)
    out = str(tmp_path / "out")
    stats = job.run(PipelineConfig(input=small_raw, format="synthetic", out=out))
    acc = stats["accounting"]
    assert acc["balanced"], acc
    dead = []
    for path in glob.glob(f"{out}/deadletter/*.jsonl"):
        with open(path) as fh:
            dead += [json.loads(line) for line in fh if line.strip()]
    bad = [d for d in dead if d["reason"] == "non_finite_feature"]
    assert bad and stats["deadletter"]["impressions/non_finite_feature"] == len(bad) == acc["deadlettered"]
    for d in bad:  # each names the feature and value, and points at its source row
        assert (d["field"], d["value"]) in {("trigger_target_sim", "nan"), ("hist_trigger_sim", "inf")}
        ts = int(pd.read_parquet(d["file"]).iloc[d["row"]]["ts"])
        assert ts % 7 == 0 if d["field"] == "trigger_target_sim" else ts % 11 == 0
    written = np.concatenate([read_records(out, s)["impression_ts"] for s in ("train", "valid", "eval")])
    assert len(written) == acc["written"] and not np.any((written % 7 == 0) | (written % 11 == 0))


def test_unbalanced_accounting_publishes_nothing(small_raw, tmp_path, monkeypatch):
    from tirec.pipeline import labeling

    real = labeling.label_user

    def lossy(*args, **kwargs):  # silently loses each user's last impression
        cols, dead, stats = real(*args, **kwargs)
        return {k: v[:-1] for k, v in cols.items()}, dead, stats

    monkeypatch.setattr(labeling, "label_user", lossy)
    out = tmp_path / "out"
    with pytest.raises(job.AccountingError, match="does not balance.*Nothing was published") as err:
        job.run(PipelineConfig(input=small_raw, format="synthetic", out=str(out)))
    assert not out.exists()
    partial = err.value.partial
    assert partial.startswith(f"{out}.tmp-") and partial in str(err.value)
    with open(f"{partial}/stats.json") as fh:
        assert json.load(fh)["accounting"]["balanced"] is False


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _outputs(folder, tag):
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "part-00000-of-00001.tfrecord.gz").write_text(tag)
    (folder / "stats.json").write_text(tag)


def test_publish_replaces_a_previous_output_only(tmp_path):
    work, out = tmp_path / "out.tmp-1", tmp_path / "out"
    _outputs(work, "new")
    _outputs(out, "old")
    (out / "valid").mkdir()  # a split the new run does not have
    job._publish(str(work), str(out))
    assert _tree(out) == {"stats.json": "new", "train/part-00000-of-00001.tfrecord.gz": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds \['notes.txt'\].*choose an empty or new one"):
        job.run(PipelineConfig(input=str(tmp_path / "missing"), format="synthetic", out=str(out)))


def test_file_by_file_publish_moves_stats_json_last(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    work, out = tmp_path / "out.tmp-2", tmp_path / "out"
    _outputs(work, "new")
    _outputs(out, "old")
    (out / "eval").mkdir()
    (out / "eval" / "part-0.tfrecord.gz").write_text("old")
    moved = []
    real = FileSystems.rename
    monkeypatch.setattr(FileSystems, "rename",
                        staticmethod(lambda src, dst: (moved.extend(dst), real(src, dst))))
    job._publish_files(str(work), str(out))
    assert moved[-1] == f"{out}/stats.json" and len(moved) == 2
    assert _tree(out) == {"stats.json": "new", "train/part-00000-of-00001.tfrecord.gz": "new"}
    assert not work.exists()


def test_every_split_has_its_n_files_and_the_dead_letter_file_exists(small_raw, tmp_path):
    """64 shards for 15 users: the shards that hold no user still get their (empty) files, and a
    run without dead letters still writes the dead-letter file (empty)."""
    import os

    out = str(tmp_path / "out")
    stats = job.run(PipelineConfig(input=small_raw, format="synthetic", out=out, max_seq_len=10, num_shards=64))
    for split in ("train", "eval"):
        files = sorted(glob.glob(f"{out}/{split}/*"))
        assert [os.path.basename(f) for f in files] == [f"part-{k:05d}-of-00064.tfrecord.gz" for k in range(64)]
        n = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
        assert n == stats["written"][split] > 0
    assert stats["deadletter_total"] == 0
    assert open(f"{out}/deadletter/deadletter-00000-of-00001.jsonl").read() == ""
