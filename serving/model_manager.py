"""Which model versions are served: discovery, loading, version policy, hot swap, reload.

Mirrors TF Serving's file-system source and availability-preserving manager:

* Each model has a base path holding integer version folders ``BASE/NAME/<version>/``. Other
  names are ignored, and so is a version folder that is still being written: no
  ``saved_model.pb`` yet, or a file in it modified less than ``settle_seconds`` ago. It is
  looked at again on the next poll.
* The version policy (``latest { num_versions }`` (default latest 1), ``all``, ``specific``)
  picks the aspired versions among the loadable ones. A version that failed to load is reported
  as END with its error and skipped by the policy until its files change, so it never replaces
  a working version.
* New versions are loaded (and their warmup requests replayed) on the poll thread, off the
  request path, then published by swapping a dictionary under a lock. Versions leaving the
  aspired set are dropped only after that swap; a request already holding the old
  :class:`~tirec.serving.servable.Servable` finishes on it, and the last reference going away
  frees it.
* :meth:`ModelManager.reload_config` replaces the served ``ModelServerConfig`` (added models
  are loaded before it returns, removed ones unloaded). :func:`check_model_roots` keeps a
  config sent by a client to the folders the operator named.
"""
from __future__ import annotations

import gc
import logging
import os
import posixpath
import re
import threading
import time
from typing import Callable

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tirec.serving import inference
from tirec.serving.servable import STATUS_CODES, Servable, ServingError, invalid, saved_model_file

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
_VERSION_DIR = re.compile(r"[0-9]{1,18}")


# ---- config --------------------------------------------------------------------------------------

def parse_model_config(text: str, source: str = "<config>") -> model_server_config_pb2.ModelServerConfig:
    """Parses a ModelServerConfig text proto.

    Args:
      text: the text proto (``model_config_list { config { name: ... base_path: ... } }``).
      source: where it came from, for the error message.

    Raises:
      ServingError: INVALID_ARGUMENT naming ``source`` and the parse error.
    """
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise invalid(f"{source}: not a ModelServerConfig text proto: {e}") from None
    return config


def load_model_config_file(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Reads and parses a ``--model-config-file``."""
    try:
        with tf.io.gfile.GFile(path, "r") as fh:
            text = fh.read()
    except tf.errors.OpError as e:
        raise ServingError("NOT_FOUND", f"--model-config-file {path}: {e.message}") from None
    return parse_model_config(text, f"--model-config-file {path}")


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config TF Serving builds from ``--model_name`` and ``--model_base_path`` (a relative
    local path made absolute: TF Serving refuses one, this command line resolves it)."""
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = base_path if "://" in base_path else os.path.abspath(base_path)
    entry.model_platform = "tensorflow"
    return config


def resolve_path(path: str) -> str:
    """``path`` made absolute with symlinks and ``..`` resolved; a ``scheme://`` path (GCS, S3,
    HDFS) has its ``.`` and ``..`` segments normalized, as it has no symlinks."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(path)


def _is_under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def check_model_roots(config: model_server_config_pb2.ModelServerConfig, roots) -> None:
    """Raises PERMISSION_DENIED unless every model base path in ``config`` lies under one of
    ``roots``, both resolved with :func:`resolve_path` (a symlink or ``..`` cannot lead out).

    Loading a SavedModel runs its graph, so a server must not load one from wherever a client
    points it. The message names the model and the base path it was sent, not the roots.
    """
    resolved = [resolve_path(root) for root in roots]
    for mc in config.model_config_list.config:
        if not mc.base_path:  # reported by validation
            continue
        path = resolve_path(mc.base_path)
        if not any(_is_under(path, root) for root in resolved):
            log.warning("reload refused: model %s base_path %s (resolved %s) is outside the allowed roots %s",
                        mc.name, mc.base_path, path, resolved)
            raise ServingError("PERMISSION_DENIED", f"model '{mc.name}': base_path {mc.base_path!r} is not under "
                                                    f"a model root this server allows (--model-base-path, the "
                                                    f"--model-config-file's models, --allowed-model-roots)")


def validate_config(config: model_server_config_pb2.ModelServerConfig) -> list:
    """The config's models, checked as TF Serving checks them (names, then each model)."""
    kind = config.WhichOneof("config")
    if kind is None:
        return []
    if kind != "model_config_list":
        raise ServingError("UNIMPLEMENTED", f"ModelServerConfig.{kind} is not supported; use "
                                            f"model_config_list")
    entries = list(config.model_config_list.config)
    seen = set()
    for mc in entries:
        if not mc.name:
            raise invalid(f"model_config_list: a model has an empty name (base_path {mc.base_path!r})")
        if mc.name in seen:
            raise invalid(f"Illegal to list model {mc.name} multiple times in config list")
        seen.add(mc.name)
    for mc in entries:
        _validate_model(mc)
    return entries


def _validate_model(mc: model_server_config_pb2.ModelConfig) -> None:
    if not mc.base_path:
        raise invalid(f"model '{mc.name}': base_path is empty")
    if "://" not in mc.base_path and not posixpath.isabs(mc.base_path):
        raise invalid(f"Expected model {mc.name} to have an absolute path or URI; got "
                      f"base_path()={mc.base_path}")
    platform = mc.model_platform
    if mc.model_type:  # the deprecated enum
        if platform:
            raise invalid(f"model '{mc.name}': Illegal setting both ModelServerConfig::model_type "
                          f"(deprecated) and ModelServerConfig::model_platform.")
        if mc.model_type != model_server_config_pb2.ModelType.TENSORFLOW:
            raise invalid(f"model '{mc.name}': ModelServerConfig::model_type choice {mc.model_type} "
                          f"not supported.")
        platform = "tensorflow"
    if not platform:
        raise invalid(f"model '{mc.name}': Illegal setting neither ModelServerConfig::model_type "
                      f"(deprecated) nor ModelServerConfig::model_platform.")
    if platform != "tensorflow":
        raise invalid(f"model '{mc.name}': model_platform {platform!r} is not supported "
                      f"(only 'tensorflow')")
    policy = mc.model_version_policy
    if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
        raise invalid(f"model '{mc.name}': specific.versions is empty")


def _aspired(policy, candidates: list[int]) -> set[int]:
    """The versions a policy wants among ``candidates`` (loadable versions, ascending)."""
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return set(candidates)
    if which == "specific":
        return set(policy.specific.versions) & set(candidates)
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
    return set(candidates[-n:])


# ---- entries -------------------------------------------------------------------------------------

class _Model:
    """One configured model: its config and the versions currently served."""

    def __init__(self, mc: model_server_config_pb2.ModelConfig):
        self.name = mc.name
        self.base_path = mc.base_path
        self.policy = mc.model_version_policy
        self.labels = dict(mc.version_labels)
        self.available: dict[int, Servable] = {}  # replaced, never mutated (readers need no lock)
        self.failed: dict[int, tuple] = {}  # version -> files fingerprint of the failed attempt
        self.last_error: ServingError | None = None

    def update(self, mc) -> None:
        self.policy = mc.model_version_policy
        self.labels = dict(mc.version_labels)


def _scan(base_path: str) -> dict[int, str]:
    """Integer version folders under ``base_path`` (version -> path)."""
    try:
        names = tf.io.gfile.listdir(base_path)
    except tf.errors.NotFoundError:
        return {}
    out = {}
    for name in names:
        name = name.rstrip("/")
        if _VERSION_DIR.fullmatch(name):
            path = tf.io.gfile.join(base_path, name)
            if tf.io.gfile.isdir(path):
                out[int(name)] = path
    return out


def _fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file under ``path``, sorted."""
    files = []
    for root, _dirs, names in tf.io.gfile.walk(path):
        for name in names:
            full = tf.io.gfile.join(root, name)
            try:
                st = tf.io.gfile.stat(full)
            except tf.errors.NotFoundError:
                continue
            files.append((full[len(path):], st.length, st.mtime_nsec))
    return tuple(sorted(files))


# ---- the manager ---------------------------------------------------------------------------------

def _version_choice(spec) -> dict:
    """A ``ModelSpec``'s version choice as keyword arguments: ``version``, ``label`` or none."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return {"version": spec.version.value}
    if choice == "version_label":
        return {"label": spec.version_label}
    return {}


class ModelManager:
    """Serves the versions a ModelServerConfig asks for, and keeps them up to date.

    Args:
      config: the initial ModelServerConfig.
      poll_wait_seconds: seconds between file system polls; 0 disables polling (versions are
        then only discovered by :meth:`start`, :meth:`poll_once` and :meth:`reload_config`).
      settle_seconds: a version folder with a file modified more recently than this is
        considered still being written, and retried on the next poll.
      max_examples: the batch limit applied to warmup requests.
      warmup_runner: how warmup requests run (the server's batcher when batching is on; a direct
        call by default).
      on_change: called (without arguments, from the thread that changed it) whenever the set of
        available versions changes.
      allow_unavailable_labels: accept a label on a version that is not available (TF Serving's
        ``--allow_version_labels_for_unavailable_models``), except moving a label already set.
    """

    def __init__(self, config: model_server_config_pb2.ModelServerConfig, *,
                 poll_wait_seconds: float = 1.0, settle_seconds: float = 1.0,
                 max_examples: int = 10000, on_change: Callable[[], None] | None = None,
                 allow_unavailable_labels: bool = False, warmup_runner=None):
        if poll_wait_seconds < 0:
            raise ValueError(f"ModelManager: poll_wait_seconds must be >= 0; received {poll_wait_seconds}")
        if settle_seconds < 0:
            raise ValueError(f"ModelManager: settle_seconds must be >= 0; received {settle_seconds}")
        self._initial = config
        self.poll_wait_seconds = poll_wait_seconds
        self.settle_seconds = settle_seconds
        self.max_examples = max_examples
        self.warmup_runner = warmup_runner
        self._on_change = on_change
        self.allow_unavailable_labels = allow_unavailable_labels
        self._lock = threading.Lock()  # guards _models, _states, _config
        self._load_lock = threading.RLock()  # one discovery/load/unload pass at a time
        self._models: dict[str, _Model] = {}
        self._states: dict[str, dict[int, tuple[int, str, str]]] = {}
        self._config = model_server_config_pb2.ModelServerConfig()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> None:
        """Loads the initial config (blocking), then starts the poll thread.

        Raises:
          ServingError: the config is invalid or a base path does not exist. Versions that fail
            to load are reported through :meth:`model_status` instead.
        """
        self.reload_config(self._initial, fail_on_load_error=False)
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="tirec-model-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops polling and unloads every version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._load_lock:
            with self._lock:
                models, self._models = self._models, {}
            for m in models.values():
                self._unload(m, set(m.available))
        self._notify()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll_once()
            except Exception:  # never let the poll thread die
                log.exception("model poll failed")

    def poll_once(self) -> None:
        """One discovery pass over every model: load new versions, unload unwanted ones."""
        with self._load_lock:
            with self._lock:
                models = list(self._models.values())
            for m in models:
                if self._stop.is_set():
                    return
                self._poll_model(m)

    # -- discovery / load / unload --

    def _set_state(self, name: str, version: int, state: int, code: str = "OK", message: str = "") -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = (state, code, message)

    def _notify(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("on_change callback failed")

    def _poll_model(self, m: _Model, wait_for_settle: bool = False) -> None:
        """Brings ``m`` in line with its base path and policy. With ``wait_for_settle``, a model
        with nothing available yet waits (a little longer than ``settle_seconds``) for versions
        still being written."""
        deadline = time.monotonic() + self.settle_seconds + 2.0
        while True:
            deferred = self._poll_model_once(m)
            if (not (wait_for_settle and deferred) or m.available or time.monotonic() > deadline
                    or self._stop.is_set()):
                return
            time.sleep(min(0.1, self.settle_seconds))

    def _poll_model_once(self, m: _Model) -> bool:
        on_disk = _scan(m.base_path)
        which = m.policy.WhichOneof("policy_choice")
        limit = None
        if which in (None, "latest"):
            limit = m.policy.latest.num_versions if which == "latest" and m.policy.latest.num_versions > 0 else 1
        wanted_specific = set(m.policy.specific.versions) if which == "specific" else None
        candidates: list[int] = []
        deferred = False
        fingerprints: dict[int, tuple] = {}
        now_ns = time.time_ns()
        for v in sorted(on_disk, reverse=True):
            if limit is not None and len(candidates) >= limit:
                break
            if wanted_specific is not None and v not in wanted_specific:
                continue
            if v in m.available:
                candidates.append(v)
                continue
            path = on_disk[v]
            if saved_model_file(path) is None:
                deferred = True  # no saved_model.pb yet: being written
                continue
            fp = _fingerprint(path)
            newest = max((f[2] for f in fp), default=0)
            if (now_ns - newest) / 1e9 < self.settle_seconds:
                deferred = True  # modified just now: maybe half copied
                continue
            fingerprints[v] = fp
            if m.failed.get(v) == fp:
                continue  # failed before with these very files
            m.failed.pop(v, None)
            candidates.append(v)
        aspired = _aspired(m.policy, sorted(candidates))
        changed = False
        for v in sorted(aspired - set(m.available), reverse=True):
            if self._stop.is_set():
                break
            changed |= self._load(m, v, on_disk[v], fingerprints.get(v))
        keep = aspired & set(m.available)
        drop = set(m.available) - aspired
        if keep and drop:
            self._unload(m, drop)
            changed = True
        if changed:
            self._notify()
        return deferred

    def _load(self, m: _Model, version: int, path: str, fp: tuple | None = None) -> bool:
        fp = fp if fp is not None else _fingerprint(path)
        self._set_state(m.name, version, State.START)
        self._set_state(m.name, version, State.LOADING)
        log.info("loading %s version %d from %s", m.name, version, path)
        t0 = time.monotonic()
        try:
            servable = Servable.load(m.name, version, path)
            n = inference.run_warmup(servable, self.max_examples, self.warmup_runner)
        except Exception as e:  # a bad version must never take the server down
            err = e if isinstance(e, ServingError) else ServingError("UNKNOWN", f"{type(e).__name__}: {e}")
            log.error("failed to load %s version %d: %s", m.name, version, err)
            m.failed[version] = fp
            m.last_error = err
            self._set_state(m.name, version, State.END, err.code, err.message)
            return False
        with self._lock:
            m.available = {**m.available, version: servable}
            self._states.setdefault(m.name, {})[version] = (State.AVAILABLE, "OK", "")
        log.info("%s version %d available (%.2fs, %d warmup records)", m.name, version,
                 time.monotonic() - t0, n)
        return True

    def _unload(self, m: _Model, versions: set[int], keep_states: frozenset = frozenset()) -> None:
        """Drops ``versions`` of ``m``; ``keep_states`` are versions whose reported state now
        belongs to a replacement model of the same name."""
        if not versions:
            return
        recorded = sorted(set(versions) - set(keep_states))
        with self._lock:
            m.available = {v: s for v, s in m.available.items() if v not in versions}
            for v in recorded:
                self._states.setdefault(m.name, {})[v] = (State.UNLOADING, "OK", "")
        for v in recorded:
            self._set_state(m.name, v, State.END)
        log.info("unloaded %s versions %s", m.name, sorted(versions))
        gc.collect()

    # -- config --

    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        """A copy of the config being served."""
        with self._lock:
            out = model_server_config_pb2.ModelServerConfig()
            out.CopyFrom(self._config)
            return out

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig,
                      fail_on_load_error: bool = True) -> None:
        """Serves ``config`` from now on (ModelService.HandleReloadConfigRequest).

        Added models are loaded before this returns; removed models are unloaded; a model whose
        base path changed is loaded from the new path, then swapped in. Policy and label changes
        apply at once.

        Args:
          config: the new ModelServerConfig (an unset config changes nothing, as in TF Serving).
          fail_on_load_error: raise when an added model ends up with no available version
            because its versions failed to load.

        Raises:
          ServingError: INVALID_ARGUMENT / UNIMPLEMENTED for a bad config, NOT_FOUND for a
            missing base path and FAILED_PRECONDITION for a label on a version not available
            (nothing changed then); the load error of a new model.
        """
        if config.WhichOneof("config") is None:
            log.info("reload: empty ModelServerConfig, nothing to do")
            return
        entries = validate_config(config)
        for mc in entries:
            if not tf.io.gfile.isdir(mc.base_path):
                raise ServingError("NOT_FOUND", f"Could not find base path {mc.base_path} for servable "
                                                f"{mc.name}")
        self._check_labels(entries)
        with self._load_lock:
            with self._lock:
                old = dict(self._models)
            new: dict[str, _Model] = {}
            fresh: list[_Model] = []
            for mc in entries:
                cur = old.get(mc.name)
                if cur is not None and cur.base_path == mc.base_path:
                    cur.update(mc)
                    new[mc.name] = cur
                else:
                    m = _Model(mc)
                    new[mc.name] = m
                    fresh.append(m)
            for m in fresh:  # load before publishing: no request sees a model with nothing loaded
                self._poll_model(m, wait_for_settle=True)
            with self._lock:
                self._models = new
                self._config = model_server_config_pb2.ModelServerConfig()
                self._config.CopyFrom(config)
            for name, m in old.items():
                repl = new.get(name)
                if repl is not m:
                    log.info("model %s %s", name, "removed" if repl is None else "replaced")
                    self._unload(m, set(m.available), frozenset(repl.available) if repl else frozenset())
            for m in new.values():
                if m not in fresh:
                    self._poll_model(m)
        self._notify()
        if fail_on_load_error:
            for m in fresh:
                if not m.available and m.last_error is not None:
                    raise ServingError(m.last_error.code, f"model '{m.name}': no version could be loaded: "
                                                          f"{m.last_error.message}")
        for m in fresh:
            if not m.available:
                log.warning("No versions of servable %s found under base path %s yet", m.name, m.base_path)

    def _check_labels(self, entries: list) -> None:
        """TF Serving's rule: labels are assigned before the config's versions load, each to a
        version available now, unless ``allow_unavailable_labels`` (which still refuses moving
        a label already set to a version not available)."""
        with self._lock:
            models = dict(self._models)
        for mc in entries:
            cur = models.get(mc.name)
            available = set(cur.available) if cur is not None else set()
            for label, version in mc.version_labels.items():
                moved = cur is not None and cur.labels.get(label, version) != version
                if version in available or (self.allow_unavailable_labels and not moved):
                    continue
                raise ServingError(
                    "FAILED_PRECONDITION", f"Request to assign label to version {version} of model {mc.name}, "
                                           f"which is not currently available for inference (label '{label}'; "
                                           f"a server starting with labels needs "
                                           f"--allow_version_labels_for_unavailable_models)")

    # -- queries --

    def model_names(self) -> list[str]:
        """Names of the configured models."""
        with self._lock:
            return sorted(self._models)

    def available_versions(self, name: str) -> list[int]:
        """Versions of ``name`` currently served (ascending); empty for unknown models."""
        with self._lock:
            m = self._models.get(name)
            return sorted(m.available) if m else []

    def is_ready(self, name: str | None = None) -> bool:
        """True when ``name`` (or, without a name, every configured model) has a version available."""
        with self._lock:
            if name is not None:
                m = self._models.get(name)
                return bool(m and m.available)
            return all(m.available for m in self._models.values())

    def _label_version(self, m: _Model, label: str) -> int:
        if label not in m.labels:
            raise invalid(f"Unrecognized servable version label: {label} (model '{m.name}' has labels "
                          f"{sorted(m.labels)})")
        return m.labels[label]

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a model spec: a specific version, a labelled one, or the latest.

        Raises:
          ServingError: NOT_FOUND ``Servable not found for request: Latest(NAME)`` /
            ``Specific(NAME, V)``; INVALID_ARGUMENT for an empty name or an unknown label.
        """
        if not name:
            raise invalid("model_spec.name is empty; name the model to serve the request")
        with self._lock:
            m = self._models.get(name)
        if m is None:
            if version is not None:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        if label:
            version = self._label_version(m, label)
        available = m.available
        if version is None:
            if not available:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return available[max(available)]
        servable = available.get(version)
        if servable is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        return servable

    def resolve_spec(self, spec) -> Servable:
        """:meth:`resolve` for a ``tensorflow.serving.ModelSpec``."""
        return self.resolve(spec.name, **_version_choice(spec))

    def model_status(self, name: str, version: int | None = None, label: str | None = None
                     ) -> get_model_status_pb2.GetModelStatusResponse:
        """ModelService.GetModelStatus: the state of every version seen (newest first), or of one.

        Raises:
          ServingError: INVALID_ARGUMENT without a name, NOT_FOUND for an unknown model or version.
        """
        if not name:
            raise invalid("Missing model name in request.")
        if label:
            with self._lock:
                m = self._models.get(name)
            if m is None:
                raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
            version = self._label_version(m, label)
        with self._lock:
            states = dict(self._states.get(name, {}))
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(states, reverse=True):
            state, code, message = states[v]
            st = response.model_version_status.add()
            st.version = v
            st.state = state
            st.status.error_code = STATUS_CODES[code]
            st.status.error_message = message
        return response

    def model_status_spec(self, spec) -> get_model_status_pb2.GetModelStatusResponse:
        """:meth:`model_status` for a ``tensorflow.serving.ModelSpec``."""
        return self.model_status(spec.name, **_version_choice(spec))
