"""SavedModel export: layout, signatures, parity with the Keras model, warmup; client requests."""
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from tirec.config import load_config
from tirec.models.base import model_input_names
from tirec.models.data import make_dataset
from tirec.models.train import load_run, train_run
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig
from tirec.serving import client as C
from tirec.serving import export as E
from tirec.serving.verify import offline_scores

SMALL = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
         "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "model.daian.sim_bins=5",
         "train.batch_size=256", "train.shuffle_buffer=1000", "train.three_stage=false",
         "train.steps_per_epoch=2", "model.daian.explicit_buckets=1",
         "model.hist_buckets=1"]  # tiny runs: skip tracing 16 bucket copies


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    raw, data = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=30, seed=3), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=data, max_seq_len=10))
    cfg = load_config(None, SMALL)
    run_dir = str(base / "run")
    train_run(data, "daian", run_dir, cfg.model, cfg.train)
    return {"data": data, "run": run_dir, "base": str(base / "models")}


@pytest.fixture(scope="module")
def exported(run):
    return E.export_run(run["run"], run["base"], "daian")


def test_layout_versions_and_method_names(run, exported):
    assert exported == os.path.join(run["base"], "daian", "1")
    for rel in ("saved_model.pb", "variables/variables.index", "assets/spec.json",
                "assets/config.json", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(exported, rel)), rel
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(open(os.path.join(exported, "saved_model.pb"), "rb").read())
    sigs = sm.meta_graphs[0].signature_def
    assert {k: sigs[k].method_name for k in ("serving_default", "predict", "classify", "regress", "rank")} == {
        "serving_default": E.PREDICT_METHOD, "predict": E.PREDICT_METHOD, "rank": E.PREDICT_METHOD,
        "classify": E.CLASSIFY_METHOD, "regress": E.REGRESS_METHOD}
    assert list(sigs["serving_default"].inputs) == ["examples"]
    assert set(sigs["serving_default"].outputs) == {"ctr", "intent"}
    assert set(sigs["rank"].inputs) == {"context", "candidates"} and set(sigs["rank"].outputs) == {"ctr", "intent"}
    _, spec, _ = load_run(run["run"])
    assert set(sigs["predict"].inputs) == set(model_input_names(spec))
    assert json.load(open(os.path.join(exported, "assets/spec.json"))) == json.loads(spec.to_json())
    # fingerprint.pb would hash saved_model.pb before the method names changed: not left wrong
    assert not os.path.exists(os.path.join(exported, "fingerprint.pb"))
    # The next export gets version 2; an existing version is refused; no temp folder is left.
    second = E.export_run(run["run"], run["base"], "daian", warmup_rows=0)
    assert second.endswith(os.path.join("daian", "2"))
    assert not os.path.exists(os.path.join(second, "assets.extra"))
    with pytest.raises(ValueError, match="version 1 already exists"):
        E.export_run(run["run"], run["base"], "daian", version=1)
    with pytest.raises(ValueError, match="--model-name must be a plain folder name"):
        E.export_run(run["run"], run["base"], "a/b")
    assert sorted(os.listdir(os.path.join(run["base"], "daian"))) == ["1", "2"]


def test_signatures_match_the_keras_model(run, exported):
    model, spec, _ = load_run(run["run"])
    records = E.read_eval_records(run["data"], 64)
    want = offline_scores(model, spec, records)
    loaded = tf.saved_model.load(exported)  # plain load, no custom objects
    got = loaded.signatures["serving_default"](examples=tf.constant(records))
    np.testing.assert_allclose(got["ctr"].numpy(), want["ctr"], atol=1e-6)
    np.testing.assert_allclose(got["intent"].numpy(), want["intent"], atol=1e-6)
    assert np.allclose(got["intent"].numpy().sum(axis=1), 1.0, atol=1e-5)
    parse = {k: v for k, v in spec.parse_example_spec(include_label=False).items()
             if k in model_input_names(spec)}
    tensors = tf.io.parse_example(tf.constant(records), parse)
    raw = loaded.signatures["predict"](**tensors)
    np.testing.assert_allclose(raw["ctr"].numpy(), want["ctr"], atol=1e-6)
    cls = loaded.signatures["classify"](inputs=tf.constant(records))
    np.testing.assert_allclose(cls["scores"].numpy()[:, 1], want["ctr"][:, 0], atol=1e-6)
    np.testing.assert_allclose(cls["scores"].numpy().sum(axis=1), 1.0, atol=1e-6)
    assert cls["classes"].numpy()[0].tolist() == [b"0", b"1"]
    reg = loaded.signatures["regress"](inputs=tf.constant(records))
    np.testing.assert_allclose(reg["outputs"].numpy(), want["ctr"][:, 0], atol=1e-6)
    # A record missing a model input is rejected by the parser, naming the feature.
    ex = tf.train.Example.FromString(records[0])
    del ex.features.feature["hist_item_ids"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_item_ids"):
        loaded.signatures["serving_default"](examples=tf.constant([ex.SerializeToString()]))


def test_warmup_records_replay(run, exported):
    loaded = tf.saved_model.load(exported)
    path = os.path.join(exported, "assets.extra", E.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]
    assert [(lg.predict_log.request.model_spec.signature_name,
             len(lg.predict_log.request.inputs)) for lg in logs][:2] == [
        ("serving_default", 1), ("predict", len(model_input_names(load_run(run["run"])[1])))]
    assert {lg.predict_log.request.model_spec.signature_name for lg in logs} == {
        "serving_default", "predict", "rank"}
    for lg in logs:
        req = lg.predict_log.request
        assert req.model_spec.name == "daian"
        # TF Serving's --enable_batching batches every signature and refuses a request whose
        # inputs differ in their first dimension: such a warmup record would fail the load
        assert len({v.tensor_shape.dim[0].size for v in req.inputs.values()}) == 1, req.model_spec
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()}
        if "context" in inputs:  # every row the example: replays also if large batch splitting splits it
            context = inputs["context"].numpy().tolist()
            assert context[0] and context == context[:1] * len(context), context
        out = loaded.signatures[req.model_spec.signature_name](**inputs)
        assert np.all(np.isfinite(out["ctr"].numpy()))


def test_request_round_trip_and_errors(run, exported):
    _, spec, _ = load_run(run["run"])
    records = E.read_eval_records(run["data"], 500)
    rid = tf.io.parse_example(tf.constant(records), {"request_id": tf.io.FixedLenFeature([], tf.string)})
    rid = rid["request_id"].numpy()
    req = C.request_from_records(spec, records, rid[0].decode())
    rows = np.flatnonzero(rid == rid[0])
    assert len(req["candidates"]) == len(rows)
    json.dumps(req)  # JSON-able
    feats = C.request_features(spec, req)
    # The features rebuilt from the request equal the pipeline's own rows of that request.
    parse = {k: v for k, v in spec.parse_example_spec(include_label=False).items()
             if k in model_input_names(spec)}
    cols = {k: v.numpy() for k, v in tf.io.parse_example(tf.constant(records), parse).items()}
    for name in model_input_names(spec):
        np.testing.assert_array_equal(feats[name], cols[name][rows], err_msg=name)
    # The schema read from the served signature equals the one from the spec.
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(open(os.path.join(exported, "saved_model.pb"), "rb").read())
    sig = json_format.MessageToDict(sm.meta_graphs[0].signature_def["predict"])
    from_sig = C.RequestSchema.from_signature(sig)
    from_spec = C.RequestSchema.from_spec(spec)
    assert (from_sig.dtypes, from_sig.seq_len) == (from_spec.dtypes, from_spec.seq_len)
    # Examples built by the client score like the pipeline's records.
    loaded = tf.saved_model.load(exported)
    a = loaded.signatures["serving_default"](examples=tf.constant(C.to_examples(feats)))["ctr"].numpy()
    b = loaded.signatures["serving_default"](
        examples=tf.constant([records[i] for i in rows]))["ctr"].numpy()
    np.testing.assert_allclose(a, b, atol=1e-7)

    # The compact `rank` form (one context example + one small example per candidate) scores the
    # same, for many candidates and for one, filled (one context row per candidate, empty after
    # the first) or not, and is much smaller on the wire.
    filled = C.rank_inputs(feats, spec)
    assert filled["context"][1:] == [b""] * (len(rows) - 1) and len(filled["candidates"]) == len(rows)
    got = loaded.signatures["rank"](context=tf.constant(filled["context"]),
                                    candidates=tf.constant(filled["candidates"]))
    np.testing.assert_allclose(got["ctr"].numpy(), b, atol=1e-7)
    rank = C.rank_inputs(feats, spec, form="one")
    assert len(rank["context"]) == 1 and rank["candidates"] == filled["candidates"]
    repeated = C.rank_inputs(feats, spec, form="repeated")  # the example in every row
    assert repeated["context"] == rank["context"] * len(rows)
    np.testing.assert_allclose(loaded.signatures["rank"](context=tf.constant(repeated["context"]), candidates=tf.constant(
        repeated["candidates"]))["ctr"].numpy(), b, atol=1e-7)
    np.testing.assert_allclose(loaded.signatures["rank"](context=tf.constant(rank["context"]), candidates=tf.constant(
        rank["candidates"]))["ctr"].numpy(), b, atol=1e-7)
    assert got["intent"].shape == (len(rows), loaded.signatures["serving_default"](
        examples=tf.constant(records[:1]))["intent"].shape[1])
    one = loaded.signatures["rank"](context=tf.constant(rank["context"]),
                                    candidates=tf.constant(rank["candidates"][:1]))
    np.testing.assert_allclose(one["ctr"].numpy(), b[:1], atol=1e-7)
    # One context per candidate (merged single-candidate requests) works; another count fails.
    per_row = loaded.signatures["rank"](context=tf.constant(rank["context"] * 2),
                                        candidates=tf.constant(rank["candidates"][:2]))
    np.testing.assert_allclose(per_row["ctr"].numpy(), b[:2], atol=1e-7)
    if len(rows) >= 3:
        with pytest.raises(tf.errors.InvalidArgumentError, match="context. must hold 1 tf.Example"):
            loaded.signatures["rank"](context=tf.constant(rank["context"] * 2),
                                      candidates=tf.constant(rank["candidates"][:3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="first row empty:.*1"):
        loaded.signatures["rank"](context=tf.constant([b""] + filled["context"][1:]),
                                  candidates=tf.constant(filled["candidates"]))
    full_bytes = sum(len(r) for r in C.to_examples(feats))
    rank_bytes = sum(len(r) for r in filled["context"] + filled["candidates"])
    assert rank_bytes * 2 < full_bytes

    bad = json.loads(json.dumps(req))
    del bad["candidates"][0]["cate_id"]
    with pytest.raises(ValueError, match=r"candidates\[0\]\.cate_id is missing"):
        C.request_features(spec, bad)
    bad = json.loads(json.dumps(req))
    bad["user"]["user_id"] = "u1"
    with pytest.raises(ValueError, match=r"user\.user_id must be an integer; received 'u1'"):
        C.request_features(spec, bad)
    with pytest.raises(ValueError, match="candidates must be a non-empty list"):
        C.request_features(spec, {**req, "candidates": []})
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        C.request_features(spec, {**req, "extra": 1})
    long = {**req, "history": [{"item_id": 1, "ts": 10, **{f: 0 for f in from_spec.item_fields}}] * 30}
    assert C.request_features(spec, long)["hist_ts"].shape[1] == spec.max_seq_len
    no_trigger = {**req, "trigger": None}
    f = C.request_features(spec, no_trigger)
    assert f["has_trigger"].tolist() == [0] * len(req["candidates"])


def _exported_weights(path, n):
    """The model's weights in an export, in the order of the Keras model's ``variables``."""
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    assert f"model/variables/{n}/.ATTRIBUTES/VARIABLE_VALUE" not in reader.get_variable_to_shape_map()
    return [reader.get_tensor(f"model/variables/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(n)]


def _requests(run, exported, n: int):
    """The spec, the first ``n`` eval requests (TIR request JSON) and each one's
    ``serving_default`` scores of its full examples."""
    _, spec, _ = load_run(run["run"])
    records = E.read_eval_records(run["data"], 500)
    rid = tf.io.parse_example(tf.constant(records), {"request_id": tf.io.FixedLenFeature([], tf.string)})
    rid = rid["request_id"].numpy()
    loaded = tf.saved_model.load(exported)
    requests, want = [], []
    for r in list(dict.fromkeys(rid))[:n]:
        requests.append(C.request_from_records(spec, records, r.decode()))
        rows = [records[i] for i in np.flatnonzero(rid == r)]
        want.append(loaded.signatures["serving_default"](examples=tf.constant(rows))["ctr"].numpy()[:, 0])
    return spec, requests, want


def test_rank_requests_merged_by_batching_keep_their_own_contexts(run, exported):
    """TF Serving's batching concatenates the inputs of several requests along the first
    dimension (and may pad by repeating the first row): filled `rank` requests merged so score
    as each alone, and as their full examples do."""
    spec, requests, want = _requests(run, exported, 3)
    parts = [C.rank_inputs(C.request_features(spec, req), spec) for req in requests]
    merged = {k: sum((p[k] for p in parts), []) for k in ("context", "candidates")}
    pad = {k: v + v[:1] * 2 for k, v in merged.items()}  # padding: copies of the first row
    rank = tf.saved_model.load(exported).signatures["rank"]
    got = rank(context=tf.constant(pad["context"]), candidates=tf.constant(pad["candidates"]))["ctr"].numpy()
    want = np.concatenate(want)
    assert len(merged["candidates"]) == len(want) > 3
    np.testing.assert_allclose(got[:len(want), 0], want, atol=1e-6)


@pytest.mark.slow  # a server and six requests on top of the module's run: `make test-slow`
def test_client_ranks_through_a_batching_server(run, exported, kit):
    """With --enable-batching (the shipped setups), concurrent `rank` calls of the client (the
    filled form) are merged into batches and each still gets its own request's scores."""
    import concurrent.futures

    spec, requests, want = _requests(run, exported, 6)
    server = kit.start_server(model_base_path=os.path.dirname(exported), model_name="daian", enable_batching=True,
                              max_batch_size=256, batch_timeout_micros=300_000, num_batch_threads=1)
    try:
        target = f"127.0.0.1:{server.grpc_port}"
        with C.PredictClient(target, "daian", timeout=60) as client, \
                concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            got = list(pool.map(lambda req: client.rank(req, schema=spec, signature="rank"), requests))
        for req, ranked, w in zip(requests, got, want):
            by_item = {c["item_id"]: s for c, s in ranked}
            np.testing.assert_allclose([by_item[c["item_id"]] for c in req["candidates"]], w, atol=1e-6)
        assert server.batch_stats()["merged_batches"] >= 1
    finally:
        server.stop()


def test_export_checkpoint_best_or_last(run, exported, tmp_path, caplog):
    """`tirec export --checkpoint best` exports the run's best checkpoint, `last` (default) its
    final weights; a run without a best checkpoint is refused, naming the flag."""
    import shutil

    from tirec import cli

    base = str(tmp_path / "models")
    # a run without a best checkpoint (trained without a valid split)
    no_best = str(tmp_path / "no_best")
    shutil.copytree(run["run"], no_best)
    shutil.rmtree(os.path.join(no_best, "best"))
    assert cli.main(["export", "--run", no_best, "--out", base, "--model-name", "m",
                     "--checkpoint", "best"]) == 2
    assert "has no best checkpoint" in caplog.text and "use --checkpoint last" in caplog.text
    # a run whose best checkpoint holds other weights than its final ones
    run_dir = str(tmp_path / "run")
    shutil.copytree(run["run"], run_dir)
    model, spec, _ = load_run(run_dir)
    x, _ = next(iter(make_dataset(run["data"], "eval", spec, 4)))
    model({k: v for k, v in x.items() if k in model_input_names(spec)})  # build: the weights load
    last = [v.numpy() for v in model.variables]
    assert last
    for v in model.trainable_variables:
        v.assign_add(tf.fill(v.shape, 0.25))
    model.save_weights(os.path.join(run_dir, "best", "weights"))
    record = {"stage": 3, "epoch": 1, "monitor": "val_auc", "value": 0.61}
    json.dump(record, open(os.path.join(run_dir, "best", "best.json"), "w"))
    best = [v.numpy() for v in model.variables]
    assert any(not np.array_equal(a, b) for a, b in zip(best, last))
    assert cli.main(["export", "--run", run_dir, "--out", base, "--model-name", "best", "--warmup-rows", "0",
                     "--checkpoint", "best"]) == 0
    # the default (the `exported` fixture, same run): last
    for path, want, name in ((os.path.join(base, "best", "1"), best, "best"), (exported, last, "last")):
        for i, (got, w) in enumerate(zip(_exported_weights(path, len(want)), want)):
            np.testing.assert_array_equal(got, w, err_msg=f"{name} variable {i}")
        assets = json.load(open(os.path.join(path, "assets", "config.json")))
        assert assets["checkpoint"] == ({"name": "best", **record} if name == "best" else {"name": "last"})
    _verify_against(os.path.join(base, "best", "1"), run_dir, run["data"])


def _verify_against(version_dir, run_dir, data_dir):
    """verify-serving compares a best-checkpoint export with the run's best weights: it passes
    with ``checkpoint="best"`` and reports the mismatch against the final weights."""
    from tirec.serving import verify

    signature = tf.saved_model.load(version_dir).signatures["serving_default"]

    class InProcessClient:  # stands in for the gRPC client: scores with the exported model
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def predict(self, examples):
            out = {k: v.numpy() for k, v in signature(examples=tf.constant(examples)).items()}
            return {**out, "_version": 1}

    real = verify.PredictClient
    verify.PredictClient = InProcessClient
    try:
        best = verify.verify_serving("in-process", "best", run_dir, data_dir, rows=64, checkpoint="best")
        last = verify.verify_serving("in-process", "best", run_dir, data_dir, rows=64)
    finally:
        verify.PredictClient = real
    assert best["ok"] and best["rows"] == 64
    assert not last["ok"] and last["bad_rows"]
    # the count is of every row over the tolerance, the list its first 50 per output
    assert set(best["rows_over_tolerance"].values()) == {0}
    listed = sum(b["output"] == "ctr" for b in last["bad_rows"])
    assert last["rows_over_tolerance"]["ctr"] >= listed > 0


def _sequences_of(spec, length):
    """``spec`` as records written with ``pipeline.max_seq_len=length`` have it."""
    features = tuple(dataclasses.replace(f, length=length) if f.kind != "scalar" and f.length == spec.max_seq_len
                     else f for f in spec.features)
    return dataclasses.replace(spec, features=features, max_seq_len=length)


def test_export_refuses_warmup_records_of_another_spec_in_one_short_line(tiny_data, tmp_path, monkeypatch):
    """As `tirec evaluate` does (check_run_data), before anything is written."""
    from tirec.models.data import load_data_spec
    from tirec.models.registry import model_spec

    spec = model_spec("din", load_data_spec(tiny_data))
    cfg = {"model": {"name": "din"}, "data": tiny_data}
    assert len(E.warmup_examples("RUN", cfg, spec, None, 3)) == 3
    monkeypatch.setattr(E, "load_run", lambda run_dir, checkpoint: (None, _sequences_of(spec, 20), cfg))
    with pytest.raises(ValueError) as err:
        E.export_run("RUN", str(tmp_path), "m", data_dir=tiny_data)
    message = str(err.value)
    assert message.startswith(f"export: the warmup records of {tiny_data} do not fit run RUN: the data spec "
                              f"differs from the expected spec: max_seq_len: 10 != 20; feature ")
    assert "length 10 != 20" in message and "more difference(s)" in message and "\n" not in message
    assert len(message) < 600 and not (tmp_path / "m").exists()
