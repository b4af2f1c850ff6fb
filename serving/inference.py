"""Predict, Classify, Regress, MultiInference and GetModelMetadata on one
:class:`~tirec.serving.servable.Servable`, and the replay of its warmup records.

These functions take and return the official ``tensorflow_serving.apis`` protos, follow TF
Serving's rules (Classify/Regress dispatch on the signature's ``method_name``; Classify and
Regress feed serialized ``tf.Example`` protos, with ``example_list_with_context`` merged as TF
Serving does: context bytes then example bytes, so example features win), and are shared by the
gRPC service, the REST front end and warmup replay.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, inference_pb2, predict_pb2,
                                     prediction_log_pb2, regression_pb2)

from tirec.serving.servable import (CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, Servable,
                                    ServingError, array_to_tensor_proto, check_input_keys,
                                    check_rows, check_shape, invalid, tensor_proto_to_array)

log = logging.getLogger(__name__)

WARMUP_FILE = "tf_serving_warmup_requests"  # in assets.extra/, as TF Serving names it
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many warmup records
SIGNATURE_DEF_FIELD = "signature_def"

Runner = Callable[[Servable, str, Mapping[str, np.ndarray]], dict]


def _direct(servable: Servable, signature_name: str, arrays: Mapping[str, np.ndarray]) -> dict:
    return servable.call(signature_name, arrays)


def fill_model_spec(spec, servable: Servable, signature_name: str | None = None) -> None:
    """Sets name, version (and signature name) of a response ``model_spec``."""
    spec.name = servable.name
    spec.version.value = servable.version
    if signature_name is not None:
        spec.signature_name = signature_name


# ---- Predict -------------------------------------------------------------------------------------

def check_output_filter(signature_name: str, sig, output_filter: Sequence[str]) -> list[str]:
    """Validates ``output_filter`` against the signature; returns the outputs to return."""
    if not output_filter:
        return list(sig.outputs)
    seen = set()
    for alias in output_filter:
        if alias not in sig.outputs:
            raise invalid(f"output tensor alias not found in signature '{signature_name}': {alias}. "
                          f"Outputs expected to be in the set {sorted(sig.outputs)}.")
        if alias in seen:
            raise invalid(f"duplicate output tensor alias in output_filter: {alias}")
        seen.add(alias)
    return list(output_filter)


def predict_arrays(servable: Servable, signature_name: str, arrays: Mapping[str, np.ndarray],
                   output_filter: Sequence[str] = (), *, runner: Runner | None = None,
                   max_examples: int = 10000) -> dict[str, np.ndarray]:
    """Runs a Predict on numpy inputs (already of the signature's dtypes).

    Args:
      servable: the resolved model version.
      signature_name: signature key; empty means ``serving_default``.
      arrays: input alias -> array.
      output_filter: output aliases to return (all when empty).
      runner: how to run the signature (the batcher, or a direct call by default); a call
        fetching only some outputs runs directly, as in TF Serving.
      max_examples: the largest batch dimension accepted per input.

    Returns:
      Output alias -> array, for the requested outputs.

    Raises:
      ServingError: INVALID_ARGUMENT for missing/extra inputs, wrong shapes, too many rows or an
        unknown output alias; the runtime's code for errors raised by the model.
    """
    key = signature_name or DEFAULT_SIGNATURE
    sig = servable.signature(key)
    check_input_keys(key, sig, arrays.keys())
    for name, arr in arrays.items():
        check_shape("input", name, arr.shape, sig.inputs[name])
        check_rows(name, arr.shape, max_examples)
    return _run_checked(servable, key, arrays, check_output_filter(key, sig, output_filter), runner)


def _run_checked(servable: Servable, key: str, arrays: Mapping[str, np.ndarray], wanted: list[str],
                 runner: Runner | None) -> dict[str, np.ndarray]:
    """Runs signature ``key`` on inputs already checked against it; returns the ``wanted`` outputs.
    TF Serving's batching session batches a run that fetches exactly one signature's outputs; a
    run fetching fewer (a Predict ``output_filter``) bypasses its batcher, so it runs directly."""
    if set(wanted) != set(servable.signature(key).outputs):
        runner = None
    outputs = (runner or _direct)(servable, key, arrays)
    missing = [k for k in wanted if k not in outputs]
    if missing:
        raise ServingError("INTERNAL", f"signature '{key}' returned {sorted(outputs)}, not the declared "
                                       f"outputs {missing}")
    return {k: outputs[k] for k in wanted}


def predict(servable: Servable, request: predict_pb2.PredictRequest, *, runner: Runner | None = None,
            max_examples: int = 10000) -> predict_pb2.PredictResponse:
    """PredictionService.Predict on one servable.

    Args:
      servable: the resolved model version.
      request: the PredictRequest (its model_spec is already resolved to ``servable``).
      runner: how to run the signature (the batcher, or a direct call by default); a call
        fetching only some outputs runs directly, as in TF Serving.
      max_examples: the largest batch dimension accepted per input.
    """
    key = request.model_spec.signature_name or DEFAULT_SIGNATURE
    sig = servable.signature(key)
    check_input_keys(key, sig, request.inputs.keys())
    wanted = check_output_filter(key, sig, request.output_filter)
    # tensor_proto_to_array checks dtype, shape and row limit of each input before decoding it.
    arrays = {name: tensor_proto_to_array(name, request.inputs[name], sig.inputs[name], max_examples)
              for name in sorted(request.inputs)}
    outputs = _run_checked(servable, key, arrays, wanted, runner)
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, key)
    for name, arr in outputs.items():
        response.outputs[name].CopyFrom(array_to_tensor_proto(arr))
    return response


# ---- Classify / Regress --------------------------------------------------------------------------

def serialized_examples(inp, max_examples: int) -> list[bytes]:
    """The serialized tf.Examples of a ``tensorflow.serving.Input``.

    ``example_list_with_context`` is merged the way TF Serving does it: the serialized context
    followed by each serialized example, which protobuf parses as a merge (example wins).
    """
    kind = inp.WhichOneof("kind")
    if kind is None:
        raise invalid("Input is empty: set input.example_list or input.example_list_with_context")
    if kind == "example_list":
        examples, context = inp.example_list.examples, b""
    else:
        examples = inp.example_list_with_context.examples
        context = inp.example_list_with_context.context.SerializeToString()
    if len(examples) == 0:
        raise invalid(f"Input is empty: input.{kind}.examples has no examples")
    if len(examples) > max_examples:
        raise invalid(f"input.{kind}.examples has {len(examples)} examples, more than the limit of "
                      f"{max_examples} per request (--max-examples-per-request)")
    return [context + ex.SerializeToString() for ex in examples]


def _example_signature(servable: Servable, signature_name: str, method: str, what: str):
    key = signature_name or DEFAULT_SIGNATURE
    sig = servable.signature(key)
    if sig.method_name != method:
        raise invalid(f"Expected {what} signature method_name to be {method}. Was: {sig.method_name} "
                      f"(signature '{key}')")
    if len(sig.inputs) != 1:
        raise invalid(f"Expected one input Tensor in {what} signature '{key}'; it has "
                      f"{sorted(sig.inputs)}")
    (input_key, info), = sig.inputs.items()
    if info.dtype != types_pb2.DT_STRING:
        raise invalid(f"{what} signature '{key}': input '{input_key}' must be DT_STRING (serialized "
                      f"tf.Example), it is {types_pb2.DataType.Name(info.dtype)}")
    return key, sig, input_key


def _run_examples(servable, key, input_key, inp, max_examples, runner) -> tuple[int, dict]:
    serialized = serialized_examples(inp, max_examples)
    arr = np.empty(len(serialized), dtype=object)
    arr[:] = serialized
    return len(serialized), (runner or _direct)(servable, key, {input_key: arr})


def classify(servable: Servable, request: classification_pb2.ClassificationRequest,
             *, max_examples: int = 10000, runner: Runner | None = None
             ) -> classification_pb2.ClassificationResponse:
    """PredictionService.Classify: a ``tensorflow/serving/classify`` signature on tf.Examples.

    The signature's ``scores`` output must be ``[batch, classes]`` floats and its optional
    ``classes`` output ``[batch, classes]`` strings (at least one of the two).
    """
    key, sig, input_key = _example_signature(servable, request.model_spec.signature_name,
                                             CLASSIFY_METHOD, "classification")
    if "scores" not in sig.outputs and "classes" not in sig.outputs:
        raise invalid(f"Expected classification signature '{key}' outputs to contain at least one of "
                      f"'classes', 'scores'; it has {sorted(sig.outputs)}")
    n, out = _run_examples(servable, key, input_key, request.input, max_examples, runner)
    scores, classes = out.get("scores"), out.get("classes")
    for name, arr in (("scores", scores), ("classes", classes)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != n):
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] with batch_size {n} for output "
                          f"'{name}' of signature '{key}', got {list(arr.shape)}")
    if scores is not None and classes is not None and scores.shape != classes.shape:
        raise invalid(f"signature '{key}': 'classes' shape {list(classes.shape)} differs from 'scores' "
                      f"shape {list(scores.shape)}")
    if scores is not None and scores.dtype.kind != "f":
        raise invalid(f"signature '{key}': 'scores' must be float, it is {scores.dtype}")
    if classes is not None and classes.dtype.kind not in "OSU":
        raise invalid(f"signature '{key}': 'classes' must be strings, it is {classes.dtype}")
    response = classification_pb2.ClassificationResponse()
    fill_model_spec(response.model_spec, servable, key)
    num_classes = (scores if scores is not None else classes).shape[1]
    for i in range(n):
        row = response.result.classifications.add()
        for j in range(num_classes):
            c = row.classes.add()
            if classes is not None:
                label = classes[i, j]
                c.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                c.score = float(scores[i, j])
    return response


def regress(servable: Servable, request: regression_pb2.RegressionRequest,
            *, max_examples: int = 10000, runner: Runner | None = None) -> regression_pb2.RegressionResponse:
    """PredictionService.Regress: a ``tensorflow/serving/regress`` signature on tf.Examples.

    The signature's ``outputs`` output must be floats of shape ``[batch]`` or ``[batch, 1]``.
    """
    key, sig, input_key = _example_signature(servable, request.model_spec.signature_name,
                                             REGRESS_METHOD, "regression")
    if "outputs" not in sig.outputs:
        raise invalid(f"No regression outputs found in signature '{key}': expected an output named "
                      f"'outputs', it has {sorted(sig.outputs)}")
    n, out = _run_examples(servable, key, input_key, request.input, max_examples, runner)
    values = out["outputs"]
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != n:
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] with "
                      f"batch_size {n} for signature '{key}', got {list(out['outputs'].shape)}")
    if values.dtype.kind not in "fiu":
        raise invalid(f"signature '{key}': 'outputs' must be numeric, it is {values.dtype}")
    response = regression_pb2.RegressionResponse()
    fill_model_spec(response.model_spec, servable, key)
    for v in values.tolist():
        response.result.regressions.add().value = float(v)
    return response


def multi_inference(servable: Servable, request: inference_pb2.MultiInferenceRequest, *,
                    max_examples: int = 10000, runner: Runner | None = None
                    ) -> inference_pb2.MultiInferenceResponse:
    """PredictionService.MultiInference: several classify / regress signatures of ``servable``
    (the version every task's ModelSpec resolves to) on the same input. TF Serving runs the
    tasks as one session run fetching all their outputs, which its batching session batches only
    when there is one task: so ``runner`` is used for a single task, and the rest run directly."""
    if not request.tasks:
        raise invalid("MultiInferenceRequest has no tasks")
    if any(not t.model_spec.name for t in request.tasks):
        raise invalid("Found ModelSpec with an empty model name.")
    names = {t.model_spec.name for t in request.tasks}
    if len(names) != 1:
        raise invalid(f"All ModelSpecs in a MultiInferenceRequest must access the same model name; "
                      f"received {sorted(names)}")
    _check_one_input_tensor(servable, request.tasks)
    runner = runner if len(request.tasks) == 1 else None
    seen = set()
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        key = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if key in seen:
            raise invalid(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        if task.method_name == CLASSIFY_METHOD:
            req = classification_pb2.ClassificationRequest(model_spec=task.model_spec, input=request.input)
            res = classify(servable, req, max_examples=max_examples, runner=runner)
            response.results.add(model_spec=res.model_spec).classification_result.CopyFrom(res.result)
        elif task.method_name == REGRESS_METHOD:
            req = regression_pb2.RegressionRequest(model_spec=task.model_spec, input=request.input)
            res = regress(servable, req, max_examples=max_examples, runner=runner)
            response.results.add(model_spec=res.model_spec).regression_result.CopyFrom(res.result)
        else:
            raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name!r} (task "
                                                f"signature '{key}'); use {CLASSIFY_METHOD} or {REGRESS_METHOD}")
    return response


def _check_one_input_tensor(servable: Servable, tasks) -> None:
    """TF Serving runs a MultiInference's tasks in one session run fed one tensor, so every
    task's signature must read the same graph tensor (a tirec export's ``classify`` and
    ``regress`` each have their own: combining them is refused there and here)."""
    names = set()
    for task in tasks:
        inputs = servable.signature(task.model_spec.signature_name or DEFAULT_SIGNATURE).inputs
        if "inputs" in inputs:
            names.add(inputs["inputs"].name)
    if len(names) > 1:
        raise invalid(f"Input tensor must be the same for all Signatures. (the tasks read {sorted(names)})")


# ---- GetModelMetadata ----------------------------------------------------------------------------

def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    """All signature defs of ``saved_model.pb`` (as TF Serving returns them)."""
    sdm = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in servable.signature_defs.items():
        sdm.signature_def[name].CopyFrom(sig)
    return sdm


def metadata(servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """PredictionService.GetModelMetadata (only the ``signature_def`` field exists, as in TF Serving)."""
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field "
                      f"(supported: '{SIGNATURE_DEF_FIELD}')")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid(f"Metadata field {field} is not supported (supported: '{SIGNATURE_DEF_FIELD}')")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    fill_model_spec(response.model_spec, servable)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(servable))
    return response


# ---- warmup --------------------------------------------------------------------------------------

def run_warmup(servable: Servable, max_examples: int = 10000, runner: Runner | None = None) -> int:
    """Replays ``assets.extra/tf_serving_warmup_requests`` against ``servable``, as TF Serving does
    before marking a version available, through ``runner`` (the batcher when batching is on, as
    TF Serving replays them through its batching session). Returns the number of records replayed.

    Raises:
      ServingError: more than ``MAX_WARMUP_RECORDS`` records, a record that does not parse, a
        ``session_run_log`` (refused by TF Serving too), or a record whose request fails (the
        load then fails). Other record types (``predict_streamed_log``, none set) are skipped
        with a warning, as TF Serving skips them.
    """
    path = tf.io.gfile.join(servable.path, "assets.extra", WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    try:
        for i, record in enumerate(tf.data.TFRecordDataset(path)):
            if i >= MAX_WARMUP_RECORDS:
                raise ServingError("INVALID_ARGUMENT", f"Number of warmup records exceeds the maximum "
                                                       f"({MAX_WARMUP_RECORDS}) at {path}")
            entry = prediction_log_pb2.PredictionLog()
            try:
                entry.ParseFromString(record.numpy())
            except Exception as e:  # protobuf DecodeError
                raise ServingError("INVALID_ARGUMENT", f"warmup record #{i} of {path} is not a "
                                                       f"PredictionLog: {e}") from None
            kind = entry.WhichOneof("log_type")
            try:
                count += _replay(servable, entry, kind, max_examples, runner)
            except ServingError as e:
                raise ServingError(e.code, f"warmup record #{i} ({kind}) of {path} failed: {e.message}") from None
    except tf.errors.OpError as e:
        raise ServingError.from_tf(e, f"reading warmup file {path}: ") from None
    servable.warmup_records = count
    return count


def _replay(servable: Servable, entry, kind: str | None, max_examples: int, runner: Runner | None) -> bool:
    """Runs one warmup record's request; False for a type TF Serving skips."""
    if kind == "predict_log":
        predict(servable, entry.predict_log.request, runner=runner, max_examples=max_examples)
    elif kind == "classify_log":
        classify(servable, entry.classify_log.request, max_examples=max_examples, runner=runner)
    elif kind == "regress_log":
        regress(servable, entry.regress_log.request, max_examples=max_examples, runner=runner)
    elif kind == "multi_inference_log":
        multi_inference(servable, entry.multi_inference_log.request, max_examples=max_examples, runner=runner)
    elif kind == "session_run_log":
        raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind}")
    else:
        log.warning("%s version %d: warmup record of type %s skipped (as TF Serving skips it)",
                    servable.name, servable.version, kind)
        return False
    return True
