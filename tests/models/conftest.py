"""A tiny pipeline output shared by the model tests (generated once per test session)."""
import pytest

from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig

@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    raw, out = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=40, seed=5), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=10))
    return out
