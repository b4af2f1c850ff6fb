"""Shared pytest setup: Keras 2 for TensorFlow, quiet logs; the ``gpu`` and ``slow`` markers; tiny
pipeline outputs generated once per test session (the pipeline's default train / valid / eval
split, the same logs without a valid split, and with GAP-Net's views; the planted-signal data)."""
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


# The longest files of `make test` (each about 9 minutes of one worker: a case per registered
# model), collected first: `pytest -n 2 --dist loadfile` hands out whole files in collection
# order, and a long file handed out last would leave the other worker idle until it ends.
LONGEST_FIRST = ("tests/serving/test_every_model_exports.py", "tests/models/test_learning.py")


def pytest_collection_modifyitems(config, items):
    """Collects :data:`LONGEST_FIRST` first; skips the ``gpu`` tests when TensorFlow sees no GPU."""
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONGEST_FIRST)  # stable
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu or os.environ.get("TIREC_GPU_TESTS_ON_CPU") == "1":
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):  # physical: does not start the runtime
        return
    skip = pytest.mark.skip(reason="no GPU visible to TensorFlow (run benchmarks/gpu_check.sh on a GPU machine)")
    for item in gpu:
        item.add_marker(skip)


def _tiny(tmp_path_factory, name: str, **split) -> str:
    from tirec.pipeline import job, synthetic
    from tirec.pipeline.config import PipelineConfig

    base = tmp_path_factory.mktemp(name)
    raw, out = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=40, seed=5), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=10, **split))
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """8 days of 40 users: eval = day 8, valid = day 7 (the pipeline's automatic split)."""
    return _tiny(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_data_no_valid(tmp_path_factory):
    """The same logs split into train and eval only (``pipeline.valid_days=0``)."""
    return _tiny(tmp_path_factory, "tiny_no_valid", split="days", valid_days=0)


@pytest.fixture(scope="session")
def tiny_views_data(tmp_path_factory):
    """The same logs written with GAP-Net's views (``pipeline.views``): rt of at most 4 clicks,
    lt of at most 20 behaviours."""
    return _tiny(tmp_path_factory, "tiny_views", views=True, realtime_len=4, long_seq_len=20)


@pytest.fixture(scope="session")
def planted_data(tmp_path_factory):
    """100 users, CTR 0.2: ~15.6k train and ~2k eval rows (~440 eval clicks), one-day eval: the
    synthetic generator's planted click signal, which a model that learns picks up in one pass."""
    from tirec.pipeline import job, synthetic
    from tirec.pipeline.config import PipelineConfig

    base = tmp_path_factory.mktemp("planted")
    raw, out = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=100, seed=11, target_ctr=0.2), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=10))
    return out
