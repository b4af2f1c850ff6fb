"""A tiny pipeline output shared by the model tests (generated once per test session), and a
copy of it with a ``valid`` split."""
import json
import os
import shutil

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


def with_valid_split(data: str, out: str, fraction: float = 0.2) -> str:
    """Copies pipeline output ``data`` to ``out`` and moves the last ``fraction`` of each train
    shard's records into ``out/valid/`` (the pipeline's layout: ``valid/`` next to ``train/``)."""
    import tensorflow as tf

    shutil.copytree(data, out)
    os.makedirs(os.path.join(out, "valid"))
    written = {"train": 0, "valid": 0}
    for path in sorted(tf.io.gfile.glob(os.path.join(out, "train", "*.tfrecord.gz"))):
        records = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        keep = len(records) - max(1, int(len(records) * fraction))
        written["train"] += keep
        written["valid"] += len(records) - keep
        for target, rows in ((path, records[:keep]),
                             (os.path.join(out, "valid", os.path.basename(path)), records[keep:])):
            with tf.io.TFRecordWriter(target, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
                for r in rows:
                    w.write(r)
    stats_path = os.path.join(out, "stats.json")
    with open(stats_path) as fh:
        stats = json.load(fh)
    stats["written"].update(written)
    with open(stats_path, "w") as fh:
        json.dump(stats, fh)
    return out


@pytest.fixture(scope="session")
def tiny_data_valid(tiny_data, tmp_path_factory):
    """``tiny_data`` with the last 20 % of its train records as a ``valid`` split."""
    return with_valid_split(tiny_data, str(tmp_path_factory.mktemp("tiny_valid") / "tfr"))
