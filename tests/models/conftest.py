"""Tiny pipeline outputs shared by the model tests (generated once per test session): the
pipeline's default train / valid / eval split, and the same data without a valid split."""
import pytest

from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig


def _tiny(tmp_path_factory, name: str, **split) -> str:
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
