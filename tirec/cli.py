"""The ``tirec`` command line: one subcommand per stage.

Entry functions only wire flags into the typed config and delegate to the packages.

    tirec generate --out D --users 300 --seed 7
    tirec pipeline --input D --format synthetic --out T [--intent-levels 6] [Beam flags ...]
    tirec train --data T --model daian --run RUN [--strategy mirrored --cpu-replicas 2]
    tirec evaluate --data T --run RUN [--baseline OTHER_RUN] [--noise P [--noise-seed S]] [--slice NAME ...]
    tirec export --run RUN --out BASE --model-name NAME [--version V] [--checkpoint last|best]
    tirec serving-config --out DIR --served-model NAME=/models/NAME [...]
    tirec serve --model-base-path BASE/NAME --model-name NAME [--port 8500] [--rest-port 8501]
    tirec make-request --data T --out request.json
    tirec query --target 127.0.0.1:8500 --model-name NAME --input request.json
    tirec verify-serving --target 127.0.0.1:8500 --model-name NAME --run RUN
    tirec bench quality --out DIR [--models din,daian] [...]   (a source checkout's benchmarks/)
    tirec bench peer --out DIR [--data T] [--rounds 3]          (tirec's DIN vs DeepCTR's DIN)
    tirec run --workdir W [--config pipeline.yaml] [--users N] [--span K] [--from C] [--to C] [--force]
    tirec runs --workdir W
    tirec report RUN_OR_WORKDIR [--out DIR]

Flag names agree across commands: ``--run`` is a training run folder, ``--model`` an
architecture (``din``, ``daian``), ``--model-name`` a served model's name, and
``serving-config --served-model NAME=BASE_PATH`` a served model's name and base path. The old
spellings (``train --out``, ``--model-dir``, ``export --name``, ``--model`` of ``query``,
``verify-serving`` and ``serving-config``) still work and print one deprecation line to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

import tirec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tirec import run_cli
from tirec.config import TirecConfig, config_mapping, load_config
from tirec.features.config_io import DeprecatedFlag
from tirec.orchestration.config import RunnerConfig

log = logging.getLogger("tirec")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tirec", description="Trigger-induced recommendation CTR toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_generate(sub)
    pipeline_parser = _add_pipeline(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_cluster_server(sub)
    _add_export(sub)
    _add_serving_config(sub)
    _add_serve(sub)
    _add_make_request(sub)
    _add_query(sub)
    _add_verify_serving(sub)
    _add_models(sub)
    _add_bench(sub)
    run_cli.add_commands(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "pipeline":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        _check_beam_flags(pipeline_parser, extra)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger().addFilter(_drop_beam_gcp_notice)
    try:
        return args.func(args, extra)
    except (ValueError, OSError, KeyError) as err:  # OSError: a folder given as a file, ...
        log.error("%s", err)
        return 2


def _check_beam_flags(parser: argparse.ArgumentParser, extra: list[str]) -> None:
    """Exits naming each flag that neither ``tirec pipeline`` nor Beam's options define."""
    from tirec.pipeline.runners import unknown_beam_flags, unknown_flags_message

    try:
        unknown = unknown_beam_flags(extra)
    except ValueError as err:
        parser.error(str(err))
    if unknown:
        own = [flag for action in parser._actions for flag in action.option_strings]
        parser.error(unknown_flags_message(unknown, own))


def _drop_beam_gcp_notice(record: logging.LogRecord) -> bool:
    """Beam logs an apitools/BigQuery notice on import that does not concern local runs."""
    return "apitools not found" not in record.getMessage()


def _flag(p: argparse.ArgumentParser, new: str, old: tuple[str, ...], required: bool = False,
          **kwargs) -> None:
    """Adds flag ``new`` and its old spellings ``old`` (deprecated aliases, hidden from help;
    giving both is an error)."""
    group = p.add_mutually_exclusive_group(required=required)
    action = group.add_argument(new, **kwargs)
    for alias in old:
        group.add_argument(alias, dest=action.dest, action=DeprecatedFlag, new=new,
                           type=kwargs.get("type"))


def _run_flag(p: argparse.ArgumentParser, old: tuple[str, ...], help: str) -> None:
    _flag(p, "--run", old, required=True, metavar="RUN", help=help)


# The config sections each command reads, with a --set example for its help (`tirec run` reads
# them all). A --set of another section is refused; a --config file's other sections are left
# unread with one info line (one file may serve every command).
COMMAND_SECTIONS = {
    "generate": (("generator",), "generator.days=10"),
    "pipeline": (("pipeline",), "pipeline.max_seq_len=30"),
    "train": (("model", "train"), "train.learning_rate=0.1"),
}
SECTIONS = tuple(f.name for f in dataclasses.fields(RunnerConfig))


def _common(p: argparse.ArgumentParser, command: str) -> None:
    reads, example = COMMAND_SECTIONS[command]
    p.add_argument("--config", help=f"YAML config file; this command reads its {', '.join(reads)} "
                                    f"section(s), the others are for other commands")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"dotted override of a key in {' or '.join(reads)}, e.g. --set {example} (repeatable)")


def _with_flags(args, section: str, flags) -> list[str]:
    """``--set`` overrides plus ``section.KEY=VALUE`` for each flag of ``flags`` (``(attribute,
    key)`` pairs) given; strings are quoted, so that e.g. ``--out 2024`` stays a string.

    Raises:
      ValueError: a flag and a ``--set`` of the same key with different values (naming both).
    """
    overrides = list(args.overrides)
    for attr, key in flags:
        value = getattr(args, attr)
        if value is not None:
            _check_agree(args, attr, value, f"{section}.{key}")
            overrides.append(f"{section}.{key}={json.dumps(value) if isinstance(value, str) else value}")
    return overrides


def _check_agree(args, attr: str, value, key: str) -> None:
    """Raises a ValueError naming both when a ``--set`` of ``key`` gives another value than flag
    ``attr`` (a string flag agrees with the same text, e.g. ``--out 2024`` and ``out=2024``)."""
    from tirec.features.config_io import parse_yaml

    for item in args.overrides:
        name, _, text = item.partition("=")
        if name.strip() != key:
            continue
        same = text.strip() == str(value) if isinstance(value, str) else \
            parse_yaml(text, f"override {item!r}") == value
        if not same:
            flag = f"--{'no-' if value is False else ''}{attr.replace('_', '-')}"
            shown = "" if isinstance(value, bool) else f" {value}"
            raise ValueError(f"{flag}{shown} and --set {item} disagree; give one of them")


def _load_config(args, overrides: list[str]) -> TirecConfig:
    """``args.command``'s config: the sections it reads of ``--config``, then ``overrides``.

    Raises:
      ValueError: naming a ``--set`` of a section the command does not read.
    """
    reads = COMMAND_SECTIONS[args.command][0]
    for item in args.overrides:
        key, _, value = item.partition("=")
        section = key.strip().split(".")[0]
        if section in SECTIONS and section not in reads:
            raise ValueError(_unread_override(args.command, key.strip(), value, section))
    other = sorted(set(config_mapping(args.config)) & set(SECTIONS) - set(reads)) if args.config else []
    if other:
        log.info("--config %s: tirec %s reads its %s section(s); %s are for other commands",
                 args.config, args.command, ", ".join(reads), ", ".join(other))
    return load_config(args.config, overrides, skip=other)


def _unread_override(command: str, key: str, value: str, section: str) -> str:
    readers = [f"`tirec {c}`" for c, (reads, _) in COMMAND_SECTIONS.items() if section in reads]
    note = ("; the records' sequence length, intent levels and other pipeline settings come from "
            "their spec.json (in --data), written by `tirec pipeline`: rerun that with this --set"
            if section == "pipeline" and command == "train" else "")
    return (f"--set {key}={value}: `tirec {command}` does not read the {section} section (it reads "
            f"{', '.join(COMMAND_SECTIONS[command][0])}); {section}.* is read by "
            f"{' and '.join(readers + ['`tirec run`'])}{note}")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write synthetic TIR logs (the built-in demo data)",
                       description="Write synthetic TIR logs in the generic schema (pipeline/SCHEMA.md).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--users", type=int, help="number of users (default 300)")
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument("--file-format", dest="file_format", choices=("parquet", "csv", "jsonl"),
                   help="file format of the tables (default parquet)")
    _common(p, "generate")
    p.set_defaults(func=_run_generate)


def _run_generate(args, _extra) -> int:
    from tirec.pipeline import synthetic

    overrides = _with_flags(args, "generator", (("users", "users"), ("seed", "seed"), ("file_format", "format")))
    cfg = _load_config(args, overrides).generator
    bar = _progress(total=cfg.users, unit="user", desc="generate")
    summary = synthetic.generate(cfg, args.out, progress=bar.update if bar else None)
    if bar:
        bar.close()
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_pipeline(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pipeline", help="Beam job: raw logs -> trigger-labeled TFRecords",
        description="Run the Beam feature job. Other flags go to Beam, e.g. "
                    "--direct_running_mode multi_processing --direct_num_workers 2, or "
                    "--runner FlinkRunner --flink_master host:8081; a flag that Beam's "
                    "PipelineOptions do not define is an error. The split into train/, valid/ "
                    "and eval/ follows the data (--set pipeline.split=auto|days|fraction).")
    p.add_argument("--input", help="raw input directory")
    p.add_argument("--format", choices=("synthetic", "generic", "movielens", "alimama"))
    p.add_argument("--out", help="output directory")
    p.add_argument("--intent-levels", type=int, help="number n of similarity levels (default 6)")
    p.add_argument("--trigger-window", help="trigger window, e.g. 4h (default)")
    p.add_argument("--max-seq-len", type=int, help="behaviour sequence length (default 50)")
    p.add_argument("--history-days", type=int, help="history span in days (default 14)")
    p.add_argument("--views", action=argparse.BooleanOptionalAction, default=None,
                   help="also write GAP-Net's real-time (rt_*) and long-term (lt_*) behaviour "
                        "views (default off: they grow every record)")
    p.add_argument("--realtime-window",
                   help="with --views: click window of the real-time view, e.g. 4h (default); "
                        "at least --trigger-window")
    p.add_argument("--long-seq-len", type=int,
                   help="with --views: long-term view length, over the whole log (default 200)")
    p.add_argument("--embedding-provider",
                   choices=("auto", "precomputed", "tfidf-svd", "cooccurrence-svd", "minilm"))
    p.add_argument("--no-trigger", choices=("drop", "pad"), help="impressions without a trigger")
    p.add_argument("--dask-address", metavar="tcp://HOST:8786",
                   help="with --runner dask: the Dask scheduler to run on (default: a local cluster "
                        "of --direct_num_workers worker processes, closed when the job ends)")
    _common(p, "pipeline")
    p.set_defaults(func=_run_pipeline)
    return p


def _with_dask_address(beam_args: list[str], address: str | None) -> list[str]:
    """``--dask-address`` as Beam's ``--dask_client_address``; refused without ``--runner dask``."""
    from tirec.pipeline import runners

    if address is None:
        return beam_args
    if runners.runner_name(beam_args).lower() not in runners.DASK_NAMES:
        raise ValueError(f"--dask-address {address} needs --runner dask (the runner is "
                         f"{runners.runner_name(beam_args)})")
    return beam_args + ["--dask_client_address", address]


def _run_pipeline(args, beam_args) -> int:
    from tirec.pipeline import job

    overrides = _with_flags(args, "pipeline", [(flag, flag) for flag in (
        "input", "format", "out", "intent_levels", "trigger_window", "max_seq_len", "history_days",
        "embedding_provider", "no_trigger", "views", "realtime_window", "long_seq_len")])
    cfg = _load_config(args, overrides).pipeline
    if not cfg.input or not cfg.out:
        raise ValueError("pipeline needs --input and --out (or pipeline.input / pipeline.out)")
    if not os.path.isdir(cfg.input) and "://" not in cfg.input:
        raise FileNotFoundError(f"--input {cfg.input!r} is not a directory")
    beam_args = _with_dask_address(list(beam_args), args.dask_address)
    bar = _progress(total=len(job.STAGES), unit="stage", desc="pipeline")
    last = []

    def advance(stage: str) -> None:
        if bar is not None:
            if last:
                bar.update(1)
            bar.set_postfix_str(stage)
        last.append(stage)
        log.info("pipeline: %s", stage)

    try:
        stats = job.run(cfg, beam_args, progress=advance)
        if bar is not None:
            bar.update(1)
    except job.AccountingError as err:
        print(summarize(err.stats))
        log.error("%s", err)
        return 1
    finally:
        if bar is not None:
            bar.close()
    print(summarize(stats))
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model on pipeline TFRecords",
        description="Train a registered model (`tirec models` lists them) on the output of `tirec pipeline`. "
                    "DAIAN runs its three stages unless --set train.three_stage=false. With a "
                    "valid/ split every epoch is validated on it and RUN/best/ keeps the best "
                    "epoch of the final stage; final metrics are on eval/.")
    p.add_argument("--data", required=True,
                   help="pipeline output folder (spec.json, train/, eval/, optional valid/)")
    p.add_argument("--model", required=True,
                   help="architecture: a registered model name (`tirec models` lists them), e.g. din, daian or tin")
    _run_flag(p, ("--out",), "run folder (checkpoints, logs, config.json, metrics.json)")
    p.add_argument("--strategy", choices=("default", "mirrored", "multiworker", "ps"))
    p.add_argument("--cpu-replicas", type=int,
                   help="logical CPU devices for --strategy mirrored without GPUs (required there; "
                        "1 = one replica)")
    p.add_argument("--epochs", type=int, help="epochs per stage (default 1)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 4096)")
    p.add_argument("--steps-per-epoch", type=_int_at_least(0),
                   help="cap steps per epoch (0: the whole data; required for ps)")
    _common(p, "train")
    p.set_defaults(func=_run_train)


def _run_train(args, _extra) -> int:
    overrides = _with_flags(args, "train", [(flag, flag) for flag in (
        "strategy", "cpu_replicas", "epochs", "batch_size", "steps_per_epoch")])
    _check_agree(args, "model", args.model, "model.name")  # a file's model.name: train_run warns
    cfg = _load_config(args, overrides)
    if cfg.train.strategy == "mirrored":
        from tirec.models.train import configure_cpu_replicas

        configure_cpu_replicas(cfg.train.cpu_replicas)  # before TensorFlow starts its runtime
    from tirec.models.train import train_run

    metrics = train_run(args.data, args.model, args.run, cfg.model, cfg.train)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2, default=str))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="exact eval metrics of a trained run",
                       description="AUC, GAUC, logloss (and intent KL/JS) over the whole eval "
                                   "split; RelaImpr against --baseline. Writes RUN/metrics.json.")
    p.add_argument("--data", required=True, help="pipeline output folder")
    _run_flag(p, ("--model-dir",), "run folder written by `tirec train`")
    p.add_argument("--baseline", help="another run folder to compute RelaImpr against")
    p.add_argument("--batch-size", type=_int_at_least(1), default=4096)
    p.add_argument("--noise", type=float, metavar="P",
                   help="replace P %% (0-100) of every behaviour sequence's real positions with "
                        "random catalogue items before scoring (robustness to interaction noise)")
    p.add_argument("--noise-seed", type=_int_at_least(0), metavar="S",
                   help="seed of the --noise draws (default 0); the same seed and request get the "
                        "same noisy history")
    p.add_argument("--slice", action="append", default=[], metavar="NAME",
                   help="also report the metrics of a label-free slice (repeatable, or a comma "
                        "list): drift, no_drift, new_user, returning_user, no_history, "
                        "intent_specific, intent_broad, trigger, no_trigger")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args, _extra) -> int:
    from tirec.models.train import evaluate_run

    if args.noise_seed is not None and args.noise is None:
        raise ValueError(f"--noise-seed {args.noise_seed} needs --noise P")
    metrics = evaluate_run(args.data, args.run, args.baseline, args.batch_size, noise=args.noise,
                           noise_seed=args.noise_seed or 0, slices=args.slice)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _add_cluster_server(sub) -> None:
    p = sub.add_parser("cluster-server", help="run a worker or ps task of a ParameterServer cluster",
                       description="Starts this machine's worker or ps task from TF_CONFIG and serves "
                                   "until killed; the chief runs `tirec train --strategy ps`.")
    p.set_defaults(func=_run_cluster_server)


def _run_cluster_server(args, _extra) -> int:
    from tirec.models.train import run_server

    run_server()
    return 0


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (argparse names the flag in its error)."""
    return _number(int, low)


def _number(kind: type, low, above: bool = False):
    """An argparse type: a ``kind`` (int or float) >= ``low`` (> ``low`` with ``above``)."""
    bound = f"{'an integer' if kind is int else 'a number'} {'>' if above else '>='} {low}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {bound}; received {text!r}") from None
        if not (value > low if above else value >= low):  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be {bound}; received {text}")
        return value

    return parse


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained run as a TF Serving SavedModel version",
                       description="Writes BASE/NAME/<version>/ with serving_default (serialized "
                                   "tf.Example), predict (raw tensors), rank (one request's "
                                   "candidates), classify and regress signatures, assets and "
                                   "warmup requests.")
    _run_flag(p, ("--model-dir",), "run folder written by `tirec train`")
    p.add_argument("--out", required=True, help="model base folder (holds NAME/<version>/)")
    _flag(p, "--model-name", ("--name",), required=True, metavar="NAME", help="served model name")
    p.add_argument("--version", type=_int_at_least(1), help="integer version (default: newest + 1)")
    p.add_argument("--data", help="pipeline output for warmup rows (default: the run's data)")
    p.add_argument("--warmup-rows", type=_int_at_least(0), default=8, help="eval rows in warmup requests (0: none)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="weights to export: last = the final ones (default); best = the final "
                        "stage's epoch with the best validation AUC (needs a run trained with a "
                        "valid split)")
    p.set_defaults(func=_run_export)


def _run_export(args, _extra) -> int:
    from tirec.serving.export import export_run

    path = export_run(args.run, args.out, args.model_name, args.version, args.data, args.warmup_rows,
                      checkpoint=args.checkpoint)
    print(path)
    return 0


def _add_serving_config(sub) -> None:
    from tirec.serving import tf_serving_config

    p = sub.add_parser("serving-config", help="write models.config, batching and monitoring configs "
                                              "for tensorflow_model_server",
                       description=(tf_serving_config.__doc__ or "").split("\n")[0])
    tf_serving_config.add_arguments(p)
    p.set_defaults(func=lambda args, _extra: tf_serving_config.run_from_args(args))


def _add_serve(sub) -> None:
    from tirec.serving import server

    p = sub.add_parser("serve", help="serve exported models over the TF Serving gRPC and REST APIs",
                       description="A local server speaking TF Serving's gRPC (PredictionService, "
                                   "ModelService, health) and REST APIs, for users without Docker.")
    server.add_arguments(p)
    p.set_defaults(func=lambda args, _extra: server.run_from_args(args))


def _add_make_request(sub) -> None:
    p = sub.add_parser("make-request", help="write a sample TIR request JSON from eval rows",
                       description="Rebuilds one request (user, trigger, history, candidates) from "
                                   "the pipeline's eval split, for `tirec query`.")
    p.add_argument("--data", required=True, help="pipeline output folder")
    p.add_argument("--out", required=True, help="request JSON to write")
    p.add_argument("--request-id", help="which request (default: the one with most candidates "
                                        "among the first --rows eval rows)")
    p.add_argument("--rows", type=_int_at_least(1), default=2000, help="eval rows to search")
    p.set_defaults(func=_run_make_request)


def _run_make_request(args, _extra) -> int:
    from tirec.features.jsonio import write_json
    from tirec.models.data import load_data_spec
    from tirec.serving.client import request_from_records
    from tirec.serving.export import read_eval_records

    spec = load_data_spec(args.data)
    req = request_from_records(spec, read_eval_records(args.data, args.rows), args.request_id)
    write_json(args.out, req, indent=1)
    print(f"{args.out}: user {req['user']['user_id']}, {len(req['history'])} history items, "
          f"{len(req['candidates'])} candidates")
    return 0


def _add_query(sub) -> None:
    p = sub.add_parser("query", help="score a TIR request against a TF Serving endpoint",
                       description="Sends one TIR request (user, trigger, history, candidates) "
                                   "and prints the candidates ranked by click probability. Works "
                                   "against `tirec serve` and the real tensorflow_model_server.")
    p.add_argument("--target", default="127.0.0.1:8500", help="gRPC host:port")
    _flag(p, "--model-name", ("--model",), required=True, metavar="NAME", help="served model name")
    p.add_argument("--input", required=True, help="request JSON file (- for stdin)")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--version", type=_int_at_least(1), help="pin a version")
    pin.add_argument("--label", help="pin a version label, e.g. stable (not with --version)")
    p.add_argument("--signature", default="serving_default", choices=("serving_default", "predict", "rank"),
                   help="serving_default: one full tf.Example per candidate; rank: one context example "
                        "and one small example per candidate (much smaller requests; with batching on "
                        "or off); predict: raw tensors (default: %(default)s)")
    p.add_argument("--rank-form", default="filled", choices=("filled", "repeated", "one"),
                   help="how --signature rank sends the context: filled (the example, then empty "
                        "strings), repeated (the example in every row: for a model exported before "
                        "the filled form, or TF Serving's enable_large_batch_splitting) or one (the "
                        "example once; without batching only) (default: %(default)s)")
    p.add_argument("--top", type=_int_at_least(0), default=0, help="print only the best K (0: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=_number(float, 0, above=True), default=10.0, help="deadline in seconds")
    p.set_defaults(func=_run_query)


def _run_query(args, _extra) -> int:
    import grpc

    from tirec.serving.client import PredictClient, load_request, request_warnings

    request = load_request(args.input)
    try:
        with PredictClient(args.target, args.model_name, args.version, args.label, args.timeout,
                           rank_form=args.rank_form) as client:
            schema = client.schema()
            ranked = client.rank(request, schema=schema, signature=args.signature)
    except grpc.RpcError as err:
        log.error("%s: %s", err.code().name, err.details())
        return 1
    for note in request_warnings(request, schema):  # after rank checked the request
        log.warning("%s", note)
    if args.top:
        ranked = ranked[:args.top]
    if args.json:
        print(json.dumps([{"rank": i + 1, "score": s, **c} for i, (c, s) in enumerate(ranked)], indent=1))
        return 0
    print(f"{'rank':>4}  {'item_id':>10}  {'ctr':>8}")
    for i, (cand, score) in enumerate(ranked):
        print(f"{i + 1:>4}  {cand['item_id']:>10}  {score:8.5f}")
    return 0


def _add_verify_serving(sub) -> None:
    p = sub.add_parser("verify-serving", help="check served scores equal offline scores",
                       description="Scores eval rows through the server and offline; fails naming "
                                   "the rows if any differ by more than --tolerance.")
    p.add_argument("--target", default="127.0.0.1:8500", help="gRPC host:port")
    _flag(p, "--model-name", ("--model",), required=True, metavar="NAME", help="served model name")
    _run_flag(p, ("--model-dir",), "the run the served model was exported from")
    p.add_argument("--data", help="pipeline output (default: the run's data)")
    p.add_argument("--rows", type=_int_at_least(1), default=2000, help="eval rows to compare")
    p.add_argument("--version", type=_int_at_least(1), help="pin a version")
    p.add_argument("--tolerance", type=_number(float, 0), default=1e-6,
                   help="largest allowed |served - offline| score difference (default %(default)s)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="the weights the served model was exported with (as for `tirec export`)")
    p.set_defaults(func=_run_verify_serving)


def _run_verify_serving(args, _extra) -> int:
    from tirec.serving.verify import verify_serving

    report = verify_serving(args.target, args.model_name, args.run, args.data, args.rows,
                            tolerance=args.tolerance, version=args.version, checkpoint=args.checkpoint)
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        counts = ", ".join(f"{n} on {key}" for key, n in report["rows_over_tolerance"].items() if n)
        log.error("served scores differ from offline scores beyond %g: %s row(s); e.g. %s",
                  args.tolerance, counts, report["bad_rows"][0])
        return 1
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with a one-line description",
                       description="Every name `--model` / `model.name` accepts, with what it is.")
    p.set_defaults(func=_run_models)


def _run_models(_args, _extra) -> int:
    from tirec.models.registry import describe, model_names

    names = model_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


BENCHMARKS = ("quality", "peer")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark of a source checkout (benchmarks/bench_NAME.py)",
                       description="Runs benchmarks/bench_NAME.py of the checkout this tirec runs from, "
                                   "passing the remaining arguments through (`tirec bench quality --help`).")
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    p.set_defaults(func=_run_bench)


def _run_bench(args, _extra) -> int:
    """Loads the benchmark script by path (benchmarks/ is not part of the installed package, and
    the CLI imports it only here)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        f"bench_{args.benchmark}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"tirec bench {args.benchmark}: {path} not found; the benchmarks ship with "
                                f"a source checkout of tirec, not with the installed package")
    spec = importlib.util.spec_from_file_location(f"tirec_bench_{args.benchmark}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importlib's recipe: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main(args.args)


def summarize(stats: dict) -> str:
    """A short human summary of a pipeline run's stats.json."""
    w = stats["written"]
    lines = [
        f"pipeline finished in {stats['seconds']} s ({stats['format']})",
        f"  rows in:        {stats['rows_in']}",
        f"  written:        train {w['train']}  valid {w['valid']}  eval {w['eval']}  "
        f"(CTR train {stats['ctr']['train']:.4f}, valid {stats['ctr']['valid']:.4f}, "
        f"eval {stats['ctr']['eval']:.4f})",
        f"  split:          {stats['split']['reason']}",
        f"  dropped:        {stats['dropped']}",
        f"  dead letters:   {stats['deadletter_total']} {stats['deadletter'] or ''}",
        f"  requests:       {stats['requests']} ({stats['requests_with_click']} with a click)",
        f"  intent (mean):  {stats['intent_histogram']}",
        f"  embeddings:     {stats['embedding'].get('provider')} dim {stats['embedding'].get('dim')}, "
        f"fallback items {stats['embedding'].get('fallback_items')}",
        f"  accounting:     {stats['accounting']}",
    ]
    for view, v in stats.get("views", {}).items():
        lines.insert(-1, f"  view {view}:        mean length {v['mean_len']} of {v['max_len']}, "
                         f"{v['rows_non_empty']} rows non-empty")
    return "\n".join(lines)


def _progress(total: int, unit: str, desc: str):
    if not sys.stderr.isatty() and not os.environ.get("TIREC_PROGRESS"):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc)


if __name__ == "__main__":
    sys.exit(main())
