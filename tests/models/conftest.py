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


def add_views(src: str, dst: str, rt_len: int = 4, lt_len: int = 20) -> str:
    """A copy of the pipeline output ``src`` at ``dst`` whose records also carry GAP-Net's
    real-time (``rt_*``, ``rt_len``) and long-term (``lt_*``, ``lt_len``) views, written by hand
    (not by the pipeline): rt = the first ``rt_len`` positions of ``hist``, lt = ``hist`` twice
    over, cut to ``lt_len``; the same item fields and tables as ``hist_*``, ``ts`` 0 = padding."""
    import dataclasses
    import glob
    import os
    import shutil

    import numpy as np
    import tensorflow as tf

    from tirec.features.spec import Feature, FeatureSpec

    shutil.copytree(src, dst)
    spec = FeatureSpec.load(os.path.join(src, "spec.json"))
    fields = [f for f in spec.select(group="history", history="hist", model_input=True)
              if f.kind == "sequence" and f.field in {"ts"} | {g.field for g in spec.select(group="target")}]
    views = {"rt": rt_len, "lt": lt_len}
    extra = tuple(Feature(f"{v}_{f.name[len('hist_'):]}", f.dtype, "sequence", n, f.table, group="history",
                          scope="request", field=f.field, history=v, model_input=True)
                  for v, n in views.items() for f in fields)
    dataclasses.replace(spec, features=spec.features + extra).save(os.path.join(dst, "spec.json"))

    def view(values, n, name):
        values = np.asarray(values)
        return values[:n] if name == "rt" else np.concatenate([values, values])[:n]

    for path in glob.glob(os.path.join(dst, "*", "*.tfrecord.gz")):
        records = [tf.train.Example.FromString(r.numpy())
                   for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        with tf.io.TFRecordWriter(path, options="GZIP") as out:
            for ex in records:
                feats = ex.features.feature
                for v, n in views.items():
                    for f in fields:
                        vals = view(feats[f.name].int64_list.value, n, v)
                        feats[f"{v}_{f.name[len('hist_'):]}"].int64_list.value.extend(vals.tolist())
                out.write(ex.SerializeToString())
    return dst


@pytest.fixture(scope="session")
def tiny_views_data(tiny_data, tmp_path_factory):
    """``tiny_data`` with the rt (4) and lt (20) views added by hand (:func:`add_views`)."""
    return add_views(tiny_data, str(tmp_path_factory.mktemp("tiny_views") / "tfr"))
