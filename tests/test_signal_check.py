"""benchmarks/signal_check.py: the untrained similarity scores' AUC / GAUC per split, and the
MovieLens split of rows into rated and popularity-sampled."""
import json

import numpy as np
import pytest

from tirec.models.data import load_data_spec, read_columns
from tirec.models.metrics import auc, gauc

from bench_scripts import load  # tests/bench_scripts.py


def _module():
    return load("signal_check")


def test_main_reports_the_similarity_auc_of_every_split(tiny_data, tmp_path, capsys):
    out = tmp_path / "signal.json"
    assert _module().main(["--data", tiny_data, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"train", "valid", "eval"}
    cols = read_columns(tiny_data, "eval", load_data_spec(tiny_data),
                        ["label", "trigger_target_sim", "trigger_target_level", "user_id"])
    y, sim, level, users = (cols[k] for k in ("label", "trigger_target_sim", "trigger_target_level", "user_id"))
    assert results["eval"]["rows"] == len(y)
    assert results["eval"]["sim_auc"] == pytest.approx(auc(y, sim))
    assert results["eval"]["sim_gauc"] == pytest.approx(gauc(y, sim, users)[0])
    assert results["eval"]["level_auc"] == pytest.approx(auc(y, level))
    assert results["eval"]["level_gauc"] == pytest.approx(gauc(y, level, users)[0])
    assert sum(n for _, n in results["eval"]["ctr_by_level"].values()) == len(cols["label"])
    assert "| eval |" in capsys.readouterr().out


def test_rated_rows_and_the_three_aucs(tmp_path):
    bench = _module()
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,10,5.0,1\n1,11,2.0,2\n2,10,4.0,3\n2,12,1.0,4\n")
    users = np.array([1, 1, 1, 2, 2, 2])
    items = np.array([10, 11, 12, 10, 12, 11])  # (1,12) and (2,11) were never rated: sampled
    rated = bench.rated_mask(bench.rated_pairs(str(ratings)), users, items)
    assert rated.tolist() == [True, True, False, True, True, False]
    cols = {"label": np.array([1, 0, 0, 1, 0, 0]), "user_id": users, "target_item_id": items,
            "trigger_target_sim": np.array([0.9, 0.8, 0.1, 0.5, 0.6, 0.2], np.float32),
            "trigger_target_level": np.array([3, 3, 1, 2, 2, 1])}
    r = bench.split_signal(cols, rated)
    assert r["rated_share"] == pytest.approx(4 / 6)
    assert r["sim_auc_rated_vs_sampled"] == 1.0  # every rated row more similar than every sampled one
    assert r["sim_auc_liked_vs_rated"] == pytest.approx(0.5)  # liked 0.9, 0.5 vs not liked 0.8, 0.6
    assert r["sim_auc_negatives_rated_vs_sampled"] == 1.0  # not liked 0.8, 0.6 vs sampled 0.1, 0.2
    assert r["ctr_by_level"] == {1: [0.0, 2], 2: [0.5, 2], 3: [0.5, 2]}


def test_a_click_that_is_not_a_rating_is_an_error(tmp_path):
    bench = _module()
    cols = {"label": np.array([1, 0]), "user_id": np.array([1, 1]), "target_item_id": np.array([5, 6]),
            "trigger_target_sim": np.array([0.1, 0.2], np.float32), "trigger_target_level": np.array([1, 1])}
    with pytest.raises(SystemExit, match="not a rating"):
        bench.split_signal(cols, np.array([False, False]))


def test_data_without_any_split_is_an_error_naming_it(tmp_path):
    with pytest.raises(SystemExit, match="no split to read"):
        _module().markdown({})
