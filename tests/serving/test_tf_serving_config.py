"""TF Serving config files: official text protos that round-trip, validation, and the CLI flags."""
import argparse
import re

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tirec.serving import tf_serving_config as tsc
from tirec.serving.tf_serving_config import BatchingConfig, ServedModel


def _parse(path, message):
    """Parses ``path`` into ``message`` with plain text_format, as the server does."""
    with open(path, encoding="utf-8") as f:
        return text_format.Parse(f.read(), message)


def _two_models():
    return [
        ServedModel("daian", "/models/daian", policy="specific", versions=(1, 2),
                    labels={"stable": 1, "canary": 2}),
        ServedModel("din", "gs://bucket/models/din", policy="latest", latest=3),
        ServedModel("gapnet", "/models/gapnet", policy="all"),
    ]


def test_written_configs_parse_with_official_protos_and_round_trip(tmp_path):
    batching = BatchingConfig(max_batch_size=256, batch_timeout_micros=500, max_enqueued_batches=20,
                              num_batch_threads=2, allowed_batch_sizes=(32, 128, 256),
                              pad_variable_length_inputs=True)
    paths = tsc.write_serving_configs(str(tmp_path), _two_models(), batching,
                                      monitoring_path="/metrics")
    assert sorted(paths) == ["batching", "models", "monitoring"]

    models = _parse(paths["models"], model_server_config_pb2.ModelServerConfig())
    assert models == tsc.build_model_server_config(_two_models())
    assert tsc.load_model_server_config(paths["models"]) == models
    daian, din, gapnet = models.model_config_list.config
    assert (daian.name, daian.base_path, daian.model_platform) == ("daian", "/models/daian",
                                                                    "tensorflow")
    assert list(daian.model_version_policy.specific.versions) == [1, 2]
    assert dict(daian.version_labels) == {"stable": 1, "canary": 2}
    assert din.model_version_policy.latest.num_versions == 3
    assert din.base_path == "gs://bucket/models/din"
    assert gapnet.model_version_policy.WhichOneof("policy_choice") == "all"
    assert not din.version_labels

    params = _parse(paths["batching"], tsc.BatchingParameters())
    assert params == tsc.load_batching_parameters(paths["batching"])
    assert params.max_batch_size.value == 256
    assert params.batch_timeout_micros.value == 500
    assert params.max_enqueued_batches.value == 20
    assert params.num_batch_threads.value == 2
    assert list(params.allowed_batch_sizes) == [32, 128, 256]
    assert params.pad_variable_length_inputs

    monitoring = tsc.load_monitoring_config(paths["monitoring"])
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/metrics"


def test_batching_text_uses_the_official_field_names(tmp_path):
    paths = tsc.write_serving_configs(str(tmp_path), [ServedModel("m", "/models/m")],
                                      BatchingConfig(max_batch_size=64))
    text = open(paths["batching"], encoding="utf-8").read()
    # The wrapper form of tensorflow_serving/servables/tensorflow/session_bundle_config.proto.
    assert "max_batch_size {\n  value: 64\n}" in text
    assert tsc.BatchingParameters.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    assert tsc.MonitoringConfig.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"
    monitoring = open(paths["monitoring"], encoding="utf-8").read()
    assert 'path: "/monitoring/prometheus/metrics"' in monitoring


def test_optional_files_are_skipped(tmp_path):
    paths = tsc.write_serving_configs(str(tmp_path), [ServedModel("m", "/models/m")],
                                      batching=None, monitoring_path=None)
    assert list(paths) == ["models"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="", base_path="/m"), "name=''"),
    (dict(name="a/b", base_path="/m"), "name='a/b'"),
    (dict(name="m", base_path="models/m"), "base_path='models/m'"),
    (dict(name="m", base_path="/m", latest=0), "latest=0"),
    (dict(name="m", base_path="/m", policy="newest"), "policy='newest'"),
    (dict(name="m", base_path="/m", policy="specific"), "versions=()"),
    (dict(name="m", base_path="/m", versions=(1,)), "versions=(1,)"),
    (dict(name="m", base_path="/m", policy="specific", versions=(1, 1)), "versions=(1, 1)"),
    (dict(name="m", base_path="/m", labels={"stable": -1}), "labels['stable']=-1"),
])
def test_served_model_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        ServedModel(**kwargs)


def test_duplicate_names_and_empty_list_are_rejected():
    with pytest.raises(ValueError, match="name='m' twice"):
        tsc.build_model_server_config([ServedModel("m", "/a"), ServedModel("m", "/b")])
    with pytest.raises(ValueError, match="models=\\[\\]"):
        tsc.build_model_server_config([])


def test_labels_must_point_to_loaded_versions_unless_allowed(tmp_path):
    unlisted = ServedModel("m", "/models/m", policy="specific", versions=(1, 2), labels={"canary": 3})
    with pytest.raises(ValueError, match="label 'canary' points to version 3"):
        tsc.write_serving_configs(str(tmp_path), [unlisted])
    assert not (tmp_path / "models.config").exists()  # nothing written on error
    on_latest = ServedModel("m", "/models/m", labels={"stable": 1})
    with pytest.raises(ValueError, match="policy='latest' names no versions"):
        tsc.build_model_server_config([on_latest])
    config = tsc.build_model_server_config([unlisted], allow_unavailable_labels=True)
    assert dict(config.model_config_list.config[0].version_labels) == {"canary": 3}


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_batch_size=0), "max_batch_size=0"),
    (dict(batch_timeout_micros=-1), "batch_timeout_micros=-1"),
    (dict(num_batch_threads=0), "num_batch_threads=0"),
    (dict(max_enqueued_batches=0), "max_enqueued_batches=0"),
    (dict(max_batch_size=128, allowed_batch_sizes=(32, 64)), "allowed_batch_sizes=(32, 64)"),
    (dict(max_batch_size=128, allowed_batch_sizes=(64, 32, 128)), "allowed_batch_sizes=(64, 32, 128)"),
])
def test_batching_config_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        BatchingConfig(**kwargs)


def test_monitoring_path_must_be_absolute():
    with pytest.raises(ValueError, match="monitoring_path='metrics'"):
        tsc.build_monitoring_config("metrics")


def test_loaders_report_file_and_line(tmp_path):
    bad = tmp_path / "models.config"
    bad.write_text('model_config_list {\n  config {\n    nme: "x"\n  }\n}\n')
    with pytest.raises(ValueError, match=r"models.config: line 3, column 5"):
        tsc.load_model_server_config(str(bad))
    with pytest.raises(ValueError, match="line 1"):
        bad.write_text("max_batch_size: {")
        tsc.load_batching_parameters(str(bad))
    with pytest.raises(FileNotFoundError):
        tsc.load_model_server_config(str(tmp_path / "missing.config"))


def test_tf_serving_command_names_the_written_files():
    cmd = tsc.tf_serving_command("/config/")
    assert cmd == ["tensorflow_model_server", "--port=8500", "--rest_api_port=8501",
                   "--model_config_file=/config/models.config",
                   "--model_config_file_poll_wait_seconds=60", "--enable_batching",
                   "--batching_parameters_file=/config/batching.config",
                   "--monitoring_config_file=/config/monitoring.config"]
    no_batching = tsc.tf_serving_command("/c", batching=False, allow_unavailable_labels=True)
    assert "--enable_batching" not in no_batching
    assert no_batching[-1] == "--allow_version_labels_for_unavailable_models"


# ----------------------------------------------------------------------------------------- CLI


def _run(argv):
    parser = argparse.ArgumentParser(prog="tirec serving-config")
    tsc.add_arguments(parser)
    return tsc.run_from_args(parser.parse_args(argv))


def test_cli_writes_per_model_policies_and_labels(tmp_path, capsys):
    out = tmp_path / "cfg"
    code = _run(["--out", str(out), "--served-model", "daian=/models/daian", "--served-model", "din=/models/din",
                 "--served-model", "gap=/models/gap", "--versions", "daian=1,2", "--label", "daian:stable=1",
                 "--label", "daian:canary=2", "--latest", "din=2", "--all-versions", "gap",
                 "--max-batch-size", "256", "--allowed-batch-sizes", "64,256",
                 "--num-batch-threads", "3", "--monitoring-path", "/prom"])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f) for f in ("models.config", "batching.config", "monitoring.config")]
    configs = {c.name: c for c in tsc.load_model_server_config(printed[0]).model_config_list.config}
    assert list(configs["daian"].model_version_policy.specific.versions) == [1, 2]
    assert dict(configs["daian"].version_labels) == {"stable": 1, "canary": 2}
    assert configs["din"].model_version_policy.latest.num_versions == 2
    assert configs["gap"].model_version_policy.HasField("all")
    params = tsc.load_batching_parameters(printed[1])
    assert (params.max_batch_size.value, list(params.allowed_batch_sizes)) == (256, [64, 256])
    assert params.num_batch_threads.value == 3
    assert tsc.load_monitoring_config(printed[2]).prometheus_config.path == "/prom"


def test_cli_defaults_and_no_batching(tmp_path, capsys):
    assert _run(["--out", str(tmp_path), "--served-model", "m=/models/m", "--no-batching"]) == 0
    assert not (tmp_path / "batching.config").exists()
    config = tsc.load_model_server_config(str(tmp_path / "models.config")).model_config_list.config[0]
    assert config.model_version_policy.latest.num_versions == 1


def test_cli_label_override_flag(tmp_path):
    argv = ["--out", str(tmp_path), "--served-model", "m=/models/m", "--label", "m:stable=4"]
    with pytest.raises(ValueError, match="label 'stable' points to version 4"):
        _run(argv)
    assert _run(argv + ["--allow-version-labels-for-unavailable-models"]) == 0


def test_cli_server_command_with_labels_allows_them_at_startup(tmp_path, caplog):
    # TF Serving assigns labels before it loads any version: without the flag, a config with
    # labels fails the server's start ("... not currently available for inference")
    caplog.set_level("INFO", logger=tsc.log.name)
    flag = "--allow_version_labels_for_unavailable_models"
    assert _run(["--out", str(tmp_path / "a"), "--served-model", "m=/models/m"]) == 0
    assert "serve with:" in caplog.text and flag not in caplog.text
    caplog.clear()
    assert _run(["--out", str(tmp_path / "b"), "--served-model", "m=/models/m", "--versions", "m=1",
                 "--label", "m:stable=1"]) == 0
    assert "serve with:" in caplog.text and flag in caplog.text


@pytest.mark.parametrize("extra, match", [
    (["--served-model", "m"], "--served-model: expected NAME=BASE_PATH; received 'm'"),
    (["--served-model", "m=/other"], "--served-model: names must be unique; received 'm' twice"),
    (["--latest", "x=2"], "--latest: unknown model 'x'"),
    (["--latest", "m=two"], "--latest: expected an integer; received 'two'"),
    (["--latest", "m=0"], "latest=0"),
    (["--latest", "m=2", "--versions", "m=1"], "model 'm' already has policy 'latest'"),
    (["--label", "m=1"], "--label: expected NAME:LABEL=VERSION; received 'm'"),
    (["--label", "x:stable=1"], "--label: unknown model 'x'"),
    (["--allowed-batch-sizes", "8,x"], "--allowed-batch-sizes: expected integers"),
    (["--max-batch-size", "64", "--allowed-batch-sizes", "8,32"], "allowed_batch_sizes=(8, 32)"),
])
def test_cli_rejects_bad_flags(tmp_path, extra, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        _run(["--out", str(tmp_path), "--served-model", "m=/models/m"] + extra)
