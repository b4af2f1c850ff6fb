"""Configuration files for the real ``tensorflow_model_server`` (TF Serving).

    tirec serving-config --out CONFIG_DIR --served-model daian=/models/daian \\
        --versions daian=1,2 --label daian:stable=1 --label daian:canary=2 --max-batch-size 1024

writes three text-format protobuf files into ``CONFIG_DIR``:

- ``models.config`` (``tensorflow.serving.ModelServerConfig``): one entry per model with its name,
  base path, platform ``tensorflow``, version policy (``latest`` N, ``specific`` versions or
  ``all``) and version labels (``stable`` -> 1, ``canary`` -> 2);
- ``batching.config`` (``tensorflow.serving.BatchingParameters``): server-side request batching;
- ``monitoring.config`` (``tensorflow.serving.MonitoringConfig``): Prometheus metrics on the REST
  port, at ``/monitoring/prometheus/metrics`` by default.

The server reads them with::

    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=CONFIG_DIR/models.config --model_config_file_poll_wait_seconds=60 \\
        --enable_batching --batching_parameters_file=CONFIG_DIR/batching.config \\
        --monitoring_config_file=CONFIG_DIR/monitoring.config

(:func:`tf_serving_command` returns this list). Each base path holds the layout ``tirec export``
writes: ``BASE/NAME/<int version>/saved_model.pb`` with ``variables/`` and
``assets.extra/tf_serving_warmup_requests``. With the poll flag, editing ``models.config`` (a new
version, moving the ``stable`` label) takes effect without a restart.

``ModelServerConfig`` and ``ServableVersionPolicy`` come from the installed
``tensorflow-serving-api`` package. Its wheel does not ship ``session_bundle_config_pb2`` nor
``monitoring_config_pb2``, so when they cannot be imported ``BatchingParameters`` and
``MonitoringConfig`` are declared here with the package, message names, field names and field
numbers of the official ``.proto`` files (``tensorflow_serving/servables/tensorflow/
session_bundle_config.proto`` and ``tensorflow_serving/config/monitoring_config.proto``), in a
private descriptor pool; the text they write is what the server parses.

Example:

    >>> from tirec.serving.tf_serving_config import ServedModel, BatchingConfig, write_serving_configs
    >>> paths = write_serving_configs(
    ...     "configs",
    ...     [ServedModel("daian", "/models/daian", policy="specific", versions=(1, 2),
    ...                  labels={"stable": 1, "canary": 2})],
    ...     batching=BatchingConfig(max_batch_size=1024))
    >>> sorted(paths)
    ['batching', 'models', 'monitoring']
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from tirec.features.config_io import DeprecatedFlag

log = logging.getLogger(__name__)

MODELS_FILE = "models.config"
BATCHING_FILE = "batching.config"
MONITORING_FILE = "monitoring.config"
DEFAULT_MONITORING_PATH = "/monitoring/prometheus/metrics"
GRPC_PORT = 8500
REST_PORT = 8501
POLICIES = ("latest", "specific", "all")
# Remote file systems TF Serving reads base paths from (besides absolute local paths).
URI_SCHEMES = ("gs://", "s3://", "hdfs://")

ModelServerConfig = model_server_config_pb2.ModelServerConfig
VersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


def _declare_missing_protos():
    """Returns (BatchingParameters, MonitoringConfig) classes: official ones, or declared here."""
    try:
        from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
        from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
        return BatchingParameters, MonitoringConfig
    except ImportError:
        pass
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    fdp = descriptor_pb2.FieldDescriptorProto
    scalar = {"int64": fdp.TYPE_INT64, "bool": fdp.TYPE_BOOL, "string": fdp.TYPE_STRING}

    def add_message(file, name, fields):
        msg = file.message_type.add(name=name)
        for number, (field_name, type_name, repeated) in enumerate(fields, start=1):
            label = fdp.LABEL_REPEATED if repeated else fdp.LABEL_OPTIONAL
            if type_name in scalar:
                msg.field.add(name=field_name, number=number, label=label, type=scalar[type_name])
            else:
                msg.field.add(name=field_name, number=number, label=label, type=fdp.TYPE_MESSAGE,
                              type_name=type_name)

    # Fields 1..7 of BatchingParameters, numbered as in session_bundle_config.proto.
    batching = descriptor_pb2.FileDescriptorProto(
        name="tirec/tensorflow_serving_batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    add_message(batching, "BatchingParameters", [
        ("max_batch_size", ".google.protobuf.Int64Value", False),
        ("batch_timeout_micros", ".google.protobuf.Int64Value", False),
        ("max_enqueued_batches", ".google.protobuf.Int64Value", False),
        ("num_batch_threads", ".google.protobuf.Int64Value", False),
        ("thread_pool_name", ".google.protobuf.StringValue", False),
        ("allowed_batch_sizes", "int64", True),
        ("pad_variable_length_inputs", "bool", False),
    ])
    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tirec/tensorflow_serving_monitoring_config.proto", package="tensorflow.serving",
        syntax="proto3")
    add_message(monitoring, "PrometheusConfig", [("enable", "bool", False), ("path", "string", False)])
    add_message(monitoring, "MonitoringConfig",
                [("prometheus_config", ".tensorflow.serving.PrometheusConfig", False)])
    pool.Add(batching)
    pool.Add(monitoring)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{n}"))
                 for n in ("BatchingParameters", "MonitoringConfig"))


BatchingParameters, MonitoringConfig = _declare_missing_protos()


@dataclass(frozen=True)
class ServedModel:
    """One model entry of ``models.config``.

    Example:
        ``ServedModel("daian", "/models/daian", policy="specific", versions=(1, 2),
        labels={"stable": 1, "canary": 2})``

    Args:
        name: served model name (the ``model_spec.name`` of requests, ``/v1/models/NAME``).
        base_path: absolute folder (or ``gs://``, ``s3://``, ``hdfs://`` URI) holding the integer
            version folders, as seen by the server (inside its container).
        policy: ``latest`` (serve the ``latest`` newest versions), ``specific`` (serve exactly
            ``versions``) or ``all``.
        versions: the versions of the ``specific`` policy.
        latest: how many newest versions the ``latest`` policy serves (>= 1).
        labels: version labels, e.g. ``{"stable": 1, "canary": 2}``; clients pin them with
            ``model_spec.version_label``.

    Raises:
        ValueError: naming the field and the value, for an invalid argument.
    """

    name: str
    base_path: str
    policy: str = "latest"
    versions: tuple[int, ...] = ()
    latest: int = 1
    labels: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "versions", tuple(self.versions))
        object.__setattr__(self, "labels", dict(self.labels))
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"model name must be non-empty letters, digits, '_', '.' or '-' "
                             f"(it is part of REST URLs); received name={self.name!r}")
        where = f"model {self.name!r}"
        if not (os.path.isabs(self.base_path) or self.base_path.startswith(URI_SCHEMES)):
            raise ValueError(f"{where}: base_path must be absolute (TF Serving resolves no relative "
                             f"paths) or a {'/'.join(URI_SCHEMES)} URI; received "
                             f"base_path={self.base_path!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"{where}: policy must be one of {', '.join(POLICIES)}; "
                             f"received policy={self.policy!r}")
        if self.policy == "latest" and (not isinstance(self.latest, int) or self.latest < 1):
            raise ValueError(f"{where}: latest must be an integer >= 1; received latest={self.latest!r}")
        if self.policy == "specific" and not self.versions:
            raise ValueError(f"{where}: policy 'specific' needs versions; received versions=()")
        if self.policy != "specific" and self.versions:
            raise ValueError(f"{where}: versions are only used by policy 'specific'; received "
                             f"versions={self.versions!r} with policy={self.policy!r}")
        if any(not isinstance(v, int) or v < 0 for v in self.versions) or (
                len(set(self.versions)) != len(self.versions)):
            raise ValueError(f"{where}: versions must be distinct integers >= 0; "
                             f"received versions={self.versions!r}")
        for label, version in self.labels.items():
            if not label or not isinstance(version, int) or version < 0:
                raise ValueError(f"{where}: labels must map non-empty names to integer versions "
                                 f">= 0; received labels[{label!r}]={version!r}")

    def check_labels(self, allow_unavailable: bool = False) -> None:
        """Checks that each label points to a version the policy loads.

        TF Serving refuses a label whose version is not loaded, unless the server runs with
        ``--allow_version_labels_for_unavailable_models``. Only the ``specific`` policy names its
        versions, so labels on other policies need ``allow_unavailable``.

        Args:
            allow_unavailable: skip the check (the server must then get the flag above).

        Raises:
            ValueError: naming the label and its version.
        """
        if allow_unavailable:
            return
        for label, version in self.labels.items():
            if self.policy != "specific" or version not in self.versions:
                loaded = (f"versions={list(self.versions)}" if self.policy == "specific"
                          else f"policy={self.policy!r} names no versions")
                raise ValueError(
                    f"model {self.name!r}: label {label!r} points to version {version}, which is not "
                    f"among the loaded versions ({loaded}); list it in the 'specific' policy or allow "
                    f"labels for unavailable versions (server flag "
                    f"--allow_version_labels_for_unavailable_models)")


@dataclass(frozen=True)
class BatchingConfig:
    """Server-side batching (``batching.config``): requests queued together into one run.

    A single request bigger than ``max_batch_size`` is rejected by the server, so set it at least
    to the largest candidate count of one TIR request.

    Args:
        max_batch_size: largest merged batch (>= 1).
        batch_timeout_micros: how long a partial batch waits for more requests (>= 0).
        max_enqueued_batches: queue length in batches before requests are refused (>= 1).
        num_batch_threads: threads running batches in parallel (>= 1; about the core count).
        allowed_batch_sizes: optional sizes batches are padded up to; increasing, the last one
            equal to ``max_batch_size`` (TF Serving requires both).
        pad_variable_length_inputs: pad inputs of different lengths to a common shape.

    Raises:
        ValueError: naming the field and the value, for an invalid argument.
    """

    max_batch_size: int = 1024
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        object.__setattr__(self, "allowed_batch_sizes", tuple(self.allowed_batch_sizes))
        for name, low in (("max_batch_size", 1), ("batch_timeout_micros", 0),
                          ("max_enqueued_batches", 1), ("num_batch_threads", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"batching: {name} must be an integer >= {low}; "
                                 f"received {name}={value!r}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(not isinstance(s, int) or s < 1 for s in sizes) or any(
                    a >= b for a, b in zip(sizes, sizes[1:])):
                raise ValueError(f"batching: allowed_batch_sizes must be strictly increasing positive "
                                 f"integers; received allowed_batch_sizes={sizes!r}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"batching: the last allowed_batch_sizes entry must equal "
                                 f"max_batch_size={self.max_batch_size}; received "
                                 f"allowed_batch_sizes={sizes!r}")


def build_model_server_config(models: Sequence[ServedModel],
                              allow_unavailable_labels: bool = False) -> ModelServerConfig:
    """Builds the ``ModelServerConfig`` of ``models.config``.

    Args:
        models: the served models (at least one, names unique).
        allow_unavailable_labels: accept labels on versions the policy may not load.

    Returns:
        A ``ModelServerConfig`` with one ``model_config_list`` entry per model.

    Raises:
        ValueError: no models, a duplicate name, or a label on a version that is not loaded.
    """
    if not models:
        raise ValueError("models: at least one model is required; received models=[]")
    config = ModelServerConfig()
    seen = set()
    for model in models:
        if model.name in seen:
            raise ValueError(f"models: names must be unique; received name={model.name!r} twice")
        seen.add(model.name)
        model.check_labels(allow_unavailable_labels)
        entry = config.model_config_list.config.add(
            name=model.name, base_path=model.base_path, model_platform="tensorflow")
        policy = entry.model_version_policy
        if model.policy == "latest":
            policy.latest.num_versions = model.latest
        elif model.policy == "specific":
            policy.specific.versions.extend(model.versions)
        else:
            policy.all.SetInParent()
        for label in sorted(model.labels):
            entry.version_labels[label] = model.labels[label]
    return config


def build_batching_parameters(batching: BatchingConfig) -> Message:
    """Builds the ``BatchingParameters`` of ``batching.config`` from ``batching``."""
    params = BatchingParameters()
    params.max_batch_size.value = batching.max_batch_size
    params.batch_timeout_micros.value = batching.batch_timeout_micros
    params.max_enqueued_batches.value = batching.max_enqueued_batches
    params.num_batch_threads.value = batching.num_batch_threads
    params.allowed_batch_sizes.extend(batching.allowed_batch_sizes)
    params.pad_variable_length_inputs = batching.pad_variable_length_inputs
    return params


def build_monitoring_config(path: str = DEFAULT_MONITORING_PATH) -> Message:
    """Builds a ``MonitoringConfig`` exposing Prometheus metrics at ``path`` on the REST port.

    Raises:
        ValueError: ``path`` does not start with ``/``.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"monitoring: path must start with '/'; received monitoring_path={path!r}")
    config = MonitoringConfig()
    config.prometheus_config.enable = True
    config.prometheus_config.path = path
    return config


def write_serving_configs(out_dir: str, models: Sequence[ServedModel],
                          batching: BatchingConfig | None = None,
                          monitoring_path: str | None = DEFAULT_MONITORING_PATH,
                          allow_unavailable_labels: bool = False) -> dict[str, str]:
    """Writes ``models.config`` and, if asked, ``batching.config`` and ``monitoring.config``.

    Everything is validated before any file is written; each file is replaced atomically, so a
    server polling ``models.config`` never reads a partial file.

    Args:
        out_dir: folder to write into (created if missing).
        models: the served models.
        batching: batching parameters; ``None`` writes no ``batching.config``.
        monitoring_path: Prometheus path; ``None`` writes no ``monitoring.config``.
        allow_unavailable_labels: accept labels on versions that may not be loaded (run the
            server with ``--allow_version_labels_for_unavailable_models``).

    Returns:
        ``{"models": path, "batching": path, "monitoring": path}`` for the files written.

    Raises:
        ValueError: naming the field and the value, for invalid settings.
    """
    messages = {"models": (MODELS_FILE, build_model_server_config(models, allow_unavailable_labels))}
    if batching is not None:
        messages["batching"] = (BATCHING_FILE, build_batching_parameters(batching))
    if monitoring_path is not None:
        messages["monitoring"] = (MONITORING_FILE, build_monitoring_config(monitoring_path))
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for key, (file_name, message) in messages.items():
        paths[key] = os.path.join(out_dir, file_name)
        _write_atomic(paths[key], text_format.MessageToString(message))
    return paths


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _parse_text(path: str, message: Message) -> Message:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: line {err.GetLine()}, column {err.GetColumn()}: not a valid "
                         f"{message.DESCRIPTOR.full_name} text proto: {err}") from err


def load_model_server_config(path: str) -> ModelServerConfig:
    """Reads a ``models.config`` text proto.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file, line and column of a parse error.
    """
    return _parse_text(path, ModelServerConfig())


def load_batching_parameters(path: str) -> Message:
    """Reads a ``batching.config`` text proto (``BatchingParameters``); errors as above."""
    return _parse_text(path, BatchingParameters())


def load_monitoring_config(path: str) -> Message:
    """Reads a ``monitoring.config`` text proto (``MonitoringConfig``); errors as above."""
    return _parse_text(path, MonitoringConfig())


def tf_serving_command(config_dir: str, batching: bool = True, monitoring: bool = True,
                       allow_unavailable_labels: bool = False, port: int = GRPC_PORT,
                       rest_api_port: int = REST_PORT, poll_wait_seconds: int = 60) -> list[str]:
    """The ``tensorflow_model_server`` command line reading the files of ``config_dir``.

    Args:
        config_dir: where the server sees the files (e.g. ``/config`` in the serving image).
        batching: pass ``--enable_batching`` and the ``batching.config`` file.
        monitoring: pass the ``monitoring.config`` file.
        allow_unavailable_labels: pass ``--allow_version_labels_for_unavailable_models``, which
            a server starting with labels in ``models.config`` needs: TF Serving assigns them
            before it loads any version, and refuses a label on a version not yet available.
        port: gRPC port.
        rest_api_port: REST port (also serves the Prometheus metrics).
        poll_wait_seconds: how often the server re-reads ``models.config``.
    """
    base = config_dir.rstrip("/")  # '/'-joined: the path is the server's, not this machine's
    cmd = ["tensorflow_model_server", f"--port={port}", f"--rest_api_port={rest_api_port}",
           f"--model_config_file={base}/{MODELS_FILE}",
           f"--model_config_file_poll_wait_seconds={poll_wait_seconds}"]
    if batching:
        cmd += ["--enable_batching", f"--batching_parameters_file={base}/{BATCHING_FILE}"]
    if monitoring:
        cmd.append(f"--monitoring_config_file={base}/{MONITORING_FILE}")
    if allow_unavailable_labels:
        cmd.append("--allow_version_labels_for_unavailable_models")
    return cmd


# ----------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``tirec serving-config`` flags to ``parser``.

    Per-model flags name their model first, so they stay unambiguous with several
    ``--served-model``. ``--model``, its old spelling, still works with a deprecation line
    (``--model`` names an architecture in the other commands).
    """
    parser.add_argument("--out", required=True, help="folder for the config files")
    parser.add_argument("--served-model", dest="models", action="append", default=[],
                        metavar="NAME=BASE_PATH",
                        help="served model name and its absolute base path as the server sees it "
                             "(required; repeatable)")
    parser.add_argument("--model", dest="models", action=DeprecatedFlag, new="--served-model", append=True)
    parser.add_argument("--latest", action="append", default=[], metavar="NAME=N",
                        help="serve the N newest versions of NAME (the default policy, N=1)")
    parser.add_argument("--versions", action="append", default=[], metavar="NAME=V1,V2",
                        help="serve exactly these versions of NAME (policy 'specific')")
    parser.add_argument("--all-versions", action="append", default=[], metavar="NAME",
                        help="serve every version of NAME (policy 'all')")
    parser.add_argument("--label", action="append", default=[], metavar="NAME:LABEL=VERSION",
                        help="version label, e.g. daian:stable=1 (repeatable)")
    parser.add_argument("--allow-version-labels-for-unavailable-models", dest="allow_unavailable_labels",
                        action="store_true",
                        help="accept labels on versions the policy may not load (the server needs "
                             "the flag of the same name)")
    defaults = BatchingConfig()
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--batch-timeout-micros", type=int, default=defaults.batch_timeout_micros)
    parser.add_argument("--num-batch-threads", type=int, default=defaults.num_batch_threads)
    parser.add_argument("--max-enqueued-batches", type=int, default=defaults.max_enqueued_batches)
    parser.add_argument("--allowed-batch-sizes", metavar="S1,S2,...",
                        help="batch sizes to pad to, increasing, ending at --max-batch-size")
    parser.add_argument("--pad-variable-length-inputs", action="store_true")
    parser.add_argument("--no-batching", action="store_true", help="write no batching.config")
    parser.add_argument("--monitoring-path", default=DEFAULT_MONITORING_PATH,
                        help=f"Prometheus metrics path (default {DEFAULT_MONITORING_PATH})")


def run_from_args(args: argparse.Namespace) -> int:
    """Writes the configs from parsed :func:`add_arguments` flags and prints the paths.

    Raises:
        ValueError: naming the flag and the value, for a malformed or inconsistent flag.
    """
    if not args.models:
        raise ValueError("serving-config: --served-model NAME=BASE_PATH is required (repeatable)")
    models = _models_from_args(args)
    batching = None if args.no_batching else BatchingConfig(
        max_batch_size=args.max_batch_size, batch_timeout_micros=args.batch_timeout_micros,
        max_enqueued_batches=args.max_enqueued_batches, num_batch_threads=args.num_batch_threads,
        allowed_batch_sizes=_int_list("--allowed-batch-sizes", args.allowed_batch_sizes or ""),
        pad_variable_length_inputs=args.pad_variable_length_inputs)
    paths = write_serving_configs(args.out, models, batching, args.monitoring_path,
                                  args.allow_unavailable_labels)
    for path in paths.values():
        print(path)
    # TF Serving assigns a config's labels before it loads any version, so a server starting
    # with labels needs the flag even when each label names a version its policy loads.
    labels = any(m.labels for m in models)
    command = tf_serving_command(os.path.abspath(args.out), batching=batching is not None,
                                 allow_unavailable_labels=args.allow_unavailable_labels or labels)
    log.info("serve with: %s", " ".join(command))
    return 0


def _models_from_args(args: argparse.Namespace) -> list[ServedModel]:
    base_paths = {}
    for spec in args.models:
        name, base_path = _split(spec, "=", "--served-model", "NAME=BASE_PATH")
        if name in base_paths:
            raise ValueError(f"--served-model: names must be unique; received {name!r} twice")
        base_paths[name] = base_path
    policies = {name: {} for name in base_paths}

    def set_policy(flag, name, **policy):
        if name not in policies:
            raise ValueError(f"{flag}: unknown model {name!r}; declared with --served-model: "
                             f"{', '.join(base_paths)}")
        if "policy" in policies[name]:
            raise ValueError(f"{flag}: model {name!r} already has policy "
                             f"{policies[name]['policy']!r}; give one of --latest, --versions, "
                             f"--all-versions per model")
        policies[name].update(policy)

    for spec in args.latest:
        name, n = _split(spec, "=", "--latest", "NAME=N")
        set_policy("--latest", name, policy="latest", latest=_int("--latest", n))
    for spec in args.versions:
        name, versions = _split(spec, "=", "--versions", "NAME=V1,V2")
        set_policy("--versions", name, policy="specific", versions=_int_list("--versions", versions))
    for name in args.all_versions:
        set_policy("--all-versions", name, policy="all")
    labels = {name: {} for name in base_paths}
    for spec in args.label:
        name_label, version = _split(spec, "=", "--label", "NAME:LABEL=VERSION")
        name, label = _split(name_label, ":", "--label", "NAME:LABEL=VERSION")
        if name not in labels:
            raise ValueError(f"--label: unknown model {name!r}; declared with --served-model: "
                             f"{', '.join(base_paths)}")
        labels[name][label] = _int("--label", version)
    return [ServedModel(name, base_paths[name], labels=labels[name], **policies[name])
            for name in base_paths]


def _split(spec: str, sep: str, flag: str, form: str) -> tuple[str, str]:
    left, found, right = spec.partition(sep)
    if not found or not left or not right:
        raise ValueError(f"{flag}: expected {form}; received {spec!r}")
    return left, right


def _int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{flag}: expected an integer; received {text!r}") from None


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected integers separated by commas; received {text!r}") from None
