"""A SavedModel exported by tirec before the FeatureSpec carried groups (commit e5603a7, committed
under tests/fixtures/export_v1) still loads and serves with today's code: its version-1
spec.json loads, today's client builds the same features from its request as the old client
did, and every signature answers with the scores the old code served."""
import json
import os
import shutil

import numpy as np
import pytest
from google.protobuf import json_format

from tirec import cli
from tirec.features.spec import FeatureSpec
from tirec.serving import client as C
from tirec.serving.servable import Servable

FIX = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "export_v1")
EXPORT = os.path.join(FIX, "din", "1")


def _old():
    spec_path = os.path.join(EXPORT, "assets", "spec.json")
    assert json.load(open(spec_path))["version"] == 1
    request = json.load(open(os.path.join(FIX, "request.json")))
    old_feats = dict(np.load(os.path.join(FIX, "request_features.npz")))
    old_ctr = np.array(json.load(open(os.path.join(FIX, "scores.json")))["ctr"], np.float32)
    return FeatureSpec.load(spec_path), request, old_feats, old_ctr


@pytest.fixture(scope="module")
def servable():
    return Servable.load("din", 1, EXPORT)


def test_old_export_loads_and_serves_a_request_built_from_its_spec(servable):
    spec, request, old_feats, old_ctr = _old()
    feats = C.request_features(spec, request)
    assert set(feats) == set(old_feats)
    for name, value in old_feats.items():
        np.testing.assert_array_equal(feats[name], value, err_msg=name)
        assert feats[name].dtype == value.dtype, name
    examples = np.array(C.to_examples(feats), dtype=object)
    rank = {k: np.array(v, dtype=object) for k, v in C.rank_inputs(feats, spec, form="one").items()}
    for signature, inputs in (("serving_default", {"examples": examples}), ("predict", feats),
                              ("rank", rank)):
        out = servable.call(signature, inputs)
        np.testing.assert_allclose(out["ctr"], old_ctr, atol=1e-6, err_msg=signature)
        assert out["ctr"].shape == (len(request["candidates"]), 1)
    # Its rank signature predates the filled context form: it refuses it (never scores the empty
    # rows as contexts), and the client falls back to one context (test_client_falls_back...).
    filled = {k: np.array(v, dtype=object) for k, v in C.rank_inputs(feats, spec).items()}
    assert len(request["candidates"]) > 1
    with pytest.raises(Exception, match="is required but could not be found"):
        servable.call("rank", filled)
    # The old model's serving inputs are the model inputs of its spec as loaded today.
    assert set(servable.signature("predict").inputs) == {f.name for f in spec.select(model_input=True)}


def test_client_schema_from_the_old_signature_matches_the_old_spec(servable):
    """A client without the spec reads the schema from the served `predict` signature; the groups
    it derives from the input names agree with those of the old spec."""
    spec, request, old_feats, _ = _old()
    sig = json_format.MessageToDict(servable.signature("predict"))
    from_sig = C.RequestSchema.from_signature(sig)
    from_spec = C.RequestSchema.from_spec(spec)

    def attrs(schema):
        return {f.name: (f.dtype, f.kind, f.length, f.group, f.scope, f.field, f.history)
                for f in schema.features}

    assert attrs(from_sig) == attrs(from_spec)
    feats = C.request_features(from_sig, request)
    for name, value in old_feats.items():
        np.testing.assert_array_equal(feats[name], value, err_msg=name)


@pytest.mark.parametrize("batching", [False, True])
def test_client_falls_back_to_a_repeated_context_for_an_old_rank_signature(kit, caplog, capsys, tmp_path, batching):
    """The client sends `rank` in the filled form; this export predates it and refuses it, so
    the client retries once with the context example in every row, which the old export takes
    with batching on or off, and keeps to that form. (With batching, the export is served
    without its warmup records: their `rank` record has one context row, which batching
    refuses, so the version would not load, in TF Serving neither.)"""
    spec, request, _, old_ctr = _old()
    base = os.path.join(FIX, "din")
    if batching:
        base = str(tmp_path / "din")
        shutil.copytree(os.path.join(FIX, "din"), base)
        os.remove(os.path.join(base, "1", "assets.extra", "tf_serving_warmup_requests"))
    server = kit.start_server(model_base_path=base, model_name="din", enable_batching=batching)
    try:
        with C.PredictClient(f"127.0.0.1:{server.grpc_port}", "din", timeout=30) as client:
            for _ in range(2):
                with caplog.at_level("INFO", logger="tirec.serving.client"):
                    ranked = client.rank(request, schema=spec, signature="rank")
                by_item = {c["item_id"]: s for c, s in ranked}
                np.testing.assert_allclose([by_item[c["item_id"]] for c in request["candidates"]],
                                           old_ctr[:, 0], atol=1e-6)
            assert client.rank_form == "repeated"
        assert caplog.text.count("predates the filled context form") == 1
        # `tirec query --rank-form repeated` sends that form at once: no refused first call.
        caplog.clear()
        with caplog.at_level("INFO", logger="tirec.serving.client"):
            assert cli.main(["query", "--target", f"127.0.0.1:{server.grpc_port}", "--model-name", "din",
                             "--input", os.path.join(FIX, "request.json"), "--signature", "rank",
                             "--rank-form", "repeated", "--json"]) == 0
        assert "predates" not in caplog.text
        printed = json.loads(capsys.readouterr().out)
        np.testing.assert_allclose(sorted(r["score"] for r in printed), sorted(old_ctr[:, 0]), atol=1e-6)
    finally:
        server.stop()
