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
    seen.clear()  # a flag and a --set of the same key that disagree: refused before the config is built
    assert cli.main(base + ["--set", "pipeline.views=true", "--no-views"]) == 2 and "cfg" not in seen
    assert cli.main(base + ["--set", "pipeline.views=true", "--views"]) == 2 and seen["cfg"].views


def test_a_flag_and_a_set_of_the_same_key_must_agree(tmp_path, caplog):
    code = cli.main(["train", "--data", str(tmp_path), "--model", "din", "--run", str(tmp_path / "r"),
                     "--epochs", "3", "--set", "train.epochs=5"])
    assert code == 2 and "--epochs 3 and --set train.epochs=5 disagree; give one of them" in caplog.text
    caplog.clear()  # model.name=daian is the package default, but not what --model asks for
    code = cli.main(["train", "--data", str(tmp_path), "--model", "din", "--run", str(tmp_path / "r"),
                     "--set", "model.name=daian"])
    assert code == 2 and "--model din and --set model.name=daian disagree" in caplog.text
    caplog.clear()
    code = cli.main(["pipeline", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--intent-levels", "4",
                     "--set", "pipeline.intent_levels=8"])
    assert code == 2 and "--intent-levels 4 and --set pipeline.intent_levels=8 disagree" in caplog.text
    caplog.clear()
    code = cli.main(["pipeline", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--no-views",
                     "--set", "pipeline.views=true"])
    assert code == 2 and "--no-views and --set pipeline.views=true disagree" in caplog.text


def test_a_flag_and_a_set_that_agree_are_accepted(tmp_path, monkeypatch):
    from tirec.pipeline import job

    seen = {}

    def fake_run(cfg, *a, **k):
        seen["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr(job, "run", fake_run)
    # the same text: a string flag agrees with a --set that YAML reads as a number
    assert cli.main(["pipeline", "--input", str(tmp_path), "--out", "2024", "--trigger-window", "14400",
                     "--set", "pipeline.out=2024", "--set", "pipeline.trigger_window=14400",
                     "--views", "--set", "pipeline.views=true"]) == 2
    assert (seen["cfg"].out, seen["cfg"].trigger_window_s, seen["cfg"].views) == ("2024", 14400, True)


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


@pytest.mark.parametrize("override,message", [
    ("model.tower=[0]", "model.tower: must be a non-empty list of layer sizes >= 1; received [0]"),
    ("model.din_hidden=[]", "model.din_hidden: must be a non-empty list of layer sizes >= 1; received []"),
    ("model.daian.att_heads=0", "model.daian.att_heads: must be an integer >= 1; received 0"),
    ("model.daian.uim_hidden=[8, 0]", "model.daian.uim_hidden: must be a non-empty list of layer sizes >= 1; "
                                      "received [8, 0]"),
    ("train.learning_rate=.inf", "train.learning_rate: must be a finite number > 0; received inf"),
    ("train.seed=-3", "train.seed: must be an integer >= 0; received -3"),
    ("pipeline.seed=-1", "pipeline.seed: must be >= 0; received -1"),
    ("pipeline.sim_hi=.inf", "pipeline.sim_hi: must be in [-1, 1] (a cosine similarity); received inf"),
    ("pipeline.sim_lo=-50", "pipeline.sim_lo: must be in [-1, 1] (a cosine similarity); received -50.0"),
    ("pipeline.movielens.click_threshold=.nan",
     "pipeline.movielens.click_threshold: must be a finite rating > 0; received nan"),
    ("pipeline.movielens.negatives_per_rating=.inf",
     "pipeline.movielens.negatives_per_rating: must be a finite number >= 0; received inf"),
    ("pipeline.movielens.seed=-1", "pipeline.movielens.seed: must be >= 0; received -1"),
])
def test_out_of_range_values_name_key_and_value(override, message):
    """Checked when the config loads, not by the layer or the job that reads them later."""
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


@pytest.mark.parametrize("argv,key,reads,extra", [
    (["train", "--data", "D", "--model", "din", "--run", "R"], "pipeline.max_seq_len=30", "it reads model, train",
     "spec.json (in --data), written by `tirec pipeline`"),
    (["pipeline", "--input", "IN", "--out", "OUT"], "train.epochs=3", "it reads pipeline", "read by `tirec train`"),
    (["generate", "--out", "OUT"], "pipeline.max_seq_len=5", "it reads generator", "read by `tirec pipeline`"),
    (["generate", "--out", "OUT"], "run.model=din", "it reads generator", "read by `tirec run`"),
])
def test_a_set_of_a_section_the_command_does_not_read_is_refused(argv, key, reads, extra, tmp_path, monkeypatch,
                                                                 caplog):
    from tirec.models import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "train_run", lambda *a: pytest.fail("trained despite the refused --set"))
    assert cli.main(argv + ["--set", key]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"--set {key}: `tirec {argv[0]}` does not read the {key.split('.')[0]} section")
    assert reads in errors[0] and extra in errors[0]
    assert not list(tmp_path.iterdir())


def test_a_shared_config_file_is_read_for_the_commands_sections_only(tmp_path, monkeypatch, caplog):
    """One run.yaml for every command (and `tirec run`): train reads model and train, and names
    the sections it leaves to the others in one info line."""
    from tirec.models import train

    seen = {}
    monkeypatch.setattr(train, "train_run", lambda data, model, run, m, t: seen.update(m=m, t=t) or {})
    path = tmp_path / "run.yaml"
    path.write_text("generator:\n  users: 12\npipeline:\n  max_seq_len: 30\nmodel:\n  emb_dim: 4\n"
                    "train:\n  epochs: 2\nrun:\n  first_span: 5\n")
    caplog.set_level("INFO", logger="tirec")
    argv = ["train", "--data", "D", "--model", "din", "--run", "R", "--config", str(path)]
    assert cli.main(argv + ["--set", "train.epochs=3"]) == 0
    assert (seen["m"].emb_dim, seen["t"].epochs) == (4, 3)
    lines = [r.getMessage() for r in caplog.records if "for other commands" in r.getMessage()]
    assert lines == [f"--config {path}: tirec train reads its model, train section(s); generator, pipeline, run "
                     f"are for other commands"]


def test_each_commands_help_shows_a_set_of_a_section_it_reads(capsys):
    for command, (reads, example) in cli.COMMAND_SECTIONS.items():
        assert example.split(".")[0] in reads
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"e.g. --set {example}" in text
    assert "pipeline.max_seq_len" not in text  # train's, the last


def test_yaml_syntax_errors_name_the_source_and_the_place(tmp_path, caplog):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ValueError, match=rf"^config {path}: not valid YAML: expected ',' or '\]', but got "
                                         rf"'<stream end>' at line 3, column 1$"):
        load_config(str(path))
    with pytest.raises(ValueError, match=r"^override 'model.tower=\[64': not valid YAML: .* at line 1, column 4$"):
        load_config(None, ["model.tower=[64"])
    assert cli.main(["train", "--data", "D", "--model", "din", "--run", "R", "--set", "model.tower=[64"]) == 2
    assert cli.main(["train", "--data", "D", "--model", "din", "--run", "R", "--config", str(path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("not valid YAML" in e and "\n" not in e for e in errors)


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "--data", "T", "--run", "R", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1; received 0"),
    (["evaluate", "--data", "T", "--run", "R", "--batch-size", "-5"], "argument --batch-size: must be an integer >= 1; received -5"),
    (["evaluate", "--data", "T", "--run", "R", "--noise", "5", "--noise-seed", "-1"],
     "argument --noise-seed: must be an integer >= 0; received -1"),
    (["export", "--run", "R", "--out", "o", "--model-name", "m", "--version", "0"],
     "argument --version: must be an integer >= 1; received 0"),
    (["train", "--data", "T", "--model", "din", "--run", "R", "--steps-per-epoch", "-1"],
     "argument --steps-per-epoch: must be an integer >= 0; received -1"),
    (["query", "--model-name", "m", "--input", "r.json", "--version", "-1"], "argument --version: must be an integer >= 1"),
    (["query", "--model-name", "m", "--input", "r.json", "--timeout", "-1"], "argument --timeout: must be a number > 0; received -1"),
    (["query", "--model-name", "m", "--input", "r.json", "--timeout", "0"], "argument --timeout: must be a number > 0; received 0"),
    (["query", "--model-name", "m", "--input", "r.json", "--timeout", "nan"], "argument --timeout: must be a number > 0; received nan"),
    (["query", "--model-name", "m", "--input", "r.json", "--timeout", "soon"], "argument --timeout: must be a number > 0; received 'soon'"),
    (["verify-serving", "--model-name", "m", "--run", "R", "--tolerance", "-0.5"],
     "argument --tolerance: must be a number >= 0; received -0.5"),
    (["verify-serving", "--model-name", "m", "--run", "R", "--version", "0"], "argument --version: must be an integer >= 1"),
])
def test_size_count_and_time_flags_refuse_values_below_their_floor(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_folder_given_as_a_file_is_one_error_line(tmp_path, monkeypatch, caplog):
    from tirec.serving import client

    assert cli.main(["query", "--model-name", "m", "--input", str(tmp_path)]) == 2
    assert f"request: {tmp_path} is a folder, not a request JSON file" in caplog.text

    def unreadable(path):
        raise IsADirectoryError(21, "Is a directory", path)

    monkeypatch.setattr(client, "load_request", unreadable)
    assert cli.main(["query", "--model-name", "m", "--input", "T"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1] == "[Errno 21] Is a directory: 'T'"


def test_query_takes_a_version_or_a_label_not_both(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["query", "--model-name", "m", "--input", "-", "--version", "1", "--label", "stable"])
    assert exc.value.code == 2 and "argument --label: not allowed with argument --version" in capsys.readouterr().err
