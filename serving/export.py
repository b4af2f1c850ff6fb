"""SavedModel export of a trained run, in the layout TF Serving loads.

    tirec export --run RUN --out BASE --model-name NAME [--version V] [--data T] [--checkpoint last|best]

writes ``BASE/NAME/<V>/`` (``V`` an integer, by default one more than the newest version
there) with these signatures, all returning float32:

=================== ============================ =====================================================
signature           inputs                       outputs
=================== ============================ =====================================================
``serving_default`` ``examples``: string ``[B]`` ``ctr`` ``[B, 1]`` click probability; ``intent``
                    serialized ``tf.Example``     ``[B, k]`` predicted intent distribution (DAIAN)
``predict``         one typed tensor per model    same as ``serving_default``
                    input (``[B]`` or ``[B, L]``)
``classify``        ``inputs``: serialized        ``scores`` ``[B, 2]`` (no click, click), ``classes``
                    ``tf.Example``                ``[B, 2]`` (``"0"``, ``"1"``); method ``classify``
``regress``         ``inputs``: serialized        ``outputs`` ``[B]`` click probability; method
                    ``tf.Example``                ``regress``
``rank``            ``context``: string ``[N]``   ``ctr`` ``[N, 1]``, ``intent`` ``[N, k]``: one row per
                    (or ``[1]``); ``candidates``: candidate
                    string ``[N]``
=================== ============================ =====================================================

``rank`` is the compact form of a TIR request: ``context`` is one serialized ``tf.Example`` with
everything the candidates share (the spec's request-scoped model inputs: user, context, trigger,
history), ``candidates`` one small ``tf.Example`` per candidate with its candidate-scoped inputs
(the target's); the graph repeats the context for every candidate. ``context`` has one row per
candidate: the example, then empty strings, each repeating the row above (the *filled* form,
what :func:`tirec.serving.client.rank_inputs` sends; a row may also hold the example again), or
just the example. The filled form's
inputs share their first dimension, which TF Serving's ``--enable_batching`` requires of every
signature, and requests merged into one batch keep their own contexts; the one-row form works
only without batching. For 200 candidates with a 50-behaviour history the request is about 15x
smaller than 200 full examples (23,714 vs 357,833 bytes on the demo data, of which the 199
empty strings are 399: ``python benchmarks/rank_bytes.py DATA``), and the graph parses each
context once. A context row count other
than 1 or N, or an empty first row, is INVALID_ARGUMENT. (TF Serving's
``enable_large_batch_splitting`` would split a request between rows; with it, send a full
example in every context row.)

``tf.Example`` inputs are parsed with the run's FeatureSpec (model inputs only: label and
pipeline-only columns may be present and are ignored, so the pipeline's own records can be sent
as they are). Raw ids are hashed inside the graph; the multimodal item table is a variable of the
model, so the export is self-contained and reloads with plain ``tf.saved_model.load``.

The weights are the run's final ones (``--checkpoint last``, default) or its best checkpoint
(``--checkpoint best``: the final stage's epoch with the best AUC on the ``valid`` split, which
the run has only when its data had one).

Also written: ``assets/spec.json`` and ``assets/config.json`` (the FeatureSpec and resolved
config plus ``checkpoint``, the exported weights: ``last``, or ``best`` with its epoch record;
tracked SavedModel assets) and ``assets.extra/tf_serving_warmup_requests``
(``PredictionLog`` records built from the first eval rows of the run's data), which TF Serving
replays before it marks the version available.

A version is written to a hidden temporary folder and renamed into place, so a server polling
the base path never sees a half-written version.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid

import tensorflow as tf

from tirec.features.jsonio import write_json
from tirec.features.spec import FeatureSpec
from tirec.models.base import model_input_names
from tirec.models.data import shard_files
from tirec.models.train import best_record, check_run_data, load_run
from tirec.serving.inference import WARMUP_FILE
from tirec.serving.servable import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD  # noqa: F401

log = logging.getLogger(__name__)

_TF_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}


def input_signature(spec: FeatureSpec) -> dict[str, tf.TensorSpec]:
    """The raw-tensor inputs of the ``predict`` signature: one per model input feature."""
    out = {}
    for name in model_input_names(spec):
        f = spec.feature(name)
        shape = [None] if f.kind == "scalar" else [None, f.length]
        out[name] = tf.TensorSpec(shape, _TF_DTYPES[f.dtype], name=name)
    return out


def model_parse_spec(spec: FeatureSpec) -> dict:
    """``tf.io.parse_example`` features of the model inputs (no label, no pipeline-only columns)."""
    names = set(model_input_names(spec))
    return {k: v for k, v in spec.parse_example_spec(include_label=False).items() if k in names}


def candidate_inputs(spec: FeatureSpec) -> list[str]:
    """The model inputs of scope ``candidate`` (the target's); the rest is request context."""
    return [f.name for f in spec.select(model_input=True, scope="candidate")]


class ServingModule(tf.Module):
    """The exported object: the Keras model plus the parsing and output conventions.

    Args:
      model: a trained :class:`tirec.models.base.TirModel`.
      spec: its FeatureSpec.
      assets: paths of files to track as SavedModel assets (name -> path).
    """

    def __init__(self, model, spec: FeatureSpec, assets: dict[str, str] | None = None):
        super().__init__(name="tirec_serving")
        self.model = model
        self._spec = spec
        self._names = model_input_names(spec)
        self._parse_spec = model_parse_spec(spec)
        self._candidate_spec = {k: v for k, v in self._parse_spec.items() if k in candidate_inputs(spec)}
        self._context_spec = {k: v for k, v in self._parse_spec.items() if k not in self._candidate_spec}
        self.assets = {k: tf.saved_model.Asset(p) for k, p in (assets or {}).items()}
        self.has_intent = bool(getattr(model, "has_intent", False))

    def _score(self, features: dict) -> dict:
        out = self.model({k: features[k] for k in self._names}, training=False)
        result = {"ctr": tf.cast(out["ctr"], tf.float32)}
        if self.has_intent:
            result["intent"] = tf.cast(out["intent"], tf.float32)
        return result

    def _parse(self, serialized: tf.Tensor) -> dict:
        return tf.io.parse_example(serialized, self._parse_spec)

    def _rank_features(self, context: tf.Tensor, candidates: tf.Tensor) -> dict:
        """Model inputs of ``rank``: one context row per candidate. ``context`` holds one
        serialized example for every candidate, or one row per candidate where an empty string
        repeats the row above (the first must be an example); each given context is parsed once."""
        n, rows = tf.shape(candidates)[0], tf.shape(context)[0]
        given = tf.not_equal(context, "")
        first_given = tf.reduce_all(given[:1])  # true for no rows
        ok = tf.logical_and(tf.logical_or(tf.equal(rows, 1), tf.equal(rows, n)), first_given)
        check = tf.debugging.Assert(ok, [
            "rank: `context` must hold 1 tf.Example, or one row per candidate (an empty string "
            "repeating the row above; the first a tf.Example); received context rows / candidates / "
            "first row empty:", rows, n, tf.logical_not(first_given)])
        with tf.control_dependencies([check]):
            row = tf.minimum(tf.range(n), rows - 1)  # the context row of each candidate
        source = tf.gather(tf.cumsum(tf.cast(given, tf.int32)) - 1, row)  # its example among the given
        parsed = tf.io.parse_example(tf.boolean_mask(context, given), self._context_spec)
        features = {k: tf.gather(v, source) for k, v in parsed.items()}
        features.update(tf.io.parse_example(candidates, self._candidate_spec))
        return features

    def signatures(self) -> dict:
        """Concrete functions keyed by signature name."""
        examples = tf.TensorSpec([None], tf.string, name="examples")
        inputs = tf.TensorSpec([None], tf.string, name="inputs")
        context = tf.TensorSpec([None], tf.string, name="context")
        candidates = tf.TensorSpec([None], tf.string, name="candidates")

        @tf.function(input_signature=[examples])
        def serve_examples(examples):
            return self._score(self._parse(examples))

        @tf.function(input_signature=[input_signature(self._spec)])
        def serve_tensors(features):
            return self._score(features)

        @tf.function(input_signature=[inputs])
        def classify(inputs):
            p = self._score(self._parse(inputs))["ctr"]
            scores = tf.concat([1.0 - p, p], axis=-1)
            classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(p)[0], 1])
            return {"scores": scores, "classes": classes}

        @tf.function(input_signature=[inputs])
        def regress(inputs):
            return {"outputs": self._score(self._parse(inputs))["ctr"][:, 0]}

        @tf.function(input_signature=[context, candidates])
        def rank(context, candidates):
            return self._score(self._rank_features(context, candidates))

        return {"serving_default": serve_examples.get_concrete_function(),
                "rank": rank.get_concrete_function(),
                "predict": serve_tensors.get_concrete_function(),
                "classify": classify.get_concrete_function(),
                "regress": regress.get_concrete_function()}


def next_version(model_base: str) -> int:
    """One more than the largest integer version folder under ``model_base`` (1 when none)."""
    if not tf.io.gfile.isdir(model_base):
        return 1
    versions = [int(d.rstrip("/")) for d in tf.io.gfile.listdir(model_base) if d.rstrip("/").isdigit()]
    return max(versions, default=0) + 1


def set_method_names(export_dir: str, methods: dict[str, str]) -> None:
    """Rewrites the ``method_name`` of signatures in ``saved_model.pb``.

    TF2's ``tf.saved_model.save`` marks every signature as a predict signature; TF Serving's
    Classify and Regress APIs only accept signatures marked ``classify`` / ``regress``. The TF2
    loader ignores method names, so rewriting them changes nothing else. ``fingerprint.pb``,
    which hashes ``saved_model.pb`` as it was saved, is removed rather than left wrong (TF has
    no public call to write it again; loaders and TF Serving work without it).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(export_dir, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as fh:
        sm.ParseFromString(fh.read())
    for meta in sm.meta_graphs:
        for name, method in methods.items():
            if name not in meta.signature_def:
                raise ValueError(f"set_method_names: signature {name!r} not in {export_dir}; "
                                 f"present: {sorted(meta.signature_def)}")
            meta.signature_def[name].method_name = method
    with tf.io.gfile.GFile(path, "wb") as fh:
        fh.write(sm.SerializeToString())
    fingerprint = os.path.join(export_dir, "fingerprint.pb")
    if tf.io.gfile.exists(fingerprint):
        tf.io.gfile.remove(fingerprint)


def read_eval_records(data_dir: str, n: int) -> list[bytes]:
    """The first ``n`` serialized records of the eval split (the train split if eval is empty)."""
    for split in ("eval", "train"):
        try:
            files = shard_files(data_dir, split)
        except FileNotFoundError:
            continue
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)
        records = [r.numpy() for r in ds]
        if records:
            if split == "train":
                log.warning("%s: the eval split has no records; using the first %d of train", data_dir, len(records))
            return records
    raise FileNotFoundError(f"no records in {data_dir}/eval or {data_dir}/train to build warmup "
                            f"requests from; pass --data or --warmup-rows 0")


def warmup_records(model_name: str, examples: list[bytes], spec: FeatureSpec,
                   batch_sizes=(1, 8)) -> list[bytes]:
    """Serialized ``PredictionLog`` records: ``serving_default``, ``predict`` and ``rank`` requests.

    One request per batch size per signature, built from real eval rows; the inputs of each
    request share their first dimension, so the records also replay under TF Serving's batching.
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    parse = model_parse_spec(spec)
    out = []
    for size in batch_sizes:
        rows = (examples * size)[:size]
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model_name
        req.model_spec.signature_name = "serving_default"
        req.inputs["examples"].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string))
        out.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
        parsed = tf.io.parse_example(tf.constant(rows), parse)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model_name
        req.model_spec.signature_name = "predict"
        for k, v in parsed.items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
        out.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
        # rank: every row as a candidate, the first also as the context of all (full examples
        # parse too: each side reads only its own features), one context row per candidate,
        # because with --enable_batching TF Serving batches every signature and refuses inputs
        # whose first dimensions differ: a failing warmup record would fail the version's load.
        # Every context row holds the example (not the filled form's empty strings), so the
        # record also replays when enable_large_batch_splitting splits it between rows.
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model_name
        req.model_spec.signature_name = "rank"
        req.inputs["context"].CopyFrom(tf.make_tensor_proto(rows[:1] * size, dtype=tf.string))
        req.inputs["candidates"].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string))
        out.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
    return out


def warmup_examples(run_dir: str, cfg: dict, spec: FeatureSpec, data_dir: str | None, rows: int) -> list[bytes]:
    """The first ``rows`` eval records of ``data_dir`` (default: the run's data, ``cfg["data"]``)
    for the warmup requests; none when ``rows`` is 0.

    Raises:
      ValueError: when the run records no data folder, or naming the differences when the
        records' spec is not the run's (as ``tirec evaluate`` checks).
    """
    if rows <= 0:
        return []
    data_dir = data_dir or cfg.get("data")
    if not data_dir:
        raise ValueError("export: the run records no data folder; pass --data T or --warmup-rows 0")
    try:
        check_run_data(cfg["model"]["name"], data_dir, spec)
    except ValueError as err:
        raise ValueError(f"export: the warmup records of {data_dir} do not fit run {run_dir}: {err}; pass the "
                         f"run's data as --data, or --warmup-rows 0") from None
    return read_eval_records(data_dir, rows)


def is_plain_name(name: str) -> bool:
    """Whether a served model's name is a plain folder name (its versions live in base/name)."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def export_run(run_dir: str, base: str, name: str, version: int | None = None,
               data_dir: str | None = None, warmup_rows: int = 8, checkpoint: str = "last") -> str:
    """Exports a trained run as ``base/name/<version>/``; returns that path.

    Args:
      run_dir: a ``tirec train`` run folder.
      base: the model base folder (``--model_base_path`` is ``base/name``).
      name: the served model name.
      version: integer version; default one more than the newest present. Must not exist yet.
      data_dir: pipeline output whose eval rows make the warmup requests; default the run's
        training data (``config.json`` ``data``).
      warmup_rows: eval rows to use in warmup requests; 0 writes no warmup file.
      checkpoint: ``last`` (the final weights) or ``best`` (the run's best checkpoint on the
        valid split; an error when the run has none).
    """
    if not is_plain_name(name):
        raise ValueError(f"export: --model-name must be a plain folder name; received name={name!r}")
    model_base = os.path.join(base, name)
    if version is None:
        version = next_version(model_base)
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"export: --version must be a positive integer; received version={version!r}")
    final = os.path.join(model_base, str(version))
    if tf.io.gfile.exists(final):
        raise ValueError(f"export: version {version} already exists at {final}; "
                         f"versions are immutable, pick a new one (next free: {next_version(model_base)})")
    model, spec, cfg = load_run(run_dir, checkpoint=checkpoint)
    cfg = dict(cfg, checkpoint={"name": checkpoint, **(best_record(run_dir) if checkpoint == "best" else {})})
    examples = warmup_examples(run_dir, cfg, spec, data_dir, warmup_rows)
    tf.io.gfile.makedirs(model_base)
    tmp = os.path.join(model_base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as scratch:
        spec_path = os.path.join(scratch, "spec.json")
        spec.save(spec_path)
        cfg_path = os.path.join(scratch, "config.json")
        write_json(cfg_path, cfg)
        module = ServingModule(model, spec, assets={"spec": spec_path, "config": cfg_path})
        try:
            tf.saved_model.save(module, tmp, signatures=module.signatures())
            set_method_names(tmp, {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})
            if examples:
                extra = os.path.join(tmp, "assets.extra")
                tf.io.gfile.makedirs(extra)
                with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as w:
                    for rec in warmup_records(name, examples, spec):
                        w.write(rec)
            tf.io.gfile.rename(tmp, final)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.rmtree(tmp) if "://" in tmp else shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("exported %s (%s weights) as %s version %d", run_dir, checkpoint, name, version)
    return final
