"""FeatureSpec: validation, JSON round trip, diff, parse dict."""
import dataclasses
import json

import pytest

from tirec.features.spec import Feature, FeatureSpec, TableSpec, tir_feature_spec


def _spec(**kw):
    return tir_feature_spec(item_fields=("cate_id", "brand_id"), user_fields=("gender",),
                            context_fields=("scene",), **kw)


def test_standard_spec_columns_and_shapes():
    spec = _spec(intent_levels=4, max_seq_len=20)
    assert spec.feature("hist_item_ids").length == 20
    assert spec.feature("hist_item_ids").table == "item"
    assert spec.feature("target_item_id").table == spec.feature("trigger_item_id").table == "item"
    assert spec.feature("intent_dist").length == 4 and spec.feature("intent_dist").role == "intent"
    for name in ("label", "user_id", "request_id", "trigger_item_id", "target_item_id", "impression_ts",
                 "hist_ts", "trigger_target_sim", "explicit_mask", "hist_cate_id", "target_brand_id",
                 "user_gender", "ctx_scene", "ctx_hour"):
        assert name in spec.names
    assert spec.explicit_threshold == pytest.approx(0.0)  # 4 levels over [-1, 1]: top two start at 0


def test_category_clicks_is_an_optional_intent_column_after_prior_intent():
    plain, spec = _spec(), _spec(category_clicks=True)
    assert "intent_cate_clicks" not in plain.names
    at = plain.names.index("prior_intent") + 1
    assert spec.names == plain.names[:at] + ("intent_cate_clicks",) + plain.names[at:]
    f = spec.feature("intent_cate_clicks")
    assert (f.dtype, f.kind, f.role, f.group, f.scope, f.field, f.model_input) == \
        ("int64", "scalar", "intent", "intent", "request", "cate_clicks", False)
    assert FeatureSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match=r"category_clicks: needs the item field 'cate_id' .*\['brand_id'\]"):
        tir_feature_spec(item_fields=("brand_id",), category_clicks=True)


def test_json_round_trip_and_equality(tmp_path):
    spec = _spec()
    path = str(tmp_path / "spec.json")
    spec.save(path)
    back = FeatureSpec.load(path)
    assert back == spec
    assert back.diff(spec) == []


def test_tables_state_only_the_bucket_count_and_old_spec_files_load(tmp_path):
    """Embedding width and sharding are model settings (model.emb_dim, model.table_shards), so
    a table is a name and a bucket count; spec.json files written with the former ``dim`` and
    ``shards`` keys still load, to the same spec, and bad values there are still refused."""
    spec = _spec()
    assert [f.name for f in dataclasses.fields(TableSpec)] == ["name", "num_buckets"]
    assert all(set(t) == {"name", "num_buckets"} for t in spec.to_dict()["tables"])
    old = spec.to_dict()
    old["tables"] = [dict(t, dim=16, shards=1) for t in old["tables"]]
    old["tables"][0].update(dim=8, shards=4)  # never read by any model
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(old))
    assert FeatureSpec.load(str(path)) == spec
    old["tables"][0]["shards"] = 0
    with pytest.raises(ValueError, match="TableSpec 'item': shards must be a positive integer; received shards=0"):
        FeatureSpec.from_dict(old)
    old["tables"][0].update(shards=1, rows=3)
    with pytest.raises(ValueError, match=r"TableSpec 'item': unknown keys \['rows'\]"):
        FeatureSpec.from_dict(old)
    with pytest.raises(TypeError):
        TableSpec("item", 8, 16)  # no width here: it is model.emb_dim


def test_diff_names_each_difference():
    a = _spec()
    b = _spec(intent_levels=8)
    c = a.with_tables([TableSpec("item", 1024)])
    assert any("intent_levels" in d for d in a.diff(b))
    assert any("table 'item'" in d for d in a.diff(c))
    with pytest.raises(ValueError, match="intent_levels"):
        a.check_compatible(b)


def test_the_default_tau_is_the_lower_edge_of_the_top_two_levels_and_two_levels_need_one():
    assert tir_feature_spec(intent_levels=6).explicit_threshold == pytest.approx(1 / 3)
    assert tir_feature_spec(intent_levels=4).explicit_threshold == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"explicit_threshold: needed with intent_levels=2 .*top_levels=2 of n_levels=2"):
        tir_feature_spec(intent_levels=2)
    assert tir_feature_spec(intent_levels=2, explicit_threshold=-1.0).explicit_threshold == -1.0


def test_validation_errors_name_the_field():
    with pytest.raises(ValueError, match="dtype"):
        Feature("x", "int32")
    with pytest.raises(ValueError, match="length"):
        Feature("x", "int64", "scalar", 3)
    with pytest.raises(ValueError, match="reads table 'nope'"):
        FeatureSpec(features=(Feature("label", "int64"), Feature("x", "int64", table="nope")))
    with pytest.raises(ValueError, match="duplicate feature"):
        FeatureSpec(features=(Feature("label", "int64"), Feature("label", "int64")))
    with pytest.raises(ValueError, match="num_buckets"):
        TableSpec("t", 0)
    with pytest.raises(ValueError, match="unknown tables"):
        _spec(buckets={"nope": 3})
    with pytest.raises(KeyError, match="no feature"):
        _spec().feature("nope")
    with pytest.raises(ValueError, match="unknown keys"):
        FeatureSpec.from_dict({**_spec().to_dict(), "extra": 1})


def test_parse_example_spec_shapes_and_label_exclusion():
    import tensorflow as tf

    spec = _spec(max_seq_len=7)
    parse = spec.parse_example_spec()
    assert parse["hist_item_ids"].shape == [7] and parse["hist_item_ids"].dtype == tf.int64
    assert parse["label"].shape == [] and parse["trigger_target_sim"].dtype == tf.float32
    assert parse["request_id"].dtype == tf.string
    serving = spec.parse_example_spec(include_label=False)
    assert "label" not in serving and len(serving) == len(parse) - 1
    intent_only = spec.parse_example_spec(roles=("intent",))
    assert set(intent_only) == {"intent_dist", "intent_counts", "prior_intent"}


def test_a_spec_mismatch_names_only_the_differing_fields_first_few_then_a_count():
    a, b = _spec(max_seq_len=50), _spec(max_seq_len=20)
    d = a.diff(b)
    assert d[0] == "max_seq_len: 50 != 20" and "feature 'hist_item_ids': length 50 != 20" in d
    assert len(d) > 6
    with pytest.raises(ValueError) as err:
        a.check_compatible(b)
    message = str(err.value)
    assert message == "the data spec differs from the expected spec: " + "; ".join(d[:5]) + \
        f"; and {len(d) - 5} more difference(s)"
    assert len(message) < 400
