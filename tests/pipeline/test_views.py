"""GAP-Net's behaviour views (``pipeline.views``): the real-time view ``rt`` (trigger candidate
clicks strictly before the request's trigger query time, within ``realtime_window``, trigger
first) and the long-term view ``lt`` (behaviours strictly before the impression, no day limit).

Table-driven steps of ``label_user``; a label-flip property (a request's own labels never reach
its views, also when clicks come from impression labels); the Beam job's records checked against
a brute-force reference from the raw logs, its stats, and its other columns equal to a run
without views.
"""
import glob
import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tirec.features.spec import FeatureSpec, tir_feature_spec
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.formats import get_format
from tirec.pipeline.items import ItemTable
from tirec.pipeline.labeling import LabelSettings, encode_btags, label_user

H, DAY = 3600, 86400
T0 = 1_700_000_000


def _items():
    return ItemTable(ids=np.array([1, 2, 3, 4]), fields={"cate_id": np.array([10, 11, 20, 30])},
                     vectors=np.eye(4, 2, dtype=np.float32), popularity=np.zeros(4))


def _settings(rt_len=3, lt_len=4, **kw):
    spec = tir_feature_spec(item_fields=("cate_id",), intent_levels=4, max_seq_len=2, views=True,
                            realtime_len=rt_len, long_seq_len=lt_len)
    base = dict(intent_levels=4, trigger_window_s=4 * H, history_s=DAY, max_seq_len=2,
                click_btags=("click",), trigger_from="behaviours", no_trigger="pad",
                max_events_per_user=100, eval_from_ts=T0 + 10 * DAY, item_fields=("cate_id",),
                user_fields=(), context_fields=(), spec=spec, realtime_window_s=4 * H)
    base.update(kw)
    return LabelSettings(**base)


def _behs(rows):
    item, ts, tag = map(np.array, zip(*rows)) if rows else ([], [], [])
    btag_id, is_click = encode_btags(np.array(tag, dtype=str), ("click",))
    return {"item_id": np.array(item, np.int64), "ts": np.array(ts, np.int64), "btag_id": btag_id,
            "is_click": is_click}


def _imps(rows, labels=None):
    item, ts, rid = map(np.array, zip(*rows))
    return {"item_id": item.astype(np.int64), "ts": ts.astype(np.int64),
            "label": np.array(labels if labels is not None else [0] * len(rows), np.int64),
            "request_id": rid.astype(object)}


def _label(imps, behs, **kw):
    return label_user(1, imps, behs, None, _items(), _settings(**kw), [])[0]


@pytest.mark.parametrize("behs, want_ts", [
    pytest.param([(1, T0 - 4 * H, "click")], [T0 - 4 * H, 0, 0], id="click_at_window_edge_kept"),
    pytest.param([(1, T0 - 4 * H - 1, "click")], [0, 0, 0], id="click_just_outside_window"),
    pytest.param([(1, T0, "click")], [0, 0, 0], id="click_at_query_time_strictly_earlier"),
    pytest.param([(1, T0 - 50, "cart"), (2, T0 - 40, "click")], [T0 - 40, 0, 0], id="clicks_only"),
    pytest.param([(1, T0 - t, "click") for t in (50, 10, 40, 30)], [T0 - 10, T0 - 30, T0 - 40],
                 id="most_recent_first_truncated"),
    pytest.param([], [0, 0, 0], id="no_behaviours"),
])
def test_realtime_view_window_order_and_padding(behs, want_ts):
    cols = _label(_imps([(3, T0, "R")]), _behs(behs))
    assert cols["rt_ts"].tolist() == [want_ts]
    assert cols["rt_len"].tolist() == [sum(t > 0 for t in want_ts)]
    by_ts = {ts: item for item, ts, _ in behs}
    assert cols["rt_item_ids"].tolist() == [[by_ts.get(t, 0) if t else 0 for t in want_ts]]
    assert cols["rt_cate_id"].tolist() == [[_items().fields["cate_id"][by_ts[t] - 1] if t else 0
                                            for t in want_ts]]
    if cols["has_trigger"][0]:  # the trigger is the view's first entry
        assert (cols["rt_item_ids"][0, 0], cols["rt_ts"][0, 0]) == (cols["trigger_item_id"][0],
                                                                    cols["trigger_ts"][0])


def test_realtime_view_is_the_requests_and_reaches_back_past_the_trigger_window():
    # one request queried at T0 (its first impression); a click between its impressions is later
    behs = _behs([(1, T0 - 5 * H, "click"), (2, T0 - 60, "click"), (4, T0 + 30, "click")])
    cols = _label(_imps([(3, T0, "R"), (3, T0 + 60, "R")]), behs, realtime_window_s=6 * H)
    assert cols["rt_item_ids"].tolist() == [[2, 1, 0]] * 2  # 5 h back: in the 6 h view, no trigger
    assert cols["trigger_item_id"].tolist() == [2, 2] and cols["rt_len"].tolist() == [2, 2]
    assert cols["hist_item_ids"].tolist() == [[2, 1], [4, 2]]  # hist: before each impression


def test_realtime_view_takes_impression_clicks_with_trigger_from_impressions():
    imps = _imps([(1, T0 - 2 * H, "A"), (2, T0 - H, "B"), (3, T0, "C"), (4, T0, "C")], [1, 1, 0, 1])
    cols = _label(imps, _behs([(4, T0 - 30, "click")]), trigger_from="impressions")
    assert cols["rt_item_ids"].tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0], [2, 1, 0]]
    assert cols["trigger_item_id"].tolist() == [0, 1, 2, 2]
    assert cols["lt_item_ids"].tolist()[2] == [4, 0, 0, 0]  # behaviours, not clicks


@pytest.mark.parametrize("beh_ts, want", [
    pytest.param([T0 - 100 * DAY], [T0 - 100 * DAY, 0, 0, 0], id="no_day_limit"),
    pytest.param([T0], [0, 0, 0, 0], id="same_ts_as_impression_strictly_earlier"),
    pytest.param([T0 - 5, T0 - 1, T0 - 4, T0 - 2, T0 - 3], [T0 - 1, T0 - 2, T0 - 3, T0 - 4],
                 id="most_recent_first_truncated"),
    pytest.param([], [0, 0, 0, 0], id="no_behaviours"),
])
def test_long_term_view(beh_ts, want):
    cols = _label(_imps([(3, T0, "R")]), _behs([(2, t, "cart") for t in beh_ts]))
    assert cols["lt_ts"].tolist() == [want]
    assert cols["lt_len"].tolist() == [sum(t > 0 for t in want)]
    assert cols["lt_item_ids"].tolist() == [[2 if t else 0 for t in want]]
    assert cols["lt_cate_id"].tolist() == [[11 if t else 0 for t in want]]
    assert cols["hist_len"].tolist() == [min(2, sum(0 < T0 - t <= DAY for t in beh_ts))]


def test_views_follow_the_spec_and_a_short_realtime_window_is_refused():
    plain = LabelSettings(**{**_settings().__dict__, "spec": None})
    cols = label_user(1, _imps([(3, T0, "R")]), _behs([(1, T0 - 9, "click")]), None, _items(), plain, [])[0]
    assert not [c for c in cols if c.startswith(("rt_", "lt_"))]
    with pytest.raises(ValueError, match="realtime_window_s=3600 is shorter than trigger_window_s=14400"):
        _settings(realtime_window_s=H)


# ---- label flips: a request's own labels never reach its views ---------------------------------


def _flip(tagged, request, one=None):
    """The blocks with the labels of ``request``'s impressions flipped (only its ``one``-th)."""
    out = []
    for tag, b in tagged:
        if tag == job.IMP:
            hit = np.flatnonzero(b["request_id"].astype(str) == request)
            hit = hit if one is None else hit[one:one + 1]
            label = b["label"].copy()
            label[hit] = 1 - label[hit]
            b = {**b, "label": label}
        out.append((tag, b))
    return out


@pytest.fixture(scope="module")
def flip_raw(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("views_flip") / "raw")
    synthetic.generate(synthetic.GeneratorConfig(users=10, seed=11, target_ctr=0.15), raw)
    return raw


@pytest.mark.parametrize("trigger_from", ["behaviours", "impressions"])
def test_flipping_a_requests_labels_leaves_its_views_unchanged(flip_raw, tmp_path, trigger_from, read_users):
    cfg = PipelineConfig(input=flip_raw, format="synthetic", views=True, realtime_len=5,
                         long_seq_len=40, realtime_window="2d", no_trigger="pad",
                         trigger_from=trigger_from, max_seq_len=10)
    prep = get_format(cfg.format).prepare(cfg)
    items = str(tmp_path / "items.npz")
    prep.items.save(items)
    files = [p for t in ("impressions", "behaviours", "users") for p in prep.files.get(t, [])]
    spec = job._spec(cfg, prep, -1.0, 1.0)
    settings = LabelSettings(
        intent_levels=cfg.intent_levels, trigger_window_s=cfg.trigger_window_s, history_s=cfg.history_s,
        max_seq_len=cfg.max_seq_len, click_btags=tuple(cfg.click_btags), trigger_from=prep.trigger_from,
        no_trigger=cfg.no_trigger, max_events_per_user=cfg.max_events_per_user, eval_from_ts=0,
        item_fields=prep.item_fields, user_fields=prep.user_fields, context_fields=prep.context_fields,
        spec=spec, realtime_window_s=cfg.realtime_window_s)
    fn = job._LabelFn(settings, items, files, prep.user_hook)
    fn.setup()

    def label(user, tagged):
        cols = [value for tag, value in fn.process((user, tagged)) if tag == "users"][0]
        order = np.lexsort((cols["_row"], cols["_file"]))  # rows by their source row
        return {k: v[order] for k, v in cols.items()}

    view_cols = [f.name for f in spec.select(history=("rt", "lt"))]
    rng = np.random.default_rng(3)
    seen = {"requests": 0, "flips": 0, "rt_non_empty": 0, "clicked": 0, "later_rt_moved": 0}
    for user, tagged in sorted(read_users(cfg, prep, files).items()):
        base = label(user, tagged)
        rid = np.array([x.decode() for x in base["request_id"]])
        for r in rng.permutation(np.unique(rid))[:8]:
            own, later = rid == r, base["impression_ts"] > base["impression_ts"][rid == r].max()
            seen["requests"] += 1
            seen["rt_non_empty"] += int(base["rt_len"][own].max() > 0)
            seen["clicked"] += int(base["label"][own].sum() > 0)
            for one in (None, int(rng.integers(own.sum()))):
                got = label(user, _flip(tagged, r, one))
                assert (got["label"][own] != base["label"][own]).any()
                for c in view_cols:
                    np.testing.assert_array_equal(got[c][own], base[c][own], err_msg=f"{r}: {c}")
                seen["flips"] += 1
                seen["later_rt_moved"] += int(not np.array_equal(got["rt_item_ids"][later],
                                                                  base["rt_item_ids"][later]))
    assert seen["requests"] >= 60 and seen["rt_non_empty"] >= 30 and seen["clicked"] >= 10, seen
    # the check can see a change: with impression clicks, a flip moves later requests' views
    assert (seen["later_rt_moved"] > 0) == (trigger_from == "impressions"), seen


# ---- the Beam job -------------------------------------------------------------------------------


def _records(out: str) -> dict:
    spec = FeatureSpec.load(f"{out}/spec.json")
    files = sorted(f for s in ("train", "valid", "eval") for f in glob.glob(f"{out}/{s}/*.tfrecord.gz"))
    cols: dict = {}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(100_000):
        for k, v in tf.io.parse_example(batch, spec.parse_example_spec()).items():
            cols.setdefault(k, []).append(v.numpy())
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.lexsort((cols["target_item_id"], cols["impression_ts"], cols["request_id"]))
    return {k: v[order] for k, v in cols.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("views_job")
    raw = str(base / "raw")
    synthetic.generate(synthetic.GeneratorConfig(users=16, seed=5, days=4), raw)
    # a 20-minute trigger window leaves requests without a trigger (padded)
    common = dict(input=raw, format="synthetic", no_trigger="pad", max_seq_len=10, trigger_window="20m")
    # small read chunks: a user's events reach the label step in several blocks
    on = job.run(PipelineConfig(out=str(base / "on"), views=True, realtime_window="6h", chunk_rows=300,
                                realtime_len=4, long_seq_len=30, **common))
    off = job.run(PipelineConfig(out=str(base / "off"), **common))
    return raw, str(base / "on"), on, str(base / "off"), off


def _reference_view(events: pd.DataFrame, query_ts: int, window: int | None, n: int) -> list:
    """Brute force: events strictly before ``query_ts`` (within ``window``), newest first."""
    keep = (events["ts"] < query_ts) & ((events["ts"] >= query_ts - window) if window else True)
    picked = events[keep].iloc[::-1][:n]
    return list(picked["ts"]) + [0] * (n - len(picked)), list(picked["item_id"]) + [0] * (n - len(picked))


def test_job_writes_views_equal_to_a_brute_force_reference(runs):
    raw, out, stats, _, _ = runs
    r = _records(out)
    behs = pd.read_parquet(f"{raw}/behaviours").sort_values(["user_id", "ts"], kind="stable")
    items = pd.read_parquet(f"{raw}/items.parquet").set_index("item_id")
    by_user = {u: g for u, g in behs.groupby("user_id")}
    checked = 0
    for i in range(0, len(r["label"]), 7):
        user, ts = int(r["user_id"][i]), int(r["impression_ts"][i])
        query = int(r["impression_ts"][r["request_id"] == r["request_id"][i]].min())
        events = by_user.get(user, behs[:0])
        clicks = events[events["btag"] == "click"]
        for view, ev, q, window, n in (("rt", clicks, query, 6 * H, 4), ("lt", events, ts, None, 30)):
            want_ts, want_items = _reference_view(ev, q, window, n)
            assert r[f"{view}_ts"][i].tolist() == want_ts, (view, i)
            assert r[f"{view}_item_ids"][i].tolist() == want_items, (view, i)
            assert r[f"{view}_len"][i] == sum(t > 0 for t in want_ts)
            cate = [int(items.loc[x, "cate_id"]) if x else 0 for x in want_items]
            assert r[f"{view}_cate_id"][i].tolist() == cate
        checked += 1
    assert checked >= 100
    trig = r["has_trigger"] == 1
    assert trig.any() and (~trig).any() and (r["rt_len"][~trig] > 0).any()  # clicks 20m-6h back
    np.testing.assert_array_equal(r["rt_item_ids"][trig, 0], r["trigger_item_id"][trig])
    np.testing.assert_array_equal(r["rt_ts"][trig, 0], r["trigger_ts"][trig])
    assert (r["lt_len"] > r["hist_len"]).any() and (r["lt_len"] == 30).any() and (r["rt_len"] == 4).any()


def test_job_view_stats_and_the_other_columns_equal_a_run_without_views(runs):
    _, out, stats, out_off, stats_off = runs
    r, plain = _records(out), _records(out_off)
    spec, spec_off = FeatureSpec.load(f"{out}/spec.json"), FeatureSpec.load(f"{out_off}/spec.json")
    assert spec.histories() == {"hist": 10, "rt": 4, "lt": 30}
    assert spec.keep_histories(["hist"]) == spec_off
    assert set(r) - set(plain) == {f.name for f in spec.select(history=("rt", "lt"))}
    for k in plain:
        np.testing.assert_array_equal(r[k], plain[k], err_msg=k)
    written = sum(stats["written"].values())
    keys = list(stats)
    assert "views" not in stats_off and keys[keys.index("explicit_len_histogram") + 1] == "views"
    for view, length in (("rt", 4), ("lt", 30)):
        got = stats["views"][view]
        n = r[f"{view}_len"]
        assert got["max_len"] == length and got["rows_non_empty"] == int((n > 0).sum())
        assert got["mean_len"] == pytest.approx(n.mean(), abs=1e-4)
        assert sum(got["len_histogram"]["counts"]) == written
        assert got["len_histogram"]["counts"][0] == int((n == 0).sum())
        bins = np.minimum(np.ceil(n * 10 / length), 10).astype(int)  # as seq_len_histogram
        assert got["len_histogram"]["counts"] == np.bincount(bins, minlength=11).tolist()
    assert stats["views"]["rt"]["window_s"] == 6 * H
    with open(f"{out}/stats.json") as fh:
        assert json.load(fh)["views"] == stats["views"]
    for key in ("written", "accounting", "seq_len_histogram", "intent_histogram"):
        assert stats[key] == stats_off[key], key
