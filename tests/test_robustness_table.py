"""benchmarks/robustness.py's table: means and spreads over seeds, the AUC drop 0 -> 30, the drift
slice, read from cached per-run results (no training here)."""
import pytest

from bench_scripts import load  # tests/bench_scripts.py


def _module():
    return load("robustness")


def _result(model, seed, aucs, drift_gauc):
    levels = {str(p): {"auc": a, "gauc": a - 0.01, "logloss": 0.5, "n": 100,
                       "drift": {"n": 40, "users": 7, "auc": a - 0.02, "gauc": drift_gauc}}
              for p, a in zip((0, 10, 20, 30, 50), aucs)}
    return {"dataset": "movielens", "model": model, "seed": seed, "train_seconds": 1.0,
            "eval_seconds": 2.0, "levels": levels}


def test_table_averages_seeds_and_reports_the_drop_and_the_drift_slice():
    bench = _module()
    results = [_result("din", 1, (0.70, 0.68, 0.66, 0.64, 0.60), 0.61),
               _result("din", 2, (0.72, 0.70, 0.68, 0.66, 0.62), 0.63),
               _result("gapnet", 1, (0.71, 0.71, 0.70, 0.70, 0.69), 0.65)]
    text = bench.table(results, [0, 10, 20, 30, 50])
    din = [line for line in text.splitlines() if line.startswith("| movielens | DIN | 2 |")]
    gap = [line for line in text.splitlines() if line.startswith("| movielens | GAP-Net (reconstructed) | 1 |")]
    assert len(din) == 3 and len(gap) == 3  # AUC, GAUC and drift rows
    auc_din = [c.strip() for c in din[0].split("|")[4:-1]]
    assert auc_din[0] == "0.7100 ± 0.0100" and auc_din[3] == "0.6500 ± 0.0100"
    assert auc_din[-1] == "0.0600 ± 0.0000"  # the drop P=0 -> 30 per seed, then averaged
    assert [c.strip() for c in gap[0].split("|")[4:-1]][-1] == "0.0100 ± 0.0000"
    drift = [c.strip() for c in din[2].split("|")[4:-1]]
    assert drift[:2] == ["40", "7"] and drift[3] == "0.6200 ± 0.0100"  # GAUC at P=0


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    bench = _module()
    results = [_result("din", 1, (0.70, 0.68, 0.66, 0.64, 0.60), 0.61)]
    path = tmp_path / "r.png"
    bench.plot(results, [0, 10, 20, 30, 50], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
