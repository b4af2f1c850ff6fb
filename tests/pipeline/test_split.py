"""The train / valid / eval split: the rule on hand-built time profiles, its errors, and an
end-to-end run of each reader on data spanning less time than fixed defaults assume."""
import glob
import json

import numpy as np
import pytest

from tirec.pipeline import job, split, synthetic
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.split import DAY, SplitError, SplitSettings, TimeProfile, plan_split

T0 = 1_700_006_400  # 2023-11-15 00:00:00 UTC
H = 3600


def _profile(ts) -> TimeProfile:
    prof = TimeProfile()
    prof.add(np.asarray(ts, np.int64))
    return prof


def _even_days(n_days: int, per_day: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([T0 + d * DAY + rng.integers(0, DAY, per_day) for d in range(n_days)])


# ---- the rule -----------------------------------------------------------------------------------

def test_auto_takes_the_last_day_and_the_day_before_on_eight_even_days():
    plan = plan_split(_profile(_even_days(8)), SplitSettings(), "impressions")
    assert plan.rule == "days"
    assert plan.eval_from_ts == T0 + 7 * DAY and plan.valid_from_ts == T0 + 6 * DAY
    assert plan.events == {"train": 3000, "valid": 500, "eval": 500}
    stats = plan.to_stats()
    assert stats["eval_days"] == 1 and stats["valid_days"] == 1 and stats["requested"] == "auto"
    assert stats["time_span"]["days"] == 8 and "auto" in stats["reason"]


def test_auto_takes_many_days_when_the_last_days_hold_few_events():
    # MovieLens-like: 3000 days, the newest days ever sparser
    days = np.arange(3000)
    per_day = np.maximum(1, (200 * np.exp(-days / 600)).astype(int))
    ts = np.repeat(T0 + days * DAY, per_day) + 3600
    plan = plan_split(_profile(ts), SplitSettings(), "behaviours")
    assert plan.rule == "days"
    shares = plan.to_stats()["event_shares"]
    assert 0.1 <= shares["eval"] <= 0.2 and 0.1 <= shares["valid"] <= 0.2
    assert plan.to_stats()["eval_days"] > 30
    assert plan.eval_from_ts % DAY == 0 and plan.valid_from_ts % DAY == 0


def test_auto_cuts_at_event_times_within_a_single_day():
    ts = T0 + 8 * H + np.arange(1000) * 30  # one event every 30 s over 8.3 hours
    plan = plan_split(_profile(ts), SplitSettings(), "impressions")
    assert plan.rule == "fraction" and "whole days do not fit" in plan.reason
    assert plan.events == {"train": 800, "valid": 100, "eval": 100}
    assert plan.eval_from_ts == ts[900] and plan.valid_from_ts == ts[800]


def test_auto_falls_back_when_the_last_day_holds_most_events():
    ts = np.concatenate([_even_days(6, per_day=100), T0 + 6 * DAY + np.arange(2000) * 5])
    plan = plan_split(_profile(ts), SplitSettings(), "impressions")
    assert plan.rule == "fraction"
    assert plan.eval_from_ts > T0 + 6 * DAY  # inside the heavy last day
    assert plan.events["eval"] == pytest.approx(0.1 * len(ts), abs=2)


def test_days_and_fraction_rules_when_asked_for():
    prof = _profile(_even_days(8))
    days = plan_split(prof, SplitSettings("days", eval_days=2, valid_days=0), "impressions")
    assert days.eval_from_ts == T0 + 6 * DAY and days.valid_from_ts is None
    assert days.events == {"train": 3000, "valid": 0, "eval": 1000}
    frac = plan_split(prof, SplitSettings("fraction", eval_fraction=0.25, valid_fraction=0.25),
                      "impressions")
    assert frac.rule == "fraction"
    assert frac.events["eval"] == pytest.approx(1000, abs=2) and frac.events["valid"] == pytest.approx(1000, abs=2)


def test_no_time_to_split_fails_naming_the_option():
    with pytest.raises(SplitError, match=r"train split would be empty.*pipeline\.eval_fraction"):
        plan_split(_profile(np.full(50, T0)), SplitSettings(), "impressions")
    with pytest.raises(SplitError, match=r"train split would be empty.*pipeline\.eval_days / pipeline\.valid_days"):
        plan_split(_profile(_even_days(2)), SplitSettings("days", eval_days=1, valid_days=1), "impressions")
    with pytest.raises(SplitError, match="nothing to split"):
        plan_split(TimeProfile(), SplitSettings(), "impressions")


def test_empty_valid_is_an_error_only_when_asked_for():
    # days 0..5 and 7: day 6 (the valid day) holds nothing
    ts = np.concatenate([_even_days(6), T0 + 7 * DAY + np.arange(10)])
    with pytest.raises(SplitError, match=r"valid split would be empty.*pipeline\.valid_days"):
        plan_split(_profile(ts), SplitSettings("days", valid_days=1), "impressions")
    plan = plan_split(_profile(ts), SplitSettings("days"), "impressions")
    assert plan.valid_from_ts is None and "valid split empty" in plan.warnings[0]
    # two distinct times: eval takes the newer, train keeps the older, nothing left for valid
    two = np.array([T0] * 10 + [T0 + 60] * 2)
    with pytest.raises(SplitError, match=r"valid split would be empty.*pipeline\.valid_fraction"):
        plan_split(_profile(two), SplitSettings("fraction", valid_fraction=0.1), "impressions")
    auto = plan_split(_profile(two), SplitSettings(), "impressions")
    assert auto.valid_from_ts is None and auto.events == {"train": 10, "valid": 0, "eval": 2}
    assert auto.to_stats()["warnings"]


def test_written_issues_name_the_option():
    plan = plan_split(_profile(_even_days(8)), SplitSettings(), "impressions")
    errors, warnings = plan.written_issues({"train": 10, "valid": 0, "eval": 0})
    assert len(errors) == 1 and "no eval record" in errors[0] and "pipeline.eval_fraction" in errors[0]
    assert "no valid record" in warnings[0]
    explicit = plan_split(_profile(_even_days(8)), SplitSettings("days", valid_days=1), "impressions")
    errors, _ = explicit.written_issues({"train": 10, "valid": 0, "eval": 5})
    assert "pipeline.valid_days" in errors[0]


def test_profile_memory_is_bounded_and_counts_are_kept():
    prof = TimeProfile(max_buckets=64)
    rng = np.random.default_rng(1)
    ts = T0 + rng.integers(0, 10 * DAY, 5000)
    for part in np.array_split(ts, 7):
        prof.add(part)
    starts, counts = prof.fine()
    assert len(starts) <= 64 and prof.shift > 0 and counts.sum() == 5000
    assert np.all(np.diff(starts) > 0) and starts[0] <= ts.min()
    days, day_counts = prof.days()  # day counts stay exact
    want_days, want = np.unique(ts // DAY, return_counts=True)
    np.testing.assert_array_equal(days, want_days)
    np.testing.assert_array_equal(day_counts, want)


@pytest.mark.parametrize("kw,field", [
    (dict(eval_days=2), "eval_days"), (dict(split="fraction", valid_days=0), "valid_days"),
    (dict(split="days", eval_fraction=0.2), "eval_fraction"), (dict(split="days", eval_days=0), "eval_days"),
    (dict(valid_fraction=0.7), "valid_fraction"), (dict(split="weekly"), "split"),
])
def test_split_options_are_checked(kw, field):
    with pytest.raises(ValueError, match=f"pipeline.{field}"):
        PipelineConfig(**kw)


# ---- end to end: each reader on a short time span -----------------------------------------------

def _split_records(out) -> dict:
    import tensorflow as tf

    from tirec.features.spec import FeatureSpec

    spec = FeatureSpec.load(f"{out}/spec.json")
    parse = {"impression_ts": spec.parse_example_spec()["impression_ts"]}
    times = {}
    for name in ("train", "valid", "eval"):
        files = sorted(glob.glob(f"{out}/{name}/*.tfrecord.gz"))
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(10_000)
        times[name] = np.concatenate([tf.io.parse_example(b, parse)["impression_ts"].numpy()
                                      for b in ds] or [np.zeros(0, np.int64)])
    return times


def _check_three_splits(out, stats, rule):
    assert all(stats["written"].get(k, 0) > 0 for k in ("train", "valid", "eval")), stats["written"]
    with open(f"{out}/stats.json") as fh:
        on_disk = json.load(fh)
    sp = on_disk["split"]
    assert sp["rule"] == rule and sp["requested"] == "auto" and sp["reason"]
    assert on_disk["eval_from_ts"] == sp["eval_from_ts"] > sp["valid_from_ts"]
    assert set(on_disk["written"]) == {"train", "valid", "eval"}
    assert stats["accounting"]["balanced"] and stats["accounting"]["behaviours_balanced"]
    times = _split_records(out)
    assert {k: len(v) for k, v in times.items()} == stats["written"]
    assert times["train"].max() < sp["valid_from_ts"] <= times["valid"].min()
    assert times["valid"].max() < sp["eval_from_ts"] <= times["eval"].min()
    return sp


def test_synthetic_data_of_one_day(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    synthetic.generate(synthetic.GeneratorConfig(users=25, seed=4, days=1), str(raw))
    stats = job.run(PipelineConfig(input=str(raw), format="synthetic", out=str(out)))
    sp = _check_three_splits(out, stats, "fraction")
    assert sp["time_span"]["days"] == 1
    assert sp["event_shares"]["eval"] == pytest.approx(0.1, abs=0.01)


MOVIES = "movieId,title,genres\n" + "".join(
    f"{m},Movie {m} ({1980 + m}),{('Action', 'Comedy|Drama', 'Horror')[m % 3]}\n" for m in range(1, 31))


def test_movielens_release_spanning_twenty_days(tmp_path):
    # 10 users rate 3 movies a day (20 min apart) for 20 days: well under the former 365-day eval
    rows = ["userId,movieId,rating,timestamp"]
    for user in range(1, 11):
        for day in range(20):
            for k in range(3):
                movie = (user * 7 + day * 3 + k) % 30 + 1
                rating = (5.0, 4.0, 2.5)[(user + day + k) % 3]
                rows.append(f"{user},{movie},{rating},{T0 + day * DAY + 10 * H + k * 1200}")
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text(MOVIES)
    (d / "ratings.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    stats = job.run(PipelineConfig(input=str(d), format="movielens", out=str(out), emb_dim=4))
    sp = _check_three_splits(out, stats, "days")
    assert sp["source"] == "behaviours" and sp["time_span"]["days"] == 20
    assert sp["eval_days"] == 2 and sp["valid_days"] == 2  # 2 x 5 % of the ratings each


AD_FEATURE = "adgroup_id,cate_id,campaign_id,customer,brand,price\n" + "".join(
    f"{a},{10 + a % 3},{100 + a},{1000 + a},{500 + a},{a}.0\n" for a in range(1, 9))


def test_alimama_log_of_one_day(tmp_path):
    raw = ["user,time_stamp,adgroup_id,pid,nonclk,clk"]
    beh = ["user,time_stamp,btag,cate,brand"]
    for user in range(1, 13):
        for hour in range(8, 20):
            base = T0 + hour * H + user * 30
            beh.append(f"{user},{base - 600},pv,{10 + user % 3},{500 + user % 8}")
            raw.append(f"{user},{base},{1 + (user + hour) % 8},430548_1007,0,1")
            for k, gap in enumerate((300, 900)):
                raw.append(f"{user},{base + gap},{1 + (user + hour + k + 1) % 8},430548_1007,1,0")
    d = tmp_path / "ali"
    d.mkdir()
    (d / "raw_sample.csv").write_text("\n".join(raw) + "\n")
    (d / "behavior_log.csv").write_text("\n".join(beh) + "\n")
    (d / "ad_feature.csv").write_text(AD_FEATURE)
    out = tmp_path / "out"
    stats = job.run(PipelineConfig(input=str(d), format="alimama", out=str(out), emb_dim=4))
    sp = _check_three_splits(out, stats, "fraction")
    assert sp["source"] == "impressions" and sp["time_span"]["days"] == 1


def test_split_that_would_be_empty_fails_before_writing(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    synthetic.generate(synthetic.GeneratorConfig(users=10, seed=4, days=2), str(raw))
    cfg = PipelineConfig(input=str(raw), format="synthetic", out=str(out), split="days",
                         eval_days=1, valid_days=1)
    with pytest.raises(SplitError, match=r"pipeline\.eval_days / pipeline\.valid_days"):
        job.run(cfg)
    assert not out.exists() and not glob.glob(f"{out}.tmp-*")


def test_assign_routes_times_to_splits():
    ids = split.assign(np.array([1, 9, 10, 19, 20, 30]), eval_from_ts=20, valid_from_ts=10)
    assert ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert split.assign(np.array([1, 20]), 20, None).tolist() == [0, 2]
