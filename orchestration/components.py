"""The components of ``tirec run``: typed functions from input artifacts to output folders.

Each component is a :class:`Component`: the upstream outputs it reads, the artifacts it writes
(name -> type), the config that keys its cache (``parameters``), and ``run(ctx, inputs,
outputs)``, which reads input folders and writes output folders and returns a small summary.
The runner (:mod:`tirec.orchestration.runner`) resolves inputs, caches, records lineage and
writes ``artifact.json``; a component never touches the metadata store itself.

``LogGen`` (synthetic source) -> ``FeatureGen`` -> ``StatisticsGen`` -> ``Trainer`` ->
``Evaluator`` -> ``Pusher``.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
from typing import Callable

import numpy as np

from tirec.config import to_dict
from tirec.features.jsonio import read_json, write_json
from tirec.orchestration import statistics as S
from tirec.orchestration.config import RunnerConfig

log = logging.getLogger(__name__)

DAY_FILE = re.compile(r"-day(\d{4})(?:\.[A-Za-z]+)+$")  # -day0009.parquet, -day0009.csv.gz
DAY_TABLES = ("impressions", "behaviours")


class ComponentFailed(RuntimeError):
    """A component refused its input (validation errors): the run stops with this message."""


@dataclasses.dataclass
class Context:
    """What a component may read besides its inputs: the span, the config, resolved
    artifacts (the previous span's statistics, the served model), the serving folder and its
    highest version now (``serving``: ``version``, ``path``, ``model``, the model's folder)."""

    workdir: str
    span: int
    cfg: RunnerConfig
    resolved: dict = dataclasses.field(default_factory=dict)  # name -> uri or None
    serving: dict | None = None

    @property
    def serving_base(self) -> str:
        return os.path.join(self.workdir, "serving")


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    inputs: tuple[str, ...]
    outputs: dict[str, str]
    parameters: Callable[[RunnerConfig, int], dict]
    run: Callable[[Context, dict[str, str], dict[str, str]], dict]
    resolve: tuple[str, ...] = ()  # names the runner resolves from the metadata store


# ---- LogGen and FeatureGen ------------------------------------------------------------------

def log_gen(ctx: Context, inputs: dict, outputs: dict) -> dict:
    """The built-in synthetic logs, one shard per day (``generator.day_files``)."""
    from tirec.pipeline import synthetic

    summary = synthetic.generate(ctx.cfg.generator, outputs["logs"])
    return {"rows": summary["rows"], "days": ctx.cfg.generator.days}


def span_files(logs: str, span: int) -> tuple[list[str], list[str]]:
    """(static table files, day shards of days <= ``span``) of a day-sharded logs folder.

    Raises:
      ComponentFailed: when the folder has no day shards, or none of day ``span``, or a
        top-level impressions or behaviours file.
    """
    static, day_files, days = static_files(logs), [], set()
    for table in DAY_TABLES:
        for path in sorted(glob.glob(os.path.join(logs, table, "*"))):
            m = DAY_FILE.search(path)
            if m is None:
                raise ComponentFailed(f"FeatureGen: {path} has no day in its name (*-day<DDDD>.<ext>); spans "
                                      f"need one shard per day (generator.day_files=true)")
            days.add(int(m.group(1)))
            if int(m.group(1)) <= span:
                day_files.append(path)
    if span not in days:
        raise ComponentFailed(f"FeatureGen: span {span} has no logs in {logs} (the last day there is "
                              f"{max(days, default=0)})")
    return static, day_files


def static_files(logs: str) -> list[str]:
    """The top-level table files of a day-sharded logs folder (items, users, item embeddings).

    Raises:
      ComponentFailed: for a top-level impressions or behaviours file, which would bring every
        day of the log into every span.
    """
    static = []
    for path in sorted(p for p in glob.glob(os.path.join(logs, "*")) if os.path.isfile(p)):
        name = os.path.basename(path)
        table = next((t for t in DAY_TABLES if name == t or name.startswith((t + ".", t + "-"))), None)
        if table is not None:
            raise ComponentFailed(f"FeatureGen: {path}: a span reads {table} from {table}/, one shard per "
                                  f"day (*-day<DDDD>.<ext>); a top-level {table} file would add every "
                                  f"day to every span")
        static.append(path)
    return static


def link_span_input(logs: str, span: int, folder: str) -> int:
    """Links the static tables and the day shards up to ``span`` into ``folder``; returns the
    number of day shards."""
    static, days = span_files(logs, span)
    for path in static + days:
        dest = os.path.join(folder, os.path.relpath(path, logs))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.symlink(os.path.abspath(path), dest)
    return len(days)


def feature_gen(ctx: Context, inputs: dict, outputs: dict) -> dict:
    """The Beam feature job on the span: the logs up to its day, split by day (eval = the span's
    day, valid = the day before)."""
    from tirec.pipeline import job

    span_input = os.path.join(os.path.dirname(outputs["examples"]), "span_input")
    shards = link_span_input(inputs["logs"], ctx.span, span_input)
    cfg = dataclasses.replace(ctx.cfg.pipeline, input=span_input, out=outputs["examples"],
                              format=ctx.cfg.run.format)
    stats = job.run(cfg)
    return {"day_shards": shards, "written": stats.get("written"), "eval_from": stats["split"].get("eval_from")}


def statistics_gen(ctx: Context, inputs: dict, outputs: dict) -> dict:
    """The span's statistics, checked against the previous span's (``validation``)."""
    out = outputs["statistics"]
    os.makedirs(out, exist_ok=True)
    current = S.compute(inputs["examples"], ctx.span, out)
    previous = ctx.resolved.get("previous_statistics")
    anomalies = S.validate(current, previous, out, ctx.cfg.validation)
    write_json(os.path.join(out, "anomalies.json"), anomalies)
    if anomalies["errors"]:
        raise ComponentFailed("StatisticsGen: span {} fails validation against {}: {}".format(
            ctx.span, previous, "; ".join(anomalies["errors"])))
    return {"warnings": len(anomalies["warnings"])}


# ---- Trainer --------------------------------------------------------------------------------

def trainer(ctx: Context, inputs: dict, outputs: dict) -> dict:
    """``tirec train`` on the span's records, warm-started from the model serving now."""
    from tirec.models.train import train_run

    warm = ctx.resolved.get("warm_start") or ""
    train_cfg = dataclasses.replace(ctx.cfg.train, warm_start=warm)
    try:
        metrics = train_run(inputs["examples"], ctx.cfg.run.model, outputs["model"], ctx.cfg.model, train_cfg)
    except ValueError as err:
        if not warm or not str(err).startswith("train.warm_start="):
            raise
        raise ComponentFailed(f"Trainer: run.warm_start: the model serving now cannot warm-start this one "
                              f"({str(err).split(': ', 1)[-1]}); set run.warm_start=false to train from "
                              f"scratch; received {warm!r}") from err
    if not warm:
        write_json(os.path.join(outputs["model"], "warm_start.json"), {"from": None, "restored": 0})
    return {"auc": metrics["auc"], "gauc": metrics["gauc"], "warm_start": warm or None}


# ---- Evaluator ------------------------------------------------------------------------------

def _score(run_dir: str, data_dir: str, slices: list[str]) -> tuple[dict, dict]:
    """(metrics with slices, predictions) of a trained run on ``data_dir``'s eval split."""
    from tirec.models import metrics as M
    from tirec.models import robustness as R
    from tirec.models.train import check_run_data, load_run, predict_eval

    model, spec, cfg = load_run(run_dir)
    check_run_data(cfg["model"]["name"], data_dir, spec)
    keep = tuple(dict.fromkeys(k for k in R.slice_columns(spec).values() if k))
    p = predict_eval(model, data_dir, spec, 4096, keep=keep)
    metrics = M.ctr_metrics(p["label"].astype(np.int64), p["prob"], p["user_id"],
                            intent_true=p.get("intent_true"), intent_pred=p.get("intent_pred"))
    metrics["slices"] = _slices(spec, data_dir, p, slices)
    metrics["uri"] = run_dir
    preds = {k: p[k] for k in ("label", "prob", "user_id", "intent_true", "intent_pred") if k in p}
    return metrics, preds


def _slices(spec, data_dir: str, p: dict, names: list[str]) -> dict:
    """Each slice's metrics; a slice the data cannot define is ``{"skipped": why}``."""
    from tirec.models import robustness as R

    try:
        return R.evaluate_slices(spec, data_dir, p, names)
    except ValueError:
        out = {}
        for name in names:
            try:
                out.update(R.evaluate_slices(spec, data_dir, p, [name]))
            except ValueError as err:
                out[name] = {"skipped": str(err)}
        return out


def evaluator(ctx: Context, inputs: dict, outputs: dict) -> dict:
    """Scores the candidate and the model serving now on the span's eval split and blesses the
    candidate when it is not worse beyond ``blessing`` (overall and per slice)."""
    from tirec.orchestration.blessing import decide

    out = outputs["evaluation"]
    os.makedirs(out, exist_ok=True)
    b = ctx.cfg.blessing
    candidate, preds = _score(inputs["model"], inputs["examples"], list(b.slices))
    np.savez(os.path.join(out, "predictions.npz"), **preds)
    baseline_uri = ctx.resolved.get("baseline")
    baseline = None
    if baseline_uri:
        baseline, base_preds = _score(baseline_uri, inputs["examples"], list(b.slices))
        np.savez(os.path.join(out, "baseline_predictions.npz"), **base_preds)
    blessed, reasons = decide(candidate, baseline, b)
    write_json(os.path.join(out, "evaluation.json"),
               {"span": ctx.span, "candidate": candidate, "baseline": baseline, "thresholds": to_dict(b),
                "blessed": blessed, "reasons": reasons, "first_model": baseline is None})
    return {"blessed": blessed, "auc": candidate["auc"]}


# ---- Pusher ---------------------------------------------------------------------------------

def next_version(base: str) -> int:
    """1 + the newest integer version folder under ``base`` (1 when there is none)."""
    versions = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
    return max(versions, default=0) + 1


def pusher(ctx: Context, inputs: dict, outputs: dict) -> dict:
    """Exports a blessed model into the serving folder as the next version; refuses an
    unblessed one, and one blessed against another model than the one serving now (serving
    keeps its version); a model already serving as the highest version is not pushed again."""
    from tirec.serving.export import export_run

    out = outputs["pushed"]
    os.makedirs(out, exist_ok=True)
    evaluation = read_json(os.path.join(inputs["evaluation"], "evaluation.json"))
    serving, model = ctx.serving, inputs["model"]
    if serving is not None and serving["model"] == model:
        return _write_push(out, {"pushed": False, "already_serving": True, "version": serving["version"],
                                 "path": serving["path"], "model_uri": model})
    reason = _refusal(evaluation, serving, ctx.span)
    if reason:
        log.warning("Pusher: span %d's model is %s; serving keeps its version", ctx.span, reason)
        return _write_push(out, {"pushed": False, "reason": reason, "model_uri": model})
    name = ctx.cfg.run.served_name
    version = next_version(os.path.join(ctx.serving_base, name))
    path = export_run(model, ctx.serving_base, name, version, inputs["examples"])
    return _write_push(out, {"pushed": True, "version": version, "path": path, "model_uri": model})


def _refusal(evaluation: dict, serving: dict | None, ctx_span: int) -> str:
    """Why a model must not be pushed ('' when it may): not blessed, trained on an older span
    than the model serving now, or blessed against another model than that one."""
    if not evaluation["blessed"]:
        return "not blessed: " + "; ".join(r for r in evaluation["reasons"] if "FAIL" in r)
    if serving is not None and serving.get("span") is not None and ctx_span < serving["span"]:
        return (f"trained on span {ctx_span}, older than span {serving['span']} of the model serving as "
                f"{serving['path']}; a backfill does not replace a model trained on newer data")
    judged = (evaluation["baseline"] or {}).get("uri")
    if judged != (serving or {}).get("model"):
        return (f"blessed against {judged or 'no model (the first model floor)'}, but "
                f"{serving['path'] if serving else 'no version'} serves now; rerun with --from Evaluator --force")
    return ""


def _write_push(out: str, pushed: dict) -> dict:
    write_json(os.path.join(out, "pushed.json"), pushed)
    return {k: v for k, v in pushed.items() if k != "model_uri"}


# ---- the DAG --------------------------------------------------------------------------------

def _pipeline_params(cfg: RunnerConfig, span: int) -> dict:
    params = to_dict(cfg.pipeline)
    params.pop("input", None)
    params.pop("out", None)
    return {"pipeline": params, "span": span, "format": cfg.run.format}


def _train_params(cfg: RunnerConfig, span: int) -> dict:
    train = to_dict(cfg.train)
    train.pop("warm_start", None)  # keyed by the resolved model's fingerprint instead
    return {"model_name": cfg.run.model, "model": to_dict(cfg.model), "train": train}


def components(cfg: RunnerConfig) -> list[Component]:
    """The DAG in order (``LogGen`` only for the synthetic source)."""
    dag = [
        Component("FeatureGen", ("logs",), {"examples": "Examples"}, _pipeline_params, feature_gen),
        Component("StatisticsGen", ("examples",), {"statistics": "ExampleStatistics"},
                  lambda c, s: {"validation": to_dict(c.validation)}, statistics_gen, ("previous_statistics",)),
        Component("Trainer", ("examples",), {"model": "Model"}, _train_params, trainer, ("warm_start",)),
        Component("Evaluator", ("examples", "model"), {"evaluation": "ModelEvaluation"},
                  lambda c, s: {"blessing": to_dict(c.blessing)}, evaluator, ("baseline",)),
        Component("Pusher", ("examples", "model", "evaluation"), {"pushed": "PushedModel"},
                  lambda c, s: {"model_name": c.run.served_name}, pusher),
    ]
    if cfg.run.source == "synthetic":
        dag.insert(0, Component("LogGen", (), {"logs": "RawLogs"},
                                lambda c, s: {"generator": to_dict(c.generator)},
                                log_gen))
    return dag
