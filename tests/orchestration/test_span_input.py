"""What ``tirec run`` reads of a logs folder and which settings it refuses: day shards up to the
span (compressed names too), top-level impressions or behaviours files refused; the settings it
sets itself and a split that does not evaluate on the span's day refused."""
import json
import os

import pytest

from tirec.config import load_config, to_dict
from tirec.orchestration import components as C
from tirec.orchestration import runner
from tirec.orchestration.config import load_runner_config


def _touch(root, *names):
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()


def test_span_links_the_static_tables_and_the_days_up_to_the_span(tmp_path):
    logs = str(tmp_path / "logs")
    _touch(logs, "items.csv", "users.parquet", "impressions/part-00000-day0008.csv.gz",
           "impressions/part-00000-day0009.csv.gz", "impressions/part-00000-day0010.csv.gz",
           "behaviours/part-00000-day0009.jsonl", "behaviours/part-00000-day0010.jsonl")
    static, days = C.span_files(logs, 9)
    assert [os.path.basename(p) for p in static] == ["items.csv", "users.parquet"]
    assert sorted(os.path.relpath(p, logs) for p in days) == [
        "behaviours/part-00000-day0009.jsonl", "impressions/part-00000-day0008.csv.gz",
        "impressions/part-00000-day0009.csv.gz"]
    assert C.link_span_input(logs, 9, str(tmp_path / "span")) == 3
    assert os.path.islink(tmp_path / "span" / "impressions" / "part-00000-day0009.csv.gz")
    assert not os.path.exists(tmp_path / "span" / "impressions" / "part-00000-day0010.csv.gz")


@pytest.mark.parametrize("name", ["impressions.parquet", "impressions-day0009.csv", "behaviours-0.jsonl"])
def test_a_top_level_day_table_is_refused_naming_the_file(tmp_path, name):
    logs = str(tmp_path / "logs")
    _touch(logs, "items.csv", name, "impressions/part-00000-day0009.csv")
    with pytest.raises(C.ComponentFailed, match=rf"{name}: a span reads \w+ from \w+/, one shard per day"):
        C.span_files(logs, 9)


def test_a_shard_without_a_day_is_refused(tmp_path):
    logs = str(tmp_path / "logs")
    _touch(logs, "impressions/part-00000.csv")
    with pytest.raises(C.ComponentFailed, match=r"part-00000.csv has no day in its name"):
        C.span_files(logs, 9)


def test_settings_tirec_run_sets_itself_are_refused():
    assert load_runner_config(None, ["run.model=din", "model.name=din"]).run.model == "din"
    assert load_runner_config(None, ["run.format=generic", "pipeline.format=generic"]).run.format == "generic"
    for given, instead in (("model.name=din", "run.model"), ("pipeline.format=alimama", "run.format"),
                           ("pipeline.input=/data/logs", "run.input"), ("pipeline.out=/tmp/x", "--workdir"),
                           ("train.warm_start=/runs/a", "run.warm_start")):
        key, value = given.split("=")
        with pytest.raises(ValueError, match=rf"{key}: tirec run sets it itself and does not read it; "
                                             rf"set {instead}.* received '{value}'"):
            load_runner_config(None, [given])
    with pytest.raises(ValueError, match=r"run.input: read only with run.source=logs.*received '/data/logs'"):
        load_runner_config(None, ["run.input=/data/logs"])
    assert load_runner_config(None, ["run.source=logs", "run.input=/data/logs"]).run.input == "/data/logs"


def test_a_config_file_must_split_each_span_by_day_and_generate_day_shards(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 1\n")
    with pytest.raises(ValueError, match=r"pipeline.split / pipeline.eval_days: .* received split='auto'"):
        load_runner_config(str(path))
    with pytest.raises(ValueError, match=r"generator.day_files: tirec run's LogGen writes the logs one shard "
                                         r"per day.* received false"):
        load_runner_config(str(path), ["pipeline.split=days"])
    cfg = load_runner_config(str(path), ["pipeline.split=days", "generator.day_files=true"])
    assert cfg.pipeline.split == "days" and cfg.train.epochs == 1 and cfg.generator.day_files
    with pytest.raises(ValueError, match=r"eval_days=2"):
        load_runner_config(str(path), ["pipeline.split=days", "pipeline.eval_days=2", "generator.day_files=true"])
    with pytest.raises(ValueError, match=r"generator.day_files"):
        load_runner_config(None, ["generator.day_files=false"])  # not silently replaced by true
    logs = load_runner_config(str(path), ["pipeline.split=days", "run.source=logs", "run.input=/data/logs"])
    assert not logs.generator.day_files  # read only with the built-in generator


def test_the_demo_gives_daian_settings_only_to_daian():
    daian = load_runner_config(None, [])
    assert daian.run.model == "daian" and daian.model.section("daian").att_units == 32
    din = load_runner_config(None, ["run.model=din"], users=7)
    assert "daian" not in din.model.sections and din.model.tower == (128, 64)
    assert din.generator.users == 7 and din.pipeline.split == "days"


@pytest.mark.parametrize("span", [2, -1, 0])
def test_a_span_without_train_valid_and_eval_days_is_refused(tmp_path, span):
    from tirec.orchestration import runner

    with pytest.raises(ValueError, match=rf"--span: must be an integer >= 3 .* received {span}"):
        runner.run(str(tmp_path / "w"), load_runner_config(None, []), span=span)


def test_blessing_slices_and_min_slice_rows_are_checked_at_load():
    assert load_runner_config(None, ["blessing.slices=[drift, trigger]"]).blessing.slices == ("drift", "trigger")
    with pytest.raises(ValueError, match=r"blessing.slices: unknown slice 'drfit'; allowed: drift, no_drift, .*; "
                                         r"received \['drift', 'drfit'\]"):
        load_runner_config(None, ["blessing.slices=[drift, drfit]"])
    with pytest.raises(ValueError, match=r"blessing.min_slice_rows: must be an integer >= 0; received -5"):
        load_runner_config(None, ["blessing.min_slice_rows=-5"])


def _logs_cfg(logs):
    return load_runner_config(None, ["run.source=logs", f"run.input={logs}", "run.format=generic"])


def test_logs_in_a_linked_folder_are_fingerprinted(tmp_path):
    elsewhere, logs = str(tmp_path / "elsewhere"), str(tmp_path / "logs")
    _touch(elsewhere, "part-00000-day0009.csv")
    _touch(logs, "items.csv")
    os.symlink(elsewhere, os.path.join(logs, "impressions"))
    r = runner.Runner(str(tmp_path / "w"), _logs_cfg(logs))
    try:
        before = r._external(9)["logs"].fingerprint
        with open(os.path.join(elsewhere, "part-00000-day0009.csv"), "w") as f:
            f.write("changed behind the link")
        assert r._external(9)["logs"].fingerprint != before
    finally:
        r.close()


def test_a_run_that_cannot_start_is_recorded_failed(tmp_path):
    w, missing = str(tmp_path / "w"), str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=rf"run.input '{missing}' is not a folder"):
        runner.run(w, _logs_cfg(missing))
    store = runner.MetadataStore(os.path.join(w, "metadata.sqlite"))
    try:
        assert [row["status"] for row in store.runs()] == ["failed"]
    finally:
        store.close()


def test_generator_settings_are_refused_with_the_logs_source(tmp_path):
    logs = ["run.source=logs", f"run.input={tmp_path}", "run.format=generic"]
    with pytest.raises(ValueError, match=r"--users: a generator setting, read only with run.source=synthetic; "
                                         r"run.source=logs reads run.input; received '--users 50'"):
        load_runner_config(None, logs, users=50)
    with pytest.raises(ValueError, match=r"generator.days: a generator setting.* received 'generator.days=12'"):
        load_runner_config(None, logs + ["generator.days=12"])
    assert load_runner_config(None, logs).run.input == str(tmp_path)
    assert load_runner_config(None, ["generator.days=12"], users=50).generator.users == 50


def test_run_settings_are_checked_when_the_config_loads(tmp_path):
    # not by the component reading them, after the pipeline has run
    for sets, message in (
            (["run.model=nosuch"], r"run.model: not a registered model; registered: .*daian.*; received 'nosuch'"),
            (["run.format=nosuch"], r"run.format: must be one of .*generic.*; received 'nosuch'"),
            (["run.model_name=../x"], r"run.model_name: .* plain folder name; received '../x'"),
            # a runner-set key given equal to the package default is still refused (it would be replaced)
            (["model.name=daian", "run.model=din"], r"model.name: tirec run sets it itself.*set run.model"),
            (["train.warm_start=''"], r"train.warm_start: tirec run sets it itself")):
        with pytest.raises(ValueError, match=message):
            load_runner_config(None, sets)
    assert load_runner_config(None, ["run.model=din", "model.name=din", "run.first_span=10"]).run.model == "din"
    # a shared file's generator section, with the logs source, is left unread (one info line)
    path = tmp_path / "run.yaml"
    path.write_text(f"run: {{source: logs, input: {tmp_path}}}\npipeline: {{split: days, eval_days: 1}}\n"
                    "generator: {users: 5000, day_files: true}\n")
    assert load_runner_config(str(path)).run.source == "logs"
    # a file's runner-set key equal to the package default but not to run.*: refused too
    path.write_text("run: {model: din}\nmodel: {name: daian}\npipeline: {split: days, eval_days: 1}\n"
                    "generator: {day_files: true}\n")
    with pytest.raises(ValueError, match=r"model.name: tirec run sets it itself.*set run.model instead; "
                                         rf"received \"model.name='daian' \(in {path}\)\""):
        load_runner_config(str(path))
    path.write_text(path.read_text().replace("name: daian", "name: din"))
    assert load_runner_config(str(path)).model.name == "din"


def test_a_run_folder_lends_its_settings_to_tirec_run(tmp_path):
    """A run folder records train.warm_start='' (unset) and its model.name: neither is refused
    when run.model names that model."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, ["model.name=din", "model.emb_dim=8"])
    (run / "config.json").write_text(json.dumps({"model": to_dict(cfg.model), "train": to_dict(cfg.train),
                                                 "data": "/data/tfr"}))
    (run / "spec.json").write_text("{}")
    got = load_runner_config(str(run), ["run.model=din", "pipeline.split=days", "pipeline.eval_days=1",
                                        "generator.day_files=true"])
    assert (got.model.name, got.model.emb_dim, got.train.warm_start) == ("din", 8, "")
    with pytest.raises(ValueError, match=r"model.name: tirec run sets it itself"):
        load_runner_config(str(run), ["pipeline.split=days", "pipeline.eval_days=1", "generator.day_files=true"])


def test_a_run_refused_for_its_arguments_leaves_no_workdir(tmp_path):
    w = tmp_path / "w"
    with pytest.raises(ValueError, match=r"--span: must be an integer >= 3"):
        runner.run(str(w), load_runner_config(None, []), span=2)
    with pytest.raises(ValueError, match=r"--span / run.first_span: the generated log has generator.days=10 days, "
                                         r"so a span is at most 10; received 11"):
        runner.run(str(w), load_runner_config(None, []), span=11)
    with pytest.raises(ValueError, match=r"generator.days=6 days.*received 8"):  # the default first span
        runner.run(str(w), load_runner_config(None, ["generator.days=6"]))
    with pytest.raises(ValueError, match=r"--from Pusher comes after --to LogGen"):
        runner.run(str(w), load_runner_config(None, []), start="Pusher", stop="LogGen")
    assert not w.exists()


def test_a_link_to_an_ancestor_folder_is_walked_once(tmp_path):
    from tirec.orchestration.runner import _walk_files

    (tmp_path / "logs" / "day1").mkdir(parents=True)
    (tmp_path / "logs" / "day1" / "impressions.csv").write_text("x\n")
    os.symlink(tmp_path / "logs", tmp_path / "logs" / "day1" / "again")  # a loop
    os.symlink(tmp_path / "logs" / "day1", tmp_path / "logs" / "current")  # a second path to day1
    files = _walk_files(str(tmp_path / "logs"))
    assert [os.path.relpath(f, tmp_path / "logs") for f in files] in (
        ["day1/impressions.csv"], ["current/impressions.csv"])
