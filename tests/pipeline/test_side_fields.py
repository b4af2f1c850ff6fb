"""Labeling fills the spec's side-field columns by their group and field, whatever their names:
item fields from the item table (target, trigger, history rows), user columns from the profile,
context columns from the impression row."""
import dataclasses

import numpy as np
import pytest

from tirec.features.spec import Feature, tir_feature_spec
from tirec.pipeline.items import ItemTable
from tirec.pipeline.labeling import LabelSettings, encode_btags, label_user

H = 3600
T0 = 1_700_000_000


def _settings(spec):
    return LabelSettings(intent_levels=4, trigger_window_s=4 * H, history_s=14 * 86400, max_seq_len=3,
                         click_btags=("click",), trigger_from="behaviours", no_trigger="pad",
                         max_events_per_user=100, eval_from_ts=T0 + 10 * H, item_fields=(),
                         user_fields=(), context_fields=(), spec=spec)


def _spec(*extra):
    base = tir_feature_spec(item_fields=(), intent_levels=4, max_seq_len=3)
    return dataclasses.replace(base, features=base.features + tuple(extra))


ITEM = dict(table="item", model_input=True, field="shop")
NEW = (Feature("cand_shop", "int64", group="target", scope="candidate", **ITEM),
       Feature("trig_shop", "int64", group="trigger", scope="request", **ITEM),
       Feature("seq_shop", "int64", "sequence", 3, group="history", scope="request", history="hist", **ITEM),
       Feature("segment", "int64", table="user", group="user", scope="request", model_input=True),
       Feature("weather", "int64", table="item", group="context", scope="request", model_input=True))


def _label(spec, profile=None):
    items = ItemTable(ids=np.array([1, 2, 3]), fields={"shop": np.array([11, 22, 33])},
                      vectors=np.eye(3, 2, dtype=np.float32), popularity=np.zeros(3))
    btag, click = encode_btags(np.array(["click", "click"]), ("click",))
    behs = {"item_id": np.array([1, 2]), "ts": np.array([T0 - 60, T0 - 30]), "btag_id": btag, "is_click": click}
    imps = {"item_id": np.array([3, 1]), "ts": np.array([T0, T0]), "label": np.array([1, 0]),
            "request_id": np.array(["A", "A"], dtype=object), "weather": np.array([5, 5])}
    return label_user(7, imps, behs, profile, items, _settings(spec), [])[0]


def test_columns_of_any_name_are_filled_by_group_and_field():
    cols = _label(_spec(*NEW), profile={"segment": 4})
    assert cols["cand_shop"].tolist() == [33, 11]          # the targets' shop
    assert cols["trig_shop"].tolist() == [22, 22]          # the trigger (item 2, the latest click)
    assert cols["seq_shop"].tolist() == [[22, 11, 0]] * 2  # most recent first, padded
    assert cols["segment"].tolist() == [4, 4]
    assert cols["weather"].tolist() == [5, 5]
    assert _label(_spec(*NEW))["segment"].tolist() == [0, 0]  # no profile row


def test_a_column_labeling_cannot_fill_is_named():
    other_seq = Feature("long_shop", "int64", "sequence", 3, group="history", scope="request",
                        history="long", **ITEM)
    with pytest.raises(ValueError, match="'long_shop' belongs to behaviour sequence 'long'"):
        _label(_spec(other_seq))
    no_field = dataclasses.replace(NEW[0], field="colour", name="cand_colour")
    with pytest.raises(ValueError, match=r"'cand_colour' holds item field 'colour', which the item table lacks"):
        _label(_spec(no_field))
