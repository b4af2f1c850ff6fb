"""``tirec run`` across spans and retries: the model serving now is the Evaluator's baseline and
the Trainer's warm start; a backfill is judged but never pushed over a newer span's model; a
retried step does not push again; the Pusher refuses a blessing judged against another model.
(Apart from test_runner.py so that the two files' runs share the test workers.)"""
import os
import shutil

import pytest

from tirec.orchestration import components as C
from tirec.orchestration import runner

from run_helpers import LENIENT, cfg, evaluation, outputs, statuses  # tests/orchestration/run_helpers.py


def test_the_model_serving_now_is_the_baseline_and_the_warm_start(tmp_path):
    w = str(tmp_path / "w")
    serving = os.path.join(w, "serving", "din")
    assert runner.run(w, cfg(*LENIENT)).record["pushed"]["version"] == 1
    span9 = runner.run(w, cfg(*LENIENT), span=9)
    m9 = outputs(span9, "Trainer")["model"]
    assert span9.record["pushed"]["version"] == 2
    shutil.rmtree(os.path.join(serving, "1"))  # the old version pruned

    # Span 8 again (a backfill): judged against span 9's model, which serves; not pushed over
    # it (a model of older data); its Trainer cached (warm starts come from earlier spans only)
    backfill = runner.run(w, cfg(*LENIENT))
    assert statuses(backfill)["Trainer"] == "cached" and statuses(backfill)["Evaluator"] == "succeeded"
    assert evaluation(backfill)["baseline"]["uri"] == m9
    assert backfill.record["pushed"] is None and "older than span 9" in backfill.record["refused_push"]
    # span 9 again with version 1 pruned: it still starts from span 8's model, so it is reused
    again = runner.run(w, cfg(*LENIENT), span=9)
    assert statuses(again)["Trainer"] == "cached" and again.record["already_serving"]["version"] == 2
    assert sorted(os.listdir(serving)) == ["2"]


def test_a_retried_step_does_not_push_again_and_a_forced_retrain_reruns_what_follows(tmp_path):
    w = str(tmp_path / "w")
    serving = os.path.join(w, "serving", "din")
    first = runner.run(w, cfg())
    m8 = outputs(first, "Trainer")["model"]
    assert first.record["pushed"]["version"] == 1
    for _ in range(2):  # a container step retried: reused, not pushed again
        step = runner.run(w, cfg(), start="Pusher", stop="Pusher")
        assert statuses(step)["Pusher"] == "cached" and step.record["already_serving"]["version"] == 1
    forced = runner.run(w, cfg(), start="Pusher", stop="Pusher", force=True)
    assert statuses(forced)["Pusher"] == "succeeded" and forced.record["pushed"] is None
    assert forced.record["already_serving"] == {"version": 1, "path": os.path.join(serving, "1")}
    assert sorted(os.listdir(serving)) == ["1"]

    retrained = runner.run(w, cfg(), start="Trainer", stop="Trainer", force=True)
    m8b = outputs(retrained, "Trainer")["model"]
    assert m8b != m8
    after = runner.run(w, cfg())  # the new model is evaluated (against the one serving) before a push
    assert statuses(after)["Trainer"] == "cached"
    assert statuses(after)["Evaluator"] == "succeeded" and statuses(after)["Pusher"] == "succeeded"
    assert evaluation(after)["candidate"]["uri"] == m8b and evaluation(after)["baseline"]["uri"] == m8


# an error message after two trainings (46 s); `make test-slow`
@pytest.mark.slow
def test_a_served_model_that_cannot_warm_start_names_run_warm_start(tmp_path):
    w = str(tmp_path / "w")
    assert runner.run(w, cfg()).record["pushed"]["version"] == 1
    other = runner.run(w, cfg("model.tower=[8]"), span=9, stop="Trainer")  # another architecture
    error = other.executions[-1]["error"]
    assert other.status == "failed" and error.startswith("ComponentFailed: Trainer: run.warm_start: the model")
    assert "set run.warm_start=false to train from scratch" in error and "train.warm_start" not in error


def test_a_served_model_whose_folder_is_gone_fails_naming_it(tmp_path):
    w = str(tmp_path / "w")
    r = runner.Runner(w, cfg())
    try:
        model = r.store.add_artifact("Model", "model", str(tmp_path / "gone"), "fp8", 8, 0)
        version = os.path.join(w, "serving", "din", "1")
        os.makedirs(version)
        r.store.add_push(model, 1, version, 1)
        evaluator = next(c for c in r.dag if c.name == "Evaluator")
        candidate = {"model": runner.A.Artifact("Model", str(tmp_path / "m9"), "fp9", 9, 0)}
        with pytest.raises(FileNotFoundError, match=rf"baseline: the model serving as {version} was trained in "
                                                    rf"{tmp_path}/gone, which is gone.*restore that folder, "
                                                    rf"or remove {version}"):
            r._resolve(evaluator, 9, candidate)
        trainer = next(c for c in r.dag if c.name == "Trainer")
        with pytest.raises(FileNotFoundError, match=r"warm_start: .* or set run.warm_start=false"):
            r._resolve(trainer, 9, candidate)
    finally:
        r.close()


def test_the_pusher_refuses_a_blessing_judged_against_another_model():
    blessed = {"blessed": True, "reasons": ["ok: AUC"], "baseline": {"uri": "/w/m8"}}
    serving = {"model": "/w/m9", "path": "/w/serving/din/2", "version": 2, "span": 9}
    assert C._refusal(blessed, serving, 9) == ("blessed against /w/m8, but /w/serving/din/2 serves now; "
                                               "rerun with --from Evaluator --force")
    assert C._refusal(blessed, dict(serving, model="/w/m8"), 9) == ""
    assert "no model (the first model floor)" in C._refusal(dict(blessed, baseline=None), serving, 10)
    assert C._refusal(dict(blessed, baseline=None), None, 8) == ""
    # a backfill (an older span than the model serving) does not replace it
    assert "trained on span 8, older than span 9" in C._refusal(dict(blessed, baseline={"uri": "/w/m9"}),
                                                                serving, 8)
