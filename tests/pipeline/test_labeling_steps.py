"""Table-driven tests of label_user's steps: trigger window, history window, caps, request keys,
empty inputs (each case named by what it pins down)."""
import numpy as np
import pytest

from tirec.pipeline.items import ItemTable
from tirec.pipeline.labeling import (LabelSettings, Triggers, encode_btags, history_rows, label_user,
                                     request_keys, request_query_ts)

H, DAY = 3600, 86400
T0 = 1_700_000_000


def _items():
    vec = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], np.float32)
    return ItemTable(ids=np.array([1, 2, 3, 4]), fields={"cate_id": np.array([10, 10, 20, 30])},
                     vectors=vec, popularity=np.zeros(4))


def _settings(**kw):
    base = dict(intent_levels=4, trigger_window_s=4 * H, history_s=DAY, max_seq_len=3,
                click_btags=("click",), trigger_from="behaviours", no_trigger="pad",
                max_events_per_user=100, eval_from_ts=T0 + 10 * DAY, item_fields=("cate_id",),
                user_fields=("gender",), context_fields=())
    base.update(kw)
    return LabelSettings(**base)


def _behs(rows):
    if not rows:
        return None
    item, ts, tag = map(np.array, zip(*rows))
    btag_id, is_click = encode_btags(tag, ("click",))
    return {"item_id": item.astype(np.int64), "ts": ts.astype(np.int64), "btag_id": btag_id,
            "is_click": is_click}


def _imps(rows):
    item, ts, rid = map(np.array, zip(*rows))
    return {"item_id": item.astype(np.int64), "ts": ts.astype(np.int64),
            "label": np.zeros(len(item), np.int64), "request_id": rid.astype(object)}


@pytest.mark.parametrize("behs, want_item, want_ts", [
    pytest.param([(1, T0 - 4 * H, "click")], 1, T0 - 4 * H, id="click_exactly_at_window_edge"),
    pytest.param([(1, T0 - 4 * H - 1, "click")], 0, 0, id="click_just_outside_window"),
    pytest.param([(1, T0, "click")], 0, 0, id="click_same_ts_as_impression_strictly_earlier"),
    pytest.param([(1, T0 - 1, "click")], 1, T0 - 1, id="click_one_second_before"),
    pytest.param([(1, T0 + 1, "click")], 0, 0, id="click_after_impression"),
    pytest.param([(1, T0 - 2 * H, "click"), (3, T0 - H, "click")], 3, T0 - H,
                 id="most_recent_click_wins"),
    pytest.param([(1, T0 - 60, "cart")], 0, 0, id="non_click_behaviour_is_no_trigger"),
    pytest.param([], 0, 0, id="no_behaviours"),
])
def test_trigger_window(behs, want_item, want_ts):
    cols, _, _ = label_user(1, _imps([(2, T0, "")]), _behs(behs), None, _items(), _settings(), [])
    assert cols["trigger_item_id"].tolist() == [want_item]
    assert cols["trigger_ts"].tolist() == [want_ts]
    assert cols["has_trigger"].tolist() == [int(want_item != 0)]


@pytest.mark.parametrize("no_trigger, rows, stat", [
    pytest.param("drop", 0, 1, id="drop_removes_and_counts"),
    pytest.param("pad", 1, None, id="pad_keeps_zero_trigger"),
])
def test_no_trigger(no_trigger, rows, stat):
    behs = _behs([(1, T0 - 5 * H, "click"), (3, T0 - 60, "cart")])
    cols, _, stats = label_user(1, _imps([(2, T0, "")]), behs, None, _items(),
                                _settings(no_trigger=no_trigger), [])
    assert len(cols["label"]) == rows
    assert stats.get("impressions_dropped_no_trigger") == stat
    if rows:  # without a trigger every similarity is 0, but the history stays
        assert cols["trigger_target_sim"].tolist() == [0.0]
        assert cols["hist_trigger_sim"].tolist() == [[0.0, 0.0, 0.0]]
        assert cols["hist_item_ids"].tolist() == [[3, 1, 0]]


@pytest.mark.parametrize("beh_ts, want", [
    pytest.param([T0 - DAY], [T0 - DAY, 0, 0], id="behaviour_exactly_at_history_edge"),
    pytest.param([T0 - DAY - 1], [0, 0, 0], id="behaviour_just_outside_history"),
    pytest.param([T0], [0, 0, 0], id="behaviour_same_ts_as_impression_strictly_earlier"),
    pytest.param([T0 - 4, T0 - 3, T0 - 2, T0 - 1], [T0 - 1, T0 - 2, T0 - 3],
                 id="max_seq_len_keeps_most_recent_first"),
    pytest.param([], [0, 0, 0], id="empty_history"),
])
def test_history_window(beh_ts, want):
    behs = _behs([(3, t, "cart") for t in beh_ts])
    cols, _, _ = label_user(1, _imps([(2, T0, "")]), behs, None, _items(), _settings(), [])
    assert cols["hist_ts"].tolist() == [want]
    assert cols["hist_len"].tolist() == [sum(t > 0 for t in want)]
    assert cols["hist_item_ids"].tolist() == [[3 if t else 0 for t in want]]
    assert cols["hist_cate_id"].tolist() == [[20 if t else 0 for t in want]]


@pytest.mark.parametrize("beh_ts, imp_ts, want", [
    pytest.param([10, 20, 30], [30], [[1, 0, -1]], id="strictly_before_most_recent_first"),
    pytest.param([30, 35, 40, 44], [45], [[3, 2, 1]], id="truncated_to_max_len"),
    pytest.param([5, 20], [25], [[1, 0, -1]], id="at_history_edge_kept"),
    pytest.param([5, 20], [26], [[1, -1, -1]], id="older_than_history_dropped"),
    pytest.param([], [25, 30], [[-1, -1, -1], [-1, -1, -1]], id="no_behaviours"),
])
def test_history_rows(beh_ts, imp_ts, want):
    got = history_rows(np.array(beh_ts, np.int64), np.array(imp_ts, np.int64), 20, 3)
    assert got.tolist() == want


@pytest.mark.parametrize("cap, imp_ts, kept, dropped", [
    pytest.param(2, [T0 + 2, T0, T0 + 1], [T0 + 1, T0 + 2], 1, id="oldest_dropped_first"),
    pytest.param(3, [T0, T0 + 1, T0 + 2], [T0, T0 + 1, T0 + 2], None, id="at_cap_nothing_dropped"),
])
def test_user_cap(cap, imp_ts, kept, dropped):
    imps = _imps([(2, t, "") for t in imp_ts])
    cols, _, stats = label_user(1, imps, None, None, _items(),
                                _settings(max_events_per_user=cap), [])
    assert cols["impression_ts"].tolist() == kept
    assert stats.get("impressions_dropped_user_cap") == dropped


@pytest.mark.parametrize("ts, rid, want_has, want_query", [
    pytest.param([5, 7, 9], None, [0, 0, 0], [5, 7, 9], id="no_request_column"),
    pytest.param([5, 7, 9], ["", "", ""], [0, 0, 0], [5, 7, 9], id="empty_ids_query_own_time"),
    pytest.param([5, 7, 9], ["A", "B", "A"], [1, 1, 1], [5, 7, 5], id="request_queries_its_first_ts"),
    pytest.param([5, 7], ["A", ""], [1, 0], [5, 7], id="mixed"),
])
def test_request_query_ts(ts, rid, want_has, want_query):
    rid = None if rid is None else np.array(rid, dtype=object)
    has, query = request_query_ts(np.array(ts, np.int64), rid)
    assert has.astype(int).tolist() == want_has and query.tolist() == want_query


@pytest.mark.parametrize("rid, has_trig, want", [
    pytest.param("A", True, "A", id="request_id_wins"),
    pytest.param("", True, "u7:t3@95", id="trigger_names_the_request"),
    pytest.param("", False, "u7:none@100", id="no_trigger_one_request_per_time"),
])
def test_request_keys(rid, has_trig, want):
    trig = Triggers(has_trigger=np.array([has_trig]), item=np.array([3 if has_trig else 0]),
                    ts=np.array([95 if has_trig else 0]), has_request_id=np.array([bool(rid)]))
    keys = request_keys(7, np.array([100]), np.array([rid], dtype=object), trig)
    assert keys.tolist() == [want]


def test_impressions_sharing_a_trigger_form_one_request():
    behs = _behs([(1, T0 - 60, "click")])
    cols, _, _ = label_user(7, _imps([(2, T0, ""), (3, T0 + 5, ""), (4, T0 + 10, "X")]), behs,
                            None, _items(), _settings(), [])
    assert cols["request_id"].tolist() == [f"u7:t1@{T0 - 60}".encode()] * 2 + [b"X"]
    assert cols["_request"].tolist()[0] == cols["_request"].tolist()[1] != cols["_request"].tolist()[2]


@pytest.mark.parametrize("imps, behs", [
    pytest.param(None, None, id="no_events"),
    pytest.param(None, [(1, T0, "click")], id="behaviours_only"),
])
def test_user_without_impressions(imps, behs):
    cols, dead, stats = label_user(1, imps, _behs(behs), None, _items(), _settings(), [])
    assert dead == [] and all(len(v) == 0 for v in cols.values())
    assert stats["impressions_grouped"] == 0 and "users_without_profile" not in stats
    assert cols["hist_item_ids"].shape == (0, 3)


def test_rows_equal_in_every_field_are_dead_lettered_keeping_the_first():
    from tirec.pipeline.labeling import drop_duplicates, repeated_rows

    # the last two rows arrive b.csv first (blocks are grouped in any order): a.csv's is kept
    cols = {"ts": np.array([1, 1, 1, 2, 2, 3, 3]), "item_id": np.array([5, 6, 5, 7, 7, 5, 5]),
            "request_id": np.array(["a", "a", "a", "b", "c", "a", "a"], dtype=object),
            "_file": np.array([0, 0, 0, 0, 0, 1, 0]), "_row": np.array([0, 1, 2, 3, 4, 0, 5])}
    order = np.array([6, 0, 3, 5, 1, 4, 2])  # in no order: the check does not need one
    dead = []
    out = drop_duplicates({k: v[order] for k, v in cols.items()}, "impressions", dead, ["a.csv", "b.csv"])
    assert sorted(out["_row"].tolist()) == [0, 1, 3, 4, 5]  # rows 3 and 4 differ in request_id
    assert sorted((d["reason"], d["file"], d["row"], d["value"]) for d in dead) == [
        ("duplicate_row", "a.csv", 2, "same as row 0 of a.csv"),
        ("duplicate_row", "b.csv", 0, "same as row 5 of a.csv")]
    assert repeated_rows(cols) == 2 and repeated_rows(None) == 0
    unique = {k: v[:2] for k, v in cols.items()}
    assert drop_duplicates(unique, "impressions", dead, ["a.csv"]) is unique
    assert drop_duplicates(None, "impressions", dead, []) is None
