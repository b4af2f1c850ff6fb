"""benchmarks/bench_quality.py (`tirec bench quality`): a tiny real run of three models writes the
Markdown / CSV / JSON with the documented columns and RelaImpr (and DIN's control row), a second
run retrains nothing, ``--tables-only`` trains nothing,
and the learning-rate pick and the summary follow the documented procedure."""
import csv
import json
import os
import pathlib

import pytest

from tirec import cli
from tirec.features.jsonio import read_json
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig

from bench_scripts import load  # tests/bench_scripts.py

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"
TINY = ["model.emb_dim=4", "model.tower=[8]", "model.din_hidden=[4]", "model.daian.att_units=4",
        "model.daian.att_heads=1", "model.daian.uim_hidden=[4]", "model.daian.sim_bins=3",
        "train.steps_per_epoch=2", "train.batch_size=64", "train.shuffle_buffer=100"]


def _module():
    return load("bench_quality")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """20 users of planted logs: the generator folder beside the pipeline output (``raw``), as
    the benchmark converts them."""
    base = tmp_path_factory.mktemp("bench_quality")
    raw, out = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=20, seed=4), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=8))
    return out


def _argv(out, data):
    argv = ["--out", out, "--models", "din,daian,dian", "--seeds", "1", "--lrs", "0.05", "--max-epochs", "1",
            "--datasets", "synthetic", "--data", f"synthetic={data}", "--latency-runs", "2"]
    return argv + [x for s in TINY for x in ("--set", s)]


@pytest.mark.slow  # 90 s
def test_tiny_run_writes_the_tables_and_resumes_from_its_cache(tiny, tmp_path, capsys):
    bench = _module()
    out = str(tmp_path / "out")
    assert bench.main(_argv(out, tiny)) == 0
    runs = {r["label"]: r for r in read_json(os.path.join(out, "bench_quality.json"))["runs"]}
    assert set(runs) == {"din", "din+sim", "din+sum", "daian", "dian"}  # DIN's control rows right after it
    assert "model.din.sim_feature=true" in runs["din+sim"]["config"] and runs["din+sim"]["model"] == "din"
    assert "model.din.history_sum=true" in runs["din+sum"]["config"] and runs["din+sum"]["model"] == "din"
    assert runs["din+sim"]["params"] > runs["din"]["params"]  # one more tower input
    assert runs["din+sum"]["params"] > runs["din+sim"]["params"]  # 2 D more
    for r in runs.values():
        assert r["seed"] == 1 and r["lr"] == 0.05 and r["params"] > 0 and r["latency_ms"] > 0
        assert 0 < r["auc"] < 1 and r["val_auc"] is not None and r["train_seconds"] > 0
        assert all(n == 1 for n in r["epochs"].values())  # the epoch cap, per stage
    assert len(runs["daian"]["epochs"]) == 3 and len(runs["din"]["epochs"]) == 1  # DAIAN's three stages
    assert "planted_intent_js" in runs["daian"] and "planted_intent_js" not in runs["din"]
    assert "planted_intent_js" not in runs["dian"]  # its intent is [1 - p, p], not over the levels

    with open(os.path.join(out, "bench_quality.csv")) as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    with open(os.path.join(out, "bench_quality.csv")) as fh:
        assert next(csv.reader(fh)) == bench.COLUMNS
    din, daian = runs["din"]["auc"], runs["daian"]["auc"]
    want = ((daian - 0.5) / (din - 0.5) - 1) * 100
    assert float(rows["daian"]["rela_impr_auc_pct"]) == pytest.approx(want, rel=1e-9)
    assert float(rows["din"]["rela_impr_auc_pct"]) == 0.0
    assert float(rows["daian"]["auc_mean"]) == pytest.approx(daian) and rows["daian"]["seeds"] == "1"
    text = open(os.path.join(out, "bench_quality.md")).read()
    assert ("| data set | model | LR | seeds | AUC | GAUC | logloss | RelaImpr vs DIN (AUC) | train s | params "
            "| latency ms (200 cand.) |") in text
    assert f"{want:+.2f} %" in text and "| synthetic | DAIAN | 0.05 | 1 |" in text
    assert "| synthetic | *s_sem alone, untrained* |" in text

    # The second run, through the CLI, reads the cached results: nothing retrains (the run
    # folders are untouched) and the same tables come out.
    results = sorted(os.listdir(os.path.join(out, "results")))
    stamps = {p: os.path.getmtime(p) for p in (os.path.join(out, "runs", d, "metrics.json")
                                               for d in os.listdir(os.path.join(out, "runs")))}
    capsys.readouterr()
    assert cli.main(["bench", "quality"] + _argv(out, tiny)) == 0
    assert sorted(os.listdir(os.path.join(out, "results"))) == results
    assert {p: os.path.getmtime(p) for p in stamps} == stamps
    assert open(os.path.join(out, "bench_quality.md")).read() == text
    assert "val AUC" not in capsys.readouterr().err  # no "trained" line
    bench.run_one = lambda *a, **k: pytest.fail("a cached run was retrained")
    assert bench.main(_argv(out, tiny)) == 0

    # --tables-only trains nothing: a model whose grid is not cached yet has no row.
    tag = bench.protocol_tag(bench.parse_args(_argv(out, tiny)))
    os.remove(bench.result_path(out, "synthetic", "dian", 1, 0.05, tag))
    assert bench.main(_argv(out, tiny) + ["--tables-only"]) == 0
    with open(os.path.join(out, "bench_quality.csv")) as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["din", "din+sim", "din+sum", "daian"]
    assert not os.path.exists(bench.result_path(out, "synthetic", "dian", 1, 0.05, tag))


def _result(dataset, label, seed, lr, auc, val_auc):
    return {"dataset": dataset, "label": label, "model": "daian" if "daian" in label else label, "seed": seed,
            "lr": lr, "auc": auc, "gauc": auc - 0.01, "logloss": 0.5, "val_auc": val_auc,
            "train_seconds": 10.0, "params": 100, "latency_ms": 2.0}


def test_the_pick_reads_valid_at_the_first_seed_and_the_summary_reads_only_the_pick(monkeypatch, tmp_path):
    bench = _module()
    args = bench.parse_args(["--out", str(tmp_path), "--seeds", "1", "2", "--lrs", "0.01", "0.05", "0.1"])
    grid = {0.01: 0.60, 0.05: 0.63, 0.1: 0.61}
    calls = []

    def fake(data_dir, dataset, label, model, seed, lr, sets, args):
        calls.append((seed, lr))
        return {"val_auc": grid[lr], "auc": 0.99}  # eval AUC must not steer the pick

    monkeypatch.setattr(bench, "cached", fake)
    lr, seen = bench.pick_lr("D", "movielens", "din", "din", [], args)
    assert lr == 0.05 and seen == grid and calls == [(1, 0.01), (1, 0.05), (1, 0.1)]

    results = [_result("movielens", "din", 1, 0.05, 0.60, 0.6), _result("movielens", "din", 2, 0.05, 0.62, 0.6),
               _result("movielens", "din", 1, 0.1, 0.90, 0.5),  # another LR: not in the summary
               _result("movielens", "daian", 1, 0.1, 0.66, 0.6), _result("movielens", "daian", 2, 0.1, 0.64, 0.6),
               _result("movielens_levels2_tau0.333", "daian n=2", 1, 0.1, 0.63, 0.6)]
    picks = {"movielens|din": {"lr": 0.05, "grid": {}}, "movielens|daian": {"lr": 0.1, "grid": {}},
             "movielens_levels2_tau0.333|daian n=2": {"lr": 0.1, "grid": {}}}
    rows = {r["model"]: r for r in bench.summarize(results, picks, [1, 2])}
    assert rows["din"]["auc_mean"] == pytest.approx(0.61) and rows["din"]["seeds"] == 2
    assert rows["din"]["auc_std"] == pytest.approx(0.01)
    assert rows["daian"]["rela_impr_auc_pct"] == pytest.approx((0.15 / 0.11 - 1) * 100)
    # An ablation on other records is compared with DIN on the plain MovieLens records.
    assert rows["daian n=2"]["rela_impr_auc_pct"] == pytest.approx((0.13 / 0.11 - 1) * 100)
    assert bench.rela_impr(0.6382, 0.6432) == pytest.approx(-3.49, abs=0.01)


def test_ablations_get_their_own_table_with_the_difference_to_the_full_model(tmp_path):
    bench = _module()
    args = bench.parse_args(["--out", str(tmp_path), "--seeds", "1", "2", "--lrs", "0.05", "0.1"])
    results = [_result("movielens", "din", s, 0.1, 0.60, 0.6) for s in (1, 2)]
    results += [_result("movielens", "daian", s, 0.05, auc, 0.6) for s, auc in ((1, 0.64), (2, 0.66))]
    results += [_result("movielens", "daian w/o UIM", s, 0.05, auc, 0.6) for s, auc in ((1, 0.61), (2, 0.63))]
    results += [_result("movielens_levels2_tau0.333", "daian n=2", 1, 0.05, 0.67, 0.6)]
    ablation = {"lr": 0.05, "grid": {}, "from": "movielens|daian"}
    picks = {"movielens|din": {"lr": 0.1, "grid": {"0.05": 0.55, "0.1": 0.56}},
             "movielens|daian": {"lr": 0.05, "grid": {"0.05": 0.6, "0.1": 0.59}},
             "movielens|daian w/o UIM": ablation, "movielens_levels2_tau0.333|daian n=2": ablation}
    rows = {r["model"]: r for r in bench.summarize(results, picks, [1, 2])}
    assert rows["daian w/o UIM"]["delta_auc_vs_full"] == pytest.approx(-0.03)
    assert rows["daian n=2"]["delta_auc_vs_full"] == pytest.approx(0.02)
    assert rows["daian n=2"]["ablation_of"] == "movielens|daian" and rows["daian"]["ablation_of"] is None
    assert rows["daian"]["delta_auc_vs_full"] is None

    text = bench.markdown(list(rows.values()), picks, args, {})
    # --datasets movielens synthetic and every model by default: what has no row is listed
    assert "**Not complete yet**" in text and "movielens DIEN (learning-rate grid)" in text
    assert "synthetic DIN (learning-rate grid)" in text and "movielens DIN (" not in text
    two_seeds = bench.parse_args(["--out", str(tmp_path), "--seeds", "1", "2", "3", "--models", "din"])
    assert bench.pending_rows(list(rows.values()), two_seeds) == [
        "movielens DIN (2 of 3 seeds)", "movielens din+sim (learning-rate grid)",
        "movielens din+sum (learning-rate grid)", "synthetic DIN (learning-rate grid)",
        "synthetic din+sim (learning-rate grid)", "synthetic din+sum (learning-rate grid)"]
    main, rest = text.split("**Ablations**")
    assert "| movielens | DAIAN | 0.05 | 2 |" in main and "w/o UIM" not in main and "n=2" not in main
    ablations, grid = rest.split("**Valid AUC per learning rate")
    lines = [line for line in ablations.splitlines() if line.startswith("| movielens")]
    assert lines[0].startswith("| movielens | DAIAN (full, n=6) | 0.05 | 2 | 0.6500 ± 0.0100 |")
    assert lines[1].startswith("| movielens | daian w/o UIM | 0.05 | 2 | 0.6200 ± 0.0100 | ")
    assert " | -0.0300 | " in lines[1] and " | +0.0200 | " in lines[2]
    assert f"{bench.rela_impr(0.62, 0.60):+.2f} %" in lines[1]  # still against DIN
    assert "| movielens | daian | 0.6000 * | 0.5900 |" in grid and "w/o UIM" not in grid  # no grid of their own
    assert ("Command (trains what is not cached, then writes these tables): `tirec bench quality --out OUT "
            "--datasets movielens synthetic --models " + ",".join(args.models) + " --seeds 1 2 --lrs 0.05 0.1`") in text


def test_the_level_sweep_holds_tau_at_the_default_datas_and_keeps_the_whole_history_row(monkeypatch, tmp_path):
    bench = _module()
    args = bench.parse_args(["--out", str(tmp_path / "out"), "--input", "ML"])
    default = tmp_path / "movielens" / "tfr"
    default.mkdir(parents=True)
    (default / "spec.json").write_text(json.dumps({"intent_levels": 6, "explicit_threshold": 1 / 3}))
    commands = []
    monkeypatch.setattr(bench, "_run", lambda cmd: commands.append(cmd))

    variants = bench.level_variants(str(default), args)
    assert [(v[0], v[1]) for v in variants] == [
        ("movielens_levels2_tau0.333", "daian n=2"), ("movielens_levels4_tau0.333", "daian n=4"),
        ("movielens_levels8_tau0.333", "daian n=8"), ("movielens_levels2_tau-1", "daian n=2")]
    assert [v[3] for v in variants] == [str(tmp_path / "out" / "data" / v[0] / "tfr") for v in variants]
    sets = [" ".join(c[c.index("--views"):]) for c in commands]
    assert sets[0].endswith(f"pipeline.intent_levels=2 --set pipeline.explicit_threshold={1 / 3!r}")
    assert sets[2].endswith(f"pipeline.intent_levels=8 --set pipeline.explicit_threshold={1 / 3!r}")
    assert sets[3].endswith("pipeline.intent_levels=2 --set pipeline.explicit_threshold=-1.0")
    # --data stands for the default conversion only, never for a level variant.
    args.data = {"movielens": str(default)}
    assert bench.prepare("movielens", args) == str(default)
    assert bench.prepare("movielens", args, 4, 1 / 3) != str(default)
    with pytest.raises(ValueError, match="4 levels need their tau"):
        bench.prepare("movielens", args, 4)
    # A folder made with another tau than asked (its name rounds tau) is not reused.
    made = tmp_path / "out" / "data" / "movielens_levels4_tau0.333" / "tfr"
    made.mkdir(parents=True)
    (made / "spec.json").write_text(json.dumps({"intent_levels": 4, "explicit_threshold": 0.3331}))
    with pytest.raises(SystemExit, match="explicit_threshold=0.3331; this run asks for 4 and 0.333333"):
        bench.prepare("movielens", args, 4, 1 / 3)
    with pytest.raises(SystemExit, match="no spec.json"):
        bench.level_variants(str(tmp_path / "missing"), args)
    # Tables without the records: the level runs there are, whole-history last.
    args.tables_only = True
    (tmp_path / "out" / "results").mkdir()
    for name in ("movielens_levels2_tau-1", "movielens_levels8_tau0.333", "movielens_levels4_tau0.333", "movielens"):
        (tmp_path / "out" / "results" / f"{name}__daian__seed1__lr0.05__e20p3.json").write_text("{}")
    assert [v[0] for v in bench.level_variants(str(tmp_path / "missing"), args)] == [
        "movielens_levels4_tau0.333", "movielens_levels8_tau0.333", "movielens_levels2_tau-1"]


def test_the_untrained_reference_row_scores_eval_by_the_similarity_alone(tiny_data, tmp_path):
    from tirec.models.data import load_data_spec, read_columns
    from tirec.models.metrics import auc

    bench = _module()
    ref = bench.untrained_reference(tiny_data)
    cols = read_columns(tiny_data, "eval", load_data_spec(tiny_data), ["label", "trigger_target_sim"])
    want = auc(cols["label"], cols["trigger_target_sim"])
    assert set(ref) == {"valid", "eval"} and ref["eval"]["sim_auc"] == pytest.approx(want)
    assert bench.untrained_reference(str(tmp_path)) is None  # no records (--tables-only without data)
    row = {"dataset": "synthetic", "model": "din", "lr": 0.1, "seeds": 1, "auc_mean": 0.55, "auc_std": 0.0,
           "gauc_mean": 0.55, "gauc_std": 0.0, "logloss_mean": 0.5, "logloss_std": 0.0, "rela_impr_auc_pct": 0.0,
           "train_seconds_mean": 1.0, "params": 10, "latency_ms_median": 1.0}
    text = bench.markdown([row], {}, bench.parse_args(["--out", str(tmp_path)]), {"synthetic": ref})
    assert (f"| synthetic | *s_sem alone, untrained* | — | — | {want:.4f} | {ref['eval']['sim_gauc']:.4f} | — | "
            f"{bench.rela_impr(want, 0.55):+.2f} % |") in text


def test_the_reference_reads_the_splits_there_are_and_survives_tables_without_records(tiny_data_no_valid,
                                                                                      tmp_path):
    from tirec.features.jsonio import write_json

    bench = _module()
    assert set(bench.untrained_reference(tiny_data_no_valid)) == {"eval"}  # no valid split: no crash
    write_json(str(tmp_path / "bench_quality.json"), {"untrained_reference": {"movielens": {"eval": {"sim_auc": 0.6}}}})
    kept = bench._keep_references({"movielens": None, "synthetic": {"eval": {}}}, str(tmp_path))
    assert kept == {"movielens": {"eval": {"sim_auc": 0.6}}, "synthetic": {"eval": {}}}


def test_a_run_cached_on_other_records_is_an_error(tiny_data, tiny_data_no_valid, tmp_path):
    from tirec.features.jsonio import write_json

    bench = _module()
    args = bench.parse_args(["--out", str(tmp_path)])
    assert bench.data_fingerprint(tiny_data) != bench.data_fingerprint(tiny_data_no_valid)
    assert bench.data_fingerprint(tiny_data) == bench.data_fingerprint(tiny_data)
    path = bench.result_path(str(tmp_path), "synthetic", "din", 1, 0.1, bench.protocol_tag(args))
    os.makedirs(os.path.dirname(path))
    write_json(path, {**_result("synthetic", "din", 1, 0.1, 0.6, 0.6), "config": bench.run_config(1, 0.1, [], args),
                      "data": bench.data_fingerprint(tiny_data_no_valid)})
    with pytest.raises(SystemExit, match="cached on other records"):
        bench.cached(tiny_data, "synthetic", "din", "din", 1, 0.1, [], args)
    assert bench.cached(tiny_data_no_valid, "synthetic", "din", "din", 1, 0.1, [], args)["auc"] == 0.6


def test_runs_of_another_procedure_are_other_files_and_a_changed_setting_is_an_error(tmp_path):
    from tirec.features.jsonio import write_json

    bench = _module()
    out = str(tmp_path)
    now = bench.parse_args(["--out", out])
    first = bench.parse_args(["--out", out, "--max-epochs", "10", "--patience", "1"])
    other = bench.parse_args(["--out", out, "--set", "train.batch_size=1024"])
    assert bench.protocol_tag(now) == "e20p3" and bench.protocol_tag(first) == "e10p1"
    assert bench.protocol_tag(other).startswith("e20p3_") and bench.protocol_tag(other) != "e20p3"
    path = bench.result_path(out, "movielens", "din", 1, 0.1, "e20p3")
    assert path.endswith("movielens__din__seed1__lr0.1__e20p3.json")
    os.makedirs(os.path.dirname(path))
    write_json(path, {**_result("movielens", "din", 1, 0.1, 0.6, 0.6), "config": bench.run_config(1, 0.1, [], first)})
    with pytest.raises(SystemExit, match="cached with settings"):
        bench.cached("D", "movielens", "din", "din", 1, 0.1, [], now)
    write_json(path, {**_result("movielens", "din", 1, 0.1, 0.6, 0.6), "config": bench.run_config(1, 0.1, [], now)})
    assert bench.cached("D", "movielens", "din", "din", 1, 0.1, [], now)["auc"] == 0.6
    # The tables read this procedure's files only.
    write_json(bench.result_path(out, "movielens", "din", 2, 0.1, "e10p1"),
               {**_result("movielens", "din", 2, 0.1, 0.9, 0.6), "config": bench.run_config(2, 0.1, [], first)})
    assert bench.finish({"movielens|din": {"lr": 0.1, "grid": {}}}, now, {}) == 0
    assert "| movielens | DIN | 0.1 | 1 | 0.6000 ± 0.0000 |" in open(os.path.join(out, "bench_quality.md")).read()


def test_bad_flags_name_the_flag(tmp_path, capsys):
    bench = _module()
    for argv, message in ((["--models", "din,nope"], "--models: nope not registered"),
                          (["--data", "other=/x"], "--data must be NAME=DIR"),
                          (["--patience", "0"], "--patience must be >= 1"),
                          (["--lrs", "0"], "--lrs must be > 0")):
        with pytest.raises(SystemExit):
            bench.parse_args(["--out", str(tmp_path)] + argv)
        assert message in capsys.readouterr().err


def test_the_stopwatch_leaves_out_the_time_the_process_was_stopped():
    """A benchmark paused with SIGSTOP (to free the cores) reports its training time without
    the pause: a child stopped for 3 s inside a 1 s job reports about 1 s."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    code = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("bq", {str(SCRIPT)!r})
        bq = importlib.util.module_from_spec(spec); spec.loader.exec_module(bq)
        with bq.StopWatch(tick=0.1, gap=1.0) as w:
            print("ready", flush=True)
            for _ in range(100):  # one second of work, in steps a stop falls between
                time.sleep(0.01)
        print(round(w.wall, 2), round(w.seconds, 2), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    proc.send_signal(signal.SIGCONT)
    wall, seconds = map(float, proc.stdout.readline().split())
    assert proc.wait(timeout=30) == 0
    assert wall > 3.5, wall
    assert 0.8 < seconds < 2.5, (wall, seconds)  # a loaded machine stretches the 1 s of work
