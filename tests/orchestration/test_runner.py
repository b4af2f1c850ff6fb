"""``tirec run`` on tiny data: the DAG writes typed artifacts with lineage, a blessing and a pushed
version; an identical rerun is all cache hits; a span whose model trained on shuffled labels is
refused and serving keeps its version; a failed component stops the rest and a rerun resumes;
the statistics check fails a drifted span with its reason."""
import dataclasses
import glob
import os
import sqlite3

import numpy as np
import pytest
import tensorflow as tf

from tirec import cli
from tirec.features.jsonio import read_json
from tirec.orchestration import components as C
from tirec.orchestration import runner
from tirec.orchestration.config import ValidationConfig
from tirec.orchestration.report import write_report
from tirec.orchestration.statistics import validate

from run_helpers import TINY, USERS, cfg, statuses  # tests/orchestration/run_helpers.py


def _shuffle_labels(examples: str, seed: int = 0) -> None:
    """Rewrites the train and valid records of a pipeline output with their labels shuffled
    (eval keeps the true ones): a span whose model must come out worse."""
    rng = np.random.default_rng(seed)
    label = read_json(os.path.join(examples, "spec.json"))["label"]
    for split in ("train", "valid"):
        for path in glob.glob(os.path.join(examples, split, "*.tfrecord.gz")):
            records = [tf.train.Example.FromString(r.numpy())
                       for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
            labels = rng.permutation([e.features.feature[label].int64_list.value[0] for e in records])
            with tf.io.TFRecordWriter(path, options="GZIP") as writer:
                for e, y in zip(records, labels):
                    e.features.feature[label].int64_list.value[:] = [int(y)]
                    writer.write(e.SerializeToString())


def _shuffled_feature_gen(ctx, inputs, outputs):
    summary = C.feature_gen(ctx, inputs, outputs)
    _shuffle_labels(outputs["examples"])
    return summary


def _component(name, run):
    base = next(c for c in C.components(cfg()) if c.name == name)
    return dataclasses.replace(base, run=run)


def test_dag_caches_blesses_pushes_and_refuses_a_worse_span(tmp_path, capsys):
    w = str(tmp_path / "w")
    first = runner.run(w, cfg())
    assert first.status == "succeeded" and first.span == 8
    assert set(statuses(first).values()) == {"succeeded"}
    record = first.record
    assert record["blessing"]["blessed"] and record["pushed"]["version"] == 1
    assert os.path.exists(os.path.join(w, "serving", "din", "1", "saved_model.pb"))
    for e in first.executions:  # every output folder is a typed artifact
        for uri in e["outputs"].values():
            art = read_json(os.path.join(uri, "artifact.json"))
            assert art["uri"] == uri and art["producer"] == e["component"] and art["span"] == 8
            assert art["fingerprint"] and "created" in art and "parameters" in art and "inputs" in art
    db = sqlite3.connect(os.path.join(w, "metadata.sqlite"))
    # Lineage: the Trainer read the examples the FeatureGen wrote.
    (written,) = db.execute("SELECT a.uri FROM events e JOIN executions x ON x.id = e.execution_id JOIN "
                            "artifacts a ON a.id = e.artifact_id WHERE x.component = 'FeatureGen' AND "
                            "e.kind = 'output'").fetchone()
    (read,) = db.execute("SELECT a.uri FROM events e JOIN executions x ON x.id = e.execution_id JOIN artifacts a "
                         "ON a.id = e.artifact_id WHERE x.component = 'Trainer' AND e.kind = 'input'").fetchone()
    assert read == written

    capsys.readouterr()
    assert cli.main(["run", "--workdir", w, "--users", str(USERS)] + [a for kv in TINY for a in ("--set", kv)]) == 0
    printed = capsys.readouterr().out  # identical: everything from cache, no new version
    assert "pushed version" not in printed and "not pushed: this model already serves as version 1" in printed
    again = runner.RunResult(0, 8, "", [], sorted(glob.glob(os.path.join(w, "runs", "*", "run.json")))[-1])
    assert set(e["status"] for e in again.record["executions"]) == {"cached"}
    assert again.record["pushed"] is None and again.record["already_serving"]["version"] == 1
    assert sorted(os.listdir(os.path.join(w, "serving", "din"))) == ["1"]

    worse = runner.run(w, cfg("run.warm_start=false", "blessing.slices=[]"), span=9,
                       overrides={"FeatureGen": _component("FeatureGen", _shuffled_feature_gen)})
    record = worse.record
    assert worse.status == "succeeded" and statuses(worse)["LogGen"] == "cached"
    assert not record["blessing"]["blessed"] and record["pushed"] is None
    assert "not blessed" in record["refused_push"] and "FAIL: " in record["refused_push"]
    assert sorted(os.listdir(os.path.join(w, "serving", "din"))) == ["1"]  # serving keeps version 1
    evaluation = read_json(os.path.join(worse.executions[4]["outputs"]["evaluation"], "evaluation.json"))
    assert evaluation["baseline"]["uri"] == first.executions[3]["outputs"]["model"]  # the blessed model

    # The report of the real workdir: the refused span, with the span-over-span plot.
    report = write_report(w)
    text = open(report["markdown"]).read()
    assert "FAIL" in text and os.path.basename(report["markdown"]) == "report.md"
    assert any("span" in os.path.basename(p) for p in report["images"])
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in report["images"])

    capsys.readouterr()
    assert cli.main(["runs", "--workdir", w]) == 0
    table = capsys.readouterr().out
    assert "pushed: version 1" in table and "blessed model:" in table and "span 8" in table
    assert f"serving: version 1 at {os.path.join(w, 'serving', 'din', '1')}" in table
    assert "Trainer=cached" in table and "Pusher=succeeded" in table


def test_a_failure_stops_the_run_and_a_rerun_resumes(tmp_path):
    w = str(tmp_path / "w")

    def broken(ctx, inputs, outputs):
        raise RuntimeError("disk full")

    failed = runner.run(w, cfg(), stop="StatisticsGen", overrides={"FeatureGen": _component("FeatureGen", broken)})
    assert failed.status == "failed"
    assert statuses(failed) == {"LogGen": "succeeded", "FeatureGen": "failed", "StatisticsGen": "skipped"}
    assert "RuntimeError: disk full" in failed.executions[1]["error"]
    assert "not run: FeatureGen failed" in failed.executions[2]["error"]
    resumed = runner.run(w, cfg(), stop="StatisticsGen")
    assert statuses(resumed) == {"LogGen": "cached", "FeatureGen": "succeeded", "StatisticsGen": "succeeded"}
    with pytest.raises(ValueError, match="--from: LogGen has no cached output"):
        runner.run(str(tmp_path / "other"), cfg(), start="FeatureGen", stop="FeatureGen")
    step = runner.run(w, cfg(), start="StatisticsGen", stop="StatisticsGen")  # a step retried: reused
    assert statuses(step) == {"LogGen": "cached", "FeatureGen": "cached", "StatisticsGen": "cached"}
    forced = runner.run(w, cfg(), start="StatisticsGen", stop="StatisticsGen", force=True)
    assert statuses(forced) == {"LogGen": "cached", "FeatureGen": "cached", "StatisticsGen": "succeeded"}


def test_the_drift_check_fails_a_span_with_its_reason(tmp_path):
    w = str(tmp_path / "w")
    assert runner.run(w, cfg(), stop="StatisticsGen").status == "succeeded"
    strict = ["validation.label_rate_warning=0", "validation.label_rate_error=0.000001"]
    drifted = runner.run(w, cfg(*strict), span=9, stop="Trainer")
    assert drifted.status == "failed"
    assert statuses(drifted)["Trainer"] == "skipped"
    error = drifted.executions[2]["error"]
    assert "ComponentFailed" in error and "label_rate" in error and "span 9 vs span 8" in error
    anomalies = read_json(os.path.join(drifted.executions[2]["outputs"]["statistics"], "anomalies.json"))
    assert anomalies["checks"]["label_rate"]["level"] == "error"
    assert {"intent_js", "seq_len"} <= set(anomalies["checks"])
    assert any(k.startswith("new_values:") for k in anomalies["checks"])
    text = open(write_report(os.path.dirname(drifted.path))["markdown"]).read()  # the report names it
    assert "Data validation" in text and "label_rate" in text and "error" in text


def _stats(tmp_path, name, label_rate, features, values):
    folder = tmp_path / name
    folder.mkdir()
    stats = {"span": int(name[-1]), "features": features, "label_rate": label_rate, "intent_hist": [0.5, 0.5],
             "seq_len": {"mean": 5.0}, "categorical": {"item": {"distinct": len(values)}}}
    (folder / "statistics.json").write_text(__import__("json").dumps(stats))
    np.savez(folder / "values.npz", **{"all:item": np.unique(values), "eval:item": np.asarray(values)})
    return str(folder), stats


def test_validate_names_missing_fields_new_values_and_shifts(tmp_path):
    prev, _ = _stats(tmp_path, "s8", 0.10, ["item", "price", "label"], [1, 2, 3, 4])
    cur_dir, cur = _stats(tmp_path, "s9", 0.13, ["item", "label"], [1, 2, 7, 8])
    out = validate(cur, prev, cur_dir, ValidationConfig())
    assert any("fields missing against span 8: price" in e for e in out["errors"])
    assert out["checks"]["new_values:item"]["value"] == pytest.approx(0.5)  # 7 and 8 are new
    assert out["checks"]["new_values:item"]["level"] == "warning"  # 0.5 is not above the 0.5 error
    assert out["checks"]["label_rate"]["value"] == pytest.approx(0.3)
    assert out["checks"]["label_rate"]["level"] == "warning"
    assert out["checks"]["intent_js"]["value"] == pytest.approx(0.0, abs=1e-6)
    first = validate(cur, None, cur_dir, ValidationConfig())
    assert first["errors"] == [] and "no previous span" in first["warnings"][0]
    with pytest.raises(ValueError, match="validation.seq_len_warning / _error"):
        ValidationConfig(seq_len_warning=0.6, seq_len_error=0.5)
