"""Which Beam runner runs the feature job, with which flags, and the Dask cluster it may need.

* No ``--runner`` (or ``DirectRunner``): Beam's FnApiRunner, the batch engine behind
  DirectRunner, directly (Beam 2.77's DirectRunner otherwise first tries to download the Prism
  runner binary, which fails or stalls without internet). ``--direct_running_mode`` /
  ``--direct_num_workers`` apply as usual.
* ``--runner dask`` (or ``DaskRunner``, or the full name :data:`DASK_RUNNER`; any case):
  Beam's Dask runner on a ``dask.distributed`` cluster. With ``--dask_client_address
  tcp://HOST:8786`` (the CLI's ``--dask-address``) the job runs on that scheduler; without one,
  :func:`runner_for` starts a ``LocalCluster`` of ``--direct_num_workers`` worker processes
  (default: one per CPU) and closes it when the job ends. ``--dask_partition_size 1`` unless a
  partitioning flag is given (each input file its own partition). Needs the ``dask`` extra
  (``pip install 'tirec[dask]'``).
* Any other runner (Flink, Spark, Dataflow, ...): the flags go to Beam unchanged.

A flag that no Beam ``PipelineOptions`` class defines is an error naming it (Beam would drop it
with a warning).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
from typing import Iterator

log = logging.getLogger(__name__)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
DASK_NAMES = ("dask", "daskrunner", DASK_RUNNER.lower())  # compared in lower case
_DIRECT_NAMES = ("directrunner", "direct")


def _register_dask_options() -> bool:
    """Imports Beam's Dask runner module, which registers its ``--dask_*`` flags; False when
    the ``dask`` extra is not installed."""
    try:
        import dask.distributed  # noqa: F401  (the runner module imports without it, then fails late)
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:
        return False
    return True


def runner_name(args: list[str]) -> str:
    """The value of ``--runner`` in ``args`` (``DirectRunner`` when absent)."""
    return _flag_value(args, "--runner") or "DirectRunner"


def _flag_value(args: list[str], name: str) -> str | None:
    """The value of flag ``name`` (``--name V`` or ``--name=V``; the last one given, as
    argparse reads it), None when absent."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _without(args: list[str], name: str) -> list[str]:
    """``args`` less flag ``name`` and its value."""
    return [a for i, a in enumerate(args)
            if not (a == name or a.startswith(name + "=") or (i > 0 and args[i - 1] == name))]


def check_flags(args: list[str]) -> None:
    """Raises ValueError naming each flag no Beam options class defines, a bad flag value, or
    ``--runner dask`` without the ``dask`` extra."""
    runner = runner_name(args)
    if runner.lower() in DASK_NAMES and not _register_dask_options():
        raise ValueError(f"--runner {runner} needs dask.distributed: pip install 'tirec[dask]'")
    unknown = unknown_beam_flags(args)
    if unknown:
        raise ValueError(unknown_flags_message(unknown))


@contextlib.contextmanager
def runner_for(args: list[str]) -> Iterator[tuple[list[str], object]]:
    """Yields ``(flags, runner)`` for ``beam.Pipeline(runner=runner, options=flags)`` (module
    docstring); a local Dask cluster it starts lives as long as the ``with`` block.

    Raises:
      ValueError: as :func:`check_flags`.
    """
    check_flags(args)
    runner = runner_name(args).lower()
    flags = _without(list(args), "--runner")
    if runner in _DIRECT_NAMES:
        if not any(a.startswith("--direct_running_mode") for a in flags):
            flags.append("--direct_running_mode=in_memory")
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        yield flags, FnApiRunner()
    elif runner in DASK_NAMES:
        if _flag_value(flags, "--dask_npartitions") is None and _flag_value(flags, "--dask_partition_size") is None:
            # Beam's Dask Create puts up to 128 elements in one partition and its Reshuffle
            # does nothing: one partition per input file spreads the reads over the workers.
            flags += ["--dask_partition_size", "1"]
        with _dask_scheduler(flags) as flags:
            from apache_beam.runners.dask.dask_runner import DaskRunner

            yield flags, DaskRunner()
    else:
        yield list(args), None


@contextlib.contextmanager
def _dask_scheduler(flags: list[str]) -> Iterator[list[str]]:
    """``flags`` naming a Dask scheduler: the given ``--dask_client_address`` (or
    ``--dask_scheduler_file``), else a ``LocalCluster`` of ``--direct_num_workers`` processes,
    closed on exit."""
    if _flag_value(flags, "--dask_client_address") or _flag_value(flags, "--dask_scheduler_file"):
        yield flags
        return
    from dask.distributed import LocalCluster

    workers = int(_flag_value(flags, "--direct_num_workers") or 0) or (os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    log.info("started a local Dask cluster of %d worker processes at %s", workers, cluster.scheduler_address)
    try:
        yield _without(flags, "--direct_num_workers") + ["--dask_client_address", cluster.scheduler_address]
    finally:
        cluster.close()


def close_client(pipeline) -> None:
    """Closes the Dask client of a DaskRunner job that ran (also a failed one: its tasks are
    cancelled first), before its cluster closes."""
    result = getattr(pipeline, "result", None)
    client = getattr(result, "client", None)
    if client is None:
        return
    if getattr(result, "state", None) != "DONE":
        client.cancel(result.futures)
    client.close()


class _OptionsParser(argparse.ArgumentParser):
    """Collects the flags of Beam's ``PipelineOptions`` classes, as Beam's own parser does."""

    def __init__(self):
        super().__init__(allow_abbrev=False, add_help=False)
        self.flag_names: list[str] = []

    def add_argument(self, *args, **kwargs):
        self.flag_names += [a for a in args if a.startswith("-")]
        return super().add_argument(*args, **kwargs)

    def add_value_provider_argument(self, *args, **kwargs):
        if args[0][0] != "-" and kwargs.get("nargs") is None:
            kwargs["nargs"] = "?"
        return self.add_argument(*args, **kwargs)

    def error(self, message):
        raise ValueError(f"Beam flag: {message}")


def _options_parser() -> _OptionsParser:
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = _OptionsParser()
    classes = {str(c): c for c in PipelineOptions.__subclasses__()}  # as Beam deduplicates them
    for cls in classes.values():
        cls._add_argparse_args(parser)  # the hook each options class defines for its flags
    return parser


def unknown_beam_flags(args: list[str]) -> list[str]:
    """The arguments that no registered Beam ``PipelineOptions`` class accepts.

    Beam parses pipeline flags with every ``PipelineOptions`` subclass and drops the rest with a
    warning, so a misspelled flag would silently change nothing. The Dask runner's flags count
    when the ``dask`` extra is installed.

    Raises:
      ValueError: when a known flag has a bad value (e.g. ``--direct_num_workers x``).
    """
    if any("dask" in a.lower() for a in args):
        _register_dask_options()
    _, unknown = _options_parser().parse_known_args(list(args))
    return unknown


def unknown_flags_message(unknown: list[str], own_flags: list[str] = ()) -> str:
    """``unrecognized arguments: ...`` naming each flag, with the closest known flag."""
    known = list(own_flags) + _options_parser().flag_names
    hints = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1) if arg.startswith("-") else []
        hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    return (f"unrecognized arguments: {' '.join(hints)}; tirec pipeline passes on only flags that "
            f"Beam's PipelineOptions define")
