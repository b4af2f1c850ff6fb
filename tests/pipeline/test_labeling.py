"""label_user / finalize on one hand-built user."""
from datetime import datetime, timezone

import numpy as np
import pytest

from tirec.pipeline.items import ItemTable
from tirec.pipeline.labeling import LabelSettings, encode_btags, finalize, label_user, request_category_clicks

H, DAY = 3600, 86400
T0 = 1_700_000_000


def _items():
    # item 1..4 with 2-d unit vectors: 1 and 2 identical, 3 orthogonal, 4 opposite to 1
    ids = np.array([1, 2, 3, 4])
    vec = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], np.float32)
    return ItemTable(ids=ids, fields={"cate_id": np.array([10, 10, 20, 30])}, vectors=vec,
                     popularity=np.zeros(4))


def _settings(**kw):
    base = dict(intent_levels=4, trigger_window_s=4 * H, history_s=14 * 86400, max_seq_len=3,
                click_btags=("click",), trigger_from="behaviours", no_trigger="drop",
                max_events_per_user=100, eval_from_ts=T0 + 10 * H, item_fields=("cate_id",),
                user_fields=("gender",), context_fields=())
    base.update(kw)
    return LabelSettings(**base)


def _behs(rows):
    item, ts, tag = map(np.array, zip(*rows))
    btag_id, is_click = encode_btags(tag, ("click",))
    return {"item_id": item.astype(np.int64), "ts": ts.astype(np.int64), "btag_id": btag_id,
            "is_click": is_click, "_file": np.zeros(len(item), np.int64), "_row": np.arange(len(item))}


def _imps(rows):
    item, ts, label, rid = map(np.array, zip(*rows))
    return {"item_id": item.astype(np.int64), "ts": ts.astype(np.int64), "label": label.astype(np.int64),
            "request_id": rid.astype(object), "_file": np.zeros(len(item), np.int64),
            "_row": np.arange(len(item))}


def test_hand_computed_user():
    behs = _behs([(3, T0 - 5 * H, "click"),   # too old to be a trigger for request A
                  (2, T0 - 60, "cart"),       # not a click
                  (1, T0 - 30, "click"),      # trigger of request A
                  (9, T0 - 20, "click"),      # unknown item: dead-lettered
                  (4, T0 + 5, "click")])      # after request A: never in its history
    imps = _imps([(2, T0, 1, "A"), (3, T0, 1, "A"), (4, T0, 0, "A"),
                  (1, T0 + 20 * H, 0, "B")])  # request B: no click within 4 h -> dropped
    cols, dead, stats = label_user(7, imps, behs, {"user_gender": 2}, _items(), _settings(), ["f.csv"])
    assert [d["reason"] for d in dead] == ["unknown_item"] and dead[0]["value"] == "9"
    assert stats["impressions_dropped_no_trigger"] == 1
    assert list(cols["trigger_item_id"]) == [1, 1, 1]
    assert list(cols["trigger_ts"]) == [T0 - 30] * 3
    np.testing.assert_allclose(cols["trigger_target_sim"], [1.0, 0.0, -1.0])
    # history of each impression at T0: items 2 (cart), 3 (old click); most recent first, padded
    np.testing.assert_array_equal(cols["hist_item_ids"][0], [1, 2, 3])
    np.testing.assert_array_equal(cols["hist_ts"][0], [T0 - 30, T0 - 60, T0 - 5 * H])
    np.testing.assert_array_equal(cols["hist_cate_id"][0], [10, 10, 20])
    np.testing.assert_allclose(cols["hist_trigger_sim"][0], [1.0, 1.0, 0.0])
    assert list(cols["user_gender"]) == [2, 2, 2]
    assert list(cols["_split"]) == [0] * 3  # all before eval_from_ts: train
    assert list(cols["_row"]) == [0, 1, 2]    # provenance kept for dead letters

    out, _ = finalize(cols, 4, -1.0, 1.0, tau=0.5, prior_half_life_s=DAY)
    # 4 levels over [-1, 1]: sims 1, 0, -1 -> levels 3, 2, 0; clicks on the first two
    np.testing.assert_array_equal(out["trigger_target_level"], [3, 2, 0])
    np.testing.assert_array_equal(out["intent_counts"][0], [0, 0, 1, 1])
    np.testing.assert_allclose(out["intent_dist"][2], [0, 0, 0.5, 0.5])
    np.testing.assert_array_equal(out["explicit_mask"][0], [1, 1, 0])
    assert not any(k.startswith("_") for k in out)


def test_pad_mode_keeps_impressions_without_trigger_and_cap_counts():
    behs = _behs([(1, T0 - 10 * H, "click"), (2, T0 - 9 * H, "click"), (3, T0 - 8 * H, "click")])
    imps = _imps([(2, T0, 1, ""), (3, T0 + 1, 0, "")])
    cols, dead, stats = label_user(1, imps, behs, None, _items(),
                                   _settings(no_trigger="pad", max_events_per_user=2), [])
    assert stats["behaviours_dropped_user_cap"] == 1
    assert list(cols["has_trigger"]) == [0, 0] and list(cols["trigger_item_id"]) == [0, 0]
    assert stats["users_without_profile"] == 1 and list(cols["user_gender"]) == [0, 0]
    # without request ids and without a trigger every impression is its own request
    assert len(set(cols["request_id"])) == 2
    out, _ = finalize(cols, 4, -1.0, 1.0, tau=0.5, prior_half_life_s=DAY)
    assert out["intent_counts"].sum() == 0 and out["explicit_mask"].sum() == 0
    np.testing.assert_array_equal(out["hist_item_ids"][0], [3, 2, 0])  # capped: item 1 dropped


def test_each_impression_gets_its_split():
    behs = _behs([(1, T0 - 60, "click")])
    imps = _imps([(2, T0, 0, ""), (2, T0 + H, 0, ""), (3, T0 + 2 * H - 1, 0, ""), (4, T0 + 2 * H, 0, "")])
    settings = _settings(no_trigger="pad", valid_from_ts=T0 + H, eval_from_ts=T0 + 2 * H)
    cols, _, _ = label_user(1, imps, behs, None, _items(), settings, ["f.csv"])
    assert list(cols["_split"]) == [0, 1, 1, 2]  # train < valid_from_ts <= valid < eval_from_ts <= eval
    no_valid, _, _ = label_user(1, imps, behs, None, _items(), _settings(no_trigger="pad",
                                eval_from_ts=T0 + 2 * H), ["f.csv"])
    assert list(no_valid["_split"]) == [0, 0, 0, 2]


def test_the_time_context_is_the_impression_time_in_utc():
    """ctx_hour and ctx_dow are the impression's UTC hour and weekday (Monday = 0): a Tuesday
    evening, the last second of a Sunday, the Monday midnight after it, a leap day (the serving
    client derives the same from a request's impression_ts: tests/serving/test_client_schema.py)."""
    stamps = {1_700_000_000: (22, 1), 1_700_438_399: (23, 6), 1_700_438_400: (0, 0), 1_709_209_800: (12, 3)}
    for ts, expected in stamps.items():
        utc = datetime.fromtimestamp(ts, timezone.utc)
        assert expected == (utc.hour, utc.weekday())
    imps = _imps([(2, ts, 0, "") for ts in stamps])
    cols, _, _ = label_user(1, imps, _behs([(1, T0 - DAY, "click")]), None, _items(),
                            _settings(no_trigger="pad"), ["f.csv"])
    got = {int(ts): (int(h), int(d)) for ts, h, d in zip(cols["impression_ts"], cols["ctx_hour"], cols["ctx_dow"])}
    assert got == stamps
    assert cols["ctx_hour"].dtype == cols["ctx_dow"].dtype == np.int64


def test_prior_intent_hand_computed():
    """prior_intent = the user's clicks with a trigger strictly before the request's first
    impression, by level, weighted 2^(-age / half-life), normalised; a click without a trigger
    (request D, padded) has no level and never counts."""
    behs = _behs([(1, T0 - 30, "click"), (1, T0 + DAY - 30, "click"), (1, T0 + 2 * DAY - 30, "click"),
                  (1, T0 + 4 * DAY - 30, "click")])
    imps = _imps([(2, T0, 1, "A"), (3, T0 + 5, 1, "A"), (4, T0 + 6, 0, "A"),   # levels 3, 2, 0
                  (2, T0 + DAY, 1, "B"), (3, T0 + DAY + 10, 0, "B"),          # levels 3, 2
                  (4, T0 + 2 * DAY, 1, "C"),                                  # level 0
                  (2, T0 + 3 * DAY, 1, "D"),                                  # no trigger
                  (2, T0 + 4 * DAY, 0, "E")])
    cols, _, _ = label_user(7, imps, behs, None, _items(),
                            _settings(no_trigger="pad", eval_from_ts=T0 + 99 * DAY), [])
    assert list(cols["has_trigger"]) == [1, 1, 1, 1, 1, 1, 0, 1]
    out, _ = finalize(cols, 4, -1.0, 1.0, tau=0.5, prior_half_life_s=DAY)
    np.testing.assert_array_equal(out["trigger_target_level"][:6], [3, 2, 0, 3, 2, 0])

    def dist(weights):  # level -> weight
        w = np.zeros(4)
        for level, value in weights:
            w[level] += value
        return w / w.sum()

    # Seen from B: A's two clicks, 1 day and 1 day - 5 s old; from C also B's click; from D and
    # E also C's click (never D's own, which has no trigger).
    want_b = dist([(3, 2.0 ** -1), (2, 2.0 ** (-(DAY - 5) / DAY))])
    want_c = dist([(3, 2.0 ** -2), (2, 2.0 ** (-(2 * DAY - 5) / DAY)), (3, 2.0 ** -1)])
    want_d = dist([(3, 2.0 ** -3), (2, 2.0 ** (-(3 * DAY - 5) / DAY)), (3, 2.0 ** -2), (0, 2.0 ** -1)])
    want_e = dist([(3, 2.0 ** -4), (2, 2.0 ** (-(4 * DAY - 5) / DAY)), (3, 2.0 ** -3), (0, 2.0 ** -2)])
    want = np.array([np.zeros(4)] * 3 + [want_b] * 2 + [want_c, want_d, want_e])
    np.testing.assert_allclose(out["prior_intent"], want, rtol=1e-6, atol=1e-7)
    assert out["prior_intent"].dtype == np.float32


def test_category_clicks_count_the_requests_clicks_in_the_triggers_category():
    """Request A (trigger item 1, category 10): clicks on item 2 (category 10) and item 3
    (category 20) -> 1; request B (trigger item 3): a click on item 2 -> 0; request C: its
    click has no trigger (padded) -> 0."""
    behs = _behs([(1, T0 - 30, "click"), (3, T0 + DAY - 30, "click")])
    imps = _imps([(2, T0, 1, "A"), (3, T0 + 1, 1, "A"), (2, T0 + 2, 0, "A"),
                  (3, T0 + DAY, 0, "B"), (2, T0 + DAY + 1, 1, "B"),
                  (1, T0 + 9 * DAY, 1, "C")])
    cols, _, _ = label_user(7, imps, behs, None, _items(),
                            _settings(no_trigger="pad", eval_from_ts=T0 + 99 * DAY), [])
    assert list(cols["has_trigger"]) == [1, 1, 1, 1, 1, 0]
    np.testing.assert_array_equal(request_category_clicks(cols), [1, 1, 1, 0, 0, 0])
    out, _ = finalize(cols, 4, -1.0, 1.0, tau=0.5, prior_half_life_s=DAY, category_clicks=True)
    np.testing.assert_array_equal(out["intent_cate_clicks"], [1, 1, 1, 0, 0, 0])
    assert "intent_cate_clicks" not in finalize(cols, 4, -1.0, 1.0, tau=0.5, prior_half_life_s=DAY)[0]
    # a click without a trigger never counts, even where the padded trigger's category (0)
    # equals the target's
    zero = {**cols, "target_cate_id": np.where(cols["has_trigger"] == 1, cols["target_cate_id"], 0)}
    assert zero["trigger_cate_id"][5] == zero["target_cate_id"][5] == 0 and zero["label"][5] == 1
    np.testing.assert_array_equal(request_category_clicks(zero), [1, 1, 1, 0, 0, 0])
    flipped = {**cols, "label": 1 - cols["label"]}  # it counts the request's labels: a target only
    np.testing.assert_array_equal(request_category_clicks(flipped), [1, 1, 1, 1, 1, 0])
    with pytest.raises(ValueError, match=r"intent_cate_clicks: needs the columns \['trigger_cate_id'\]"):
        request_category_clicks({k: v for k, v in cols.items() if k != "trigger_cate_id"})


def test_a_click_type_written_with_other_case_or_spaces_is_named(caplog):
    with caplog.at_level("WARNING", logger="tirec.pipeline.labeling"):
        _, is_click = encode_btags(np.array(["click", " click", "Click", "cart"]), ("click",))
    assert is_click.tolist() == [True, False, False, False]  # as written: not clicks
    assert "behaviour types [' click', 'Click'] are not clicks (pipeline.click_btags=['click'])" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tirec.pipeline.labeling"):
        encode_btags(np.array(["click", "cart", "buy"]), ("click",))
    assert "not clicks" not in caplog.text
