"""Shared pytest setup: Keras 2 for TensorFlow, quiet logs, and small shared fixtures."""
import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_views(src: str, dst: str, rt_len: int = 4, lt_len: int = 20) -> str:
    """A copy of the pipeline output ``src`` at ``dst`` whose records also carry GAP-Net's
    real-time (``rt_*``, ``rt_len``) and long-term (``lt_*``, ``lt_len``) views, written by hand
    (not by the pipeline): rt = the first ``rt_len`` positions of ``hist``, lt = ``hist`` twice
    over, cut to ``lt_len``; the same item fields and tables as ``hist_*``, ``ts`` 0 = padding."""
    import dataclasses
    import glob
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
def add_views():
    """``add_views(src, dst, rt_len=4, lt_len=20)``: a copy of a pipeline output whose records
    carry GAP-Net's rt and lt views, written by hand (:func:`_add_views`)."""
    return _add_views
