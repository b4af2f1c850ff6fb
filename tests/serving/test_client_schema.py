"""The client's request schema comes from the FeatureSpec's groups: which object of a TIR request
holds which input, which inputs go once per request (the `rank` context) and which per candidate,
and every behaviour sequence of the spec."""
import dataclasses
from datetime import datetime, timezone

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tirec.features.spec import Feature, time_context, tir_feature_spec
from tirec.serving import client as C


def _spec():
    """The standard records plus a second behaviour sequence ``long`` (length 6) and a
    candidate-scoped context field ``ctx_slot`` (the candidate's position on the page)."""
    base = tir_feature_spec(item_fields=("cate_id",), context_fields=("scene",), max_seq_len=3)
    seq = dict(kind="sequence", length=6, group="history", scope="request", history="long", model_input=True)
    extra = (Feature("long_item_ids", "int64", table="item", field="item_id", **seq),
             Feature("long_ts", "int64", field="ts", **seq),
             Feature("long_cate_id", "int64", table="cate_id", field="cate_id", **seq),
             Feature("ctx_slot", "int64", table="item", group="context", scope="candidate", model_input=True))
    return dataclasses.replace(base, features=base.features + extra)


def _request():
    return {
        "user": {"user_id": 7},
        "context": {"impression_ts": 1000, "ctx_hour": 0, "ctx_dow": 3, "ctx_scene": 2},  # Thu 00:16 UTC
        "trigger": {"item_id": 5, "cate_id": 50},
        "history": [{"item_id": 4, "ts": 900, "cate_id": 40}],
        "histories": {"long": [{"item_id": 3, "ts": 800, "cate_id": 30},
                               {"item_id": 2, "ts": 700, "cate_id": 20}]},
        "candidates": [{"item_id": 9, "cate_id": 90, "ctx_slot": 0},
                       {"item_id": 8, "cate_id": 80, "ctx_slot": 1}],
    }


def test_request_features_follow_the_spec_groups():
    spec = _spec()
    feats = C.request_features(spec, _request())
    assert set(feats) == {f.name for f in spec.select(model_input=True)}
    assert feats["target_item_id"].tolist() == [9, 8] and feats["ctx_slot"].tolist() == [0, 1]
    assert feats["trigger_cate_id"].tolist() == [50, 50] and feats["has_trigger"].tolist() == [1, 1]
    assert feats["ctx_scene"].tolist() == [2, 2]
    assert feats["hist_item_ids"].tolist() == [[4, 0, 0]] * 2
    assert feats["long_item_ids"].tolist() == [[3, 2, 0, 0, 0, 0]] * 2
    assert feats["long_cate_id"][0].tolist() == [30, 20, 0, 0, 0, 0]
    assert feats["long_ts"].dtype == np.int64 and feats["long_ts"].shape == (2, 6)
    no_trigger = C.request_features(spec, {**_request(), "trigger": None})
    assert no_trigger["has_trigger"].tolist() == [0, 0] and no_trigger["trigger_cate_id"].tolist() == [0, 0]


def test_request_errors_name_the_field():
    spec = _spec()
    bad = _request()
    del bad["candidates"][1]["ctx_slot"]
    with pytest.raises(ValueError, match=r"candidates\[1\]\.ctx_slot is missing"):
        C.request_features(spec, bad)
    bad = _request()
    bad["histories"]["long"][1]["ts"] = 0
    with pytest.raises(ValueError, match=r"histories\.long\[1\]\.ts must be > 0"):
        C.request_features(spec, bad)
    with pytest.raises(ValueError, match=r"histories must map each of the model's further behaviour sequences "
                                         r"\['long'\] to a list \(\[\] for none\); received \{'short': \[\]\}"):
        C.request_features(spec, {**_request(), "histories": {"short": []}})
    with pytest.raises(ValueError, match=r"histories must map each of .* received \{\}"):  # a sequence left out
        C.request_features(spec, {**_request(), "histories": {}})
    with pytest.raises(ValueError, match=r"history must be a list; received \{\}"):
        C.request_features(spec, {**_request(), "history": {}})
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        C.request_features(spec, {**_request(), "extra": 1})
    with pytest.raises(ValueError, match=r"RequestSchema: not a TIR model"):
        C.RequestSchema.from_signature({"inputs": {"x": {"dtype": "DT_FLOAT"}}})


@pytest.mark.parametrize("change,message", [
    (lambda r: r["user"].update(usr_age=3), r"user has keys the model does not read \['usr_age'\]; expected \['user_id'\]"),
    (lambda r: r["trigger"].update(ts=5), r"trigger has keys the model does not read \['ts'\]"),
    (lambda r: r["history"][0].update(btag="click"), r"history\[0\] has keys the model does not read \['btag'\]"),
    (lambda r: r["candidates"][1].update(cateid=3), r"candidates\[1\] has keys the model does not read \['cateid'\]; "
                                                    r"expected .* \(and optionally \['meta'\]\)"),
    (lambda r: r["candidates"][0].update(item_id=-9), r"candidates\[0\]\.item_id must be in \[0, 2\*\*63\); received -9"),
    (lambda r: r["user"].update(user_id=2 ** 64), r"user\.user_id must be in \[0, 2\*\*63\); received 18446744073709551616"),
    (lambda r: r["histories"]["long"].reverse(),
     r"histories\.long must be most recent first: histories\.long\[1\]\.ts = 800 is later than histories\.long\[0\]\.ts = 700"),
])
def test_a_request_the_model_would_read_otherwise_is_refused(change, message):
    """A misspelt or extra key, an id out of range and a history in the wrong order are errors
    naming the field and the value, not silently dropped or reordered."""
    request = _request()
    change(request)
    with pytest.raises(ValueError, match=message):
        C.request_features(_spec(), request)


# Impression times and their (ctx_hour, ctx_dow) in UTC, Monday = 0: a Tuesday evening, the last
# second of a Sunday, the Monday midnight after it, a leap day.
STAMPS = {1_700_000_000: (22, 1), 1_700_438_399: (23, 6), 1_700_438_400: (0, 0), 1_709_209_800: (12, 3)}


@pytest.mark.parametrize("ts,expected", STAMPS.items())
def test_the_time_context_is_derived_from_impression_ts_as_the_pipeline_does(ts, expected):
    """A request may send impression_ts alone: ctx_hour and ctx_dow are the values the pipeline's
    time_context gives (the UTC hour and weekday); values sent that agree are accepted."""
    utc = datetime.fromtimestamp(ts, timezone.utc)
    assert expected == (utc.hour, utc.weekday())
    pipeline = time_context(np.array([ts], np.int64))  # as labeling's _context_columns calls it
    assert (int(pipeline["ctx_hour"][0]), int(pipeline["ctx_dow"][0])) == expected
    request = _request()
    request["context"] = {"impression_ts": ts, "ctx_scene": 2}
    feats = C.request_features(_spec(), request)
    assert (feats["ctx_hour"].tolist(), feats["ctx_dow"].tolist()) == ([expected[0]] * 2, [expected[1]] * 2)
    assert feats["impression_ts"].tolist() == [ts, ts]
    request["context"].update(ctx_hour=expected[0], ctx_dow=expected[1])
    agreed = C.request_features(_spec(), request)
    assert all(np.array_equal(agreed[k], feats[k]) for k in feats)


@pytest.mark.parametrize("field,value,implied", [("ctx_hour", 23, 22), ("ctx_dow", 2, 1)])
def test_a_time_context_that_disagrees_with_impression_ts_is_refused(field, value, implied):
    request = _request()
    request["context"] = {"impression_ts": 1_700_000_000, "ctx_hour": 22, "ctx_dow": 1, "ctx_scene": 2,
                          field: value}
    with pytest.raises(ValueError, match=rf"request: context\.{field} is {value} but context\.impression_ts = "
                                         rf"1700000000 implies {field} = {implied} \(UTC"):
        C.request_features(_spec(), request)


def test_without_impression_ts_the_time_context_is_required():
    """A model that does not read impression_ts still needs ctx_hour and ctx_dow, unless the
    request sends impression_ts to derive them from."""
    spec = _spec()
    ts_meta = dataclasses.replace(spec.feature("impression_ts"), model_input=False)
    spec = dataclasses.replace(spec, features=tuple(ts_meta if f.name == "impression_ts" else f
                                                    for f in spec.features))
    request = _request()
    request["context"] = {"ctx_dow": 3, "ctx_scene": 2}
    with pytest.raises(ValueError, match=r"request: context\.ctx_hour is missing"):
        C.request_features(spec, request)
    request["context"] = {"impression_ts": 1_700_438_399, "ctx_scene": 2}
    feats = C.request_features(spec, request)
    assert "impression_ts" not in feats and feats["ctx_hour"].tolist() == [23, 23]
    assert feats["ctx_dow"].tolist() == [6, 6]
    request["context"]["ctx_scne"] = 1
    with pytest.raises(ValueError, match=r"context has keys the model does not read \['ctx_scne'\]; expected "
                                         r"\['ctx_dow', 'ctx_hour', 'ctx_scene'\] \(and optionally "
                                         r"\['impression_ts'\]\)"):
        C.request_features(spec, request)


def test_a_candidate_may_carry_meta_and_a_long_history_keeps_its_most_recent(caplog):
    request = _request()
    request["candidates"][0]["meta"] = {"title": "a film"}
    request["history"] = [{"item_id": 10 + i, "ts": 900 - i, "cate_id": 1} for i in range(5)]
    with caplog.at_level("WARNING", logger="tirec.serving.client"):
        feats = C.request_features(_spec(), request)
    assert feats["hist_item_ids"][0].tolist() == [10, 11, 12]  # L = 3, the most recent
    assert "request: history has 5 entries; keeping the 3 most recent" in caplog.text


def test_rank_inputs_split_by_scope():
    """The request-scoped inputs go once in the context example, the candidate-scoped ones (the
    target's and the candidate-scoped context field) in each candidate's."""
    spec = _spec()
    feats = C.request_features(spec, _request())
    rank = C.rank_inputs(feats, spec)
    assert len(rank["context"]) == 2 and rank["context"][1] == b"" and len(rank["candidates"]) == 2
    assert C.rank_inputs(feats, spec, form="one")["context"] == rank["context"][:1]
    assert C.rank_inputs(feats, spec, form="repeated")["context"] == rank["context"][:1] * 2
    with pytest.raises(ValueError, match=r"form must be one of \['filled', 'repeated', 'one'\]; received form='x'"):
        C.rank_inputs(feats, spec, form="x")
    context = tf.train.Example.FromString(rank["context"][0]).features.feature
    cand = tf.train.Example.FromString(rank["candidates"][1]).features.feature
    assert set(cand) == {"target_item_id", "target_cate_id", "ctx_slot"}
    assert cand["ctx_slot"].int64_list.value == [1]
    assert set(context) == set(feats) - set(cand)
    assert list(context["long_item_ids"].int64_list.value) == [3, 2, 0, 0, 0, 0]


def test_request_round_trips_through_records():
    """request_from_records rebuilds the request from the records the client's features encode."""
    spec = _spec()
    feats = C.request_features(spec, _request())
    n = len(feats["target_item_id"])
    rows = {**feats, "request_id": np.array([b"r1"] * n, dtype=object), "label": np.zeros(n, np.int64)}
    for f in spec.features:
        if f.name not in rows:
            shape = (n,) if f.kind == "scalar" else (n, f.length)
            rows[f.name] = np.zeros(shape, np.float32 if f.dtype == "float32" else np.int64)
    back = C.request_from_records(spec, C.to_examples(rows))
    assert back == _request()
    with pytest.raises(ValueError, match=rf"^request_id='r2' is not among the {n} records searched: only the first "
                                         r"eval rows are read \(`tirec make-request --rows N` searches N\)$"):
        C.request_from_records(spec, C.to_examples(rows), "r2")


def test_a_request_without_trigger_or_history_is_warned_about():
    full = {"trigger": {"item_id": 5}, "history": [{"item_id": 3}], "candidates": [{"item_id": 9}]}
    assert C.request_warnings(full) == []
    notes = C.request_warnings({**full, "trigger": None, "history": []})
    assert len(notes) == 2 and "no trigger" in notes[0] and "empty history" in notes[1]
    assert "no trigger" in C.request_warnings({"history": [{"item_id": 3}], "candidates": []})[0]
    assert C.request_warnings([1, 2]) == []  # not a request: request_features says why
    schema = C.RequestSchema.from_spec(_spec())
    no_trigger = C.RequestSchema([f for f in schema.features if f.group != "trigger"])
    assert len(C.request_warnings({**full, "trigger": None}, schema)) == 1
    assert C.request_warnings({**full, "trigger": None}, no_trigger) == []  # the model reads none


class _RankError(grpc.RpcError):
    """A grpc.RpcError as a server answers it."""

    def __init__(self, code, details):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def _fake_client(answer):
    """A PredictClient without a channel whose ``predict`` records each call's context rows and
    answers with ``answer(context)`` (a dict, or an exception to raise)."""
    client = C.PredictClient.__new__(C.PredictClient)
    client.model, client.rank_form, client.calls = "m", "filled", []

    def predict(tensors, signature):
        assert signature == "rank"
        client.calls.append(list(tensors["context"]))
        out = answer(client.calls[-1])
        if isinstance(out, Exception):
            raise out
        return out

    client.predict = predict
    return client


def test_client_rank_fallback_and_its_errors():
    """An export older than the filled form (refusing its empty rows) is retried once with the
    example in every row and kept to that form; a refusal that is the request's own (the
    repeated form fails too) is raised as the retry's error and changes no form; other errors
    are raised at once; a single candidate is never retried."""
    spec = _spec()
    feats = C.request_features(spec, _request())
    missing = _RankError(grpc.StatusCode.INVALID_ARGUMENT, "Feature: ctx_hour is required but could not be found.")
    ok = {"ctr": np.array([[0.1], [0.2]])}

    old = _fake_client(lambda ctx: missing if b"" in ctx else ok)
    assert old._rank(feats, C.RequestSchema.from_spec(spec)) is ok
    assert old.rank_form == "repeated" and old.calls[1] == old.calls[1][:1] * 2 and old.calls[0][1] == b""
    old._rank(feats, C.RequestSchema.from_spec(spec))
    assert len(old.calls) == 3  # kept to the repeated form: one call

    errors = []
    bad = _fake_client(lambda ctx: errors.append(_RankError(missing.code(), missing.details())) or errors[-1])
    with pytest.raises(_RankError) as raised:
        bad._rank(feats, C.RequestSchema.from_spec(spec))
    assert raised.value is errors[1] and raised.value.__context__ is errors[0]  # the retry's, chained
    assert len(bad.calls) == 2 and bad.rank_form == "filled"

    other = _RankError(grpc.StatusCode.UNAVAILABLE, "down")
    down = _fake_client(lambda ctx: other)
    with pytest.raises(_RankError, match="down"):
        down._rank(feats, C.RequestSchema.from_spec(spec))
    assert len(down.calls) == 1

    single = _fake_client(lambda ctx: missing)
    with pytest.raises(_RankError):
        single._rank({k: v[:1] for k, v in feats.items()}, C.RequestSchema.from_spec(spec))
    assert len(single.calls) == 1
    with pytest.raises(ValueError, match=r"rank_form must be one of .*received rank_form='x'"):
        C.PredictClient("127.0.0.1:1", "m", rank_form="x")
