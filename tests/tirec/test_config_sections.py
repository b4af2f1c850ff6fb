"""Config sections: one per model, validation when built, old keys and old run folders."""
import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest

from tirec.config import load_config
from tirec.features.config_io import Checks, from_dict, to_dict
from tirec.models import registry
from tirec.models.config import (DAIAN_MOVED, ModelConfig, RunConfig, TrainConfig, load_run_config,
                                 model_config_from_dict)
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.synthetic import GeneratorConfig

# RUN/config.json of a `tirec train --model daian` run by main at e5603a7 (before the model
# sections), with non-default DAIAN settings (see tests/fixtures/README.md).
OLD_RUN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "run_e5603a7"


def test_each_model_has_its_own_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  emb_dim: 8\n  tower: [32, 16]\n  daian:\n    uim_attention: mhta\n")
    cfg = load_config(str(path), ["model.daian.att_units=64", "model.daian.att_heads=8"]).model
    assert cfg.emb_dim == 8 and cfg.tower == (32, 16)  # shared settings stay in `model`
    daian = cfg.section("daian")
    assert type(daian).__name__ == "DaianConfig" and dataclasses.is_dataclass(daian)
    assert (daian.uim_attention, daian.att_units, daian.att_heads) == ("mhta", 64, 8)
    assert daian.use_uim is True  # not given: the registered class's default
    assert cfg.section("din") == registry.config_class("din")()
    assert cfg.section() == daian  # the section of model.name (default daian)
    assert to_dict(cfg)["daian"]["uim_attention"] == "mhta"
    with pytest.raises(dataclasses.FrozenInstanceError):
        daian.att_units = 1


def test_a_model_registers_its_class_with_its_own_config(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_CONFIGS", dict(registry._CONFIGS))
    monkeypatch.setattr(registry, "_DESCRIPTIONS", dict(registry._DESCRIPTIONS))

    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        depth: int = 2

        def __post_init__(self):
            Checks("model.toy", self).counts("depth")

    @registry.register_model("toy", ToyConfig, description="toy")
    def build_toy(spec, model_config, num_items, item_dim):
        return model_config.section("toy")

    cfg = load_config(None, ["model.name=toy", "model.toy.depth=5"]).model
    assert registry.get_builder("toy")(None, cfg, 0, 0) == ToyConfig(depth=5)
    with pytest.raises(ValueError, match=r"model.toy.depth: expected an integer; received 'x' \(str\)"):
        load_config(None, ["model.toy.depth=x"])
    with pytest.raises(ValueError, match="model.toy.depth: must be an integer >= 1; received 0"):
        load_config(None, ["model.toy.depth=0"])
    with pytest.raises(TypeError, match="frozen dataclass"):
        registry.register_model("loose", dict, description="loose")
    with pytest.raises(ValueError, match="description must be one non-empty line; received ''"):
        registry.register_model("mute", ToyConfig, description="")


def test_a_model_reads_the_sequences_it_registers(monkeypatch):
    """``model_spec`` narrows a data spec with extra sequences to the ones the model reads: the
    first for ``histories="first"`` (DIN, DAIAN), every one for ``"all"``."""
    from tirec.features.spec import Feature, tir_feature_spec

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_CONFIGS", dict(registry._CONFIGS))
    monkeypatch.setattr(registry, "_DESCRIPTIONS", dict(registry._DESCRIPTIONS))
    monkeypatch.setattr(registry, "_HISTORIES", dict(registry._HISTORIES))

    @dataclasses.dataclass(frozen=True)
    class ViewsConfig:
        pass

    registry.register_model("views_toy", ViewsConfig, histories="all", description="views toy")(lambda *a: None)
    base = tir_feature_spec(max_seq_len=5)
    rt = (Feature("rt_item_ids", "int64", "sequence", 3, "item", group="history", scope="request",
                  field="item_id", history="rt", model_input=True),
          Feature("rt_ts", "int64", "sequence", 3, group="history", scope="request", field="ts",
                  history="rt", model_input=True))
    spec = dataclasses.replace(base, features=base.features + rt)
    assert registry.model_spec("din", spec) == base
    assert registry.model_spec("daian", spec) == base
    assert registry.model_spec("views_toy", spec) == spec
    with pytest.raises(ValueError, match="histories must be one of"):
        registry.register_model("bad", ViewsConfig, histories="some", description="bad")


@pytest.mark.parametrize("override,message", [
    ("model.daian.uim_atention=mhta",
     "model.daian: unknown key(s) ['uim_atention'] (received model.daian.uim_atention='mhta'); valid keys: "),
    ("model.dinn.emb_dim=4", "model: unknown key(s) ['dinn'] (received model.dinn={'emb_dim': 4}); valid keys: "),
    ("model.embdim=4", "model: unknown key(s) ['embdim'] (received model.embdim=4); valid keys: "),
    ("train.batchsize=8", "train: unknown key(s) ['batchsize'] (received train.batchsize=8); valid keys: "),
])
def test_unknown_keys_name_key_value_and_the_valid_keys(override, message):
    with pytest.raises(ValueError) as exc:
        load_config(None, [override])
    text = str(exc.value)
    assert text.startswith(message), text
    if override.startswith("model.daian"):
        assert "'uim_attention'" in text and "'att_units'" in text
    elif override.startswith("model."):
        assert "'emb_dim'" in text and "'daian.*'" in text and "'din.*'" in text
    else:
        assert "'batch_size'" in text


@pytest.mark.parametrize("build,message", [
    (lambda: ModelConfig(l2=-1.0), "model.l2: must be a finite number >= 0 (0 = off); received -1.0"),
    (lambda: ModelConfig(hist_buckets=-1), "model.hist_buckets: must be an integer >= 0"),
    (lambda: registry.config_class("daian")(uim_attention="lstm"),
     "model.daian.uim_attention: must be din or mhta; received 'lstm'"),
    (lambda: registry.config_class("daian")(att_units=10, att_heads=4),
     "model.daian.att_units: must be divisible by att_heads=4; received 10"),
    (lambda: registry.config_class("daian")(intent_weight=-0.5),
     "model.daian.intent_weight: must be a number >= 0; received -0.5"),
    (lambda: TrainConfig(batch_size=0), "train.batch_size: must be an integer >= 1; received 0"),
    (lambda: TrainConfig(cpu_replicas=2), "train.cpu_replicas: only --strategy mirrored reads it "
                                          "(strategy='default'); received 2"),
    (lambda: TrainConfig(ps_min_shard_bytes=1024), "train.ps_min_shard_bytes: only --strategy ps reads it "
                                                   "(strategy='default'); received 1024"),
    (lambda: TrainConfig(shuffle_buffer=10), "train.shuffle_buffer: must be 0 (off) or >= train.shuffle_block "
                                             "(16): the buffer holds whole blocks; received 10"),
    (lambda: TrainConfig(shuffle_buffer=-1, shuffle_block=1), "train.shuffle_buffer: must be 0 (off)"),
    (lambda: TrainConfig(steps_per_epoch=-1), "train.steps_per_epoch: must be an integer >= 0 (0 = the whole "
                                              "data); received -1"),
    (lambda: PipelineConfig(no_trigger="keep"), "pipeline.no_trigger: must be 'drop' or 'pad'"),
    (lambda: PipelineConfig(realtime_len=4), "pipeline.realtime_len: applies to views=true only (GAP-Net's rt "
                                             "and lt views); set pipeline.views=true; received 4"),
    (lambda: PipelineConfig(realtime_window="2h"), "pipeline.realtime_window: applies to views=true only"),
    (lambda: PipelineConfig(long_seq_len=50), "pipeline.long_seq_len: applies to views=true only"),
    (lambda: PipelineConfig(sim_range="quantile", sim_lo=0.0),
     "pipeline.sim_lo: applies to sim_range=fixed only (quantile takes the range from the train sims); "
     "received 0.0"),
    (lambda: GeneratorConfig(users=0), "GeneratorConfig.users=0: must be >= 1"),
    (lambda: ModelConfig(sections={"dinn": object()}),
     f"unknown model 'dinn'; valid models: {registry.model_names()}"),
    (lambda: ModelConfig(sections={"din": registry.config_class("daian")()}),
     "model.din: expected a DinConfig; received DaianConfig("),
])
def test_a_config_is_validated_when_it_is_built(build, message):
    with pytest.raises(ValueError) as exc:
        build()
    assert message in str(exc.value)


def test_validation_errors_come_from_the_loader():
    with pytest.raises(ValueError, match="model.daian.explicit_len: must be an integer >= 1; received 0"):
        load_config(None, ["model.daian.explicit_len=0"])
    with pytest.raises(ValueError, match="train.precision: must be one of float32, mixed_bfloat16"):
        load_config(None, ["train.precision=mixed_float16"])


def test_a_default_tau_that_takes_the_whole_history_is_an_error_naming_the_fix():
    # explicit_top_levels (default 2) == intent_levels puts tau at the lowest similarity: S' would
    # silently be the whole history.
    with pytest.raises(ValueError) as exc:
        load_config(None, ["pipeline.intent_levels=2"])
    text = str(exc.value)
    assert text.startswith("pipeline.explicit_top_levels: equals pipeline.intent_levels=2"), text
    assert "pipeline.explicit_threshold" in text and text.endswith("received 2")
    with pytest.raises(ValueError, match="pipeline.explicit_top_levels: equals pipeline.intent_levels=6"):
        PipelineConfig(explicit_top_levels=6)
    on_purpose = load_config(None, ["pipeline.intent_levels=2", "pipeline.explicit_threshold=-1"]).pipeline
    assert (on_purpose.intent_levels, on_purpose.explicit_threshold) == (2, -1.0)
    assert load_config(None, ["pipeline.intent_levels=2", "pipeline.explicit_top_levels=1"]).pipeline.intent_levels == 2


def test_old_flat_keys_load_with_one_deprecation_line(capsys):
    cfg = load_config(None, ["model.uim_attention=mhta", "model.att_units=64", "model.emb_dim=8"]).model
    daian = cfg.section("daian")
    assert (daian.uim_attention, daian.att_units, cfg.emb_dim) == ("mhta", 64, 8)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("tirec: deprecated: config key(s) ")
    assert "model.uim_attention is now model.daian.uim_attention" in err[0]
    assert "model.att_units is now model.daian.att_units" in err[0]
    load_config(None, ["model.daian.uim_attention=mhta", "model.emb_dim=8"])
    assert capsys.readouterr().err == ""  # the new names print nothing


def test_an_old_key_and_its_new_name_together_are_an_error():
    with pytest.raises(ValueError, match="model.sim_bins and model.daian.sim_bins are both set"):
        load_config(None, ["model.sim_bins=5", "model.daian.sim_bins=7"])


def test_the_default_views_window_written_another_way_is_not_refused():
    assert PipelineConfig(realtime_window="240m").realtime_window_s == 4 * 3600


def test_a_recorded_run_with_settings_now_refused_still_loads(tmp_path):
    """train.cpu_replicas outside mirrored, ps_min_shard_bytes outside ps and a shuffle_buffer
    below one block were accepted (and not read) before: a run folder holding them loads."""
    config = json.loads((OLD_RUN / "config.json").read_text())
    config["train"].update(cpu_replicas=2, ps_min_shard_bytes=1024, shuffle_buffer=10)
    (tmp_path / "config.json").write_text(json.dumps(config))
    train = load_run_config(str(tmp_path)).train
    assert (train.cpu_replicas, train.ps_min_shard_bytes, train.shuffle_buffer) == \
        (0, TrainConfig.ps_min_shard_bytes, 16)
    with pytest.raises(ValueError, match="train.cpu_replicas: only --strategy mirrored"):
        load_config(None, ["train.cpu_replicas=2"])  # a new config is still refused


def test_old_run_config_json_loads_quietly(capsys):
    """A run folder written by main before the model sections: its flat DAIAN keys land in
    model.daian, with no deprecation line (the user did not write that file)."""
    cfg = load_run_config(str(OLD_RUN))
    assert capsys.readouterr().err == ""
    assert cfg.model.name == "daian" and cfg.data.endswith("tfr")
    assert (cfg.model.emb_dim, cfg.model.tower, cfg.model.hist_buckets) == (4, (16, 8), 1)
    daian = cfg.model.section()
    assert (daian.uim_attention, daian.att_units, daian.att_heads, daian.gate_inputs, daian.explicit_len) == \
        ("mhta", 8, 2, "intent_interest", 7)
    assert (cfg.train.batch_size, cfg.train.three_stage, cfg.train.steps_per_epoch) == (256, False, 1)
    # Written back in the new layout, it reads the same.
    assert from_dict(RunConfig, to_dict(cfg)) == cfg
    assert set(to_dict(cfg)["model"]) == {f.name for f in dataclasses.fields(ModelConfig)} - {"sections"} | {"daian"}


def test_run_config_written_and_read_by_the_one_loader(tmp_path, capsys):
    from tirec.features.jsonio import write_json

    shutil.copytree(OLD_RUN, tmp_path / "run")
    cfg = load_run_config(str(tmp_path / "run"))
    write_json(str(tmp_path / "run" / "config.json"), to_dict(cfg))
    assert load_run_config(str(tmp_path / "run")) == cfg
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: not a `tirec train` run folder"):
        load_run_config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a `tirec train` run folder"):
        load_run_config(str(tmp_path / "missing"))
    assert capsys.readouterr().err == ""


def test_a_run_folder_as_config_lends_its_settings_not_its_data(tmp_path, capsys, caplog):
    """``--config RUN`` (or ``RUN/config.json``): the run's model and train sections, read as
    load_run_config reads them (an older run's keys quietly, its recorded train section made
    valid); the data folder it recorded is the run's, not a setting. A file with ``data`` is refused."""
    shutil.copytree(OLD_RUN, tmp_path / "run")
    config = json.loads((OLD_RUN / "config.json").read_text())
    config["train"].update(cpu_replicas=2)  # accepted, and not read, by an older tirec
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    (tmp_path / "run" / "spec.json").write_text("{}")  # as every run folder has (it is not read here)
    run = load_run_config(str(tmp_path / "run"))
    for source in (tmp_path / "run", tmp_path / "run" / "config.json"):
        with caplog.at_level("INFO", logger="tirec"):
            cfg = load_config(str(source), ["train.epochs=3"])
        assert cfg.model == run.model and cfg.train == dataclasses.replace(run.train, epochs=3)
        assert f"the data folder it recorded, {run.data}, is not a setting" in caplog.text
    assert capsys.readouterr().err == ""  # no deprecation line for keys tirec wrote
    (tmp_path / "c.json").write_text(json.dumps(to_dict(run)))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['data'\]"):
        load_config(str(tmp_path / "c.json"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing: a folder without config.json"):
        load_config(str(tmp_path / "nothing"))


def test_a_pipeline_output_as_config_lends_its_pipeline_settings(tmp_path):
    out = tmp_path / "tfr"
    out.mkdir()
    pipeline = load_config(None, ["pipeline.intent_levels=6", "pipeline.max_seq_len=20"]).pipeline
    (out / "config.json").write_text(json.dumps(to_dict(pipeline)))
    (out / "spec.json").write_text("{}")
    cfg = load_config(str(out), ["pipeline.seed=3"])
    assert cfg.pipeline == dataclasses.replace(pipeline, seed=3)


def test_model_config_round_trips_and_reads_old_flat_dicts():
    cfg = load_config(None, ["model.name=din", "model.daian.use_sein=false", "model.l2=0.1"]).model
    assert model_config_from_dict(to_dict(cfg)) == cfg
    flat = {"name": "daian", "emb_dim": 4, **{k: getattr(cfg.section("daian"), k) for k in DAIAN_MOVED}}
    assert model_config_from_dict(flat).section("daian") == cfg.section("daian")
    resolved = dataclasses.replace(cfg, sections={}).resolved()
    assert set(resolved.sections) == {"din"}  # a run records its model's full section


def test_floats_without_a_dot_are_numbers(tmp_path):
    """JSON writes 1e-05 (config.json of a run with model.l2=0.00001); PyYAML alone reads it
    as a string."""
    assert load_config(None, ["model.l2=1e-5"]).model.l2 == 1e-5
    path = tmp_path / "config.json"
    path.write_text('{"model": {"l2": 1e-05, "daian": {"gamma": 2E+1}}}')
    cfg = load_config(str(path)).model
    assert cfg.l2 == 1e-5 and cfg.section("daian").gamma == 20.0


def test_yaml_scalars_are_read_as_written_yaml_1_2(tmp_path):
    """PyYAML's YAML 1.1 would silently read 4:00 as 240 (base 60), 050 as 40 (octal) and yes /
    off as booleans; -.5 as a string."""
    from tirec.features.config_io import parse_yaml

    assert [parse_yaml(t) for t in ("050", "0o17", "0x10", "-.5", "+.5", ".inf", "1.", "7e3")] == [
        50, 15, 16, -0.5, 0.5, float("inf"), 1.0, 7000.0]
    assert [parse_yaml(t) for t in ("4:00", "1:30", "yes", "off")] == ["4:00", "1:30", "yes", "off"]
    assert parse_yaml("100_000") == 100000  # as Python (and the defaults in the code) write it
    # merge keys work as before
    assert parse_yaml("a: &x {b: 1}\nc:\n  <<: *x\n  d: 2\n") == {"a": {"b": 1}, "c": {"b": 1, "d": 2}}
    assert load_config(None, ["pipeline.max_seq_len=050"]).pipeline.max_seq_len == 50
    with pytest.raises(ValueError, match=r"pipeline.trigger_window.*'4:00'"):
        load_config(None, ["pipeline.trigger_window=4:00"])
    with pytest.raises(ValueError, match=r"train.three_stage: expected true/false; received 'yes'"):
        load_config(None, ["train.three_stage=yes"])
    with pytest.raises(ValueError, match=r"train.epochs: expected an integer; received 1e\+30"):
        load_config(None, ["train.epochs=1e30"])
    # a key given twice is an error, not the last one silently
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 2, epochs: 3}\n")
    with pytest.raises(ValueError, match=rf"config {path}: not valid YAML: the key 'epochs' is given twice at line 1"):
        load_config(str(path))
    for text in ("[]", "0", "false"):  # only an empty file is an empty config
        path.write_text(text)
        with pytest.raises(ValueError, match=r"the top level must be a mapping"):
            load_config(str(path))
    path.write_text("")
    assert load_config(str(path)) == load_config(None)
    path.write_text("model:\n")  # an empty section, then a --set into it
    assert load_config(str(path), ["model.tower=[8]"]).model.tower == (8,)


def test_a_pipeline_output_given_as_a_run_folder_is_named_as_such(tmp_path):
    """Not RunConfig's list of 33 unknown keys: what the folder is and what a run folder holds."""
    folder = tmp_path / "T"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_dict(PipelineConfig(input="/data"))))
    (folder / "stats.json").write_text("{}")
    (folder / "spec.json").write_text("{}")
    with pytest.raises(ValueError) as err:
        load_run_config(str(folder))
    assert str(err.value) == (f"{folder}: not a `tirec train` run folder, a `tirec pipeline` output (spec.json, "
                              f"stats.json): pass it as --data; a run folder (`tirec train --run`) holds "
                              f"config.json with model and train sections, spec.json, items.npz and checkpoints")
    (folder / "stats.json").unlink()
    with pytest.raises(ValueError, match=r"not a `tirec train` run folder, its config.json has no model section; "):
        load_run_config(str(folder))


@dataclasses.dataclass(frozen=True)
class _Values:
    n: object = 4
    heads: object = 2
    sizes: object = (8, 4)
    x: object = 0.5
    flag: object = True
    mode: object = "a"


@pytest.mark.parametrize("values, check, message", [
    (_Values(n=True), lambda c: c.counts("n"), "s.n: must be an integer >= 1; received True"),
    (_Values(n=0), lambda c: c.counts("n"), "s.n: must be an integer >= 1; received 0"),
    (_Values(n=-1), lambda c: c.counts("n", least=0, note=" (0 = off)"), "s.n: must be an integer >= 0 (0 = off); received -1"),
    (_Values(n=2.0), lambda c: c.counts("n"), "s.n: must be an integer >= 1; received 2.0"),
    (_Values(sizes=()), lambda c: c.widths("sizes"), "s.sizes: must be a non-empty list of layer sizes >= 1; received []"),
    (_Values(sizes=(8, 0)), lambda c: c.widths("sizes", empty="none"),
     "s.sizes: must be a list of layer sizes >= 1 ([] = none); received [8, 0]"),
    (_Values(n=6, heads=4), lambda c: c.heads("n", "heads"), "s.n: must be divisible by heads=4; received 6"),
    (_Values(heads=0), lambda c: c.heads("n", "heads"), "s.heads: must be an integer >= 1; received 0"),
    (_Values(flag=1), lambda c: c.flags("flag"), "s.flag: must be true or false; received 1"),
    (_Values(mode="c"), lambda c: c.one_of("mode", ("a", "b")), "s.mode: must be a or b; received 'c'"),
    (_Values(mode="d"), lambda c: c.one_of("mode", ("a", "b", "c")), "s.mode: must be one of a, b, c; received 'd'"),
    (_Values(x=float("nan")), lambda c: c.finite("x"), "s.x: must be a finite number; received nan"),
    (_Values(x=False), lambda c: c.finite("x"), "s.x: must be a finite number; received False"),
    (_Values(x=0), lambda c: c.finite("x", above=0), "s.x: must be a finite number > 0; received 0"),
    (_Values(x=float("inf")), lambda c: c.finite("x", least=0), "s.x: must be a finite number >= 0; received inf"),
    (_Values(sizes=None), lambda c: c.widths("sizes"), "s.sizes: must be a non-empty list of layer sizes >= 1; received None"),
    (_Values(sizes=3), lambda c: c.widths("sizes", empty="none"), "s.sizes: must be a list of layer sizes >= 1 ([] = none); received 3"),
    (_Values(flag=np.bool_(True)), lambda c: c.flags("flag"), f"s.flag: must be true or false; received {np.bool_(True)!r}"),
])
def test_checks_name_the_key_and_the_value(values, check, message):
    with pytest.raises(ValueError) as exc:
        check(Checks("s", values))
    assert str(exc.value) == message


def test_checks_pass_good_values():
    check = Checks("s", _Values(sizes=()))
    check.counts("n", "heads")
    check.heads("n", "heads")
    check.widths("sizes", empty="none")
    check.flags("flag")
    check.one_of("mode", ("a", "b"))
    check.finite("x", above=0)
    check.finite("x", least=0.5)
    numpy = Checks("s", _Values(n=np.int64(3), heads=np.int32(3), sizes=[np.int64(4)], x=np.float32(0.5)))
    numpy.heads("n", "heads")
    numpy.widths("sizes")
    numpy.finite("x", above=0)
    Checks("s", _Values(x=10 ** 400)).finite("x")  # an integer is finite, however large
