"""Serving parity: the served model must score eval rows as the trained run does offline.

    tirec verify-serving --target 127.0.0.1:8500 --model-name NAME --run RUN [--data T] [--rows N]
        [--checkpoint last|best]

Scores the first N eval rows through the server (``serving_default``, serialized tf.Examples)
and offline (the run's Keras model rebuilt by :func:`tirec.models.train.load_run` with the
weights the model was exported from: ``last`` or ``best``, as for ``tirec export``), and compares
the click probability (and the intent distribution of intent models). Fails, naming the rows,
when any absolute difference exceeds the tolerance (default 1e-6).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tirec.models.train import load_run
from tirec.serving.client import PredictClient
from tirec.serving.export import model_parse_spec, read_eval_records


def offline_scores(model, spec, records: list[bytes], batch_size: int = 1024) -> dict[str, np.ndarray]:
    """The Keras model's outputs for serialized records (no server involved)."""
    parse = model_parse_spec(spec)
    outs: dict[str, list] = {}

    @tf.function
    def score(batch):
        return model(tf.io.parse_example(batch, parse), training=False)

    for start in range(0, len(records), batch_size):
        for k, v in score(tf.constant(records[start:start + batch_size])).items():
            outs.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def verify_serving(target: str, model_name: str, run_dir: str, data_dir: str | None = None,
                   rows: int = 2000, batch_size: int = 256, tolerance: float = 1e-6,
                   version: int | None = None, checkpoint: str = "last") -> dict:
    """Compares served and offline scores of eval rows; returns a report dict.

    The report has ``rows``, ``max_abs_diff`` per output, ``version`` (what the server answered
    with), ``rows_over_tolerance`` (per output, how many rows differ by more than ``tolerance``)
    and ``bad_rows`` (index, request id, output, served, offline) for the first 50 of them per
    output; ``ok`` is True when there are none.
    """
    model, spec, cfg = load_run(run_dir, checkpoint=checkpoint)
    data_dir = data_dir or cfg.get("data")
    if not data_dir:
        raise ValueError("verify-serving: the run records no data folder; pass --data T")
    records = read_eval_records(data_dir, rows)
    offline = offline_scores(model, spec, records)
    served: dict[str, list] = {}
    versions = set()
    with PredictClient(target, model_name, version=version) as client:
        for start in range(0, len(records), batch_size):
            out = client.predict(examples=records[start:start + batch_size])
            versions.add(int(out.pop("_version")))
            for k, v in out.items():
                served.setdefault(k, []).append(v)
    served_arr = {k: np.concatenate(v) for k, v in served.items()}
    request_ids = tf.io.parse_example(
        tf.constant(records), {"request_id": tf.io.FixedLenFeature([], tf.string)})["request_id"].numpy()

    report = {"rows": len(records), "versions": sorted(versions), "tolerance": tolerance,
              "max_abs_diff": {}, "bad_rows": [], "rows_over_tolerance": {}}
    for key, want in offline.items():
        if key not in served_arr:
            raise ValueError(f"verify-serving: the server returned no {key!r} output "
                             f"(got {sorted(served_arr)})")
        got = served_arr[key].reshape(want.shape)
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).reshape(len(records), -1).max(axis=1)
        report["max_abs_diff"][key] = float(diff.max()) if diff.size else 0.0
        over = np.flatnonzero(diff > tolerance)
        report["rows_over_tolerance"][key] = int(over.size)
        for i in over[:50]:  # the first 50 of each output, listed
            report["bad_rows"].append({"row": int(i), "request_id": request_ids[i].decode(),
                                       "output": key, "served": got[i].tolist(),
                                       "offline": want[i].tolist()})
    report["ok"] = not report["bad_rows"]
    return report
