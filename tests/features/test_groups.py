"""FeatureSpec groups: every feature says what it describes; select() is how packages ask; a
spec.json written before the groups existed (version 1) loads with its groups derived once."""
import dataclasses
import json
import os

import pytest

from tirec.features.spec import SPEC_VERSION, Feature, FeatureSpec, TableSpec, derive_groups, tir_feature_spec

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures")
# tests/fixtures/spec_v1.json was written by tirec at e5603a7 (before the groups) with these
# arguments (see tests/fixtures/README.md).
V1_ARGS = dict(user_fields=("gender",), context_fields=("scene",), intent_levels=4, max_seq_len=10,
               buckets={"item": 64, "cate_id": 16})


def _names(features):
    return [f.name for f in features]


def test_standard_spec_groups_scopes_and_fields():
    spec = tir_feature_spec(**V1_ARGS)
    assert _names(spec.select(group="user")) == ["user_id", "user_gender"]
    assert _names(spec.select(group="context")) == ["impression_ts", "ctx_hour", "ctx_dow", "ctx_scene"]
    assert _names(spec.select(group="target")) == ["target_item_id", "target_cate_id", "target_brand_id",
                                                   "target_price_bucket"]
    assert _names(spec.select(scope="candidate", model_input=True)) == _names(spec.select(group="target"))
    assert _names(spec.select(group=("target", "trigger"), field="item_id")) == ["target_item_id",
                                                                                  "trigger_item_id"]
    assert _names(spec.select(group="history", field="cate_id")) == ["hist_cate_id"]
    assert _names(spec.select(group="intent")) == ["intent_counts", "intent_dist", "prior_intent"]
    assert _names(spec.select(field=("counts", "level"))) == ["trigger_target_level", "intent_counts"]
    assert spec.select(group="label")[0].name == spec.label
    assert spec.histories() == {"hist": 10}
    # The model inputs are what the serving signatures took before the groups existed.
    assert set(_names(spec.select(model_input=True))) == {
        "user_id", "target_item_id", "trigger_item_id", "has_trigger", "hist_item_ids", "hist_ts",
        "impression_ts", "user_gender", "ctx_hour", "ctx_dow", "ctx_scene",
        *(f"{g}_{f}" for g in ("target", "trigger", "hist") for f in ("cate_id", "brand_id", "price_bucket"))}
    for f in spec.features:
        assert f.group in ("user", "context", "trigger", "target", "history", "label", "intent", "meta")
    with pytest.raises(ValueError, match=r"unknown attributes \['grop'\]"):
        spec.select(grop="user")
    with pytest.raises(ValueError, match=r"group must be one of .*received \['histroy'\]"):
        spec.select(group="histroy")


def test_spec_json_stores_the_groups():
    spec = tir_feature_spec(**V1_ARGS)
    d = json.loads(spec.to_json())
    assert d["version"] == SPEC_VERSION == 2
    hist = next(f for f in d["features"] if f["name"] == "hist_cate_id")
    assert {k: hist[k] for k in ("group", "scope", "field", "history", "model_input")} == {
        "group": "history", "scope": "request", "field": "cate_id", "history": "hist", "model_input": True}
    assert FeatureSpec.from_json(spec.to_json()) == spec
    d["features"][0]["colour"] = "red"
    with pytest.raises(ValueError, match=r"feature 'label' has unknown keys \['colour'\]"):
        FeatureSpec.from_dict(d)


def test_version_1_spec_json_loads_with_derived_groups(tmp_path):
    """The committed spec.json of tirec before the groups loads to today's spec (so a run folder
    or a pipeline output from then compares equal with one written now) and saves as version 2."""
    path = os.path.join(FIXTURES, "spec_v1.json")
    raw = json.load(open(path))
    assert raw["version"] == 1 and "group" not in raw["features"][0]
    old = FeatureSpec.load(path)
    assert old == tir_feature_spec(**V1_ARGS) and old.diff(tir_feature_spec(**V1_ARGS)) == []
    assert old.version == SPEC_VERSION
    old.save(str(tmp_path / "spec.json"))
    assert FeatureSpec.load(str(tmp_path / "spec.json")) == old
    # A name the convention does not cover is refused, naming it; so are v1 files with groups.
    raw["features"].append({"name": "weather", "dtype": "int64", "kind": "scalar", "length": 1,
                            "table": None, "role": "feature"})
    with pytest.raises(ValueError, match=r"group of feature 'weather' does not follow from its name"):
        FeatureSpec.from_dict(raw)
    with pytest.raises(ValueError, match=r"feature 'label' carries \['group'\]"):
        derive_groups([{"name": "label", "group": "label"}])


def test_several_histories_each_with_its_name_and_length():
    base = tir_feature_spec(item_fields=("cate_id",), max_seq_len=5)
    long = (Feature("long_item_ids", "int64", "sequence", 20, "item", group="history", scope="request",
                    field="item_id", history="long", model_input=True),
            Feature("long_ts", "int64", "sequence", 20, group="history", scope="request", field="ts",
                    history="long", model_input=True),
            Feature("long_cate_id", "int64", "sequence", 20, "cate_id", group="history", scope="request",
                    field="cate_id", history="long", model_input=True))
    spec = dataclasses.replace(base, features=base.features + long)
    assert spec.histories() == {"hist": 5, "long": 20}
    assert _names(spec.select(history="long", field="item_id")) == ["long_item_ids"]
    assert FeatureSpec.from_json(spec.to_json()) == spec
    bad = long[:2] + (dataclasses.replace(long[2], length=7),)
    with pytest.raises(ValueError, match="history 'long' mixes sequence lengths"):
        dataclasses.replace(base, features=base.features + bad)
    with pytest.raises(ValueError, match="both hold field 'ts' of group 'history'"):
        dataclasses.replace(base, features=base.features + long + (dataclasses.replace(long[1], name="x"),))


def test_feature_group_attributes_are_checked():
    with pytest.raises(ValueError, match=r"'x': a target column has scope 'candidate'"):
        Feature("x", "int64", group="target", scope="request", field="f", model_input=True)
    with pytest.raises(ValueError, match=r"'x': a history column names its behaviour sequence"):
        Feature("x", "int64", "sequence", 3, group="history", scope="request")
    with pytest.raises(ValueError, match=r"'x': role 'label' goes with group 'label'"):
        Feature("x", "int64", role="label")
    with pytest.raises(ValueError, match=r"'x': a model input of the trigger group names the item field"):
        Feature("x", "int64", group="trigger", scope="request", model_input=True)
    with pytest.raises(ValueError, match=r"'x': a model input belongs to one of the groups"):
        Feature("x", "int64", group="meta", model_input=True)
    with pytest.raises(ValueError, match=r"'x': group must be one of"):
        Feature("x", "int64", group="item")
    assert TableSpec("t", 3).num_buckets == 3


def test_keep_histories_drops_the_other_sequences_columns_and_names_a_missing_one():
    base = tir_feature_spec(item_fields=("cate_id",), max_seq_len=5)
    long = (Feature("long_item_ids", "int64", "sequence", 20, "item", group="history", scope="request",
                    field="item_id", history="long", model_input=True),
            Feature("long_ts", "int64", "sequence", 20, group="history", scope="request", field="ts",
                    history="long", model_input=True))
    spec = dataclasses.replace(base, features=base.features + long)
    narrowed = spec.keep_histories(["hist"])
    assert narrowed == base and narrowed.histories() == {"hist": 5}
    assert spec.keep_histories(["hist", "long"]) == spec
    assert spec.keep_histories(["long"]).histories() == {"long": 20}
    with pytest.raises(ValueError, match=r"no behaviour sequence \['rt'\]; it has \['hist', 'long'\]"):
        spec.keep_histories(["hist", "rt"])


def test_views_add_the_realtime_and_long_term_sequences_last():
    plain = tir_feature_spec(item_fields=("cate_id", "brand_id"), max_seq_len=5)
    spec = tir_feature_spec(item_fields=("cate_id", "brand_id"), max_seq_len=5, views=True,
                            realtime_len=3, long_seq_len=40)
    assert spec.histories() == {"hist": 5, "rt": 3, "lt": 40}
    assert spec.names[:len(plain.names)] == plain.names and spec.tables == plain.tables
    assert spec.keep_histories(["hist"]) == plain  # what DIN and DAIAN read
    for view, length in (("rt", 3), ("lt", 40)):
        cols = spec.select(history=view)
        assert _names(cols) == [f"{view}_item_ids", f"{view}_ts", f"{view}_cate_id", f"{view}_brand_id",
                                f"{view}_len"]
        assert {(f.group, f.scope, f.role) for f in cols} == {("history", "request", "feature")}
        assert [f.field for f in cols] == ["item_id", "ts", "cate_id", "brand_id", "len"]
        assert [f.table for f in cols] == ["item", None, "cate_id", "brand_id", None]
        assert [f.model_input for f in cols] == [True, True, True, True, False]
        assert [f.length for f in cols] == [length] * 4 + [1]
        # the same tables and fields as the short-term view's columns
        hist = {f.field: f.table for f in spec.select(history="hist")}
        assert all(hist[f.field] == f.table for f in cols if f.field not in ("ts", "len"))
    assert FeatureSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match=r"view 'lt': length must be a positive integer; received 0"):
        tir_feature_spec(views=True, long_seq_len=0)
