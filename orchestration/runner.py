"""``tirec run``: the DAG of :mod:`tirec.orchestration.components` on one span, locally.

For each component in order the runner resolves its inputs (upstream outputs, and what it reads
from the metadata store: the previous span's statistics, the model serving now), computes its cache
key (component, parameters, input fingerprints) and either reuses the outputs of an earlier
execution with that key whose folders still exist (``cached``) or runs it into
``W/spans/span-<K>/<Component>/<execution>/<output>/``. A failed component stops the ones after
it (``skipped``, naming it); a rerun finds the finished ones cached and resumes there.
``--from C`` starts at C (what precedes must be cached), so that ``--from C --to C`` is one
idempotent step: C is reused when its inputs are unchanged; ``--force`` reruns C and what
follows even when cached. ``--to C`` stops after C. Each run writes
``W/runs/run-<NNNN>/run.json``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback

from tirec.config import to_dict
from tirec.features.jsonio import read_json, write_json
from tirec.orchestration import artifacts as A
from tirec.orchestration.components import Component, ComponentFailed, Context, components
from tirec.orchestration.config import RunnerConfig
from tirec.orchestration.metadata import MetadataStore, now

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    run_id: int
    span: int
    status: str
    executions: list[dict]
    path: str

    @property
    def record(self) -> dict:
        return read_json(self.path)


class Runner:
    """Runs the DAG of ``cfg`` in workdir ``workdir``; ``overrides`` replaces components by name
    (a test seam: e.g. a FeatureGen whose records carry shuffled labels)."""

    def __init__(self, workdir: str, cfg: RunnerConfig, overrides: dict[str, Component] | None = None):
        self.workdir = os.path.abspath(workdir)
        self.cfg = cfg
        self.dag = [(overrides or {}).get(c.name, c) for c in components(cfg)]
        self._store: MetadataStore | None = None

    @property
    def store(self) -> MetadataStore:
        """The workdir's metadata store, created (with the workdir) on first use: a run refused
        for its arguments leaves nothing behind."""
        if self._store is None:
            os.makedirs(self.workdir, exist_ok=True)
            self._store = MetadataStore(os.path.join(self.workdir, "metadata.sqlite"))
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def names(self) -> list[str]:
        return [c.name for c in self.dag]

    def _index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        if name not in self.names():
            raise ValueError(f"component {name!r} is not in this run's DAG: {', '.join(self.names())}")
        return self.names().index(name)

    # ---- one run ------------------------------------------------------------------------------
    def run(self, span: int | None = None, start: str | None = None, stop: str | None = None,
            force: bool = False) -> RunResult:
        span = self.cfg.run.first_span if span is None else span
        if isinstance(span, bool) or not isinstance(span, int) or span < 3:
            raise ValueError(f"--span: must be an integer >= 3 (the span's day is eval, the day before valid, "
                             f"the days before train); received {span!r}")
        days = self.cfg.generator.days
        if self.cfg.run.source == "synthetic" and span > days:
            raise ValueError(f"--span / run.first_span: the generated log has generator.days={days} days, so a "
                             f"span is at most {days}; received {span}")
        first, last = self._index(start, 0), self._index(stop, len(self.dag) - 1)
        if first > last:
            raise ValueError(f"--from {start} comes after --to {stop}")
        run_id = self.store.start_run(span, to_dict(self.cfg))
        ctx = Context(self.workdir, span, self.cfg)
        records, failed = [], None
        try:
            available: dict[str, A.Artifact] = self._external(span)
            for i, comp in enumerate(self.dag[:last + 1]):
                if failed is not None:
                    records.append({"component": comp.name, "status": "skipped", "seconds": 0.0,
                                    "error": f"not run: {failed} failed", "outputs": {}})
                    continue
                rec = self._execute(comp, ctx, run_id, available, force=force and i >= first,
                                    must_cache=i < first)
                records.append(rec)
                if rec["status"] == "failed":
                    failed = comp.name
        except Exception:  # a run that cannot start (run.input missing, --from without its cache, ...)
            self.store.finish_run(run_id, "failed")
            raise
        status = "failed" if failed else "succeeded"
        self.store.finish_run(run_id, status)
        path = self._write_run(run_id, span, status, records)
        return RunResult(run_id, span, status, records, path)

    def _external(self, span: int) -> dict[str, A.Artifact]:
        """The raw logs of a ``logs`` source: an artifact fingerprinted by its files (those in
        linked folders too)."""
        if self.cfg.run.source != "logs":
            return {}
        root = os.path.abspath(self.cfg.run.input)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"run.input {root!r} is not a folder")
        files = _walk_files(root)
        fingerprint = A.files_fingerprint(files, root)
        row = self.store.find_artifact(fingerprint)
        art_id = row["id"] if row is not None else self.store.add_artifact("RawLogs", "logs", root, fingerprint,
                                                                           span, 0)
        return {"logs": A.Artifact("RawLogs", root, fingerprint, span, art_id)}

    def _resolve(self, comp: Component, span: int, available: dict) -> dict:
        """``{name: row or None}`` (a row has ``uri`` and ``fingerprint``) of what ``comp`` reads
        from the store: the previous span's statistics; the warm start, the model of the highest
        version pushed from an earlier span (so that a rerun of a span starts as it did); the evaluator's
        baseline, the model serving now (or, when that is the candidate itself, the one it
        replaced)."""
        out = {}
        for name in comp.resolve:
            row = None
            if name == "previous_statistics":
                row = self.store.latest_artifact("ExampleStatistics", span)
                row = row if row is not None and A.is_complete(row["uri"]) else None
            elif name == "warm_start" and self.cfg.run.warm_start:
                # every push, pruned version folders too, so that a rerun starts as it did
                base = os.path.join(self.workdir, "serving", self.cfg.run.served_name)
                row = self._served_model(name, self.store.pushes_into(base), lambda r: r["span"] >= span)
            elif name == "baseline":
                row = self._served_model(name, self._serving_now(),
                                         lambda r: r["fingerprint"] == available["model"].fingerprint)
            out[name] = row
        return out

    def _serving_now(self) -> list:
        """The Pusher's versions of ``run.served_name`` whose folders still exist, the highest
        (the one TF Serving serves) first."""
        base = os.path.join(self.workdir, "serving", self.cfg.run.served_name)
        return [r for r in self.store.pushes_into(base) if os.path.isdir(r["path"])]

    def _served_model(self, role: str, versions: list, skip) -> dict | None:
        """The model of the highest of ``versions`` that ``skip`` does not leave out.

        Raises:
          FileNotFoundError: when that model's folder is gone, naming it and the way out.
        """
        row = next((r for r in versions if not skip(r)), None)
        if row is None or A.is_complete(row["uri"]):
            return row
        way_out = ("set run.warm_start=false" if role == "warm_start" else
                   f"remove {row['path']} so that the version below it serves and is the baseline")
        raise FileNotFoundError(f"{role}: the model serving as {row['path']} was trained in {row['uri']}, which "
                                f"is gone (no artifact.json); restore that folder, or {way_out}")

    def _execute(self, comp: Component, ctx: Context, run_id: int, available: dict, force: bool,
                 must_cache: bool) -> dict:
        missing = [n for n in comp.inputs if n not in available]
        if missing:
            raise ValueError(f"{comp.name}: inputs {missing} were not produced (is the DAG complete?)")
        resolved = self._resolve(comp, ctx.span, available)
        inputs = {n: available[n].fingerprint for n in comp.inputs}
        inputs.update({n: (r["fingerprint"] if r else None) for n, r in resolved.items()})
        params = comp.parameters(self.cfg, ctx.span)
        key = A.cache_key(comp.name, params, inputs)
        hit = self._cached(comp, key)
        if must_cache and hit is None:
            raise ValueError(f"--from: {comp.name} has no cached output for span {ctx.span} with this config; "
                             f"run without --from first")
        execution = self.store.start_execution(run_id, comp.name, key)
        for n in comp.inputs:
            self.store.link(execution, available[n].id, "input", n)
        if hit is not None and not force:
            return self._reuse(comp, execution, hit, available)
        ctx.resolved = {n: (r["uri"] if r else None) for n, r in resolved.items()}
        ctx.serving = _serving(self._serving_now())
        return self._run_component(comp, ctx, run_id, execution, key, params, inputs, available)

    def _cached(self, comp: Component, key: str):
        hit = self.store.cached_execution(comp.name, key)
        if hit is None:
            return None
        outs = self.store.outputs(hit["id"])
        complete = set(outs) == set(comp.outputs) and all(A.is_complete(r["uri"]) for r in outs.values())
        return hit if complete and _still_valid(comp, outs) else None

    def _reuse(self, comp: Component, execution: int, hit, available: dict) -> dict:
        outs = self.store.outputs(hit["id"])
        for name, row in outs.items():
            self.store.link(execution, row["id"], "output", name)
            available[name] = A.Artifact(row["type"], row["uri"], row["fingerprint"], row["span"], row["id"])
        self.store.finish_execution(execution, "cached", cached_from=hit["id"])
        log.info("%s: cached (execution %d)", comp.name, hit["id"])
        print(f"{comp.name}: cached (from execution {hit['id']})", flush=True)
        return {"component": comp.name, "status": "cached", "seconds": 0.0, "cached_from": hit["id"],
                "outputs": {n: r["uri"] for n, r in outs.items()}}

    def _run_component(self, comp: Component, ctx: Context, run_id: int, execution: int, key: str,
                       params: dict, inputs: dict, available: dict) -> dict:
        folder = os.path.join(self.workdir, "spans", f"span-{ctx.span}", comp.name, str(execution))
        outputs = {n: os.path.join(folder, n) for n in comp.outputs}
        print(f"{comp.name}: running (span {ctx.span})", flush=True)
        t0 = time.time()
        try:
            summary = comp.run(ctx, {n: available[n].uri for n in comp.inputs}, outputs)
        except Exception as err:  # noqa: BLE001 (recorded, and the run stops with it)
            seconds = time.time() - t0
            message = f"{type(err).__name__}: {err}"
            if not isinstance(err, ComponentFailed):
                log.error("%s failed:\n%s", comp.name, traceback.format_exc())
            self.store.finish_execution(execution, "failed", seconds, error=message)
            print(f"{comp.name}: FAILED: {message}", flush=True)
            return {"component": comp.name, "status": "failed", "seconds": round(seconds, 2), "error": message,
                    "outputs": {n: p for n, p in outputs.items() if os.path.exists(p)}}
        created = now()
        for name, type_ in comp.outputs.items():
            art = A.Artifact(type_, outputs[name], A.digest([key, name, execution]), ctx.span)
            A.write_artifact(art, comp.name, params, inputs, created)
            art = dataclasses.replace(art, id=self.store.add_artifact(type_, name, art.uri, art.fingerprint,
                                                                      ctx.span, execution))
            self.store.link(execution, art.id, "output", name)
            available[name] = art
        seconds = time.time() - t0
        self._after(comp, ctx, available, run_id)
        self.store.finish_execution(execution, "succeeded", seconds)
        print(f"{comp.name}: done in {seconds:.1f} s {summary or ''}", flush=True)
        return {"component": comp.name, "status": "succeeded", "seconds": round(seconds, 2), "summary": summary,
                "outputs": outputs}

    def _after(self, comp: Component, ctx: Context, available: dict, run_id: int) -> None:
        """Records the Evaluator's blessing and the Pusher's push in the store."""
        if "evaluation" in comp.outputs:
            ev = read_json(os.path.join(available["evaluation"].uri, "evaluation.json"))
            self.store.bless(available["model"].id, available["evaluation"].id, ctx.span, ev["blessed"],
                             ev["reasons"])
        if "pushed" in comp.outputs:
            pushed = read_json(os.path.join(available["pushed"].uri, "pushed.json"))
            if pushed["pushed"]:
                self.store.add_push(available["model"].id, pushed["version"], pushed["path"], run_id)

    # ---- the run record -----------------------------------------------------------------------
    def _write_run(self, run_id: int, span: int, status: str, records: list[dict]) -> str:
        row = self.store.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        out = {"run_id": run_id, "span": span, "status": status, "started": row["started"],
               "finished": row["finished"], "model": self.cfg.run.model, "model_name": self.cfg.run.served_name,
               "executions": records, "blessing": None, "pushed": None, "already_serving": None,
               "refused_push": None}
        by_name = {r["component"]: r for r in records}
        evaluation = by_name.get("Evaluator", {}).get("outputs", {}).get("evaluation")
        if evaluation and os.path.exists(os.path.join(evaluation, "evaluation.json")):
            ev = read_json(os.path.join(evaluation, "evaluation.json"))
            out["blessing"] = {"blessed": ev["blessed"], "reasons": ev["reasons"]}
        pusher = by_name.get("Pusher", {})
        pushed = pusher.get("outputs", {}).get("pushed")
        if pushed and os.path.exists(os.path.join(pushed, "pushed.json")):
            p = read_json(os.path.join(pushed, "pushed.json"))
            if p["pushed"] and pusher["status"] == "succeeded":
                out["pushed"] = {"version": p["version"], "path": p["path"]}
            elif p.get("path"):  # pushed by an earlier run (cached), or found serving already
                out["already_serving"] = {"version": p["version"], "path": p["path"]}
            else:
                out["refused_push"] = p["reason"]
        path = os.path.join(self.workdir, "runs", f"run-{run_id:04d}", "run.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, out)
        return path


def _serving(versions: list) -> dict | None:
    """The highest served version (``version``, ``path``, ``model``: its model's folder)."""
    if not versions:
        return None
    return {"version": versions[0]["version"], "path": versions[0]["path"], "model": versions[0]["uri"],
            "span": versions[0]["span"]}


def _still_valid(comp: Component, outs: dict) -> bool:
    """A push (or an already served model) is reusable only while its version folder exists."""
    if "pushed" not in outs:
        return True
    p = read_json(os.path.join(outs["pushed"]["uri"], "pushed.json"))
    return os.path.isdir(p["path"]) if p.get("path") else True


def run(workdir: str, cfg: RunnerConfig, span: int | None = None, start: str | None = None,
        stop: str | None = None, overrides: dict | None = None, force: bool = False) -> RunResult:
    """One ``tirec run``; see :class:`Runner`."""
    runner = Runner(workdir, cfg, overrides)
    try:
        return runner.run(span, start, stop, force)
    finally:
        runner.close()


def _walk_files(root: str) -> list[str]:
    """The files under ``root``, through linked folders, each real folder once (a link to an
    ancestor does not loop)."""
    seen, files = set(), []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files += [os.path.join(folder, n) for n in names]
    return files
