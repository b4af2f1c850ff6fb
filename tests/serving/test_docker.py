"""Static checks of docker/: Dockerfile sources, ports, compose wiring and the shipped configs.

No Docker needed: the files are parsed as text and YAML.
"""
import argparse
import ast
import json
import pathlib
import re
import shlex

import pytest
import yaml

from tirec.serving import tf_serving_config as tsc

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
CONFIG_DIR_IN_IMAGE = "/config"


def _instructions(path):
    """(INSTRUCTION, argument text) pairs of a Dockerfile: comments dropped, continuations joined."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    out = []
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        line = line.strip()
        if line:
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _args(rest):
    """Arguments of an instruction in exec (JSON) or shell form."""
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def _arg_defaults(path):
    defaults = {}
    for keyword, rest in _instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name] = value
    return defaults


def _copies(path):
    """(sources, destination) of each COPY/ADD, build args replaced by their defaults."""
    defaults = _arg_defaults(path)
    out = []
    for keyword, rest in _instructions(path):
        if keyword in ("COPY", "ADD"):
            args = [a for a in _args(rest) if not a.startswith("--")]
            args = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], a) for a in args]
            out.append((args[:-1], args[-1]))
    return out


def _compose():
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def _serving_flags():
    (entry,) = [_args(rest) for kw, rest in _instructions(DOCKER / "serving.Dockerfile")
                if kw == "ENTRYPOINT"]
    return entry


def _flag(flags, name):
    (value,) = [f.split("=", 1)[1] for f in flags if f.startswith(f"--{name}=")]
    return value


def _mounts(service):
    """{container path: source} of a compose service's volumes (short syntax)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def test_dockerfiles_exist():
    names = {p.name for p in DOCKERFILES}
    assert {"beam.Dockerfile", "trainer.Dockerfile", "serving.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(dockerfile):
    ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copies = _copies(dockerfile)
    assert copies, f"{dockerfile.name} copies nothing"
    for sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} is missing"
            assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("name", ["beam.Dockerfile", "trainer.Dockerfile"])
def test_python_images_copy_every_installed_package_folder(name):
    tree = ast.parse((ROOT / "setup.py").read_text())
    (packages,) = [ast.literal_eval(node.value) for node in ast.walk(tree)
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_FOLDERS"]
    copied = {s.rstrip("/") for sources, _ in _copies(DOCKER / name) for s in sources}
    assert set(packages.values()) | {"setup.py", "README.md"} <= copied


def test_trainer_image_runs_the_tirec_cli_with_legacy_keras():
    instructions = _instructions(DOCKER / "trainer.Dockerfile")
    assert ("FROM", "python:3.11-slim") in instructions
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "TF_USE_LEGACY_KERAS=1" in env
    (entry,) = [_args(rest) for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert entry == ["tirec"]


def test_serving_image_runs_model_server_with_the_generated_configs():
    flags = _serving_flags()
    assert flags[0].endswith("/tensorflow_model_server")
    assert flags[1:] == tsc.tf_serving_command(CONFIG_DIR_IN_IMAGE)[1:]
    (from_line,) = [rest for kw, rest in _instructions(DOCKER / "serving.Dockerfile") if kw == "FROM"]
    assert from_line == "tensorflow/serving:${TF_SERVING_VERSION}"
    assert _arg_defaults(DOCKER / "serving.Dockerfile")["TF_SERVING_VERSION"] == "2.21.0"
    config_copy = [(s, d) for s, d in _copies(DOCKER / "serving.Dockerfile")
                   if d.rstrip("/") == CONFIG_DIR_IN_IMAGE]
    assert config_copy, "serving.Dockerfile does not copy the configs to /config"
    copied = sorted(pathlib.PurePosixPath(s).name for s in config_copy[0][0])
    assert copied == sorted([tsc.MODELS_FILE, tsc.BATCHING_FILE, tsc.MONITORING_FILE])


def test_exposed_ports_match_flags_and_compose():
    exposed = {int(p) for kw, rest in _instructions(DOCKER / "serving.Dockerfile") if kw == "EXPOSE"
               for p in rest.split()}
    flags = _serving_flags()
    assert exposed == {int(_flag(flags, "port")), int(_flag(flags, "rest_api_port"))} == {8500, 8501}
    published = {int(str(p).split(":")[-1]) for p in _compose()["services"]["serving"]["ports"]}
    assert published == exposed


def test_compose_builds_from_the_repo_root_and_declares_its_volumes():
    compose = _compose()
    assert set(compose["services"]) == {"pipeline", "trainer", "serving"}
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        assert (context / service["build"]["dockerfile"]).is_file()
        for target, source in _mounts(service).items():
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared"
    assert compose["services"]["pipeline"]["build"]["dockerfile"] == "docker/beam.Dockerfile"
    depends = {n: s.get("depends_on", {}) for n, s in compose["services"].items()}
    assert depends["trainer"] == {"pipeline": {"condition": "service_completed_successfully"}}
    assert depends["serving"] == {"trainer": {"condition": "service_completed_successfully"}}


def test_compose_model_paths_agree_with_models_config():
    services = _compose()["services"]
    serving_mounts, trainer_mounts = _mounts(services["serving"]), _mounts(services["trainer"])
    model_mount = next(t for t, s in serving_mounts.items() if s == "models")
    # The trainer exports into the same volume the server reads.
    trainer_models = next(t for t, s in trainer_mounts.items() if s == "models")
    export_out = re.search(r"tirec export .*--out (\S+)", " ".join(services["trainer"]["command"]))
    assert export_out and export_out.group(1) == trainer_models
    # The configs the server reads are the shipped ones, mounted where the flags expect them.
    assert serving_mounts[CONFIG_DIR_IN_IMAGE] == "./serving_config"
    config = tsc.load_model_server_config(str(DOCKER / "serving_config" / tsc.MODELS_FILE))
    names = re.findall(r"--model-name (\S+)", " ".join(services["trainer"]["command"]))
    for model in config.model_config_list.config:
        assert model.base_path == f"{model_mount}/{model.name}"
    assert names == [m.name for m in config.model_config_list.config]


def test_shipped_serving_configs_are_what_the_cli_writes(tmp_path, capsys):
    # docker/README.md documents this command for docker/serving_config/.
    parser = argparse.ArgumentParser()
    tsc.add_arguments(parser)
    assert tsc.run_from_args(parser.parse_args(["--out", str(tmp_path), "--served-model",
                                                "daian=/models/daian"])) == 0
    for name in (tsc.MODELS_FILE, tsc.BATCHING_FILE, tsc.MONITORING_FILE):
        assert (DOCKER / "serving_config" / name).read_text() == (tmp_path / name).read_text(), name
    assert "tirec serving-config --out docker/serving_config --served-model daian=/models/daian" in (
        DOCKER / "README.md").read_text()
