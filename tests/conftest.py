"""Shared pytest setup: Keras 2 for TensorFlow, quiet logs; the ``gpu`` marker."""
import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: over a minute on 2 cores; `make test` leaves them out, `make test-slow` (and CI, "
        ".ci/run) runs them")
    config.addinivalue_line(
        "markers", "gpu: needs a GPU visible to TensorFlow (benchmarks/gpu_check.sh runs them); skipped "
        "without one, unless TIREC_GPU_TESTS_ON_CPU=1 runs them on one CPU replica")


def pytest_collection_modifyitems(config, items):
    """Skips the ``gpu`` tests when TensorFlow sees no GPU."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu or os.environ.get("TIREC_GPU_TESTS_ON_CPU") == "1":
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):  # physical: does not start the runtime
        return
    skip = pytest.mark.skip(reason="no GPU visible to TensorFlow (run benchmarks/gpu_check.sh on a GPU machine)")
    for item in gpu:
        item.add_marker(skip)
