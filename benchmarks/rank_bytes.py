"""What a 200-candidate request weighs on the wire (serialized PredictRequest bytes): the
``serving_default`` form (one full tf.Example per candidate) and ``rank`` with one context
example or in the filled form (one context row per candidate, empty after the first).

    python benchmarks/rank_bytes.py DATA     # DATA: a `tirec pipeline` output (its eval records)
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tirec.features.spec import FeatureSpec  # noqa: E402
from tirec.serving.client import rank_inputs  # noqa: E402
from tirec.serving.export import model_parse_spec, read_eval_records  # noqa: E402

CANDIDATES = 200


def request_size(signature: str, arrays: dict) -> int:
    r = predict_pb2.PredictRequest()
    r.model_spec.name, r.model_spec.signature_name = "daian", signature
    for k, v in arrays.items():
        r.inputs[k].CopyFrom(tf.make_tensor_proto(np.array(v, dtype=object)))
    return r.ByteSize()


def main(data: str) -> dict:
    spec = FeatureSpec.load(f"{data}/spec.json")
    rows = (read_eval_records(data, CANDIDATES) * CANDIDATES)[:CANDIDATES]
    parsed = {k: v.numpy() for k, v in tf.io.parse_example(tf.constant(rows), model_parse_spec(spec)).items()}
    return {"serving_default": request_size("serving_default", {"examples": rows}),
            "rank_one_context": request_size("rank", rank_inputs(parsed, spec, form="one")),
            "rank_filled": request_size("rank", rank_inputs(parsed, spec))}


if __name__ == "__main__":
    print(main(sys.argv[1]))
