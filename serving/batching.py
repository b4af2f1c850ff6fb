"""Server-side batching of concurrent requests, like TF Serving's ``--enable_batching``: Predict,
Classify, Regress, a one-task MultiInference and the warmup records (the calls that fetch exactly
one signature's outputs, which TF Serving's batching session batches; other calls run directly).

Requests to the same (model version, signature, input names, dtypes and per-row shapes) wait in
one queue. A batch takes up to ``max_batch_size`` rows from a queue once it holds that many or
its oldest request has waited ``batch_timeout_micros``, concatenates the inputs along axis 0
(padding up to the next of ``allowed_batch_sizes`` by repeating the first row, when set), runs
the signature once and hands each caller its own rows of every output. At most
``num_batch_threads`` batches run at once, each in the thread of one of its waiting callers
(see :class:`Batcher`).

Each request is validated before it joins a queue, so a merged batch only holds well-formed
requests. If a merged batch still fails (say one serialized tf.Example does not parse), its
requests are re-run one by one, so every caller gets its own result or its own error.

As in TF Serving, every signature is batched: a request with a scalar input, or whose inputs
differ in their first dimension (``rank`` with one context row for several candidates), is
INVALID_ARGUMENT, and so is a request of more than ``max_batch_size`` rows.

Parameters come from flags or from a ``--batching-parameters-file`` holding a
``tensorflow.serving.BatchingParameters`` text proto, the same file TF Serving reads::

    max_batch_size { value: 64 }
    batch_timeout_micros { value: 2000 }
    num_batch_threads { value: 4 }
    max_enqueued_batches { value: 100 }
    allowed_batch_sizes: 16
    allowed_batch_sizes: 64
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from typing import Mapping

import numpy as np

from tirec.serving.servable import Servable, ServingError, invalid

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Batch scheduler settings (TF Serving's ``BatchingParameters``; defaults are TF Serving's).

    Args:
      max_batch_size: most rows in one batch.
      batch_timeout_micros: longest a request waits for others before its batch runs.
      num_batch_threads: most batches running at once (TF Serving's batch threads).
      max_enqueued_batches: queue capacity per key, in batches; a request beyond it gets
        UNAVAILABLE.
      allowed_batch_sizes: if set, batches are padded up to the next of these sizes (increasing,
        the last equal to ``max_batch_size``).
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"batching: {name} must be an integer >= 1; received {name}={value!r}")
        if not isinstance(self.batch_timeout_micros, int) or self.batch_timeout_micros < 0:
            raise ValueError(f"batching: batch_timeout_micros must be an integer >= 0; received "
                             f"batch_timeout_micros={self.batch_timeout_micros!r}")
        sizes = tuple(self.allowed_batch_sizes)
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError(f"batching: allowed_batch_sizes must be positive and increasing; "
                                 f"received allowed_batch_sizes={list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"batching: the last allowed_batch_sizes entry must equal max_batch_size="
                                 f"{self.max_batch_size}; received allowed_batch_sizes={list(sizes)}")

    @classmethod
    def from_text_proto(cls, text: str, source: str = "<batching parameters>", **overrides) -> "BatchingOptions":
        """Options from a BatchingParameters text proto; ``overrides`` (not None) win.

        Raises:
          ValueError: naming ``source`` when the text does not parse or a value is invalid.
        """
        from google.protobuf import text_format

        from tirec.serving.tf_serving_config import BatchingParameters

        params = BatchingParameters()
        try:
            text_format.Parse(text, params)
        except text_format.ParseError as e:
            raise ValueError(f"{source}: not a BatchingParameters text proto: {e}") from None
        values = {}
        for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
            if params.HasField(name):
                values[name] = int(getattr(params, name).value)
        if params.allowed_batch_sizes:
            values["allowed_batch_sizes"] = tuple(int(v) for v in params.allowed_batch_sizes)
        if params.pad_variable_length_inputs:
            log.warning("%s: pad_variable_length_inputs is not supported; requests with different "
                        "per-row shapes are batched separately instead", source)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str, **overrides) -> "BatchingOptions":
        """Options from a ``--batching-parameters-file``; ``overrides`` (not None) win."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise ValueError(f"--batching-parameters-file {path}: {e.strerror}") from None
        return cls.from_text_proto(text, f"--batching-parameters-file {path}", **overrides)


class _Task:
    __slots__ = ("servable", "signature", "arrays", "rows", "enqueued", "finished", "result", "error")

    def __init__(self, servable, signature, arrays, rows):
        self.servable = servable
        self.signature = signature
        self.arrays = arrays
        self.rows = rows
        self.enqueued = time.monotonic()
        self.finished = False  # set, with result or error, before the condition is notified
        self.result = None
        self.error = None


def batch_rows(arrays: Mapping[str, np.ndarray]) -> int | None:
    """The common batch dimension of ``arrays``; None when they have none (scalars, mismatch)."""
    rows = None
    for arr in arrays.values():
        if arr.ndim == 0:
            return None
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            return None
    return rows


def _unbatchable(arrays: Mapping[str, np.ndarray]) -> ServingError:
    """TF Serving's batching-session error for inputs without a common first dimension."""
    shapes = {k: list(a.shape) for k, a in sorted(arrays.items())}
    if any(a.ndim == 0 for a in arrays.values()):
        return invalid(f"Batching session Run() input tensors must have at least one dimension "
                       f"(input shapes {shapes})")
    return invalid(f"Batching session Run() input tensors must have equal 0th-dimension size (input "
                   f"shapes {shapes}; with batching on, send `rank` one context row per candidate: the example, "
                   f"then empty strings)")


class Batcher:
    """Shared batch scheduler; :meth:`run` has the same contract as ``Servable.call``.

    Batches run in the threads of the waiting requests themselves, not in a pool of batch
    threads: while a request waits, and fewer than ``num_batch_threads`` batches are running, its
    thread takes the oldest ready queue (one holding ``max_batch_size`` rows, or whose oldest
    request has waited ``batch_timeout_micros``), runs that batch and hands every caller in it
    its rows. A request that finds the server idle (with the default timeout of 0) therefore
    runs at once in its own thread, paying no hand-off between threads; requests that arrive
    while ``num_batch_threads`` batches are running queue up and run together in the next batch.

    Args:
      options: the batching parameters.
    """

    def __init__(self, options: BatchingOptions):
        self.options = options
        self._cond = threading.Condition()
        self._queues: dict[tuple, collections.deque] = {}
        self._queued_rows: dict[tuple, int] = {}
        self._running = 0  # batches being executed
        self._started = False
        self._stopping = False
        self._stats_lock = threading.Lock()
        self._stats = {"batches": 0, "batched_requests": 0, "merged_batches": 0, "max_batch_rows": 0,
                       "padded_rows": 0, "direct_requests": 0, "split_retries": 0}

    def start(self) -> "Batcher":
        """Starts accepting requests into batches (before this, :meth:`run` calls directly)."""
        with self._cond:
            self._started, self._stopping = True, False
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stops batching: requests still queued get UNAVAILABLE; waits up to ``timeout`` seconds
        for the batches already running to finish."""
        with self._cond:
            self._stopping = True
            pending = [t for q in self._queues.values() for t in q]
            self._queues.clear()
            self._queued_rows.clear()
            for task in pending:
                task.error = ServingError("UNAVAILABLE", "server is shutting down")
                task.finished = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._running == 0, timeout)
            self._started = False

    def stats(self) -> dict:
        """Counters: batches run, requests batched, batches that merged several requests, largest
        batch (rows), padding rows added, requests run directly, merged batches re-run singly."""
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, **deltas) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                if k == "max_batch_rows":
                    self._stats[k] = max(self._stats[k], v)
                else:
                    self._stats[k] += v

    def run(self, servable: Servable, signature_name: str, arrays: Mapping[str, np.ndarray]) -> dict:
        """Runs the request in a batch with concurrent compatible ones; returns its outputs.

        Raises:
          ServingError: the request's own error; UNAVAILABLE when its queue is full or the
            batcher is stopping.
        """
        rows = batch_rows(arrays)
        if rows is None and arrays:
            raise _unbatchable(arrays)
        if rows is not None and rows > self.options.max_batch_size:
            raise invalid(f"Task size {rows} is larger than maximum input batch size "
                          f"{self.options.max_batch_size}")
        if rows is None or rows == 0 or not self._started:
            self._count(direct_requests=1)
            return servable.call(signature_name, arrays)
        key = (servable, signature_name,
               tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in arrays.items())))
        task = _Task(servable, signature_name, dict(arrays), rows)
        with self._cond:
            if self._stopping:
                raise ServingError("UNAVAILABLE", "server is shutting down")
            queued = self._queued_rows.get(key, 0)
            if queued + rows > self.options.max_enqueued_batches * self.options.max_batch_size:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted "
                                                  f"is full ({queued} rows queued for model '{servable.name}' "
                                                  f"signature '{signature_name}')")
            self._queues.setdefault(key, collections.deque()).append(task)
            self._queued_rows[key] = queued + rows
        while True:
            with self._cond:
                batch = self._next_batch(task)
            if batch is None:
                break
            try:
                self._execute(batch)
            except Exception as e:  # never lose a waiting caller
                log.exception("batch failed")
                for t in batch:
                    if not t.finished:
                        t.error = ServingError("INTERNAL", f"batch failed: {type(e).__name__}: {e}")
                        t.finished = True
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
        if task.error is not None:
            raise task.error
        return task.result

    # -- scheduler --

    def _pick(self, now: float):
        timeout = self.options.batch_timeout_micros / 1e6
        best, best_age, wait = None, -1.0, None
        for key, q in self._queues.items():
            age = now - q[0].enqueued
            if self._queued_rows[key] >= self.options.max_batch_size or age >= timeout:
                if age > best_age:
                    best, best_age = key, age
            else:
                left = timeout - age
                wait = left if wait is None else min(wait, left)
        return best, wait

    def _take(self, key) -> list[_Task]:
        q = self._queues[key]
        tasks, rows = [q.popleft()], 0
        rows = tasks[0].rows
        while q and rows + q[0].rows <= self.options.max_batch_size:
            task = q.popleft()
            tasks.append(task)
            rows += task.rows
        self._queued_rows[key] -= rows
        if not q:
            del self._queues[key]
            del self._queued_rows[key]
        return tasks

    def _next_batch(self, task: _Task) -> list[_Task] | None:
        """Called with the lock held by ``task``'s thread: waits until ``task`` is finished (then
        returns None) or this thread may run a ready batch (returned, and counted as running)."""
        while not task.finished:
            wait = None
            if self._running < self.options.num_batch_threads:
                key, wait = self._pick(time.monotonic())
                if key is not None:
                    self._running += 1
                    return self._take(key)
            self._cond.wait(wait)
        return None

    def _padded_size(self, rows: int) -> int:
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _run_alone(self, task: _Task) -> None:
        try:
            task.result = task.servable.call(task.signature, task.arrays)
        except Exception as e:
            task.error = e if isinstance(e, ServingError) else ServingError("INTERNAL", f"{type(e).__name__}: {e}")
        task.finished = True

    def _execute(self, tasks: list[_Task]) -> None:
        total = sum(t.rows for t in tasks)
        target = self._padded_size(total)
        self._count(batches=1, batched_requests=len(tasks), merged_batches=int(len(tasks) > 1),
                    max_batch_rows=total, padded_rows=target - total)
        first = tasks[0]
        if len(tasks) == 1 and target == total:
            self._run_alone(first)
            return
        merged = {}
        for k in first.arrays:
            parts = [t.arrays[k] for t in tasks]
            if target > total:
                pad = np.repeat(parts[0][:1], target - total, axis=0)
                parts.append(pad)
            merged[k] = np.concatenate(parts, axis=0)
        try:
            outputs = first.servable.call(first.signature, merged)
            if any(v.ndim == 0 or v.shape[0] != target for v in outputs.values()):
                raise ValueError("an output has no batch dimension matching the inputs")
        except Exception as e:
            if len(tasks) == 1:
                self._run_alone(first)
                return
            log.debug("merged batch of %d requests failed (%s); running them one by one", len(tasks), e)
            self._count(split_retries=1)
            for task in tasks:
                self._run_alone(task)
            return
        start = 0
        for task in tasks:
            end = start + task.rows
            task.result = {k: v[start:end] for k, v in outputs.items()}
            task.finished = True
            start = end
