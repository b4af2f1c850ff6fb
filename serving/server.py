"""``tirec serve``: a local model server speaking TF Serving's gRPC and REST APIs.

Serves SavedModels laid out as TF Serving expects (``BASE/NAME/<version>/saved_model.pb``),
for users without Docker or ``tensorflow_model_server``; any client of the real server works
against it unchanged::

    tirec serve --model-base-path BASE/NAME --model-name NAME [--port 8500] [--rest-port 8501]
    tirec serve --model-config-file models.config [--model-config-file-poll-wait-seconds 30]
    python -m tirec.serving.server --model-base-path BASE/NAME --model-name NAME --port 0 --rest-port 0

* gRPC (``tensorflow.serving.PredictionService``: Predict, Classify, Regress, MultiInference,
  GetModelMetadata; ``tensorflow.serving.ModelService``: GetModelStatus,
  HandleReloadConfigRequest; the standard ``grpc.health.v1.Health`` service, overall and per
  model name).
* REST (``/v1/models/...``, see :mod:`tirec.serving.rest`).
* Version management (:mod:`tirec.serving.model_manager`): polling, version policies and labels,
  warmup replay, hot swap without failed requests, config reload.
* Optional server-side batching (:mod:`tirec.serving.batching`).
* Bounded resources (:mod:`tirec.serving.limits`): message and body size, rows per request,
  concurrent calls, REST threads, queue, connections and timeouts, so that no client can take
  the server down; ``HandleReloadConfigRequest`` only loads models under the roots the operator
  named.

Once listening, the command prints (flushed) ``tirec serve: gRPC listening on HOST:PORT`` and
``tirec serve: REST listening on HOST:PORT``, so a caller that asked for port 0 can read the
ports. SIGINT/SIGTERM stop it gracefully (exit code 0).

This module imports TensorFlow only when a server starts, so building the CLI stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading

from tirec.serving.limits import ServerLimits

log = logging.getLogger(__name__)

_MAX_DETAILS = 4000  # gRPC status details travel in a header: keep them bounded


# ---- options -------------------------------------------------------------------------------------

@dataclasses.dataclass
class ServingOptions:
    """Everything ``tirec serve`` can be told; the defaults are TF Serving's where it has one.

    Args:
      model_base_path: folder of one model's integer versions (``BASE/NAME``); or use
        ``model_config_file``.
      model_name: name the ``model_base_path`` model is served under.
      model_config_file: a ModelServerConfig text proto listing models.
      host: address to bind both servers to.
      port: gRPC port; 0 picks a free one.
      rest_port: REST port; 0 picks a free one, None or negative disables REST.
      file_system_poll_wait_seconds: seconds between version discovery polls; 0 disables.
      model_config_file_poll_wait_seconds: seconds between checks of the config file for
        changes; 0 disables.
      enable_batching: batch concurrent requests (every signature, and the warmup records).
      batching_parameters_file: a BatchingParameters text proto (with ``enable_batching``).
      max_batch_size, batch_timeout_micros, num_batch_threads: batching parameters; override the
        file's values when set.
      limits: the :class:`~tirec.serving.limits.ServerLimits` (sizes, threads, queues,
        timeouts); the defaults hold on a 2-core, 24 GiB machine whatever the clients send.
      allowed_model_roots: folders ``HandleReloadConfigRequest`` may load models from, besides
        the initial models' base paths (``model_base_path`` or the config file's). A reload
        naming a base path elsewhere (after resolving symlinks and ``..``) is refused with
        PERMISSION_DENIED, so a client cannot make the server load a SavedModel (which may run
        arbitrary ops) from any path it likes.
      version_settle_seconds: a version folder with files younger than this is taken as still
        being written and retried on the next poll.
      allow_version_labels_for_unavailable_models: accept a label on a version not loaded yet
        (TF Serving's flag of that name; without it a config with labels cannot start a server).
    """

    model_base_path: str | None = None
    model_name: str = "default"
    model_config_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 8500
    rest_port: int | None = 8501
    file_system_poll_wait_seconds: float = 1.0
    model_config_file_poll_wait_seconds: float = 0.0
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    max_batch_size: int | None = None
    batch_timeout_micros: int | None = None
    num_batch_threads: int | None = None
    limits: ServerLimits = dataclasses.field(default_factory=ServerLimits)
    allowed_model_roots: tuple[str, ...] = ()
    version_settle_seconds: float = 1.0
    allow_version_labels_for_unavailable_models: bool = False

    def __post_init__(self):
        if bool(self.model_base_path) == bool(self.model_config_file):
            raise ValueError("serve: set exactly one of --model-base-path and --model-config-file; received "
                             f"model_base_path={self.model_base_path!r}, "
                             f"model_config_file={self.model_config_file!r}")
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"serve: --model-name must be a non-empty name without '/'; received "
                             f"model_name={self.model_name!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve: --port must be in [0, 65535]; received port={self.port}")
        if self.rest_port is not None and self.rest_port > 65535:
            raise ValueError(f"serve: --rest-port must be <= 65535; received rest_port={self.rest_port}")
        for name in ("file_system_poll_wait_seconds", "model_config_file_poll_wait_seconds",
                     "version_settle_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"serve: {name} must be >= 0; received {name}={getattr(self, name)}")
        if not isinstance(self.limits, ServerLimits):
            raise ValueError(f"serve: limits must be a ServerLimits; received {type(self.limits).__name__}")
        self.allowed_model_roots = tuple(self.allowed_model_roots)
        if any(not root for root in self.allowed_model_roots):
            raise ValueError(f"serve: --allowed-model-roots holds an empty path; received "
                             f"{list(self.allowed_model_roots)}")

    @property
    def rest_enabled(self) -> bool:
        """Whether the REST server runs."""
        return self.rest_port is not None and self.rest_port >= 0

    def batching_options(self):
        """The :class:`~tirec.serving.batching.BatchingOptions`, or None without batching."""
        if not self.enable_batching:
            return None
        from tirec.serving.batching import BatchingOptions

        overrides = {"max_batch_size": self.max_batch_size, "batch_timeout_micros": self.batch_timeout_micros,
                     "num_batch_threads": self.num_batch_threads}
        if self.batching_parameters_file:
            return BatchingOptions.from_file(self.batching_parameters_file, **overrides)
        return BatchingOptions(**{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServingOptions":
        """Options from arguments parsed with :func:`add_arguments`."""
        def given(names):
            return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}

        kwargs = given(f.name for f in dataclasses.fields(cls) if f.name not in ("limits", "allowed_model_roots"))
        kwargs["limits"] = ServerLimits(**given(f.name for f in dataclasses.fields(ServerLimits)))
        roots = getattr(args, "allowed_model_roots", None) or []
        kwargs["allowed_model_roots"] = tuple(r.strip() for text in roots for r in text.split(","))
        return cls(**kwargs)


# ---- request core --------------------------------------------------------------------------------

class ServingCore:
    """Resolves model specs and runs requests; shared by the gRPC services and REST.

    Args:
      manager: the :class:`~tirec.serving.model_manager.ModelManager`.
      batcher: a started :class:`~tirec.serving.batching.Batcher` (Predict, Classify, Regress and
        MultiInference go through it), or None.
      max_examples: most rows / tf.Examples per request.
      model_roots: folders :meth:`reload_config` may load models from (more with
        :meth:`allow_model_roots`).
    """

    def __init__(self, manager, batcher=None, max_examples: int = 10000, model_roots=()):
        from tirec.serving import inference

        self._inference = inference
        self.manager = manager
        self.batcher = batcher
        self.max_examples = max_examples
        self._roots_lock = threading.Lock()
        self._model_roots: list[str] = []
        self.allow_model_roots(model_roots)

    def allow_model_roots(self, roots) -> None:
        """Lets :meth:`reload_config` load models from under ``roots`` too."""
        with self._roots_lock:
            for root in roots:
                if root not in self._model_roots:
                    self._model_roots.append(root)

    @property
    def model_roots(self) -> list[str]:
        """The folders :meth:`reload_config` may load models from."""
        with self._roots_lock:
            return list(self._model_roots)

    def resolve(self, spec):
        """The servable a ModelSpec names."""
        return self.manager.resolve_spec(spec)

    @property
    def runner(self):
        """How signatures run: the batcher (TF Serving batches every signature of a model), or
        None for a direct call."""
        return self.batcher.run if self.batcher is not None else None

    def predict_arrays(self, servable, signature_name: str, arrays, output_filter=()):
        """Predict on numpy inputs (REST), batched when batching is on."""
        return self._inference.predict_arrays(servable, signature_name, arrays, output_filter, runner=self.runner,
                                              max_examples=self.max_examples)

    def predict(self, request):
        """PredictionService.Predict."""
        return self._inference.predict(self.resolve(request.model_spec), request, runner=self.runner,
                                       max_examples=self.max_examples)

    def classify(self, request):
        """PredictionService.Classify."""
        return self._inference.classify(self.resolve(request.model_spec), request, max_examples=self.max_examples,
                                   runner=self.runner)

    def regress(self, request):
        """PredictionService.Regress."""
        return self._inference.regress(self.resolve(request.model_spec), request, max_examples=self.max_examples,
                                   runner=self.runner)

    def multi_inference(self, request):
        """PredictionService.MultiInference: several classify/regress signatures of one model on
        the same input."""
        from tirec.serving.servable import invalid

        if not request.tasks:
            raise invalid("MultiInferenceRequest has no tasks")
        servable = self.resolve(request.tasks[0].model_spec)  # one version for every task
        return self._inference.multi_inference(servable, request, max_examples=self.max_examples, runner=self.runner)

    def metadata(self, request):
        """PredictionService.GetModelMetadata."""
        return self._inference.metadata(self.resolve(request.model_spec), request)

    def model_status(self, spec):
        """ModelService.GetModelStatus for a ModelSpec."""
        return self.manager.model_status_spec(spec)

    def reload_config(self, request):
        """ModelService.HandleReloadConfigRequest; PERMISSION_DENIED for a base path outside
        :attr:`model_roots`."""
        from tensorflow_serving.apis import model_management_pb2
        from tirec.serving.model_manager import check_model_roots, validate_config

        validate_config(request.config)  # TF Serving's errors first, then this server's roots
        check_model_roots(request.config, self.model_roots)
        self.manager.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse()


# ---- gRPC services -------------------------------------------------------------------------------

def _grpc_call(fn, request, context):
    import grpc
    from tirec.serving.servable import INTERNAL_CODES, ServingError, internal_error

    where = f"gRPC {getattr(fn, '__name__', fn)}"
    try:
        return fn(request)
    except ServingError as e:
        code, message = e.code, e.message
        if code in INTERNAL_CODES:  # the server's own failure: a request id, not its details
            message = internal_error(where, str(e))
    except Exception as e:  # an unexpected bug: report it, keep serving
        code, message = "INTERNAL", internal_error(where, f"{type(e).__name__}: {e}", exc_info=True)
    if len(message) > _MAX_DETAILS:
        message = message[:_MAX_DETAILS] + "... (truncated)"
    context.abort(grpc.StatusCode[code], message)


class _PredictionService:
    """tensorflow.serving.PredictionService."""

    def __init__(self, core: ServingCore):
        self._core = core

    def Predict(self, request, context):
        return _grpc_call(self._core.predict, request, context)

    def Classify(self, request, context):
        return _grpc_call(self._core.classify, request, context)

    def Regress(self, request, context):
        return _grpc_call(self._core.regress, request, context)

    def MultiInference(self, request, context):
        return _grpc_call(self._core.multi_inference, request, context)

    def GetModelMetadata(self, request, context):
        return _grpc_call(self._core.metadata, request, context)


class _ModelService:
    """tensorflow.serving.ModelService."""

    def __init__(self, core: ServingCore):
        self._core = core

    def GetModelStatus(self, request, context):
        return _grpc_call(lambda r: self._core.model_status(r.model_spec), request, context)

    def HandleReloadConfigRequest(self, request, context):
        # TF Serving returns the reload error as the RPC status (the response is then dropped).
        return _grpc_call(self._core.reload_config, request, context)


# ---- the server ----------------------------------------------------------------------------------

def grpc_server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The gRPC channel arguments of ``tirec serve``: message size limits both ways (the
    arguments TF Serving takes in ``--grpc_channel_arguments``), and no SO_REUSEPORT (a second
    server on a taken port fails instead of sharing it)."""
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0)]


def grpc_server(limits: ServerLimits):
    """A gRPC server (not started, no services) bounded by ``limits``: ``grpc_workers`` handler
    threads, messages up to ``max_message_bytes``, and at most ``max_concurrent_rpcs`` calls
    running or waiting for a thread (RESOURCE_EXHAUSTED beyond, instead of an endless queue)."""
    from concurrent import futures

    import grpc

    return grpc.server(futures.ThreadPoolExecutor(max_workers=limits.grpc_workers, thread_name_prefix="tirec-grpc"),
                       options=grpc_server_options(limits.max_message_bytes),
                       maximum_concurrent_rpcs=limits.max_concurrent_rpcs)


def _base_paths(config) -> list[str]:
    """The base paths a ModelServerConfig names."""
    return [mc.base_path for mc in config.model_config_list.config if mc.base_path]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ServingServer:
    """The model server: model manager, gRPC services, REST front end, batching.

    Example::

        server = ServingServer(ServingOptions(model_base_path="/m/toy", model_name="toy",
                                              port=0, rest_port=0)).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        ...
        server.stop()

    Args:
      options: the :class:`ServingOptions`.
    """

    def __init__(self, options: ServingOptions):
        self.options = options
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self.manager = None
        self.batcher = None
        self.core: ServingCore | None = None
        self._grpc = None
        self._rest = None
        self._health = None
        self._health_names: set[str] = set()
        self._health_lock = threading.Lock()
        self._config_thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "ServingServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _initial_config(self):
        from tirec.serving import model_manager

        o = self.options
        if o.model_config_file:
            return model_manager.load_model_config_file(o.model_config_file)
        return model_manager.single_model_config(o.model_name, o.model_base_path)

    def start(self) -> "ServingServer":
        """Loads the models (blocking), then starts gRPC and REST; returns ``self``.

        Raises:
          ServingError: the model config is invalid or a base path is missing.
          ValueError: bad batching parameters.
          OSError: a port cannot be bound.
        """
        from grpc_health.v1 import health, health_pb2_grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        from tirec.serving.batching import Batcher
        from tirec.serving.model_manager import ModelManager

        o = self.options
        batching = o.batching_options()
        config = self._initial_config()
        self._health = health.HealthServicer(experimental_non_blocking=True)
        if batching is not None:
            self.batcher = Batcher(batching).start()
        self.manager = ModelManager(config, poll_wait_seconds=o.file_system_poll_wait_seconds,
                                    settle_seconds=o.version_settle_seconds,
                                    max_examples=o.limits.max_examples_per_request, on_change=self._update_health,
                                    allow_unavailable_labels=o.allow_version_labels_for_unavailable_models,
                                    warmup_runner=self.batcher.run if self.batcher is not None else None)
        self.core = ServingCore(self.manager, self.batcher, o.limits.max_examples_per_request,
                                model_roots=[*o.allowed_model_roots, *_base_paths(config)])
        try:
            self.manager.start()
            self._update_health()
            self._grpc = grpc_server(o.limits)
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                _PredictionService(self.core), self._grpc)
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self.core), self._grpc)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
            address = _address(o.host, o.port)
            try:
                port = self._grpc.add_insecure_port(address)
            except RuntimeError as e:
                raise OSError(f"--port: cannot bind gRPC to {address}: {e}") from None
            if not port:
                raise OSError(f"--port: cannot bind gRPC to {address}")
            self.grpc_port = port
            self._grpc.start()
            log.info("gRPC listening on %s", _address(o.host, port))
            if o.rest_enabled:
                from tirec.serving.rest import RestServer

                self._rest = RestServer(self.core, o.host, o.rest_port, o.limits).start()
                self.rest_port = self._rest.port
                log.info("REST listening on %s", _address(o.host, self.rest_port))
            if o.model_config_file and o.model_config_file_poll_wait_seconds > 0:
                self._config_thread = threading.Thread(target=self._watch_config, name="tirec-config-poll",
                                                       daemon=True)
                self._config_thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stops serving: health NOT_SERVING, REST and gRPC closed (in-flight gRPC calls get
        ``grace`` seconds), polling stopped, models unloaded, batch threads stopped."""
        self._stop.set()
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        if self._config_thread is not None:
            self._config_thread.join()
            self._config_thread = None
        if self.manager is not None:
            self.manager.stop()  # first: a version loading now replays its warmup through the batcher
        if self.batcher is not None:
            self.batcher.stop()

    def batch_stats(self) -> dict:
        """Batcher counters (see :meth:`~tirec.serving.batching.Batcher.stats`); empty without batching."""
        return self.batcher.stats() if self.batcher is not None else {}

    def _update_health(self) -> None:
        from grpc_health.v1 import health_pb2

        if self._health is None or self.manager is None:
            return
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        with self._health_lock:
            names = set(self.manager.model_names())
            for name in names:
                self._health.set(name, serving if self.manager.is_ready(name) else not_serving)
            for name in self._health_names - names:
                self._health.set(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            self._health_names = names
            self._health.set("", serving if self.manager.is_ready() else not_serving)

    def _watch_config(self) -> None:
        from tirec.serving import model_manager
        from tirec.serving.servable import ServingError

        path = self.options.model_config_file
        last = self.manager.config
        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                config = model_manager.load_model_config_file(path)
                if config == last:
                    continue
                log.info("%s changed; reloading the model config", path)
                self.core.allow_model_roots(_base_paths(config))  # the operator's file names them
                self.manager.reload_config(config)
                last = config  # a failed reload is tried again at the next poll, as TF Serving does
            except ServingError as e:
                log.error("config reload from %s failed: %s", path, e)
            except Exception:
                log.exception("config reload from %s failed", path)


# ---- CLI -----------------------------------------------------------------------------------------

def _rest_port(text: str) -> int:
    if text.strip().lower() in ("none", "off", ""):
        return -1
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'none'; received {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``tirec serve`` flags (TF Serving's underscore spellings are accepted too)."""
    d = ServingOptions.__dataclass_fields__
    g = parser.add_argument_group("models")
    g.add_argument("--model-base-path", "--model_base_path", dest="model_base_path",
                   help="folder holding the model's integer version folders (BASE/NAME)")
    g.add_argument("--model-name", "--model_name", dest="model_name", default=d["model_name"].default,
                   help="name to serve the --model-base-path model under (default: %(default)s)")
    g.add_argument("--model-config-file", "--model_config_file", dest="model_config_file",
                   help="ModelServerConfig text proto listing several models (instead of --model-base-path)")
    g.add_argument("--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds",
                   dest="file_system_poll_wait_seconds", type=float,
                   default=d["file_system_poll_wait_seconds"].default,
                   help="seconds between polls for new versions; 0 disables (default: %(default)s)")
    g.add_argument("--model-config-file-poll-wait-seconds", "--model_config_file_poll_wait_seconds",
                   dest="model_config_file_poll_wait_seconds", type=float,
                   default=d["model_config_file_poll_wait_seconds"].default,
                   help="seconds between checks of --model-config-file for changes; 0 disables "
                        "(default: %(default)s)")
    g.add_argument("--version-settle-seconds", type=float, default=d["version_settle_seconds"].default,
                   help="a version folder with files younger than this is still being written and is "
                        "retried on the next poll (default: %(default)s)")
    g.add_argument("--allowed-model-roots", action="append", metavar="DIR[,DIR...]",
                   help="folders HandleReloadConfigRequest may load models from, besides the base paths of "
                        "--model-base-path / --model-config-file (repeatable); a reload naming any other "
                        "path is refused with PERMISSION_DENIED, so a client cannot make the server load "
                        "a SavedModel from anywhere")
    g.add_argument("--allow-version-labels-for-unavailable-models",
                   "--allow_version_labels_for_unavailable_models",
                   dest="allow_version_labels_for_unavailable_models", action="store_true", default=None,
                   help="accept version labels on versions not loaded yet; as in TF Serving, a config "
                        "with labels cannot start a server without it (labels are set before loading)")
    g = parser.add_argument_group("network")
    g.add_argument("--host", default=d["host"].default, help="address to bind (default: %(default)s)")
    g.add_argument("--port", type=int, default=d["port"].default,
                   help="gRPC port; 0 picks a free one (default: %(default)s)")
    g.add_argument("--rest-port", "--rest_api_port", dest="rest_port", type=_rest_port,
                   default=d["rest_port"].default,
                   help="REST port; 0 picks a free one, negative or 'none' disables (default: %(default)s)")
    _add_limit_arguments(parser)
    g = parser.add_argument_group("batching")
    g.add_argument("--enable-batching", "--enable_batching", dest="enable_batching", action="store_true",
                   help="batch concurrent requests to a signature (all of them, as TF Serving)")
    g.add_argument("--batching-parameters-file", "--batching_parameters_file", dest="batching_parameters_file",
                   help="BatchingParameters text proto (as for tensorflow_model_server)")
    g.add_argument("--max-batch-size", type=int, help="rows per batch (default 1000, or the file's)")
    g.add_argument("--batch-timeout-micros", type=int,
                   help="longest wait for a batch to fill (default 0, or the file's)")
    g.add_argument("--num-batch-threads", type=int, help="threads running batches (default: CPU count)")


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The :class:`~tirec.serving.limits.ServerLimits` flags; their defaults are its defaults."""
    d = ServerLimits()
    g = parser.add_argument_group("limits", "bounds that keep a misbehaving client from taking the server down; "
                                            "the defaults hold on a 2-core, 24 GiB machine")
    g.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                   help="largest gRPC message (grpc.max_receive_message_length / max_send_message_length) and "
                        "REST body; bounds one request's memory; larger ones get RESOURCE_EXHAUSTED / HTTP 413, "
                        "REST before reading the body (default: %(default)s = 64 MiB)")
    g.add_argument("--max-examples-per-request", type=int, default=d.max_examples_per_request,
                   help="most rows or tf.Examples per request, checked before decoding; bounds one request's "
                        "work (default: %(default)s)")
    g.add_argument("--grpc-workers", "--grpc_max_threads", dest="grpc_workers", type=int, default=d.grpc_workers,
                   help="gRPC handler threads (default: %(default)s)")
    g.add_argument("--max-concurrent-rpcs", type=int, default=d.max_concurrent_rpcs,
                   help="most gRPC calls running or waiting for a thread; more get RESOURCE_EXHAUSTED at once "
                        "instead of queuing without end (default: %(default)s)")
    g.add_argument("--rest-api-num-threads", "--rest_api_num_threads", dest="rest_api_num_threads", type=int,
                   default=d.rest_api_num_threads,
                   help="REST worker threads; slow clients never hold one (default: %(default)s)")
    g.add_argument("--rest-max-queued-requests", type=int, default=d.rest_max_queued_requests,
                   help="REST requests waiting for a worker; more get HTTP 503 with Retry-After at once, which "
                        "bounds the bodies held in memory (default: %(default)s)")
    g.add_argument("--rest-api-timeout-in-ms", "--rest_api_timeout_in_ms", dest="rest_api_timeout_in_ms", type=int,
                   default=d.rest_api_timeout_in_ms,
                   help="time a REST client has to send a whole request and to read its response; an idle "
                        "kept-alive connection is closed after it; drops silent or trickling clients "
                        "(default: %(default)s)")
    g.add_argument("--rest-max-connections", type=int, default=d.rest_max_connections,
                   help="most open REST connections; more get HTTP 503; bounds the sockets clients can hold "
                        "(default: %(default)s)")


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the server until SIGINT/SIGTERM; returns the exit code (0 after a clean stop)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = ServingOptions.from_args(args)
    except ValueError as e:  # messages start with "serve:"
        print(f"tirec {e}", file=sys.stderr)
        return 2
    server = ServingServer(options)
    try:
        server.start()
    except Exception as e:
        from tirec.serving.servable import ServingError

        if not isinstance(e, (ServingError, ValueError, OSError)):
            raise
        print(f"tirec serve: {e}", file=sys.stderr)
        return 1
    print(f"tirec serve: gRPC listening on {_address(options.host, server.grpc_port)}", flush=True)
    if server.rest_port is not None:
        print(f"tirec serve: REST listening on {_address(options.host, server.rest_port)}", flush=True)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopping")
    server.stop()
    print("tirec serve: stopped", flush=True)
    return 0


def main(argv=None) -> int:
    """``python -m tirec.serving.server``."""
    parser = argparse.ArgumentParser(prog="python -m tirec.serving.server",
                                     description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
