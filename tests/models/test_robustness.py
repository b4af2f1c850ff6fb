"""Evaluation under noise and on label-free slices (tirec.models.robustness, `tirec evaluate`)."""
import dataclasses
import json
import os

import numpy as np
import pytest

from tirec.features.spec import Feature, tir_feature_spec
from tirec.models import registry
from tirec.models import robustness as R

L = 8
N_ITEMS = 60


def _catalogue(fields=("cate_id", "brand_id")):
    ids = np.arange(1, N_ITEMS + 1, dtype=np.int64)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(N_ITEMS, 4)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    values = {"cate_id": ids % 7, "brand_id": ids % 11 + 100, "price_bucket": ids % 3}
    return R.Catalogue(ids, {f: values[f] for f in fields}, vec, "test table")


def _spec(item_fields=("cate_id", "brand_id"), views=()):
    spec = tir_feature_spec(item_fields=item_fields, max_seq_len=L)
    extra = []
    for h in views:  # further behaviour sequences, as GAP-Net's views add them
        extra += [Feature(f"{h}_item_ids", "int64", "sequence", L, "item", group="history", scope="request",
                          field="item_id", history=h, model_input=True),
                  Feature(f"{h}_ts", "int64", "sequence", L, group="history", scope="request", field="ts",
                          history=h, model_input=True)]
        extra += [Feature(f"{h}_{f}", "int64", "sequence", L, f, group="history", scope="request", field=f,
                          history=h, model_input=True) for f in item_fields]
    return dataclasses.replace(spec, features=spec.features + tuple(extra))


def _history(cat, items, prefix="hist", fields=("cate_id", "brand_id")):
    """History columns for rows of item-id lists (most recent first, zero padded)."""
    ids = np.zeros((len(items), L), np.int64)
    for i, row in enumerate(items):
        ids[i, :len(row)] = row
    real = ids != 0
    rows = np.searchsorted(cat.ids, np.maximum(ids, 1))
    out = {f"{prefix}_item_ids": ids, f"{prefix}_ts": np.where(real, 1000 - np.arange(L), 0)}
    for f in fields:
        out[f"{prefix}_{f}"] = np.where(real, cat.fields[f][rows], 0)
    return out


def _batch(cat, items, requests, trigger=None, has=None, views=(), fields=("cate_id", "brand_id")):
    n = len(items)
    trigger = np.full(n, 5, np.int64) if trigger is None else np.asarray(trigger, np.int64)
    has = np.ones(n, np.int64) if has is None else np.asarray(has, np.int64)
    b = {"request_id": np.array([r.encode() for r in requests]), "trigger_item_id": trigger,
         "has_trigger": has, "user_id": np.arange(n, dtype=np.int64)}
    b.update(_history(cat, items, fields=fields))
    vec = cat.vectors
    sims = np.einsum("bd,bld->bl", vec[trigger - 1], vec[np.maximum(b["hist_item_ids"], 1) - 1])
    b["hist_trigger_sim"] = np.where(b["hist_item_ids"] != 0, sims, 0).astype(np.float32)
    b["explicit_mask"] = (b["hist_trigger_sim"] >= 0.3).astype(np.int64)
    b["hist_btag"] = np.where(b["hist_item_ids"] != 0, 2, 0)
    b["hist_len"] = (b["hist_item_ids"] != 0).sum(axis=1)
    for h in views:
        b.update(_history(cat, items, prefix=h, fields=fields))
    return b


ROWS = [[], [11], [11, 12, 13], [11, 12, 13, 14, 15], [11, 12, 13, 14, 15, 16, 17, 18]]


def test_noise_hits_round_p_of_the_real_positions_and_never_padding():
    cat = _catalogue()
    b = _batch(cat, ROWS, [f"r{i}" for i in range(5)])
    out = R.HistoryNoise(_spec(), cat, 30, seed=1)(b)
    changed = out["hist_item_ids"] != b["hist_item_ids"]
    # round(0.3 * [0, 1, 3, 5, 8]) with halves up: 0, 0, 1, 2 (1.5), 2 (2.4)
    assert changed.sum(axis=1).tolist() == [0, 0, 1, 2, 2]
    assert not (changed & (b["hist_ts"] == 0)).any()
    for kept in ("hist_ts", "hist_btag", "hist_len"):  # the behaviour's own attributes stay
        np.testing.assert_array_equal(out[kept], b[kept])


def test_a_replaced_position_carries_the_random_items_side_fields_and_similarity():
    cat = _catalogue()
    b = _batch(cat, ROWS * 4, [f"r{i}" for i in range(20)])
    out = R.HistoryNoise(_spec(), cat, 50, seed=3)(b)
    hit = out["hist_item_ids"] != b["hist_item_ids"]
    assert hit.sum() > 20
    rows = out["hist_item_ids"][hit] - 1
    np.testing.assert_array_equal(out["hist_cate_id"][hit], cat.fields["cate_id"][rows])
    np.testing.assert_array_equal(out["hist_brand_id"][hit], cat.fields["brand_id"][rows])
    trig = np.broadcast_to(b["trigger_item_id"][:, None], hit.shape)[hit] - 1
    sims = np.einsum("bd,bd->b", cat.vectors[trig], cat.vectors[rows])
    np.testing.assert_allclose(out["hist_trigger_sim"][hit], sims, atol=1e-6)
    np.testing.assert_array_equal(out["explicit_mask"][hit], sims >= _spec().explicit_threshold)
    # Untouched positions keep every column.
    for col in ("hist_cate_id", "hist_brand_id", "hist_trigger_sim", "explicit_mask"):
        np.testing.assert_array_equal(out[col][~hit], b[col][~hit])


def test_noise_is_keyed_on_seed_and_request_not_on_batch_order():
    cat = _catalogue()
    reqs = ["a", "b", "a", "c", "b"]  # candidates of one request share the history
    items = [ROWS[4], ROWS[3], ROWS[4], ROWS[4], ROWS[3]]
    b = _batch(cat, items, reqs)
    noise = R.HistoryNoise(_spec(), cat, 40, seed=7)
    out = noise(b)
    np.testing.assert_array_equal(out["hist_item_ids"][0], out["hist_item_ids"][2])
    np.testing.assert_array_equal(out["hist_item_ids"][1], out["hist_item_ids"][4])
    assert (out["hist_item_ids"][0] != out["hist_item_ids"][3]).any()  # another request, other draws
    order = np.array([4, 2, 0, 3, 1])
    shuffled = noise({k: v[order] for k, v in b.items()})
    np.testing.assert_array_equal(shuffled["hist_item_ids"], out["hist_item_ids"][order])
    again = R.HistoryNoise(_spec(), cat, 40, seed=7)(b)
    np.testing.assert_array_equal(again["hist_item_ids"], out["hist_item_ids"])
    other = R.HistoryNoise(_spec(), cat, 40, seed=8)(b)
    assert (other["hist_item_ids"] != out["hist_item_ids"]).any()


def test_p0_is_the_identity_and_p100_replaces_every_real_position():
    cat = _catalogue()
    b = _batch(cat, ROWS, [f"r{i}" for i in range(5)])
    same = R.HistoryNoise(_spec(), cat, 0)(b)
    for k in b:
        np.testing.assert_array_equal(same[k], b[k])
    full = R.HistoryNoise(_spec(), cat, 100)(b)
    real = b["hist_ts"] != 0
    np.testing.assert_array_equal(full["hist_item_ids"] != b["hist_item_ids"], real)


def test_every_behaviour_sequence_is_noised_independently():
    cat = _catalogue()
    spec = _spec(views=("rt", "lt"))
    b = _batch(cat, [ROWS[4]] * 3, ["a", "b", "c"], views=("rt", "lt"))
    noise = R.HistoryNoise(spec, cat, 50, seed=2)
    out = noise(b)
    for h in ("hist", "rt", "lt"):
        changed = out[f"{h}_item_ids"] != b[f"{h}_item_ids"]
        assert changed.sum(axis=1).tolist() == [4, 4, 4], h
        np.testing.assert_array_equal(out[f"{h}_cate_id"][changed], cat.fields["cate_id"][out[f"{h}_item_ids"][changed] - 1])
    assert (out["rt_item_ids"] != out["lt_item_ids"]).any()  # each view draws on its own
    assert noise.summary()["sequences"]["lt"] == {"real_positions": 24, "replaced": 12}


@pytest.mark.parametrize("value", [-1, 100.5, "abc", float("nan")])
def test_noise_outside_0_100_is_an_error_naming_the_flag(value):
    with pytest.raises(ValueError, match=r"--noise must be a percentage in \[0, 100\]; received"):
        R.HistoryNoise(_spec(), _catalogue(), value)


def test_noise_fails_loudly_where_side_fields_cannot_be_found():
    cat = _catalogue(fields=("cate_id",))  # the table lacks brand_id
    with pytest.raises(ValueError, match=r"hist_brand_id.*not item fields of test table"):
        R.HistoryNoise(_spec(), cat, 10)
    cat = _catalogue()
    b = _batch(cat, [[11, 13, 12]], ["a"])
    b["hist_item_ids"][0, 1] = 999  # an item the table does not have
    with pytest.raises(ValueError, match=r"absent from the item table test table: \[999\]"):
        R.HistoryNoise(_spec(), cat, 10)(b)


def test_catalogue_is_the_pipelines_item_table(tiny_data, tmp_path):
    cat = R.load_catalogue(tiny_data)
    assert cat.ids.size > 10 and "cate_id" in cat.fields
    with pytest.raises(FileNotFoundError, match=r"--noise needs the item table .*items.npz"):
        R.load_catalogue(str(tmp_path))


# ---- slices ------------------------------------------------------------------------------------

def _slice_batch(cat):
    """Rows: 0 drift (trigger cate 5, history cates 1, 2), 1 no drift (4 of cate 5 after the
    trigger's own click), 2 no trigger, 3 empty history, 4 broad (5 categories), 5 drift whose
    only cate-5 behaviour is the trigger's own click."""
    items = [[8, 9, 8],           # cates 1, 2, 1
             [5, 4, 12],           # the trigger itself, cate 4, cate 5 (12 % 7)
             [1, 2],
             [],
             [1, 2, 3, 4, 6, 8],   # cates 1, 2, 3, 4, 6, 1
             [5, 8, 9]]            # the trigger's own click, then cates 1, 2
    b = _batch(cat, items, [f"r{i}" for i in range(6)], trigger=[5, 5, 5, 5, 5, 5], has=[1, 1, 0, 1, 1, 1])
    b["trigger_cate_id"] = cat.fields["cate_id"][b["trigger_item_id"] - 1]
    b["trigger_ts"] = np.full(6, 1000)  # the time of the first behaviour of _history
    b["user_id"] = np.array([1, 2, 3, 4, 1, 9])
    return b


def test_slice_membership_on_a_hand_built_batch():
    cat = _catalogue()
    m = R.slice_masks(_spec(), _slice_batch(cat), list(R.SLICES), train_users=np.array([1, 2, 3]))
    assert np.flatnonzero(m["drift"]).tolist() == [0, 3, 4, 5]  # row 4: 5 categories, none is 5
    assert np.flatnonzero(m["no_drift"]).tolist() == [1]
    assert np.flatnonzero(m["trigger"]).tolist() == [0, 1, 3, 4, 5]
    assert np.flatnonzero(m["no_trigger"]).tolist() == [2]
    assert np.flatnonzero(m["no_history"]).tolist() == [3]
    assert np.flatnonzero(m["intent_specific"]).tolist() == [0, 1, 2, 5]
    assert np.flatnonzero(m["intent_broad"]).tolist() == [4]
    assert np.flatnonzero(m["new_user"]).tolist() == [3, 5]
    assert np.flatnonzero(m["returning_user"]).tolist() == [0, 1, 2, 4]


def test_drift_without_a_category_field_uses_the_similarity_levels():
    cat = _catalogue(fields=())
    spec = _spec(item_fields=())
    b = _batch(cat, [[5, 8], [5, 8], [9]], ["a", "b", "c"], trigger=[5, 5, 5], fields=())
    b["trigger_ts"] = np.full(3, 1000)
    top = spec.intent_levels - 1
    b["hist_trigger_sim"] = np.array([[1.0, 0.0] + [0] * (L - 2),    # only the trigger's own click is top
                                      [1.0, 0.99] + [0] * (L - 2),   # another top-level behaviour
                                      [0.1] + [0] * (L - 1)], np.float32)
    assert R.transforms.bin_index(np.array([0.99]), spec.intent_levels)[0] == top
    m = R.slice_masks(spec, b, ["drift", "no_drift"])
    assert np.flatnonzero(m["drift"]).tolist() == [0, 2]
    assert np.flatnonzero(m["no_drift"]).tolist() == [1]


def test_unknown_slice_lists_the_valid_ones_and_comma_lists_work():
    assert R.check_slices(["drift,trigger", "drift", "new_user"]) == ["drift", "trigger", "new_user"]
    with pytest.raises(ValueError, match=r"--slice: unknown slice 'drfit'; valid slices: drift, no_drift"):
        R.check_slices(["drfit"])


def test_an_empty_or_one_class_slice_reports_null_metrics_with_the_reason():
    y, p, u = np.array([0, 1, 0, 0]), np.array([0.2, 0.7, 0.4, 0.1]), np.array([1, 1, 2, 2])
    empty = R.slice_metrics(y, p, u, np.zeros(4, bool))
    assert empty["n"] == 0 and empty["auc"] is None and empty["reason"] == "empty slice"
    one = R.slice_metrics(y, p, u, np.array([True, False, True, True]))
    assert one["n"] == 3 and one["users"] == 2 and one["auc"] is None and "one class" in one["reason"]
    both = R.slice_metrics(y, p, u, np.ones(4, bool))
    assert both["auc"] == pytest.approx(1.0) and both["gauc"] == pytest.approx(1.0) and "reason" not in both


# ---- end to end ----------------------------------------------------------------------------------

SMALL = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
         "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "train.batch_size=256",
         "model.daian.explicit_buckets=1", "model.hist_buckets=1", "train.three_stage=false",
         "train.steps_per_epoch=3"]


# DIN, DAIAN and GAP-Net in `make test`; the other models (20-51 s each) under `make test-slow`
E2E_FAST = ("din", "daian", "gapnet")


@pytest.mark.parametrize("name", [pytest.param(m, marks=[] if m in E2E_FAST else pytest.mark.slow)
                                  for m in registry.model_names()])
def test_evaluate_noise_and_drift_slice_end_to_end(tiny_data, tmp_path, name):
    from tirec import cli
    from tirec.config import load_config
    from tirec.models.train import train_run

    cfg = load_config(None, SMALL)
    run = str(tmp_path / name)
    clean = train_run(tiny_data, name, run, cfg.model, cfg.train)
    argv = ["evaluate", "--data", tiny_data, "--run", run, "--noise", "30", "--slice", "drift"]
    assert cli.main(argv) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert m["noise"]["percent"] == 30 and m["noise"]["seed"] == 0
    hist = m["noise"]["sequences"]["hist"]
    assert 0.25 < hist["replaced"] / hist["real_positions"] < 0.35
    drift = m["slices"]["drift"]
    assert drift["n"] > 0 and set(drift) >= {"auc", "gauc", "logloss", "users", "definition"}
    assert m["logloss"] != pytest.approx(clean["logloss"], abs=1e-7)  # the noisy history was scored
    # A clean evaluation afterwards drops the noise settings and the slices of the last one.
    assert cli.main(["evaluate", "--data", tiny_data, "--run", run]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert "noise" not in m and "slices" not in m
    assert m["logloss"] == pytest.approx(clean["logloss"], abs=1e-6)


def test_evaluate_rejects_bad_noise_and_slice_flags(tiny_data, tmp_path, caplog):
    from tirec import cli

    base = ["evaluate", "--data", tiny_data, "--run", str(tmp_path)]
    assert cli.main(base + ["--noise", "130"]) == 2
    assert "--noise must be a percentage in [0, 100]; received 130" in caplog.text
    assert cli.main(base + ["--slice", "drift,nope"]) == 2
    assert "unknown slice 'nope'" in caplog.text
    assert cli.main(base + ["--noise-seed", "3"]) == 2
    assert "--noise-seed 3 needs --noise P" in caplog.text
