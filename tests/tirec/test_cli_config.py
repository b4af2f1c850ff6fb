"""CLI wiring, typed YAML config with dotted overrides, and the one-way package dependencies."""
import ast
import json
import pathlib

import pytest

from tirec import cli
from tirec.config import TirecConfig, load_config, to_dict
from tirec.pipeline import job, runners
from tirec.pipeline.config import PipelineConfig, parse_duration

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["pipeline", "--help"]])
def test_help_on_every_subcommand(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    assert "usage: tirec" in capsys.readouterr().out


def test_models_lists_every_registered_name_with_its_description(capsys):
    from tirec.models.registry import describe, model_names

    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == model_names()
    for line, name in zip(lines, model_names()):
        assert line.endswith(describe(name)) and describe(name)


def test_generate_then_pipeline_through_the_cli(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert cli.main(["generate", "--out", str(raw), "--users", "20", "--seed", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 20
    code = cli.main(["pipeline", "--input", str(raw), "--format", "synthetic", "--out", str(out),
                     "--max-seq-len", "10", "--set", "pipeline.intent_levels=4",
                     "--direct_num_workers", "1"])  # a Beam flag passes through
    assert code == 0
    printed = capsys.readouterr().out
    assert "balanced': True" in printed
    spec = json.loads((out / "spec.json").read_text())
    assert spec["max_seq_len"] == 10 and spec["intent_levels"] == 4
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["max_seq_len"] == 10 and resolved["input"] == str(raw)


def test_bad_values_exit_2_naming_the_field(tmp_path, caplog):
    code = cli.main(["pipeline", "--input", str(tmp_path), "--format", "synthetic",
                     "--out", str(tmp_path / "o"), "--intent-levels", "1"])
    assert code == 2
    assert "pipeline.intent_levels" in caplog.text and "1" in caplog.text
    assert cli.main(["pipeline", "--input", str(tmp_path / "missing"), "--out", "x"]) == 2
    assert "is not a directory" in caplog.text


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("pipeline:\n  intent_levels: 8\n  click_btags: [click, buy]\n"
                    "  movielens:\n    click_threshold: 3.5\ngenerator:\n  users: 12\n")
    cfg = load_config(str(path), ["pipeline.max_seq_len=30", "pipeline.trigger_window=2h"])
    assert isinstance(cfg, TirecConfig)
    assert cfg.pipeline.intent_levels == 8 and cfg.pipeline.max_seq_len == 30
    assert cfg.pipeline.click_btags == ("click", "buy")
    assert cfg.pipeline.movielens.click_threshold == 3.5
    assert cfg.pipeline.trigger_window_s == 7200
    assert cfg.generator.users == 12
    assert load_config(None, ["pipeline.click_btags=click,pv"]).pipeline.click_btags == ("click", "pv")


def test_a_file_holding_one_section_alone_gets_a_hint(tmp_path):
    path = tmp_path / "config.json"  # what a pipeline writes next to its records
    path.write_text(json.dumps(to_dict(PipelineConfig(input="/data", intent_levels=8))))
    with pytest.raises(ValueError, match=r"They are keys of the 'pipeline' section .* nest them under "
                                         r"'pipeline:'"):
        load_config(str(path))
    path.write_text(json.dumps({"pipeline": json.loads(path.read_text())}))
    assert load_config(str(path)).pipeline.intent_levels == 8
    with pytest.raises(ValueError) as err:
        load_config(None, ["intent_levels=8", "epochs=2"])  # keys of two sections: no hint
    assert "They are keys" not in str(err.value)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['intnet_levels'\]"):
        load_config(None, ["pipeline.intnet_levels=3"])
    with pytest.raises(ValueError, match="pipeline.max_seq_len: expected an integer"):
        load_config(None, ["pipeline.max_seq_len=abc"])
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(None, ["pipeline.max_seq_len"])
    with pytest.raises(ValueError, match="pipeline.no_trigger"):
        PipelineConfig(no_trigger="keep")


@pytest.mark.parametrize("flag,hint", [
    ("--direct_num_worker", "did you mean --direct_num_workers?"),
    ("--max_seq_len", "did you mean --max-seq-len?"),
    ("--not-a-flag", ""),
])
def test_unknown_pipeline_flag_is_an_error_naming_it(tmp_path, capsys, flag, hint):
    with pytest.raises(SystemExit) as exc:
        cli.main(["pipeline", "--input", str(tmp_path), "--out", str(tmp_path / "o"), flag, "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {flag}" in err and hint in err
    assert not (tmp_path / "o").exists()


def test_beam_flags_known_to_any_options_class_pass():
    assert runners.unknown_beam_flags(["--direct_num_workers", "2", "--runner=DirectRunner",
                                   "--flink_master", "host:8081", "--project", "p",
                                   "--experiments=a", "--save_main_session"]) == []
    assert runners.unknown_beam_flags(["--direct_num_workers", "2", "--flink_mastr", "x"]) == ["--flink_mastr", "x"]
    with pytest.raises(ValueError, match="--direct_num_workers"):
        runners.unknown_beam_flags(["--direct_num_workers", "two"])


def test_pipeline_flag_values_stay_strings(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, beam_args, progress=None):
        seen["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr(job, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024").mkdir()
    assert cli.main(["pipeline", "--input", "2024", "--out", "007", "--trigger-window", "3600"]) == 2
    assert seen["cfg"].input == "2024" and seen["cfg"].out == "007"
    assert seen["cfg"].trigger_window_s == 3600


def test_view_flags_map_onto_the_pipeline_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, beam_args, progress=None):
        seen["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr(job, "run", fake_run)
    base = ["pipeline", "--input", str(tmp_path), "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--views", "--realtime-window", "6h", "--long-seq-len", "120",
                            "--set", "pipeline.realtime_len=7"]) == 2
    cfg = seen["cfg"]
    assert (cfg.views, cfg.realtime_window_s, cfg.long_seq_len, cfg.realtime_len) == (True, 6 * 3600, 120, 7)
    assert cli.main(base) == 2
    assert (seen["cfg"].views, seen["cfg"].realtime_window_s, seen["cfg"].realtime_len,
            seen["cfg"].long_seq_len) == (False, 4 * 3600, 10, 200)  # the defaults
    assert cli.main(base + ["--set", "pipeline.views=true", "--no-views"]) == 2 and not seen["cfg"].views


@pytest.mark.parametrize("argv,message", [
    (["--long-seq-len", "0"], "pipeline.long_seq_len: must be an integer >= 1; received 0"),
    (["--set", "pipeline.realtime_len=-1"], "pipeline.realtime_len: must be an integer >= 1; received -1"),
    (["--views", "--realtime-window", "4x"], "pipeline.realtime_window: cannot parse duration '4x'"),
    (["--views", "--realtime-window", "1h"],
     "pipeline.realtime_window: must be at least pipeline.trigger_window ('4h') when views are on"),
    (["--set", "pipeline.views=maybe"], "pipeline.views: expected true/false; received 'maybe'"),
])
def test_bad_view_values_exit_2_naming_the_option(tmp_path, caplog, argv, message):
    code = cli.main(["pipeline", "--input", str(tmp_path), "--out", str(tmp_path / "o")] + argv)
    assert code == 2 and message in caplog.text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("override,message", [
    ("pipeline.max_seq_len=abc", "pipeline.max_seq_len: expected an integer; received 'abc' (str)"),
    ("pipeline.max_seq_len=2.5", "pipeline.max_seq_len: expected an integer; received 2.5 (float)"),
    ("pipeline.sim_lo=true", "pipeline.sim_lo: expected a number; received True (bool)"),
    ("pipeline.sim_lo=[1]", "pipeline.sim_lo: expected a number; received [1] (list)"),
    ("pipeline.format=1", "pipeline.format: expected a string; received 1 (int)"),
    ("pipeline.out=2024", "pipeline.out: expected a string; received 2024 (int)"),
    ("pipeline.explicit_threshold=abc",
     "pipeline.explicit_threshold: expected a number or null; received 'abc' (str)"),
    ("pipeline.eval_days=x", "pipeline.eval_days: expected an integer or null; received 'x' (str)"),
    ("pipeline.trigger_window=[4]",
     "pipeline.trigger_window: expected a string or an integer; received [4] (list)"),
    ("pipeline.click_btags=[click, 3]", "pipeline.click_btags[1]: expected a string; received 3 (int)"),
    ("pipeline.click_btags=7", "pipeline.click_btags: expected a list of strings; received 7 (int)"),
    ("model.tower=[64, x]", "model.tower[1]: expected an integer; received 'x' (str)"),
])
def test_type_errors_name_key_value_and_expected_type(override, message):
    with pytest.raises(ValueError) as exc:
        load_config(None, [override])
    assert str(exc.value) == message


def test_union_takes_the_member_that_fits():
    cfg = load_config(None, ["pipeline.explicit_threshold=0.3", "pipeline.trigger_window=3600",
                             "pipeline.eval_fraction=null"]).pipeline
    assert cfg.explicit_threshold == 0.3 and cfg.trigger_window == 3600 and cfg.eval_fraction is None
    assert load_config(None, ["pipeline.trigger_window=2h"]).pipeline.trigger_window == "2h"


def test_prior_intent_half_life_option():
    cfg = load_config(None, ["pipeline.prior_intent_half_life=12h"]).pipeline
    assert cfg.prior_intent_half_life_s == 12 * 3600
    assert PipelineConfig().prior_intent_half_life_s == 7 * 86400
    for bad in ("soon", "0d", "-3d"):
        with pytest.raises(ValueError, match=f"pipeline.prior_intent_half_life: .*{bad}"):
            PipelineConfig(prior_intent_half_life=bad)


def test_parse_duration():
    assert parse_duration("4h") == 14400 and parse_duration("30m") == 1800
    assert parse_duration("14d") == 14 * 86400 and parse_duration(90) == 90
    for bad in ("4x", "-1h", "0", "1.5s"):
        with pytest.raises(ValueError, match="trigger_window"):
            parse_duration(bad, "trigger_window")


def _imports(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("folder,forbidden", [
    ("features", ("tirec.pipeline", "tirec.models", "tirec.serving", "apache_beam")),
    ("pipeline", ("tirec.models", "tirec.serving")),
    ("models", ("tirec.pipeline", "tirec.serving", "apache_beam")),
])
def test_dependencies_run_one_way(folder, forbidden):
    bad = sorted(n for n in _imports(folder) if n.startswith(forbidden))
    assert not bad, f"{folder}/ imports {bad}"


def test_no_private_tensorflow_imports():
    for folder in ("features", "pipeline", "models", "serving", "tirec"):
        bad = sorted(n for n in _imports(folder) if n.startswith("tensorflow.python"))
        assert not bad, f"{folder}/ imports {bad}"


def test_dask_address_needs_the_dask_runner(tmp_path, caplog):
    """--dask-address is Beam's --dask_client_address, refused (naming both) for another runner."""
    code = cli.main(["pipeline", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--dask-address", "tcp://10.0.0.1:8786"])
    assert code == 2
    assert "--dask-address tcp://10.0.0.1:8786 needs --runner dask (the runner is DirectRunner)" in caplog.text
    assert cli._with_dask_address(["--runner", "dask"], "tcp://h:8786") == [
        "--runner", "dask", "--dask_client_address", "tcp://h:8786"]


def test_the_dask_runner_flags_are_known_beam_flags():
    pytest.importorskip("dask.distributed")
    assert runners.unknown_beam_flags(["--runner", "dask", "--dask_client_address", "tcp://h:8786",
                                       "--dask_npartitions", "4"]) == []
    assert runners.unknown_beam_flags(["--runner", "dask", "--dask_adress", "x"]) == ["--dask_adress", "x"]
    assert "did you mean --dask_client_address" in runners.unknown_flags_message(["--dask_client_adress"])


@pytest.mark.parametrize("argv,message", [
    (["query", "--model-name", "m", "--input", "r.json", "--top", "-2"], "argument --top: must be an integer >= 0; received -2"),
    (["make-request", "--data", "T", "--out", "r.json", "--rows", "0"], "argument --rows: must be an integer >= 1; received 0"),
    (["verify-serving", "--model-name", "m", "--run", "R", "--rows", "x"], "argument --rows: must be an integer >= 1; received 'x'"),
    (["export", "--run", "R", "--out", "o", "--model-name", "m", "--warmup-rows", "-1"],
     "argument --warmup-rows: must be an integer >= 0; received -1"),
])
def test_count_flags_refuse_values_below_their_floor(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
