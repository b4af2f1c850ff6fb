"""benchmarks/bench_peer.py (`tirec bench peer`): the records -> DeepCTR inputs conversion (names,
shared tables, hashed rows, padding), the timing arithmetic, the ratios and goals, the table and
JSON, the argument errors, and (with DeepCTR installed) a tiny end-to-end run."""
import json
import os
import pathlib
import sys

import numpy as np
import pytest

from tirec import cli
from tirec.features.jsonio import read_json
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig

from bench_scripts import load  # tests/bench_scripts.py

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peer.py"


def _module():
    return load("bench_peer")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench_peer")
    raw, out = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=12, seed=3), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=8))
    return out


def test_peer_columns_name_the_inputs_as_deepctr_din_wants_and_share_our_tables(tiny):
    from tirec.models.data import load_data_spec

    bench = _module()
    spec = load_data_spec(tiny)
    columns, fields = bench.peer_columns(spec)
    by_name = {c.name: c for c in columns}
    assert fields[0] == "item_id" and len(fields) > 1  # the target's [id ‖ side fields]
    for field in fields:  # target X, trigger_X and hist_X read one table (DeepCTR: embedding_name)
        target, trigger, hist = by_name[field], by_name[f"trigger_{field}"], by_name[f"hist_{field}"]
        assert target.table == trigger.table == hist.table
        assert target.vocab == spec.table(target.table).num_buckets + 1  # row 0: padding
        assert not target.is_sequence and hist.length == 8 and hist.time_column == "hist_ts"
    assert by_name["item_id"].column == "target_item_id" and by_name["hist_item_id"].column == "hist_item_ids"
    assert "user_id" in by_name and "ctx_hour" in by_name
    # Inputs without a table (DIN does not embed them) and the other histories are not there.
    assert not {"has_trigger", "impression_ts", "hist_ts"} & set(by_name)
    assert not any(c.column.startswith(("rt_", "lt_")) for c in columns)


def test_to_peer_inputs_hashes_like_our_embedding_and_zeroes_exactly_our_padding(tiny):
    from tirec.models.data import load_data_spec, read_columns
    from tirec.models.layers.embedding import HashedEmbedding

    bench = _module()
    spec = load_data_spec(tiny)
    columns, _ = bench.peer_columns(spec)
    x, labels, users = bench.read_split(tiny, "train", spec, columns)
    raw = read_columns(tiny, "train", spec, ["target_item_id", "trigger_item_id", "hist_item_ids", "hist_ts",
                                             "hist_len", "hist_cate_id"])
    n = len(labels)
    assert n > 100 and users.shape == (n,) and set(np.unique(labels)) <= {0.0, 1.0}
    assert all(v.dtype == np.int32 and v.shape[0] == n for v in x.values())
    assert x["hist_item_id"].shape == (n, 8) and x["item_id"].shape == (n,)
    table = HashedEmbedding(spec.table("item").num_buckets, 1)
    np.testing.assert_array_equal(x["item_id"], table.bucket(raw["target_item_id"]).numpy().reshape(-1) + 1)
    np.testing.assert_array_equal(x["trigger_item_id"],
                                  table.bucket(raw["trigger_item_id"]).numpy().reshape(-1) + 1)
    real = raw["hist_ts"] > 0
    for name in ("hist_item_id", "hist_cate_id", "hist_brand_id", "hist_price_bucket"):
        np.testing.assert_array_equal(x[name] != 0, real)  # DeepCTR's mask_zero == our ts > 0
    np.testing.assert_array_equal(real.sum(axis=1), raw["hist_len"].reshape(-1))
    assert 0 < real.sum() < real.size  # the fixture has padding and behaviours
    np.testing.assert_array_equal(x["hist_item_id"][real], table.bucket(raw["hist_item_ids"][real]).numpy() + 1)


def test_to_peer_inputs_rejects_a_sequence_of_the_wrong_length():
    bench = _module()
    col = bench.PeerColumn("hist_item_id", "hist_item_ids", "item", 101, 4, "hist_ts")
    with pytest.raises(ValueError, match=r"hist_item_ids: expected \[rows, 4\]"):
        bench.to_peer_inputs([col], {"hist_item_ids": np.ones((3, 5)), "hist_ts": np.ones((3, 5))})


def test_chunk_rate_and_round_summaries():
    bench = _module()
    assert bench.chunk_rate(seconds=2.0, steps=4, batch=200) == {"examples_per_s": 400.0, "ms_per_step": 500.0}
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.chunk_rate(1.0, 0, 200)
    summary = bench.summarize_rounds([{"examples_per_s": 300.0, "ms_per_step": 9.0},
                                      {"examples_per_s": 500.0, "ms_per_step": 5.0},
                                      {"examples_per_s": 400.0, "ms_per_step": 7.0}])
    assert summary["examples_per_s"] == 500 and summary["ms_per_step"] == 5.0
    assert summary["median_examples_per_s"] == 400 and len(summary["rounds"]) == 3


def test_time_interleaved_alternates_the_variants_and_warms_each_up_once():
    bench = _module()
    calls = []

    def fake(name, seconds):
        def run_steps(steps):
            calls.append((name, steps))
            return seconds * steps
        return run_steps

    rounds = bench.time_interleaved({"a": fake("a", 0.5), "b": fake("b", 1.0)}, rounds=2, steps=3, batch=100)
    assert calls == [("a", 1), ("b", 1), ("a", 3), ("b", 3), ("a", 3), ("b", 3)]
    assert [r["examples_per_s"] for r in rounds["a"]] == [200.0, 200.0]
    assert [r["ms_per_step"] for r in rounds["b"]] == [1000.0, 1000.0]


def _out(bench, block1=3000.0, default=4200.0, peer=1000.0):
    def rounds(v, slow):  # a fast round and a slow one, when the machine was busy
        return [{"examples_per_s": v, "ms_per_step": 4096e3 / v},
                {"examples_per_s": v * slow, "ms_per_step": 4096e3 / (v * slow)}]

    variants = {name: bench.summarize_rounds(rounds(v, slow)) for name, v, slow in
                (("tirec_din_block1", block1, 0.5), ("tirec_din", default, 0.5), ("deepctr_din", peer, 0.25))}
    for name, auc in (("tirec_din_block1", 0.61), ("tirec_din", 0.59), ("deepctr_din", 0.60)):
        variants[name].update({"auc": auc, "gauc": auc + 0.01, "logloss": 0.5})
    return {"data": "/d", "train_records": 141484, "eval_records": 17450, "cpus": 2, "seq_len": 50,
            "config": {"batch_size": 4096, "emb_dim": 16, "attention": [80, 40], "tower": [512, 256, 128],
                       "lr": 0.05, "seed": 0}, "rounds": 2, "steps_per_round": 7, "trained_steps": 15,
            "trained_epochs": 0.43, "load_average": [3.0, 2.0, 1.0], "deepctr_inputs": ["user_id", "item_id"],
            "matmul_4096_gflop_per_s": 100.0, "variants": variants}


def test_ratios_goals_and_the_written_table(tmp_path):
    bench = _module()
    out = _out(bench)
    bench.add_ratios(out, 100.0, {"tirec": 2e6, "deepctr": 3e6})
    v = out["variants"]
    assert v["tirec_din_block1"]["ratio_vs_deepctr"] == 3.0 and v["tirec_din"]["ratio_vs_deepctr"] == 4.2
    # per round: 3000 / 1000 and 1500 / 250 -> median 4.5 (the fastest-over-fastest ratio is 3.0)
    assert v["tirec_din_block1"]["median_ratio_vs_deepctr"] == 4.5
    assert v["tirec_din_block1"]["train_gflop_per_s"] == 18.0  # 3 x 2 MFLOP x 3000 examples/s
    assert v["tirec_din_block1"]["fraction_of_matmul_ceiling"] == 0.18
    assert v["deepctr_din"]["forward_mflop_per_example"] == 3.0
    goals = out["goals"]
    assert goals["tirec_din_block1_speed"]["met"] and goals["tirec_din_speed"]["met"]
    assert goals["tirec_din_block1_auc"]["met"] and not goals["tirec_din_auc"]["met"]
    assert not goals["tirec_din_block1_ceiling"]["met"]
    text = bench.write_outputs(out, str(tmp_path))
    assert (tmp_path / "bench_peer.md").read_text() == text
    assert read_json(str(tmp_path / "bench_peer.json"))["variants"]["tirec_din"]["ratio_vs_deepctr"] == 4.2
    rows = [line for line in text.splitlines() if line.startswith("| tirec DIN, record-level")]
    assert rows and "| 3,000 (2,250) |" in rows[0] and "| 3.00x (4.50x) |" in rows[0] and "| 18% |" in rows[0]
    assert "| 0.6100 | 0.6200 |" in rows[0]
    assert "| tirec_din_auc: AUC >= DeepCTR's | -0.01 | no |" in text
    json.dumps(out)  # the JSON printed is plain


def test_speed_goal_not_met_below_the_factor():
    bench = _module()
    out = _out(bench, block1=2990.0, default=3990.0)
    bench.add_ratios(out, 100.0, {"tirec": 2e6, "deepctr": 2e6})
    assert not out["goals"]["tirec_din_block1_speed"]["met"] and not out["goals"]["tirec_din_speed"]["met"]


@pytest.mark.parametrize("argv,message", [
    (["--rounds", "0"], "--rounds must be >= 1; received 0"),
    (["--steps", "0"], "--steps must be >= 1; received 0"),
    (["--attention", "80,x"], "--attention must be comma-separated integers >= 1"),
    (["--tower", "512,0"], "--tower must be comma-separated integers >= 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--data", "/nonexistent/tfr"], "--data /nonexistent/tfr: no spec.json"),
])
def test_bad_arguments_fail_naming_the_flag_through_the_cli(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        cli.main(["bench", "peer", "--out", str(tmp_path)] + argv)
    assert message in capsys.readouterr().err


def test_dataset_synthetic_converts_the_generator_into_out(tmp_path, monkeypatch):
    bench = _module()
    args = bench.parse_args(["--out", str(tmp_path), "--dataset", "synthetic", "--users", "8"])
    data = bench._data(args)
    assert data == str(tmp_path / "data" / "synthetic" / "tfr")
    assert os.path.exists(os.path.join(data, "spec.json")) and os.listdir(os.path.join(data, "train"))
    bench_quality = sys.modules["bench_quality"]  # the sibling _data converts through
    monkeypatch.setattr(bench_quality, "_run", lambda *a, **k: pytest.fail("converted a second time"))
    assert bench._data(args) == data  # converted once: the second call reads it


# the benchmark's own run (64 s); `make test-slow`
@pytest.mark.slow
def test_tiny_run_end_to_end(tiny, tmp_path, monkeypatch):
    pytest.importorskip("deepctr")
    bench = _module()
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import bench_train

    # The 4096^3 matmul ceiling is a timing only (seconds on 2 cores); its figure is not checked here.
    monkeypatch.setattr(bench_train, "_matmul_ceiling", lambda dtype=None: 100.0)
    out_dir = str(tmp_path / "out")
    assert bench.main(["--out", out_dir, "--data", tiny, "--rounds", "2", "--steps", "1", "--batch-size", "256",
                       "--emb-dim", "4", "--attention", "4", "--tower", "8"]) == 0
    out = read_json(os.path.join(out_dir, "bench_peer.json"))
    assert set(out["variants"]) == {"tirec_din_block1", "tirec_din", "tirec_din_before", "deepctr_din"}
    for v in out["variants"].values():
        assert v["examples_per_s"] > 0 and 0 < v["auc"] < 1 and len(v["rounds"]) == 2
        assert v["forward_mflop_per_example"] > 0
    assert out["variants"]["deepctr_din"]["ratio_vs_deepctr"] == 1.0 and out["matmul_4096_gflop_per_s"] == 100.0
    assert out["trained_steps"] == 3 and set(out["goals"]) >= {"tirec_din_block1_speed", "tirec_din_speed"}
    assert os.path.exists(os.path.join(out_dir, "bench_peer.md"))
