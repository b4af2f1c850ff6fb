"""CLI flag names agree across commands; the old spellings still work with a deprecation line."""
import pathlib
import re

import pytest

from tirec import cli
from tirec.models.config import DAIAN_MOVED

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def calls(monkeypatch):
    """Stands in for the functions the commands delegate to; records what they receive."""
    from tirec.models import train
    from tirec.serving import client, export, verify

    seen = {}

    def record(name, result):
        def fake(*args, **kwargs):
            seen[name] = args
            return result
        return fake

    class FakeClient:
        def __init__(self, *args, **kwargs):
            seen["query"] = args + tuple(sorted(kwargs.items()))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def schema(self):
            return None

        def rank(self, request, schema, signature):
            return []

    monkeypatch.setattr(train, "train_run", record("train", {}))
    monkeypatch.setattr(train, "evaluate_run", record("evaluate", {}))
    monkeypatch.setattr(export, "export_run", record("export", "BASE/m/1"))
    monkeypatch.setattr(verify, "verify_serving", record("verify-serving", {"ok": True}))
    monkeypatch.setattr(client, "PredictClient", FakeClient)
    monkeypatch.setattr(client, "load_request", lambda path: {})
    return seen


# (command, argv with the new names, argv with the old ones, deprecation lines, what the
# delegate receives first: (run folder or target, ...))
CASES = [
    ("train", ["train", "--data", "D", "--model", "din", "--run", "R"],
     ["train", "--data", "D", "--model", "din", "--out", "R"], ["--out is now --run"], ("D", "din", "R")),
    ("evaluate", ["evaluate", "--data", "D", "--run", "R"], ["evaluate", "--data", "D", "--model-dir", "R"],
     ["--model-dir is now --run"], ("D", "R")),
    ("export", ["export", "--run", "R", "--out", "B", "--model-name", "m"],
     ["export", "--model-dir", "R", "--out", "B", "--name", "m"],
     ["--model-dir is now --run", "--name is now --model-name"], ("R", "B", "m")),
    ("verify-serving", ["verify-serving", "--model-name", "m", "--run", "R"],
     ["verify-serving", "--model", "m", "--model-dir", "R"],
     ["--model is now --model-name", "--model-dir is now --run"], ("127.0.0.1:8500", "m", "R")),
    ("query", ["query", "--model-name", "m", "--input", "q.json"], ["query", "--model", "m", "--input", "q.json"],
     ["--model is now --model-name"], ("127.0.0.1:8500", "m")),
]


@pytest.mark.parametrize("command,new,old,lines,received", CASES, ids=[c[0] for c in CASES])
def test_new_names_work_and_old_spellings_print_a_deprecation(calls, capsys, command, new, old, lines,
                                                               received):
    assert cli.main(new) == 0
    assert calls[command][:len(received)] == received
    assert "deprecated" not in capsys.readouterr().err
    calls.clear()
    assert cli.main(old) == 0
    assert calls[command][:len(received)] == received
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tirec: deprecated")]
    assert err == [f"tirec: deprecated: {line}" for line in lines]


@pytest.mark.parametrize("argv,flag", [
    (["evaluate", "--data", "D"], "--run"),
    (["export", "--run", "R", "--out", "B"], "--model-name"),
    (["verify-serving", "--run", "R"], "--model-name"),
])
def test_a_missing_flag_is_named_by_its_new_spelling(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"one of the arguments {flag} is required" in err


def test_old_and_new_spelling_together_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--data", "D", "--run", "R", "--model-dir", "R2"])
    assert exc.value.code == 2
    assert "argument --model-dir: not allowed with argument --run" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "verify-serving", "query"])
def test_help_shows_only_the_new_names(capsys, command):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "--model-dir" not in out and "--name " not in out
    if command in ("train", "evaluate", "export", "verify-serving"):
        assert "--run RUN" in out
    if command in ("export", "verify-serving", "query"):
        assert "--model-name NAME" in out and "--model " not in out


def test_serving_config_served_model_and_its_old_spelling(tmp_path, capsys, caplog):
    from tirec.serving import tf_serving_config as tsc

    assert cli.main(["serving-config", "--out", str(tmp_path / "new"), "--served-model", "m=/models/m",
                     "--served-model", "n=/models/n"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert cli.main(["serving-config", "--out", str(tmp_path / "old"), "--model", "m=/models/m",
                     "--model", "n=/models/n"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tirec: deprecated")]
    assert err == ["tirec: deprecated: --model is now --served-model"] * 2
    for folder in ("new", "old"):
        config = tsc.load_model_server_config(str(tmp_path / folder / tsc.MODELS_FILE))
        assert [(c.name, c.base_path) for c in config.model_config_list.config] == [("m", "/models/m"),
                                                                                    ("n", "/models/n")]
    assert cli.main(["serving-config", "--out", str(tmp_path / "none")]) == 2
    assert "--served-model NAME=BASE_PATH is required" in caplog.text


OLD_FLAGS = [r'(tirec |")train\b[^\n&;]*--out\b', r"--model-dir\b", r"tirec export\b[^\n&;]*--name\b",
             r"tirec (query|verify-serving|serving-config)\b[^\n&;]*--model\s"]
OLD_KEYS = r"model\.(" + "|".join(DAIAN_MOVED) + r")="


@pytest.mark.parametrize("path", ["Makefile", "docker/docker-compose.yml", "docker/README.md",
                                  "docker/trainer.Dockerfile", "docker/serving.Dockerfile",
                                  "docker/models/README.md", "benchmarks/bench_serving.py",
                                  "benchmarks/bench_quality.py"])
def test_shipped_commands_use_no_deprecated_spelling(path):
    """`make demo`, the Docker files and the benchmarks print no deprecation line."""
    text = (ROOT / path).read_text().replace("\\\n", " ")
    text = re.sub(r'",\s*"', " ", text)  # argv lists in the benchmarks: "--out", run -> one line
    for pattern in OLD_FLAGS + [OLD_KEYS]:
        assert not re.search(pattern, text), f"{path}: {re.search(pattern, text).group(0)}"
