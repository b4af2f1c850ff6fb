"""The orchestration commands of the ``tirec`` CLI: ``run``, ``runs`` and ``report``.

    tirec run --workdir W [--config pipeline.yaml] [--users N] [--span K] [--from C] [--to C] [--force]
              [--set k=v]
    tirec runs --workdir W
    tirec report RUN_OR_WORKDIR [--out DIR]
"""
from __future__ import annotations

import json
import os

COMPONENTS = ("LogGen", "FeatureGen", "StatisticsGen", "Trainer", "Evaluator", "Pusher")
OUTPUTS = ("logs", "examples", "statistics", "model", "evaluation", "pushed")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "run", help="raw logs -> features -> statistics -> model -> blessing -> served version, one span",
        description="Runs the TFX-style DAG locally on one span (a day of the log): FeatureGen, "
                    "StatisticsGen (validated against the previous span), Trainer (warm-started from "
                    "the model serving now), Evaluator (blesses the candidate only if it is not worse than "
                    "the model serving now), Pusher (W/serving/NAME/<version>). Unchanged components are "
                    "reused from cache; a rerun resumes after a failure. Without --config: the built-in "
                    "synthetic logs and a small DAIAN.")
    p.add_argument("--workdir", required=True, help="artifacts, metadata.sqlite, runs/ and serving/ go here")
    p.add_argument("--config", help="YAML with generator / pipeline / model / train / run / validation / "
                                    "blessing sections")
    p.add_argument("--users", type=int, help="synthetic users (generator.users)")
    p.add_argument("--span", type=int, help="the span (day of the log) to run on (default run.first_span)")
    p.add_argument("--from", dest="start", choices=COMPONENTS,
                   help="start at this component (those before it must be cached); reused if unchanged")
    p.add_argument("--force", action="store_true",
                   help="rerun from --from (or the first component) on even when cached")
    p.add_argument("--to", dest="stop", choices=COMPONENTS, help="stop after this component")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.set_defaults(func=_run_run)
    p = sub.add_parser("runs", help="list the runs of a workdir, the blessed model, the pushed versions and the one serving")
    p.add_argument("--workdir", required=True)
    p.add_argument("--latest", metavar="OUTPUT", choices=OUTPUTS,
                   help="print only the folder of the newest artifact of this output (for scripts)")
    p.set_defaults(func=_run_runs)
    p = sub.add_parser("report", help="Markdown + HTML report with plots of a run (or a workdir's newest run)")
    p.add_argument("target", metavar="RUN_OR_WORKDIR")
    p.add_argument("--out", help="report folder (default RUN/report)")
    p.set_defaults(func=_run_report)


def _run_run(args, _extra) -> int:
    from tirec.orchestration import runner
    from tirec.orchestration.config import load_runner_config

    cfg = load_runner_config(args.config, args.overrides, users=args.users)
    result = runner.run(args.workdir, cfg, span=args.span, start=args.start, stop=args.stop, force=args.force)
    record = result.record
    print(f"run {result.run_id} (span {result.span}): {result.status}; record {result.path}")
    if record["blessing"] is not None:
        print(f"blessed: {record['blessing']['blessed']}")
    if record["pushed"]:
        print(f"pushed version {record['pushed']['version']}: {record['pushed']['path']}")
    elif record.get("already_serving"):
        serving = record["already_serving"]
        print(f"not pushed: this model already serves as version {serving['version']}: {serving['path']}")
    elif record["refused_push"]:
        print(f"not pushed ({record['refused_push']}); serving keeps its version")
    return 0 if result.status == "succeeded" else 1


def runs_table(workdir: str) -> str:
    """The workdir's runs, one line each, then the blessed model, the pushed versions and the
    one serving now (the highest whose folder is still there)."""
    from tirec.orchestration.metadata import MetadataStore

    path = os.path.join(workdir, "metadata.sqlite")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir}: no metadata.sqlite (not a `tirec run` workdir)")
    store = MetadataStore(path)
    try:
        lines = ["run  span  status     started                    components"]
        for r in store.runs():
            parts = [f"{e['component']}={e['status']}" for e in store.executions(r["id"])]
            lines.append(f"{r['id']:<4} {r['span']:<5} {r['status']:<10} {r['started']:<26} {' '.join(parts)}")
        blessed = store.db.execute(
            "SELECT a.uri, b.span FROM blessings b JOIN artifacts a ON a.id = b.model_artifact "
            "WHERE b.blessed = 1 ORDER BY b.id DESC LIMIT 1").fetchone()
        lines.append(f"blessed model: {blessed['uri']} (span {blessed['span']})" if blessed else "blessed model: none")
        for p in store.pushes():
            lines.append(f"pushed: version {p['version']} at {p['path']} (run {p['run_id']}, {p['created']})")
        serving = {}  # served folder -> its highest pushed version still there
        for p in store.pushes():
            if os.path.isdir(p["path"]) and p["version"] > serving.get(os.path.dirname(p["path"]), (0,))[0]:
                serving[os.path.dirname(p["path"])] = (p["version"], p["path"])
        lines += [f"serving: version {v} at {path}" for v, path in serving.values()] or ["serving: none"]
        return "\n".join(lines)
    finally:
        store.close()


def latest_output(workdir: str, name: str) -> str:
    """The folder of the newest artifact named ``name`` that an execution wrote successfully."""
    from tirec.orchestration.metadata import MetadataStore

    store = MetadataStore(os.path.join(workdir, "metadata.sqlite"))
    try:
        row = store.db.execute("SELECT a.uri FROM artifacts a JOIN executions x ON x.id = a.producer "
                               "WHERE a.name = ? AND x.status = 'succeeded' ORDER BY a.id DESC LIMIT 1",
                               (name,)).fetchone()
    finally:
        store.close()
    if row is None:
        raise FileNotFoundError(f"{workdir}: no {name} artifact yet")
    return row["uri"]


def _run_runs(args, _extra) -> int:
    if not os.path.exists(os.path.join(args.workdir, "metadata.sqlite")):
        raise FileNotFoundError(f"{args.workdir}: no metadata.sqlite (not a `tirec run` workdir)")
    print(latest_output(args.workdir, args.latest) if args.latest else runs_table(args.workdir))
    return 0


def _run_report(args, _extra) -> int:
    from tirec.orchestration.report import write_report

    print(json.dumps(write_report(args.target, args.out), indent=2))
    return 0
