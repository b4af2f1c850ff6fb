"""`tirec report`: the Markdown and HTML report of a run, its PNG plots and the notes for absent data,
on a hand-made workdir that follows ORCH_FORMATS.md (no pipeline, training or runner involved)."""
import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
REFUSAL = "AUC 0.6812 is below the baseline's 0.7105 minus the allowed drop 0.0020"


def _report():
    try:
        from tirec.orchestration import report
    except ImportError:  # the package is not installed yet: load the file itself
        path = pathlib.Path(__file__).resolve().parents[2] / "orchestration" / "report.py"
        spec = importlib.util.spec_from_file_location("orchestration_report", path)
        report = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(report)
    return report


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _artifact(w, kind, n, span, files):
    """An artifact dir W/artifacts/<kind>/<n> with artifact.json and the given JSON files."""
    d = w / "artifacts" / kind / str(n)
    _write_json(d / "artifact.json", {"type": kind, "uri": str(d), "producer": kind, "parameters": {},
                                      "inputs": {}, "fingerprint": f"{kind}{n}", "created": "2024-01-01T00:00:00",
                                      "span": span})
    for name, obj in files.items():
        _write_json(d / name, obj)
    return d


def _predictions(rng, n, users, strength):
    """Labels correlated with the probability: label ~ Bernoulli(prob), prob noisier with less strength."""
    score = rng.normal(size=n)
    prob = 1 / (1 + np.exp(-(strength * score - 1.0)))
    label = (rng.random(n) < prob).astype(np.int64)
    return {"label": label, "prob": prob.astype(np.float32), "user_id": rng.integers(0, users, n)}


def _history(epochs, start):
    e = np.arange(epochs)
    return {"loss": list(start - 0.03 * e), "auc": list(0.62 + 0.02 * e),
            "val_loss": list(start + 0.01 - 0.02 * e), "val_auc": list(0.61 + 0.015 * e), "seconds": 12.5 * epochs}


def _run(w, run_id, span, executions, **extra):
    run = {"run_id": run_id, "span": span, "status": "succeeded", "started": "2024-01-0%dT10:00:00" % run_id,
           "finished": "2024-01-0%dT10:05:00" % run_id, "model": "daian", "model_name": "daian",
           "executions": executions, "blessing": None, "pushed": None, "refused_push": None}
    run.update(extra)
    _write_json(w / "runs" / f"run-{run_id:04d}" / "run.json", run)
    return w / "runs" / f"run-{run_id:04d}"


def _exec(component, status, seconds, **outputs):
    return {"component": component, "status": status, "seconds": seconds,
            "outputs": {k: str(v) for k, v in outputs.items()}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Span 8: the first model, blessed and pushed. Span 9: a DAIAN candidate with a baseline, refused."""
    rng = np.random.default_rng(0)
    w = tmp_path_factory.mktemp("work")
    thresholds = {"min_auc": 0.55, "max_auc_drop": 0.002, "max_gauc_drop": 0.002}

    model1 = _artifact(w, "Model", 1, 8, {"metrics.json": {
        "auc": 0.70, "gauc": 0.66, "logloss": 0.52,
        "history": {"intent_pretrain": _history(2, 0.9), "joint": _history(4, 0.6)}}})
    p1 = _predictions(rng, 1500, 60, 1.4)
    ev1 = _artifact(w, "ModelEvaluation", 2, 8, {"evaluation.json": {
        "span": 8, "candidate": {"uri": str(model1), "auc": 0.7105, "gauc": 0.6631, "logloss": 0.5201,
                                 "slices": {}},
        "baseline": None, "thresholds": thresholds, "blessed": True,
        "reasons": ["first model: no baseline, AUC 0.7105 >= min_auc 0.55"], "first_model": True}})
    np.savez(ev1 / "predictions.npz", **p1)
    pushed = _artifact(w, "PushedModel", 3, 8, {"pushed.json": {"version": 1, "path": str(w / "serving/daian/1"),
                                                                "model_uri": str(model1)}})
    _run(w, 1, 8, [_exec("FeatureGen", "succeeded", 40.2, examples=w / "artifacts/Examples/0"),
                   _exec("StatisticsGen", "succeeded", 3.1),
                   _exec("Trainer", "succeeded", 120.0, model=model1),
                   _exec("Evaluator", "succeeded", 8.4, evaluation=ev1),
                   _exec("Pusher", "succeeded", 0.3, pushed=pushed)],
         blessing={"blessed": True, "reasons": ["first model: no baseline, AUC 0.7105 >= min_auc 0.55"]},
         pushed={"version": 1, "path": str(w / "serving/daian/1")})

    model2 = _artifact(w, "Model", 4, 9, {"metrics.json": {
        "auc": 0.68, "gauc": 0.65, "logloss": 0.53,
        "history": {"intent_pretrain": _history(2, 0.85), "joint": _history(3, 0.58)}}})
    n, levels = 1200, 5
    p2 = _predictions(rng, n, 50, 1.1)
    true = rng.dirichlet(np.linspace(3, 1, levels), n) * (rng.random((n, 1)) < 0.7)  # 30 % unlabelled
    p2.update(intent_true=true, intent_pred=rng.dirichlet(np.linspace(2.5, 1.2, levels), n))
    slices = {name: {"auc": a, "gauc": g, "logloss": 0.5, "rows": r} for name, a, g, r in
              (("new_users", 0.66, 0.61, 180), ("trigger_in_history", 0.69, 0.66, 640),
               ("long_history", 0.70, 0.67, 380))}
    base_slices = {k: dict(v, gauc=v["gauc"] + 0.02) for k, v in slices.items()}
    ev2 = _artifact(w, "ModelEvaluation", 5, 9, {"evaluation.json": {
        "span": 9, "candidate": {"uri": str(model2), "auc": 0.6812, "gauc": 0.6489, "logloss": 0.5302,
                                 "intent_js": 0.0412, "slices": slices},
        "baseline": {"uri": str(model1), "auc": 0.7105, "gauc": 0.6693, "logloss": 0.5190, "slices": base_slices},
        "thresholds": thresholds, "blessed": False, "reasons": [REFUSAL, "GAUC 0.6489 is below 0.6673"],
        "first_model": False}})
    np.savez(ev2 / "predictions.npz", **p2)
    np.savez(ev2 / "baseline_predictions.npz", **_predictions(rng, n, 50, 1.4))
    _run(w, 2, 9, [_exec("FeatureGen", "cached", 0.0), _exec("StatisticsGen", "succeeded", 2.9),
                   _exec("Trainer", "succeeded", 95.5, model=model2),
                   _exec("Evaluator", "succeeded", 7.7, evaluation=ev2), _exec("Pusher", "skipped", 0.0)],
         blessing={"blessed": False, "reasons": [REFUSAL, "GAUC 0.6489 is below 0.6673"]},
         refused_push="not blessed")
    return w


def _referenced(out):
    """The image paths referenced by report.md and report.html."""
    md = pathlib.Path(out["markdown"]).read_text()
    page = pathlib.Path(out["html"]).read_text()
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md), re.findall(r'<img\s[^>]*src="([^"]+)"', page), md, page


def _check_images(out, expected):
    import matplotlib.image

    in_md, in_html, md, page = _referenced(out)
    assert sorted(in_md) == sorted(in_html) == sorted(expected)
    folder = pathlib.Path(out["markdown"]).parent
    assert sorted(out["images"]) == sorted(str(folder / name) for name in expected)
    for name in in_md:
        path = folder / name
        assert path.read_bytes()[:8] == PNG, path
        img = matplotlib.image.imread(path)
        assert img.shape[0] >= 100 and img.shape[1] >= 100, (path, img.shape)
    assert "http" not in page and "<script" not in page  # static: no external resources, no JS
    return md, page


ALL = ["training_curves.png", "roc.png", "calibration.png", "gauc_by_slice.png",
       "intent_distributions.png", "span_over_span.png"]


def test_workdir_report_has_every_plot_and_the_blessing_reasons(workdir):
    out = _report().write_report(str(workdir))
    assert pathlib.Path(out["markdown"]).parent == workdir / "runs" / "run-0002" / "report"
    md, page = _check_images(out, ALL)
    for text in (md, page):
        assert "NOT BLESSED" in text and "not blessed" in text
        assert "is below the baseline" in text and "GAUC 0.6489 is below 0.6673" in text
        assert "max_auc_drop" in text and "0.7105" in text and "0.6812" in text
        assert "new_users" in text and "cached" in text
    assert "| 1 | 8 | succeeded | 0.7105 |" in md and "| 2 | 9 | succeeded | 0.6812 |" in md  # span over span
    assert "<td>8</td>" in page and "<td>9</td>" in page


def test_run_folder_report_notes_what_it_cannot_plot(workdir, tmp_path):
    out = _report().write_report(str(workdir / "runs" / "run-0001"), out=str(tmp_path / "r"))
    assert pathlib.Path(out["html"]).parent == tmp_path / "r"
    md, _ = _check_images(out, ["training_curves.png", "roc.png", "calibration.png"])
    assert "BLESSED" in md and "NOT BLESSED" not in md and "first model" in md
    assert "version 1" in md
    assert "no intent arrays" in md and "no slices" in md and "needs two spans" in md
    assert "| 1 | 8 | succeeded |" in md and "| 2 | 9 |" not in md  # the history stops at this run


def test_failed_run_without_evaluation(tmp_path):
    w = tmp_path / "w"
    _run(w, 1, 3, [_exec("FeatureGen", "succeeded", 1.0),
                   dict(_exec("Trainer", "failed", 2.0), error="OOM in stage joint")], status="failed")
    out = _report().write_report(str(w))
    md, page = _check_images(out, [])
    assert "OOM in stage joint" in md and "failed" in md and "No evaluation.json" in page


def test_no_run_json_raises_with_the_path(tmp_path):
    report = _report()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        report.write_report(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing"):
        report.write_report(str(tmp_path / "missing"))
    _write_json(tmp_path / "runs" / "run-0001" / "other.json", {})
    with pytest.raises(FileNotFoundError, match="run.json"):
        report.write_report(str(tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad" / "run.json"))):
        report.write_report(str(tmp_path / "bad"))


def test_roc_and_reliability_bins():
    report = _report()
    fpr, tpr = report.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert np.allclose(fpr, [0, 0, 0.5, 0.5, 1]) and np.allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert np.isclose(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2), 0.75)
    assert report.roc_curve([1, 1], [0.2, 0.3]) is None
    b = report.reliability_bins([0, 1, 1, 0], [0.05, 0.05, 0.95, 1.0])
    assert b["counts"].tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert np.isclose(b["rate"][0], 0.5) and np.isclose(b["mean_pred"][9], 0.975)
    assert np.isclose(b["ece"], (2 * 0.45 + 2 * 0.475) / 4)
