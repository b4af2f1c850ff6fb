"""The batch scheduler on its own, with a fake servable: where batches run, what they merge, and
what callers get back."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tirec.serving.batching import Batcher, BatchingOptions
from tirec.serving.servable import ServingError


class FakeServable:
    """``call`` doubles ``x``; records the rows and thread of every call; can be held open."""

    name = "fake"

    def __init__(self):
        self.calls: list[tuple[int, int]] = []  # (rows, thread id)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def call(self, signature_name, arrays):
        x = arrays["x"]
        with self.lock:
            self.calls.append((x.shape[0], threading.get_ident()))
        self.entered.set()
        assert self.release.wait(30)
        if np.any(x < 0):
            raise ServingError("INVALID_ARGUMENT", f"negative x in rows {np.flatnonzero(x < 0).tolist()}")
        return {"y": x * 2.0}


def _batcher(**kw) -> Batcher:
    return Batcher(BatchingOptions(**{"max_batch_size": 64, "num_batch_threads": 1, **kw})).start()


def _in_threads(fn, args_list):
    results, threads = [None] * len(args_list), []

    def work(i, args):
        try:
            results[i] = fn(*args)
        except Exception as e:  # returned for the assertions
            results[i] = e

    for i, args in enumerate(args_list):
        threads.append(threading.Thread(target=work, args=(i, args)))
        threads[-1].start()
    return threads, results


def _wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.01)


def _queued(b: Batcher) -> int:
    return sum(len(q) for q in b._queues.values())


def _hold_the_slot(b: Batcher, sv: FakeServable, x: np.ndarray):
    """Starts a request whose batch stays running until ``sv.release`` is set."""
    sv.release.clear()
    threads, results = _in_threads(b.run, [(sv, "predict", {"x": x})])
    assert sv.entered.wait(10)
    return threads, results


def test_lone_request_runs_at_once_in_its_own_thread():
    sv, b = FakeServable(), _batcher()
    try:
        out = b.run(sv, "predict", {"x": np.arange(3.0)})
        np.testing.assert_array_equal(out["y"], [0.0, 2.0, 4.0])
        assert sv.calls == [(3, threading.get_ident())]
        assert b.stats()["batches"] == 1 and b.stats()["merged_batches"] == 0
    finally:
        b.stop()


def test_requests_queued_behind_a_running_batch_run_together_in_a_callers_thread():
    sv, b = FakeServable(), _batcher()
    try:
        first, first_result = _hold_the_slot(b, sv, np.array([1.0]))
        # The only batch slot is busy: these four queue up.
        waiting, results = _in_threads(b.run, [(sv, "predict", {"x": np.full(2, float(i))}) for i in range(4)])
        _wait_until(lambda: b.stats()["batched_requests"] >= 1 and _queued(b) >= 4, "requests did not queue")
        sv.release.set()
        for t in first + waiting:
            t.join(30)
        np.testing.assert_array_equal(first_result[0]["y"], [2.0])
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r["y"], [2.0 * i, 2.0 * i])
        assert [rows for rows, _ in sv.calls] == [1, 8]
        # The merged batch ran in one of the waiting callers' threads, not a scheduler thread.
        assert sv.calls[1][1] in {t.ident for t in waiting}
        assert b.stats()["merged_batches"] == 1 and b.stats()["max_batch_rows"] == 8
    finally:
        sv.release.set()
        b.stop()


def test_num_batch_threads_caps_the_batches_running_at_once():
    sv, b = FakeServable(), _batcher(num_batch_threads=2)
    try:
        sv.release.clear()
        threads, results = _in_threads(b.run, [(sv, "predict", {"x": np.array([float(i)])}) for i in range(2)])
        # Both run at once, each alone.
        _wait_until(lambda: len(sv.calls) >= 2, "the second batch did not start while the first ran")
        assert b._running == 2
        third, third_result = _in_threads(b.run, [(sv, "predict", {"x": np.array([5.0])})])
        time.sleep(0.2)
        assert len(sv.calls) == 2  # no third batch while two run
        sv.release.set()
        for t in threads + third:
            t.join(30)
        assert sorted(float(r["y"][0]) for r in results) == [0.0, 2.0]
        np.testing.assert_array_equal(third_result[0]["y"], [10.0])
        assert b._running == 0
    finally:
        sv.release.set()
        b.stop()


def test_timeout_lets_a_batch_fill_before_it_runs():
    sv, b = FakeServable(), _batcher(batch_timeout_micros=300_000, max_batch_size=6)
    try:
        threads, results = _in_threads(b.run, [(sv, "predict", {"x": np.full(2, float(i))}) for i in range(3)])
        for t in threads:
            t.join(30)
        assert [rows for rows, _ in sv.calls] == [6]  # full at 6 rows: ran without waiting out the timeout
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r["y"], [2.0 * i, 2.0 * i])
    finally:
        b.stop()


def test_failed_merged_batch_gives_each_caller_its_own_result_or_error():
    sv, b = FakeServable(), _batcher()
    try:
        first, _ = _hold_the_slot(b, sv, np.array([1.0]))
        inputs = [np.array([1.0, 2.0]), np.array([-1.0]), np.array([3.0])]
        waiting, results = _in_threads(b.run, [(sv, "predict", {"x": x}) for x in inputs])
        _wait_until(lambda: _queued(b) >= 3, "requests did not queue")
        sv.release.set()
        for t in first + waiting:
            t.join(30)
        np.testing.assert_array_equal(results[0]["y"], [2.0, 4.0])
        assert isinstance(results[1], ServingError) and results[1].code == "INVALID_ARGUMENT"
        assert "negative x" in results[1].message
        np.testing.assert_array_equal(results[2]["y"], [6.0])
        assert b.stats()["split_retries"] == 1
    finally:
        sv.release.set()
        b.stop()


def test_stop_fails_queued_requests_and_waits_for_the_running_batch():
    sv, b = FakeServable(), _batcher()
    first, first_result = _hold_the_slot(b, sv, np.array([1.0]))
    queued, queued_result = _in_threads(b.run, [(sv, "predict", {"x": np.array([2.0])})])
    _wait_until(lambda: _queued(b) >= 1, "the request did not queue")
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    queued[0].join(10)
    assert isinstance(queued_result[0], ServingError) and queued_result[0].code == "UNAVAILABLE"
    assert stopper.is_alive()  # still waiting for the running batch
    sv.release.set()
    stopper.join(10)
    first[0].join(10)
    np.testing.assert_array_equal(first_result[0]["y"], [2.0])
    # After stop, requests run directly (not batched).
    assert b.run(sv, "predict", {"x": np.array([4.0])})["y"][0] == 8.0
    assert b.stats()["direct_requests"] == 1


def test_queue_limit_gives_unavailable():
    sv, b = FakeServable(), _batcher(max_batch_size=2, max_enqueued_batches=1)
    try:
        first, _ = _hold_the_slot(b, sv, np.array([1.0]))
        queued, _ = _in_threads(b.run, [(sv, "predict", {"x": np.array([1.0, 2.0])})])
        _wait_until(lambda: _queued(b) >= 1, "the request did not queue")
        with pytest.raises(ServingError, match="queue .* is full") as info:
            b.run(sv, "predict", {"x": np.array([3.0])})
        assert info.value.code == "UNAVAILABLE"
        sv.release.set()
        for t in first + queued:
            t.join(30)
    finally:
        sv.release.set()
        b.stop()
