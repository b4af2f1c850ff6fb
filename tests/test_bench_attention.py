"""benchmarks/bench_attention.py: every timed variant of DIN's attention computes the same
function (checked before timing), and the table reports each one."""
import json

import numpy as np
import pytest

from bench_scripts import load  # tests/bench_scripts.py


def _module():
    return load("bench_attention")


def test_tiny_run_checks_the_variants_agree_and_times_each(tmp_path, capsys):
    bench = _module()
    out = tmp_path / "t.json"
    argv = ["--batch", "24", "--dim", "8", "--units", "6,3", "--rounds", "2", "--steps", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    times = json.loads(out.read_text())["ms"]
    assert set(times) == set(bench.VARIANTS) and all(len(t) == 2 and min(t) > 0 for t in times.values())
    assert "| groups16 |" in capsys.readouterr().out


def test_the_check_fails_on_a_variant_that_computes_something_else():
    bench = _module()
    inputs = bench.batch(np.array([3, 5, 1, 4]), 5, 4)
    steps = bench.build(inputs, (3, 2))
    good = steps["groups16"]
    steps["groups16"] = lambda q, k, m: good(q * 1.5, k, m)
    with pytest.raises(AssertionError, match="groups16 differs"):
        bench.check_same(steps, inputs)


def test_real_flops_counts_the_real_positions():
    bench = _module()
    # d = 4, units 3-2: 2*4*3 + 3*2 + 2*1 = 32 multiply-adds per position
    assert bench.real_flops(np.array([2, 3]), 4, (3, 2)) == 3 * 2 * 5 * 32


def test_lengths_are_a_seeded_sample_of_the_data(tiny_data):
    from tirec.models.data import load_data_spec, read_columns

    bench = _module()
    spec = load_data_spec(tiny_data)
    every = read_columns(tiny_data, "train", spec, ["hist_len"])["hist_len"]
    lengths, length = bench.lengths_of(tiny_data, 16)
    assert length == spec.max_seq_len and len(lengths) == 16 and set(lengths.tolist()) <= set(every.tolist())
    assert bench.lengths_of(tiny_data, 16)[0].tolist() == lengths.tolist()
    with pytest.raises(SystemExit, match="fewer than --batch"):
        bench.lengths_of(tiny_data, len(every) + 1)
