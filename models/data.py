"""tf.data input from the pipeline's TFRecord shards, parsed with the FeatureSpec.

``make_dataset`` lists ``DATA/<split>/*.tfrecord.gz``, reads the shards with a parallel
interleave, shuffles, batches, parses whole batches with ``tf.io.parse_example`` and prefetches.
Elements are ``(features, targets)``: ``features`` holds the model inputs (role ``feature``)
and the intent group's columns (DAIAN's stage 2 feeds the label-free ``prior_intent`` from
them), ``targets`` holds ``ctr`` (the label, float32 ``[B, 1]``), ``intent`` (the request's
intent distribution: the intent group's ``dist`` column) and, on records that have it,
``intent_category`` (the request's clicks in the trigger's category, ``intent_cate_clicks``);
:func:`targets` builds them. The models never read a target as an input.
"""
from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow as tf

from tirec.features.config_io import is_count
from tirec.features.jsonio import read_json
from tirec.features.spec import CATEGORY_CLICKS, FeatureSpec

SPEC_FILE = "spec.json"


def load_data_spec(data_dir: str) -> FeatureSpec:
    """The FeatureSpec the pipeline wrote next to the records."""
    path = os.path.join(data_dir, SPEC_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: --data must be a `tirec pipeline` output folder")
    with tf.io.gfile.GFile(path) as fh:
        return FeatureSpec.from_json(fh.read())


def check_data(data_dir: str) -> tuple[FeatureSpec, bool]:
    """Checks a pipeline output folder before anything is built; returns its FeatureSpec and
    whether it has a ``valid`` split.

    ``train/`` and ``eval/`` must hold records. ``valid/`` (the pipeline's validation window
    before eval) is optional: absent when the pipeline wrote none (switched off, or data from
    before it existed), but when present, or when ``stats.json`` counts valid records, it must
    hold records too. Reads no TensorFlow graph or device, so it can run before
    ``tf.distribute`` configures logical devices.

    Raises:
      FileNotFoundError / ValueError: one line naming the folder and what is wrong.
    """
    if not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(f"--data {data_dir}: no such directory (expected a `tirec pipeline` "
                                f"output folder: spec.json, train/, eval/)")
    spec = load_data_spec(data_dir)
    stats = os.path.join(data_dir, "stats.json")
    written = {}
    if tf.io.gfile.exists(stats):
        written = read_json(stats).get("written", {})
    for split in ("train", "eval"):
        check_split(data_dir, split)
    has_valid = tf.io.gfile.isdir(os.path.join(data_dir, "valid"))
    if not has_valid and int(written.get("valid", 0)) > 0:
        raise FileNotFoundError(f"{os.path.join(data_dir, 'valid')}/ is missing, but {stats} counts "
                                f"{written['valid']} valid records")
    if has_valid:
        check_split(data_dir, "valid")
    return spec, has_valid


def check_split(data_dir: str, split: str) -> None:
    """Raises, in one line naming the folder, unless ``data_dir/split/`` holds records."""
    path = os.path.join(data_dir, split)
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"{path}/ is missing: --data must be a `tirec pipeline` output folder "
                                f"(spec.json, train/, eval/)")
    files = sorted(tf.io.gfile.glob(os.path.join(path, "*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(f"{path}/ holds no *.tfrecord.gz shards")
    if not any(_has_records(f) for f in files):
        raise ValueError(f"{path}/ has no records ({len(files)} empty shard(s)): the pipeline wrote "
                         f"no {split} rows; check its stats.json (dropped rows, dead letters)")


def _has_records(path: str) -> bool:
    """Whether a GZIP TFRecord shard holds at least one record (reads only its first byte)."""
    with tf.io.gfile.GFile(path, "rb") as raw:
        if raw.size() == 0:
            return False
        with gzip.GzipFile(fileobj=raw) as fh:
            return bool(fh.read(1))


def shard_files(data_dir: str, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(os.path.join(data_dir, split, "*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(f"no {split} shards ({data_dir}/{split}/*.tfrecord.gz)")
    return files


def make_dataset(data_dir: str, split: str, spec: FeatureSpec, batch_size: int, *,
                 shuffle_buffer: int = 0, shuffle_block: int = 1, seed: int = 0, repeat: bool = False,
                 drop_remainder: bool = False, input_context: tf.distribute.InputContext | None = None,
                 workers: int = 1, extra_columns: tuple[str, ...] = ()) -> tf.data.Dataset:
    """Batched ``(features, targets)`` dataset of one split.

    Args:
      data_dir: the pipeline output folder.
      split: ``train``, ``valid`` or ``eval``.
      spec: the FeatureSpec to parse with.
      batch_size: batch size (per replica when ``input_context`` is given).
      shuffle_buffer: records to shuffle (0 = keep the file order, deterministic).
      shuffle_block: with shuffling, runs of this many consecutive records of a shard move as
        one unit (1 = every record on its own). The pipeline writes the candidates of a
        request next to each other, so blocks keep most of a request's samples in one batch,
        which is what ``model.request_dedup`` saves on.
      seed: shuffle seed.
      repeat: repeat forever (ParameterServerStrategy needs it).
      drop_remainder: drop the last partial batch.
      input_context: from ``distribute_datasets_from_function``; shards files per input pipeline.
      workers: workers that will auto-shard this dataset (multi-worker training): with fewer
        files than workers it is sharded by record instead of by file.
      extra_columns: further columns of any role to parse into ``features`` (e.g. the meta
        column ``request_id``, which evaluation under noise keys its draws on).
    """
    files = shard_files(data_dir, split)
    ds = tf.data.Dataset.from_tensor_slices(files)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    # Shard by file when every input pipeline gets at least one file, else by record (an
    # input pipeline without files would make a repeated dataset loop forever).
    by_file = pipelines > 1 and len(files) >= pipelines
    if by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    if not is_count(shuffle_block):
        raise ValueError(f"make_dataset: shuffle_block must be an integer >= 1; received {shuffle_block!r}")
    block = shuffle_block if shuffle_buffer else 1
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed)

    def read(path):
        records = tf.data.TFRecordDataset(path, compression_type="GZIP")
        return records.batch(block) if block > 1 else records  # a block: consecutive records

    ds = ds.interleave(read, cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=not shuffle_buffer)
    if pipelines > 1 and not by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    if shuffle_buffer:
        ds = ds.shuffle(max(1, shuffle_buffer // block), seed=seed)
        if block > 1:
            ds = ds.unbatch()
    if repeat:
        ds = ds.repeat()
    parse = spec.parse_example_spec(roles=("label", "feature", "intent"))
    # Every model input, whatever its role: the request time (``impression_ts``, role meta) is
    # one that a served request carries.
    inputs = {f.name for f in spec.select(model_input=True)}
    parse.update({k: v for k, v in spec.parse_example_spec().items() if k in inputs})
    parse.update({k: v for k, v in spec.parse_example_spec().items() if k in extra_columns})

    def split_targets(batch):
        batch = tf.io.parse_example(batch, parse)
        return batch, targets(batch, spec, pop_label=True)

    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(split_targets, num_parallel_calls=tf.data.AUTOTUNE)
    if workers > 1 and len(files) < workers:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def targets(columns: dict, spec: FeatureSpec, pop_label: bool = False) -> dict:
    """The training targets of parsed record columns: ``ctr`` (the label, float32 ``[B, 1]``),
    ``intent`` (the intent group's ``dist`` column) and, when the spec has it,
    ``intent_category`` (``intent_cate_clicks``, int64 ``[B, 1]``). ``pop_label`` removes the
    label from ``columns``."""
    label = columns.pop(spec.label) if pop_label else columns[spec.label]
    y = {"ctr": tf.reshape(tf.cast(label, tf.float32), [-1, 1]),
         "intent": columns[spec.select(group="intent", field="dist")[0].name]}
    if CATEGORY_CLICKS in spec.names:
        y["intent_category"] = tf.reshape(tf.cast(columns[CATEGORY_CLICKS], tf.int64), [-1, 1])
    return y


def read_columns(data_dir: str, split: str, spec: FeatureSpec, names: list[str],
                 batch_size: int = 65536) -> dict[str, np.ndarray]:
    """Whole columns of a split as numpy arrays (for exact offline metrics)."""
    parse = {k: v for k, v in spec.parse_example_spec().items() if k in names}
    ds = tf.data.TFRecordDataset(shard_files(data_dir, split), compression_type="GZIP")
    ds = ds.batch(batch_size).map(lambda b: tf.io.parse_example(b, parse))
    out: dict[str, list] = {k: [] for k in names}
    for batch in ds.as_numpy_iterator():
        for k in names:
            out[k].append(batch[k])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def load_item_vectors(data_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The pipeline's multimodal item table: (ids int64 [N], vectors float32 [N, d], meta)."""
    base = os.path.join(data_dir, "item_embeddings")
    with tf.io.gfile.GFile(os.path.join(base, "ids.npy"), "rb") as fh:
        ids = np.load(fh)
    with tf.io.gfile.GFile(os.path.join(base, "vectors.npy"), "rb") as fh:
        vectors = np.load(fh).astype(np.float32)
    meta = {}
    if tf.io.gfile.exists(os.path.join(base, "meta.json")):
        meta = read_json(os.path.join(base, "meta.json"))
    return ids.astype(np.int64), vectors, meta
