"""Static checks of docker/k8s/: every manifest parses, and its images, ports, paths, TF_CONFIG
and commands agree with docker/ (Dockerfiles, compose, serving_config/) and the tirec CLI.

No cluster needed: the manifests are parsed as YAML, and commands go through the real CLI parser
with the work they start replaced by recorders.
"""
import ast
import functools
import importlib.util
import json
import pathlib
import re
import shlex
import sys
import types

import pytest
import yaml

from tirec import cli
from tirec.serving import tf_serving_config as tsc

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
DASK_RUNNER_MODULE = "apache_beam.runners.dask.dask_runner"


# ---- reading the manifests ----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _docs():
    """Every object of docker/k8s/*.yaml, parsed once (the tests only read them)."""
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _of_kind(kind):
    return [d for d in _docs() if d["kind"] == kind]


def _named(kind, name):
    (doc,) = [d for d in _of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def _pods():
    """(name, labels, pod spec) of every Pod and every workload's Pod template."""
    out = []
    for doc in _docs():
        if doc["kind"] == "Pod":
            out.append((doc["metadata"]["name"], doc["metadata"].get("labels", {}), doc["spec"]))
        elif doc["kind"] in POD_TEMPLATE_KINDS:
            template = doc["spec"]["template"]
            out.append((doc["metadata"]["name"], template["metadata"].get("labels", {}), template["spec"]))
    return out


def _pod(name):
    (spec,) = [spec for n, _, spec in _pods() if n == name]
    return spec


def _containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def _container(pod_name, container_name):
    (c,) = [c for c in _containers(_pod(pod_name)) if c["name"] == container_name]
    return c


def _argv(container):
    return container.get("command", []) + container.get("args", [])


def _env(container, name):
    values = [e["value"] for e in container.get("env", []) if e["name"] == name]
    return values[0] if values else None


def _opt(argv, flag):
    """The value after ``flag`` in ``argv``."""
    return argv[argv.index(flag) + 1]


def _volume_at(spec, container, path):
    """The Pod volume mounted over ``path`` in ``container`` (longest mountPath prefix)."""
    mounts = [m for m in container.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{container['name']}: nothing is mounted over {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return volume


def _claim(volume):
    return volume["persistentVolumeClaim"]["claimName"]


def _container_ports(container):
    return {p["containerPort"] for p in container.get("ports", [])}


def _service_ports(name):
    return {p["port"]: p.get("targetPort", p["port"]) for p in _named("Service", name)["spec"]["ports"]}


def _tf_configs():
    """{(task type, index): (TF_CONFIG dict, Pod name, container)} of every container with one."""
    out = {}
    for name, _, spec in _pods():
        for c in _containers(spec):
            if _env(c, "TF_CONFIG") is not None:
                config = json.loads(_env(c, "TF_CONFIG"))
                key = (config["task"]["type"], config["task"]["index"])
                assert key not in out, f"task {key} appears twice"
                out[key] = (config, name, c)
    return out


# ---- reading docker/ ----------------------------------------------------------------------------

def _built_images():
    """{NAME:TAG: Dockerfile} of the `docker build -f F ... -t NAME:TAG .` lines of docker/README.md."""
    out = {}
    for line in (DOCKER / "README.md").read_text().splitlines():
        if line.startswith("docker build "):
            argv = shlex.split(line)
            out[_opt(argv, "-t")] = ROOT / _opt(argv, "-f")
    return out


def _dockerfile(kind, dockerfile):
    """Arguments of the Dockerfile instruction ``kind`` (exec or shell form, continuations joined)."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    values = [line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(kind + " ")]
    return [json.loads(v) if v.startswith("[") else shlex.split(v) for v in values]


def _compose_mounts(service):
    """{container path: volume or bind source} of a docker-compose.yml service."""
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    return {spec.split(":")[1]: spec.split(":")[0] for spec in compose["services"][service]["volumes"]}


def _served_models():
    config = tsc.load_model_server_config(str(DOCKER / "serving_config" / tsc.MODELS_FILE))
    return {m.name: m.base_path for m in config.model_config_list.config}


def _dask_option_flags():
    """The flags Beam's DaskOptions defines, read from its source (dask itself may be absent)."""
    return set(re.findall(r"add_argument\(\s*'(--dask_\w+)'", _dask_options_source()))


def _dask_options_source():
    beam = pathlib.Path(importlib.util.find_spec("apache_beam").origin).parent
    tree = ast.parse((beam / "runners" / "dask" / "dask_runner.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DaskOptions"]
    return ast.unparse(cls)


# ---- the CLI with its work replaced by recorders ------------------------------------------------

@pytest.fixture
def fake_train(monkeypatch):
    """Stands in for tirec.models.train (no TensorFlow): records train_run and run_server calls."""
    seen = {}

    def train_run(*args):
        seen["train_run"] = args
        return {}

    def run_server():
        seen["run_server"] = True

    fake = types.ModuleType("tirec.models.train")
    fake.train_run, fake.run_server, fake.configure_cpu_replicas = train_run, run_server, lambda n: None
    monkeypatch.setitem(sys.modules, "tirec.models.train", fake)
    return seen


# ---- every manifest -----------------------------------------------------------------------------

def test_manifests_parse_and_name_each_object():
    assert {p.name for p in MANIFESTS} >= {"storage.yaml", "training-ps.yaml", "beam-dask.yaml",
                                           "export.yaml", "serving.yaml"}
    seen = set()
    for path in MANIFESTS:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, f"{path.name} holds no object"
        for doc in docs:
            named = doc.get("metadata", {}).get("name")
            assert doc.get("apiVersion") and doc.get("kind") and named, f"{path.name}: {doc}"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in seen, f"{key} is defined twice"
            seen.add(key)


def test_images_are_the_ones_docker_readme_builds():
    used = {c["image"] for _, _, spec in _pods() for c in _containers(spec)}
    assert used == set(_built_images()) == {"tirec-beam:0.1.0", "tirec-trainer:0.1.0", "tirec-serving:0.1.0"}


def test_containers_of_images_without_a_tirec_entrypoint_set_their_command():
    # tirec-beam's entrypoint is Beam's SDK harness and tirec-serving's the model server: a
    # container running anything else must say so.
    images = _built_images()
    for name, _, spec in _pods():
        for c in _containers(spec):
            (entry,) = _dockerfile("ENTRYPOINT", images[c["image"]]) or [[]]
            if entry != ["tirec"]:
                assert c.get("command"), f"{name}/{c['name']} would run {entry}"
            elif "command" not in c:
                assert c.get("args"), f"{name}/{c['name']} would run `tirec --help`"


def test_volume_mounts_name_volumes_of_their_pod_and_claims_exist():
    claims = {d["metadata"]["name"] for d in _of_kind("PersistentVolumeClaim")}
    config_maps = {d["metadata"]["name"] for d in _of_kind("ConfigMap")}
    for name, _, spec in _pods():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in _containers(spec):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}/{c['name']}: no volume {mount['name']!r}"
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert _claim(v) in claims, f"{name}: claim {_claim(v)!r} is not defined"
                assert "ReadWriteMany" in _named("PersistentVolumeClaim", _claim(v))["spec"]["accessModes"]
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps


def test_services_select_pods_that_serve_their_ports():
    for service in _of_kind("Service"):
        selector = service["spec"]["selector"]
        pods = [(n, spec) for n, labels, spec in _pods() if selector.items() <= labels.items()]
        assert pods, f"Service {service['metadata']['name']} selects no Pod"
        for pod_name, spec in pods:
            ports = set().union(*(_container_ports(c) for c in spec["containers"]))
            for target in _service_ports(service["metadata"]["name"]).values():
                assert target in ports, f"{pod_name} does not listen on {target}"


# ---- parameter-server training ------------------------------------------------------------------

def test_tf_configs_share_one_cluster_and_each_task_is_in_it():
    configs = _tf_configs()
    clusters = [config["cluster"] for config, _, _ in configs.values()]
    assert all(c == clusters[0] for c in clusters), "the tasks' clusters differ"
    cluster = clusters[0]
    assert set(cluster) == {"chief", "worker", "ps"}
    assert (len(cluster["chief"]), len(cluster["worker"]), len(cluster["ps"])) == (1, 2, 2)
    every_task = {(kind, i) for kind, addresses in cluster.items() for i in range(len(addresses))}
    assert set(configs) == every_task, "a cluster address has no task, or a task no address"


@pytest.mark.parametrize("task", ["chief-0", "worker-0", "worker-1", "ps-0", "ps-1"])
def test_cluster_addresses_resolve_to_the_task_pods(task):
    kind, index = task.split("-")
    config, pod_name, container = _tf_configs()[(kind, int(index))]
    address = config["cluster"][kind][int(index)]
    host, service, port = re.fullmatch(r"([\w-]+)\.([\w-]+):(\d+)", address).groups()
    spec = _pod(pod_name)
    # Pod hostname + subdomain under a headless Service named like the subdomain -> HOST.SERVICE.
    assert (spec.get("hostname"), spec.get("subdomain")) == (host, service)
    headless = _named("Service", service)["spec"]
    assert headless["clusterIP"] == "None"
    (labels,) = [labels for n, labels, _ in _pods() if n == pod_name]
    assert headless["selector"].items() <= labels.items()
    assert _service_ports(service).get(int(port)) == int(port)
    assert int(port) in _container_ports(container)


def test_chief_runs_tirec_train_strategy_ps_that_the_cli_accepts(fake_train):
    _, pod_name, chief = _tf_configs()[("chief", 0)]
    assert _named("Job", pod_name)
    argv = _argv(chief)
    assert argv[:2] == ["tirec", "train"]
    assert cli.main(argv[1:]) == 0
    data, model, run, _, train_cfg = fake_train["train_run"]
    assert train_cfg.strategy == "ps" and train_cfg.steps_per_epoch >= 1
    assert model in _served_models()
    spec = _pod(pod_name)
    assert _claim(_volume_at(spec, chief, data)) == _claim(_volume_at(spec, chief, run)) == "tirec-data"


@pytest.mark.parametrize("task", ["worker-0", "worker-1", "ps-0", "ps-1"])
def test_workers_and_ps_run_tirec_cluster_server(task, fake_train):
    kind, index = task.split("-")
    _, pod_name, container = _tf_configs()[(kind, int(index))]
    argv = _argv(container)
    assert argv == ["tirec", "cluster-server"]
    assert cli.main(argv[1:]) == 0 and fake_train["run_server"]
    assert container["image"] == _container(_tf_configs()[("chief", 0)][1], "chief")["image"]


def test_every_task_mounts_the_data_claim_where_the_chief_reads_it():
    data = _opt(_argv(_tf_configs()[("chief", 0)][2]), "--data")
    for (kind, index), (_, pod_name, container) in _tf_configs().items():
        assert _claim(_volume_at(_pod(pod_name), container, data)) == "tirec-data", (kind, index)


def test_trainer_image_sets_legacy_keras_for_ps_training():
    env = " ".join(" ".join(args) for args in _dockerfile("ENV", DOCKER / "trainer.Dockerfile"))
    assert "TF_USE_LEGACY_KERAS=1" in env
    for _, _, container in _tf_configs().values():
        assert _env(container, "TF_USE_LEGACY_KERAS") in (None, "1")


# ---- the data flow: pipeline -> training -> export -> serving -----------------------------------

def test_paths_chain_from_the_pipeline_to_the_served_models():
    generate = _argv(_container("tirec-pipeline", "generate"))
    pipeline = _argv(_container("tirec-pipeline", "pipeline"))
    train = _argv(_container("tirec-chief", "chief"))
    export = _argv(_container("tirec-export", "export"))
    assert _opt(generate, "--out") == _opt(pipeline, "--input")
    assert _opt(pipeline, "--out") == _opt(train, "--data")
    assert _opt(export, "--run") == _opt(train, "--run")
    served = _served_models()
    assert served == {_opt(export, "--model-name"): f"{_opt(export, '--out')}/{_opt(export, '--model-name')}"}
    export_spec = _pod("tirec-export")
    assert _claim(_volume_at(export_spec, _container("tirec-export", "export"), _opt(export, "--out"))) \
        == "tirec-models"


def test_mount_paths_are_the_compose_ones():
    compose_pipeline, compose_trainer = _compose_mounts("pipeline"), _compose_mounts("trainer")
    data_path = next(t for t, s in compose_pipeline.items() if s == "data")
    models_path = next(t for t, s in compose_trainer.items() if s == "models")
    for name, _, spec in _pods():
        for c in _containers(spec):
            for mount in c.get("volumeMounts", []):
                (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
                if "persistentVolumeClaim" in volume:
                    expected = {"tirec-data": data_path, "tirec-models": models_path}[_claim(volume)]
                    assert mount["mountPath"] == expected, f"{name}/{c['name']}"


# ---- Beam on Dask -------------------------------------------------------------------------------

def test_dask_scheduler_service_and_workers_agree_on_the_address():
    scheduler = _container("tirec-dask-scheduler", "scheduler")
    argv = _argv(scheduler)
    port, dashboard = int(_opt(argv, "--port")), int(_opt(argv, "--dashboard-address").split(":")[-1])
    assert (port, dashboard) == (8786, 8787)
    assert _service_ports("tirec-dask-scheduler") == {8786: 8786, 8787: 8787}
    address = f"tcp://tirec-dask-scheduler:{port}"
    assert _argv(_container("tirec-dask-worker", "worker"))[:3] == ["dask", "worker", address]
    assert _opt(_argv(_container("tirec-pipeline", "pipeline")), "--dask-address") == address


def test_pipeline_job_uses_beams_dask_runner_and_its_option_names():
    container = _container("tirec-pipeline", "pipeline")
    argv = container["args"]
    assert argv[0] == "pipeline"
    assert _opt(argv, "--runner") == "dask" and container["command"] == ["tirec"]
    beam_flags = {a.split("=")[0] for a in argv if a.startswith("--dask_")}
    assert beam_flags <= _dask_option_flags()
    # Dask workers run the transforms: they see the data where the Job does.
    job_spec, worker_spec = _pod("tirec-pipeline"), _pod("tirec-dask-worker")
    worker = _container("tirec-dask-worker", "worker")
    for path in (_opt(argv, "--input"), _opt(argv, "--out")):
        assert _claim(_volume_at(job_spec, container, path)) == _claim(_volume_at(worker_spec, worker, path))


def test_pipeline_job_args_pass_the_cli(monkeypatch):
    """The Job's args are a command the CLI accepts, its --dask-address going to Beam as
    --dask_client_address."""
    pytest.importorskip("dask.distributed")
    seen = {}
    monkeypatch.setattr(cli, "_run_pipeline", lambda args, extra: seen.update(args=args, extra=extra) or 0)
    argv = _container("tirec-pipeline", "pipeline")["args"]
    assert cli.main(argv) == 0
    assert (seen["args"].input, seen["args"].out) == (_opt(argv, "--input"), _opt(argv, "--out"))
    assert _opt(seen["extra"], "--runner") == "dask"
    assert cli._with_dask_address(seen["extra"], seen["args"].dask_address)[-2:] == [
        "--dask_client_address", _opt(argv, "--dask-address")]


def test_config_map_holds_the_shipped_serving_configs():
    data = _named("ConfigMap", "tirec-serving-config")["data"]
    files = {name: (DOCKER / "serving_config" / name).read_bytes().decode()
             for name in (tsc.MODELS_FILE, tsc.BATCHING_FILE, tsc.MONITORING_FILE)}
    assert data == files


def test_serving_runs_the_image_command_on_the_mounted_configs():
    dockerfile = DOCKER / "serving.Dockerfile"
    container = _container("tirec-serving", "serving")
    (entry,) = _dockerfile("ENTRYPOINT", dockerfile)
    assert _argv(container) == entry
    assert entry[1:] == tsc.tf_serving_command("/config")[1:]
    exposed = {int(p) for args in _dockerfile("EXPOSE", dockerfile) for p in args}
    assert _container_ports(container) == exposed == {tsc.GRPC_PORT, tsc.REST_PORT}
    assert _service_ports("tirec-serving") == {p: p for p in exposed}
    # Mounted where compose mounts them: the ConfigMap over /config, the models claim at /models.
    spec, compose = _pod("tirec-serving"), _compose_mounts("serving")
    assert _volume_at(spec, container, "/config/models.config")["configMap"]["name"] == "tirec-serving-config"
    assert compose["/config"] == "./serving_config"
    for name, base_path in _served_models().items():
        assert _claim(_volume_at(spec, container, base_path)) == "tirec-models"
        assert compose[str(pathlib.PurePosixPath(base_path).parent)] == "models"


def test_readiness_probe_asks_the_status_of_a_served_model():
    container = _container("tirec-serving", "serving")
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == tsc.REST_PORT
    model = re.fullmatch(r"/v1/models/([\w-]+)", probe["path"]).group(1)
    assert model in _served_models()


def test_prometheus_annotations_name_the_monitoring_path():
    deployment = _named("Deployment", "tirec-serving")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    monitoring = (DOCKER / "serving_config" / tsc.MONITORING_FILE).read_text()
    assert f'path: "{annotations["prometheus.io/path"]}"' in monitoring
    assert int(annotations["prometheus.io/port"]) == tsc.REST_PORT
