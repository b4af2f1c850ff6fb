"""The Beam job: raw logs -> trigger-labeled TFRecords with intent distributions.

Graph::

    files --Read--> (shard, user, block) --GroupByKey--> Shard --> train / valid / eval files
      \\--> dead letters, stats                          \\--> dead letters, stats, paths --> stats.json

* Fact tables (impressions, behaviours, users) are read in chunks by a DoFn per file; each chunk
  is validated (bad rows to the dead-letter output) and split into per-user blocks, so what goes
  through the shuffle is one element per (chunk, user), not one per row, keyed by the user's
  shard (CRC32 of the id modulo the files per split, :func:`num_shards`). A shard is the unit
  of parallelism and of memory after the shuffle: one step holds all of its blocks.
* The item table (side fields + multimodal vectors) is prepared by the launcher and loaded by
  each worker in ``setup``.
* ``Shard`` (:class:`_ShardFn`) takes the shard's users in id order; :class:`_LabelFn` runs
  :func:`tirec.pipeline.labeling.label_user` on each (a user's events are capped at
  ``max_events_per_user``, the oldest dropped and counted); :class:`_FinalizeFn` then bins
  similarities with the fixed range or the train-set quantiles (a global side
  input), computes intent distributions and explicit masks and encodes ``tf.train.Example``s;
  a record holding a non-finite float is dead-lettered (``non_finite_feature``), not written;
  64 users at a time, written to the shard's file of each split.
* The job keeps to the steps every runner executes alike (docs/pipeline.md, "What the portable
  runners share"): single-output steps, no output from ``finish_bundle``, one last step
  depending on all the others.
* The train / valid / eval split (:mod:`tirec.pipeline.split`) is planned in the launcher from
  the event times before the job starts, so a split that would be empty fails before any record
  is written; each impression is labeled with its split and routed after ``finalize``.

The job writes into a temporary sibling folder and publishes it as ``OUT`` only when the row
accounting balances and train and eval hold records (see :func:`run`).

Runs on DirectRunner by default, on Beam's Dask runner with ``--runner dask``; other Beam
flags (``--runner FlinkRunner``, ``--runner DataflowRunner --project ...``) pass through
unchanged (:mod:`tirec.pipeline.runners`, which also refuses a flag no Beam options class
defines).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
import zlib
from typing import Callable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import numpy as np

from tirec.features import transforms
from tirec.features.example import ExampleEncoder
from tirec.features.jsonio import read_json, use_filesystem, write_json
from tirec.features.spec import (CATEGORY, CATEGORY_CLICKS, HISTORY, REALTIME, FeatureSpec, TableSpec,
                                 tir_feature_spec)
from tirec.pipeline import labeling, runners
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.formats import Prepared, get_format, warn_unread_format_settings
from tirec.pipeline.io import dead_letter, read_chunks, write_jsonl
from tirec.pipeline.items import ItemTable
from tirec.pipeline.reasons import DeadReason, Drop
from tirec.pipeline.split import (SPLITS, TRAIN, SplitError, SplitPlan, SplitSettings, TimeProfile,
                                  plan_split)

# The job's JSON outputs (stats.json, config.json, meta.json) go where its records go: remote
# paths through Beam's filesystems (s3, hdfs, gs), as before the one JSON helper.
use_filesystem(FileSystems)

log = logging.getLogger(__name__)

IMP, BEH, USR = "imp", "beh", "usr"
# Events (of the split plan's table, all splits) per shard when pipeline.num_shards is 0.
RECORDS_PER_SHARD = 200_000
_TAGS = {"impressions": IMP, "behaviours": BEH, "users": USR}
SEQ_HIST_BINS = 11  # sequence-length histogram: [0], (0, L/10], ... by tenths of L


STAGES = ("prepare items and embeddings", "plan the train/valid/eval split", "run the Beam job",
          "write spec and stats")
# Names a pipeline output folder holds; an existing OUT holding anything else is not replaced.
OUTPUT_NAMES = frozenset({"train", "valid", "eval", "spec.json", "stats.json", "config.json",
                          "deadletter", "item_embeddings", "items", "_beam_stats.json"})


class AccountingError(RuntimeError):
    """The row accounting does not balance; nothing was published.

    Attributes:
      stats: the run's stats (``stats["accounting"]`` shows the imbalance).
      partial: the folder holding the unpublished output.
    """

    def __init__(self, message: str, stats: dict, partial: str):
        super().__init__(message)
        self.stats, self.partial = stats, partial


def run(cfg: PipelineConfig, beam_args: list[str] | None = None,
        progress: Callable[[str], None] | None = None) -> dict:
    """Runs the whole job, publishes ``OUT`` and returns the stats written to ``OUT/stats.json``.

    Everything is written into a temporary sibling folder ``OUT.tmp-<hex>``, which becomes
    ``OUT`` only after the checks pass: the row accounting balances and train and eval hold
    records. On a local path that is one rename (an existing ``OUT`` holding only pipeline
    outputs is replaced; one holding anything else is refused before the run). A failed run
    publishes nothing and leaves its partial output in the temporary folder, named in the error
    and the log. Object stores (``gs://``, ``s3://``, ...) have no folder rename: there the old
    ``OUT`` files are deleted and the new ones moved (copied and deleted) one by one after the
    checks, ``stats.json`` last, so ``OUT`` is complete once ``OUT/stats.json`` exists.

    Args:
      cfg: the pipeline config.
      beam_args: Beam pipeline flags, passed through unchanged.
      progress: called with each entry of :data:`STAGES` as it starts.

    Raises:
      ValueError: a flag no Beam options class defines, an ``OUT`` that is
        not a pipeline output, or (:class:`~tirec.pipeline.split.SplitError`) a split that would
        be empty, naming the option to change.
      AccountingError: the row accounting does not balance.
    """
    # 1. refuse unknown Beam flags and an OUT that is not a pipeline output, before any work
    progress = progress or (lambda stage: None)
    flags = list(beam_args or [])
    runners.check_flags(flags)
    t0 = time.time()
    out = cfg.out.rstrip("/")
    _check_out(out)
    # 2. item table, embeddings and the split plan
    prep, plan = _prepare(cfg, progress)
    # 3. the Beam job into a temporary folder, then the checks
    work = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        stats = _run_job(cfg, prep, plan, work, flags, progress, t0)
        _check_outputs(stats, plan, work)
    except BaseException:
        log.error("pipeline failed: nothing was published to %s; partial output in %s", out, work)
        raise
    # 4. publish
    _publish(work, out)
    log.info("published %s", out)
    return stats


def _prepare(cfg: PipelineConfig, progress: Callable[[str], None]) -> tuple[Prepared, SplitPlan]:
    """The launcher's work before the Beam job: the format's item table and embeddings, then
    the split plan."""
    fmt = get_format(cfg.format)
    warn_unread_format_settings(cfg)
    progress(STAGES[0])
    log.info("preparing item table and embeddings (%s format)", cfg.format)
    prep = fmt.prepare(cfg)
    progress(STAGES[1])
    return prep, _plan_split(cfg, prep)


def _plan_split(cfg: PipelineConfig, prep: Prepared) -> SplitPlan:
    """Profiles the event times (impressions, else behaviours) and plans the split."""
    source = "impressions" if prep.files.get("impressions") else "behaviours"
    log.info("reading %s times to plan the split", source)
    profile = TimeProfile.from_files(prep.files.get(source, []), prep.schemas[source], cfg.chunk_rows)
    settings = SplitSettings(cfg.split, cfg.eval_days, cfg.valid_days, cfg.eval_fraction,
                             cfg.valid_fraction)
    plan = plan_split(profile, settings, source)
    log.info("split: %s; %s per split: train %d, valid %d, eval %d", plan.reason, source,
             plan.events["train"], plan.events["valid"], plan.events["eval"])
    for note in plan.warnings:
        log.warning("split: %s", note)
    return plan


def _run_job(cfg: PipelineConfig, prep: Prepared, plan: SplitPlan, out: str, flags: list[str],
             progress: Callable[[str], None], t0: float) -> dict:
    """Writes the launcher's artifacts, runs the Beam job into ``out`` and writes the stats."""
    _makedirs(out)
    items_path = f"{out}/items/items.npz"
    _makedirs(f"{out}/items")
    prep.items.save(items_path)
    _save_artifact(prep, f"{out}/item_embeddings")
    write_jsonl(f"{out}/deadletter/launcher.jsonl", prep.dead)
    spec = _spec(cfg, prep, cfg.sim_lo, cfg.sim_hi)
    progress(STAGES[2])
    with runners.runner_for(flags) as (beam_flags, runner):
        _pipeline(cfg, prep, plan, spec, out, items_path, beam_flags, runner)
    progress(STAGES[3])
    beam_stats = read_json(f"{out}/_beam_stats.json")
    _remove(f"{out}/_beam_stats.json")
    _fill_missing_files(out, beam_stats.pop("_files", {}))
    return _finish(cfg, prep, spec, plan, beam_stats, out, time.time() - t0)


def _fill_missing_files(out: str, written: dict[str, list[str]]) -> None:
    """Writes the files no shard wrote, empty: ``part-k-of-N`` of a split for a shard that held
    no user, and the dead-letter file when there were none, so every output has its N files."""
    wanted = [f"{out}/deadletter/deadletter-00000-of-00001.jsonl"]
    for split, paths in written.items():
        if split != "deadletter" and paths:
            n = int(paths[0].rsplit("-of-", 1)[1].split(".")[0])
            wanted += [f"{out}/{split}/part-{k:05d}-of-{n:05d}.tfrecord.gz" for k in range(n)]
    done = {p for paths in written.values() for p in paths}
    for path in wanted:
        if path not in done:
            compression = (beam.io.filesystem.CompressionTypes.GZIP if path.endswith(".gz")
                           else beam.io.filesystem.CompressionTypes.UNCOMPRESSED)
            FileSystems.create(path, mime_type="application/octet-stream", compression_type=compression).close()
    log.info("written: %s", {k: len(v) for k, v in written.items()})


def _pipeline(cfg: PipelineConfig, prep: Prepared, plan: SplitPlan, spec: FeatureSpec, out: str,
              items_path: str, flags: list[str], runner) -> None:
    """Builds and runs the Beam graph (module docstring)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    lo, hi = cfg.sim_lo, cfg.sim_hi
    files = [p for t in ("impressions", "behaviours", "users") for p in prep.files.get(t, [])]
    settings = labeling.LabelSettings(
        intent_levels=cfg.intent_levels, trigger_window_s=cfg.trigger_window_s,
        history_s=cfg.history_s, max_seq_len=cfg.max_seq_len, click_btags=tuple(cfg.click_btags),
        trigger_from=prep.trigger_from, no_trigger=cfg.no_trigger,
        max_events_per_user=cfg.max_events_per_user, eval_from_ts=plan.eval_from_ts,
        item_fields=prep.item_fields, user_fields=prep.user_fields,
        context_fields=prep.context_fields, valid_from_ts=plan.valid_from_ts, spec=spec,
        realtime_window_s=cfg.realtime_window_s)
    p = beam.Pipeline(runner=runner, options=PipelineOptions(flags=flags))
    try:
        with p:
            blocks, deads, stats = _read(p, cfg, prep, files)
            label = _LabelFn(settings, items_path, files, prep.user_hook, prep.unique_rows)
            bounds, final = _label_and_write(blocks, cfg, plan, spec, label, files, out)
            deads.append(final["dead"])
            stats += [final["stats"], final["files"]]
            _dead_letters_and_stats(p, deads, stats, out, (lo, hi), bounds)
    finally:
        runners.close_client(p)


def _read(p, cfg: PipelineConfig, prep: Prepared, files: list[str]) -> tuple[list, list, list]:
    """Each input table read and validated: its blocks, dead letters and stats PCollections."""
    blocks, deads, stats = [], [], []
    for table, paths in prep.files.items():
        if not paths:
            continue
        res = _by_tag(p | f"{table}:files" >> beam.Create([(files.index(x), x) for x in paths])
                      | f"{table}:spread" >> beam.Reshuffle()
                      | f"{table}:read" >> beam.ParDo(
                          _ReadFn(_TAGS[table], prep.schemas[table], cfg.chunk_rows,
                                  tuple(cfg.click_btags), prep.block_fns.get(table))),
                      table, ("blocks", "dead", "stats"))
        blocks.append(res["blocks"])
        deads.append(res["dead"])
        stats.append(res["stats"])
    return blocks, deads, stats


def _label_and_write(blocks: list, cfg: PipelineConfig, plan: SplitPlan, spec: FeatureSpec, label: "_LabelFn",
                     files: list[str], out: str) -> tuple:
    """The blocks grouped by shard, each shard labeled, finalized and written: the quantile
    range PCollection (None with ``sim_range=fixed``) and ``{files, dead, stats}``."""
    shards = num_shards(cfg, plan)
    grouped = (blocks | "blocks:flatten" >> beam.Flatten()
               | "blocks:shard" >> beam.Map(_shard_key, shards)
               | "by_shard" >> beam.GroupByKey())
    bounds = None
    if cfg.sim_range == "quantile":
        bounds = (grouped
                  | "sims:train" >> beam.ParDo(_TrainSimsFn(label))
                  | "sims:quantiles" >> beam.ApproximateQuantiles.Globally(201)
                  | "sims:range" >> beam.Map(_quantile_bounds))
    sim_range = beam.pvalue.AsSingleton(bounds) if bounds is not None else (cfg.sim_lo, cfg.sim_hi)
    splits = tuple(s for s in SPLITS if s != "valid" or plan.valid_from_ts is not None)
    finalize = _FinalizeFn(spec, cfg.explicit_threshold, cfg.explicit_top_levels, files, cfg.prior_intent_half_life_s)
    return bounds, _by_tag(grouped | "shard" >> beam.ParDo(_ShardFn(label, finalize, out, splits, shards), sim_range),
                           "shard", ("files", "dead", "stats"))


def _dead_letters_and_stats(p, deads: list, stats: list, out: str, fixed_range: tuple, bounds) -> None:
    """Writes the dead letters and, as the last step (it depends on every other: Beam's
    DaskRunner computes only the graph behind the last step applied), the merged stats."""
    dead_all = deads | "dead:flatten" >> beam.Flatten()
    dead_written = _write_lines(
        dead_all | "dead:json" >> beam.Map(lambda d: (json.dumps(d, default=str) + "\n").encode()),
        "dead:write", f"{out}/deadletter/deadletter-00000-of-00001.jsonl")
    stats = stats + [dead_all | "dead:count" >> beam.Map(_dead_stat), _range_stat(p, *fixed_range, bounds),
                     dead_written | "written:deadletter" >> beam.Map(lambda path: {"_files": {"deadletter": [path]}})]
    _ = (stats
         | "stats:flatten" >> beam.Flatten()
         | "stats:merge" >> beam.CombineGlobally(_MergeStats()).without_defaults()
         | "stats:write" >> beam.Map(lambda merged, path: write_json(path, merged), f"{out}/_beam_stats.json"))


def num_shards(cfg: PipelineConfig, plan: SplitPlan) -> int:
    """Shards, and files per split: ``pipeline.num_shards``, or with 0 one per
    :data:`RECORDS_PER_SHARD` events the split plan counted over all splits (at least one);
    a warning when the shards are large (memory of one step)."""
    shards = cfg.num_shards or max(1, math.ceil(sum(plan.events.values()) / RECORDS_PER_SHARD))
    per_shard = sum(plan.events.values()) / shards
    if per_shard > 5 * RECORDS_PER_SHARD:
        log.warning("pipeline.num_shards=%d: about %d events per shard, held by one step; more shards "
                    "(or 0: one per %d) bound its memory", shards, per_shard, RECORDS_PER_SHARD)
    return shards


def _shard_key(element, shards: int):
    """``(user, (tag, block))`` -> ``(shard, (user, tag, block))``: a user's shard is its id's
    CRC32 modulo ``shards``, the same on every runner and worker."""
    user, (tag, block) = element
    return zlib.crc32(str(user).encode()) % shards, (user, tag, block)


def _range_stat(p, lo: float, hi: float, bounds):
    """The binning range actually used, as a stats element."""
    if bounds is not None:
        return bounds | "range:stat" >> beam.Map(lambda b: {"_sim_range": [list(b)]})
    return p | "range:stat" >> beam.Create([{"_sim_range": [[lo, hi]]}])


# ---- DoFns -----------------------------------------------------------------------------------


class _ReadFn(beam.DoFn):
    """Reads one file in chunks; emits ``("blocks", (user_id, (tag, block)))``, ``("dead", d)``
    and ``("stats", s)``."""

    def __init__(self, tag, schema, chunk_rows, click_btags, block_fn=None):
        self.tag, self.schema, self.chunk_rows, self.click_btags = tag, schema, chunk_rows, click_btags
        self.block_fn = block_fn

    def process(self, element):
        file_idx, path = element
        rows_in, filled, unread = 0, {}, set()
        for chunk, dead in read_chunks(path, self.schema, self.chunk_rows):
            rows_in += len(chunk) + len(dead)
            _merge_into(filled, {f"{self.schema.name}/{col}": n for col, n in chunk.filled.items()})
            unread.update(chunk.unread)
            for d in dead:
                yield "dead", d
            if not len(chunk):
                continue
            cols, rows = chunk.columns, chunk.rows
            # A format's block function may reject rows that need several columns to judge
            # (e.g. Alimama's clk + nonclk == 1): reject(cols) -> [(index, reason, field, value)].
            reject = getattr(self.block_fn, "reject", None)
            bad = reject(cols) if reject is not None else []
            if bad:
                keep = np.ones(len(rows), dtype=bool)
                for i, reason, field, value in bad:
                    keep[i] = False
                    yield "dead", dead_letter(self.schema.name, reason, field=field, value=value,
                                              file=path, row=int(rows[i]))
                cols, rows = {k: v[keep] for k, v in cols.items()}, rows[keep]
                if not len(rows):
                    continue
            if self.block_fn is not None:
                cols = self.block_fn(cols)
            cols["_file"] = np.full(len(rows), file_idx, dtype=np.int64)
            cols["_row"] = rows
            if self.tag == BEH:
                cols["btag_id"], cols["is_click"] = labeling.encode_btags(cols.pop("btag"),
                                                                          self.click_btags)
            for user, block in _split_by_user(cols):
                yield "blocks", (user, (self.tag, block))
        _count(f"{self.schema.name}_rows_in", rows_in)
        yield "stats", {"rows_in": {self.schema.name: rows_in}, "filled_default": filled,
                        "unread_columns": {self.schema.name: sorted(unread)}}


class _LabelFn(beam.DoFn):
    """Collects a user's blocks (with a running cap) and labels the user's impressions."""

    def __init__(self, settings, items_path, files, user_hook, unique_rows=()):
        self.settings, self.items_path, self.files, self.user_hook = settings, items_path, files, user_hook
        self.unique_rows = tuple(unique_rows)
        self.items = None

    def setup(self):
        self.items = ItemTable.load(self.items_path)

    def process(self, element):
        user, tagged = element
        s = self.settings
        parts = {IMP: [], BEH: [], USR: []}
        sizes = {IMP: 0, BEH: 0}
        stats: dict = {}
        for tag, block in tagged:
            parts[tag].append(block)
            if tag in sizes:
                sizes[tag] += len(block["ts"])
                if sizes[tag] > 2 * s.max_events_per_user:  # bound the state per key
                    merged = _latest(parts[tag], s.max_events_per_user, stats, tag)
                    parts[tag], sizes[tag] = [merged], len(merged["ts"])
        dups: list = []
        imps = self._unique(IMP, _concat(parts[IMP]), dups, stats)
        behs = self._unique(BEH, _concat(parts[BEH]), dups, stats)
        for d in dups:
            yield "dead", d
        profile = None
        if parts[USR]:
            prof = _concat(parts[USR])
            n_prof = len(prof["_row"])
            for i in range(1, n_prof):
                yield "dead", {
                    "table": "users", "reason": DeadReason.DUPLICATE_ID.value, "field": "user_id", "value": str(user),
                    "file": self.files[int(prof["_file"][i])], "row": int(prof["_row"][i])}
            profile = {f.name: prof[f.name][0] for f in s.spec.select(group="user") if f.name in prof}
            labeling._add(stats, "users_with_profile", 1)
        if self.user_hook is not None:
            imps, hook_stats = self.user_hook(user, behs, self.items)
            _merge_into(stats, hook_stats)
        cols, dead, st = labeling.label_user(user, imps, behs, profile, self.items, s, self.files)
        _merge_into(stats, st)
        for d in dead:
            yield "dead", d
        for drop in Drop:
            _count(drop.value, stats.get(drop.value, 0))
        if len(cols["label"]):
            labeling._add(stats, "users_labeled", 1)
            yield "users", cols
        yield "stats", stats


    def _unique(self, tag: str, cols: dict | None, dead: list, stats: dict) -> dict | None:
        """``cols`` without rows written twice when the format says equal rows of the table are
        duplicates (``Prepared.unique_rows``), before a user hook derives impressions from them;
        else with its equal rows counted (``repeated_rows``). A user over twice
        ``max_events_per_user`` was capped (most recent kept) first."""
        table = "impressions" if tag == IMP else "behaviours"
        if table in self.unique_rows:
            return labeling.drop_duplicates(cols, table, dead, self.files)
        _merge_into(stats, {"repeated_rows": {table: labeling.repeated_rows(cols)}})
        return cols


class _ShardFn(beam.DoFn):
    """One shard of users (after the GroupByKey on the shard): labels each user, finalizes them
    in batches of whole users and writes the shard's file of every split,
    ``SPLIT/part-SSSSS-of-NNNNN.tfrecord.gz`` (GZIP); emits the paths, dead letters and stats.

    Users go in id order and each file is written whole under its final name, so every runner
    writes the same records to the same files and a retried shard rewrites them. The records are written where
    they are made: no shuffle carries them (Beam's file sinks, which do, report what they wrote
    from ``finish_bundle``, which Beam's DaskRunner drops)."""

    def __init__(self, label: "_LabelFn", finalize: "_FinalizeFn", out: str, splits: tuple[str, ...],
                 shards: int, batch_users: int = 64):
        self.label, self.finalize, self.out, self.splits = label, finalize, out, splits
        self.shards, self.batch_users = shards, batch_users

    def setup(self):
        self.label.setup()
        self.finalize.setup()

    def process(self, element, sim_range):
        shard, tagged = element
        paths = {split: f"{self.out}/{split}/part-{shard:05d}-of-{self.shards:05d}.tfrecord.gz"
                 for split in self.splits}
        handles = {split: FileSystems.create(path, mime_type="application/octet-stream",
                                             compression_type=beam.io.filesystem.CompressionTypes.GZIP)
                   for split, path in paths.items()}
        try:
            batch = []
            for user, blocks in _blocks_by_user(tagged):
                for tag, value in self.label.process((user, blocks)):
                    if tag == "users":
                        batch.append(value)
                    else:
                        yield tag, value
                if len(batch) == self.batch_users:
                    yield from self._write(batch, handles, sim_range)
                    batch = []
            if batch:
                yield from self._write(batch, handles, sim_range)
        finally:
            for fh in handles.values():
                fh.close()
        yield "files", {"_files": {split: [path] for split, path in paths.items()}}

    def _write(self, users: list[dict], handles: dict, sim_range):
        for tag, value in self.finalize.process(_concat_users(users), sim_range):
            if tag in handles:
                handles[tag].write(value)
            elif tag in ("dead", "stats"):
                yield tag, value
            else:
                raise ValueError(f"records for split {tag!r}, which this job does not write")


class _TrainSimsFn(beam.DoFn):
    """One shard of users -> the trigger-target similarities of their train records (for
    ``sim_range=quantile``: the users are labeled here and again in ``_ShardFn``, since the
    range must be known before any record is finalized)."""

    def __init__(self, label: "_LabelFn"):
        self.label = label

    def setup(self):
        self.label.setup()

    def process(self, element):
        _, tagged = element
        for user, blocks in _blocks_by_user(tagged):
            for tag, value in self.label.process((user, blocks)):
                if tag == "users":
                    yield from _train_sims(value)


def _blocks_by_user(tagged) -> list:
    """A shard's ``(user, tag, block)`` elements -> ``[(user, [(tag, block), ...]), ...]`` in user
    id order."""
    users: dict = {}
    for user, tag, block in tagged:
        users.setdefault(user, []).append((tag, block))
    return sorted(users.items(), key=lambda kv: kv[0])


class _FinalizeFn(beam.DoFn):
    """Bins similarities, adds intent distributions and explicit masks, encodes records.

    Each input is a batch of whole users (``_ShardFn`` never splits a user), so a user's
    ``prior_intent`` sees all of the user's earlier requests. Each record goes to its split's
    output (``train``, ``valid``, ``eval``); a record holding a NaN or infinite float is
    dead-lettered (``non_finite_feature``) instead.
    """

    def __init__(self, spec, explicit_threshold, explicit_top_levels, files, prior_half_life_s):
        self.spec, self.tau, self.top = spec, explicit_threshold, explicit_top_levels
        self.files = list(files)
        self.prior_half_life_s = prior_half_life_s
        self.encoder = None

    def setup(self):
        self.encoder = ExampleEncoder(self.spec)

    def process(self, cols, sim_range):
        lo, hi = sim_range
        n = self.spec.intent_levels
        tau = self.tau if self.tau is not None else transforms.explicit_threshold(n, self.top, lo, hi)
        out, stats = labeling.finalize(cols, n, lo, hi, tau, prior_half_life_s=self.prior_half_life_s,
                                       category_clicks=CATEGORY_CLICKS in self.spec.names)
        yield from self._route(cols, out, stats)

    def _route(self, cols: dict, out: dict, stats: dict):
        """Dead-letters records with a non-finite float; encodes the rest into their splits."""
        split = cols["_split"]
        bad = self.encoder.nonfinite_rows(out)
        if bad:
            for i, (feature, value) in sorted(bad.items()):
                f = int(cols["_file"][i])
                yield "dead", dead_letter(
                    "impressions", DeadReason.NON_FINITE_FEATURE, field=feature, value=value,
                    file=self.files[f] if 0 <= f < len(self.files) else None,
                    row=int(cols["_row"][i]) if cols["_row"][i] >= 0 else None)
            keep = np.ones(len(split), dtype=bool)
            keep[list(bad)] = False
            out, split = {k: v[keep] for k, v in out.items()}, split[keep]
        stats.update(_record_stats(out, split, self.spec.max_seq_len))
        stats.update(_view_stats(out, self.spec))
        for k, name in enumerate(SPLITS):
            mask = split == k
            _count(f"written_{name}", int(mask.sum()))
            if mask.any():
                framed = frame_tfrecords(self.encoder.encode_batch({c: v[mask] for c, v in out.items()}))
                yield name, framed
        yield "stats", stats


def _by_tag(pcoll, label: str, tags: tuple[str, ...]) -> dict:
    """``(tag, value)`` elements -> ``{tag: PCollection of values}``, one single-output step per tag.

    The job's DoFns emit tagged pairs instead of Beam's multi-output ``with_outputs``: Beam's
    DaskRunner hands every output of a multi-output ParDo to each consumer, so the job keeps to
    single-output steps, which every runner executes alike."""
    return {tag: pcoll | f"{label}:{tag}" >> beam.FlatMap(_values_of, tag) for tag in tags}


def _values_of(element, tag: str):
    if element[0] == tag:
        yield element[1]


def _write_lines(pcoll, label: str, path: str):
    """Byte lines -> one file ``path``, written whole by one step after a GroupByKey on one key
    (a retried step rewrites it); a PCollection of the path. (Beam's file sinks report what they
    wrote from ``finish_bundle``, which Beam's DaskRunner drops.)"""
    return (pcoll
            | f"{label}:key" >> beam.Map(lambda line: (0, line))
            | f"{label}:group" >> beam.GroupByKey()
            | f"{label}:write" >> beam.Map(_write_file, path))


def _write_file(element, path: str) -> str:
    _, lines = element
    fh = FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type=beam.io.filesystem.CompressionTypes.UNCOMPRESSED)
    try:
        for line in lines:
            fh.write(line)
    finally:
        fh.close()
    return path


class _MergeStats(beam.CombineFn):
    """Sums nested stats dicts (numbers and numpy arrays add; lists concatenate)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, x):
        _merge_into(acc, x)
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for a in accs:
            _merge_into(out, a)
        return out

    def extract_output(self, acc):
        return acc


# ---- helpers ---------------------------------------------------------------------------------


def _count(name: str, n: int) -> None:
    """A Beam counter (namespace ``tirec``): visible in the Dataflow / Flink UIs while running."""
    if n:
        beam.metrics.Metrics.counter("tirec", name).inc(int(n))


def _dead_stat(d: dict) -> dict:
    _count(f"deadletter_{d['table']}_{d['reason']}", 1)
    return {"deadletter": {f"{d['table']}/{d['reason']}": 1}}


def _split_by_user(cols: dict):
    users = cols["user_id"]
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    cuts = np.flatnonzero(np.diff(sorted_users)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(order)]])
    for a, b in zip(starts, ends):
        idx = order[a:b]
        yield int(sorted_users[a]), {k: v[idx] for k, v in cols.items() if k != "user_id"}


def frame_tfrecords(records: list[bytes]) -> bytes:
    """Concatenates records in TFRecord framing: length, masked CRC32C of the length, data,
    masked CRC32C of the data (all little-endian)."""
    import struct

    import google_crc32c

    def masked(data: bytes) -> int:
        crc = google_crc32c.value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    parts = []
    for r in records:
        length = struct.pack("<Q", len(r))
        parts += [length, struct.pack("<I", masked(length)), r, struct.pack("<I", masked(r))]
    return b"".join(parts)


def _concat_users(users: list[dict]) -> dict:
    """Concatenates several users' labeled columns, keeping request indices distinct."""
    if len(users) == 1:
        return users[0]
    offsets = np.cumsum([0] + [int(u["_request"].max()) + 1 for u in users[:-1]])
    out = {k: np.concatenate([u[k] for u in users]) for k in users[0] if k != "_request"}
    out["_request"] = np.concatenate([u["_request"] + o for u, o in zip(users, offsets)])
    return out


def _concat(blocks: list[dict]) -> dict | None:
    if not blocks:
        return None
    if len(blocks) == 1:
        return blocks[0]
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _latest(blocks: list[dict], cap: int, stats: dict, tag: str) -> dict:
    merged = _concat(blocks)
    n = len(merged["ts"])
    order = np.argsort(merged["ts"], kind="stable")[n - cap:]
    order.sort()
    drop = Drop.IMPRESSIONS_USER_CAP if tag == IMP else Drop.BEHAVIOURS_USER_CAP
    labeling._add(stats, drop.value, n - cap)
    return {k: v[order] for k, v in merged.items()}


def _record_stats(out: dict, split: np.ndarray, max_len: int) -> dict:
    n_levels = out["intent_dist"].shape[1]
    first_of_request = np.unique(out["request_id"].astype(str), return_index=True)[1]
    clicks = out["intent_counts"][first_of_request].sum(axis=1)
    seq_bins = np.minimum(np.ceil(out["hist_len"] * 10 / max_len), 10).astype(np.int64)
    exp_len = out["explicit_mask"].sum(axis=1)
    exp_bins = np.minimum(np.ceil(exp_len * 10 / max_len), 10).astype(np.int64)
    return {
        "written": {name: int((split == k).sum()) for k, name in enumerate(SPLITS)},
        "clicks": {name: int(out["label"][split == k].sum()) for k, name in enumerate(SPLITS)},
        "requests": int(len(first_of_request)),
        "requests_with_click": int((clicks > 0).sum()),
        "intent_mass": out["intent_dist"][first_of_request].sum(axis=0).astype(np.float64),
        "seq_len_hist": np.bincount(seq_bins, minlength=SEQ_HIST_BINS),
        "explicit_len_hist": np.bincount(exp_bins, minlength=SEQ_HIST_BINS),
        "with_trigger": int(out["has_trigger"].sum()),
        "n_levels": [n_levels],
    }


def _view_stats(out: dict, spec: FeatureSpec) -> dict:
    """Per behaviour view other than ``hist`` (``pipeline.views``): rows whose view is not
    empty, the sum of lengths and the length histogram by tenths of the view's length."""
    lengths = {v: n for v, n in spec.histories().items() if v != HISTORY}
    if not lengths:
        return {}
    stats: dict = {"view_non_empty": {}, "view_len_sum": {}, "view_len_hist": {}}
    for view, max_len in lengths.items():
        n = out[spec.select(group="history", history=view, field="len")[0].name]
        stats["view_non_empty"][view] = int((n > 0).sum())
        stats["view_len_sum"][view] = int(n.sum())
        bins = np.minimum(np.ceil(n * 10 / max_len), 10).astype(np.int64)
        stats["view_len_hist"][view] = np.bincount(bins, minlength=SEQ_HIST_BINS)
    return stats


def _merge_into(acc: dict, x: dict) -> None:
    for k, v in x.items():
        if isinstance(v, dict):
            _merge_into(acc.setdefault(k, {}), v)
        elif isinstance(v, list):
            acc[k] = acc.get(k, []) + v
        elif k in acc:
            acc[k] = acc[k] + v
        else:
            acc[k] = v


def _train_sims(cols: dict):
    keep = (cols["_split"] == TRAIN) & (cols["has_trigger"] == 1)
    return cols["trigger_target_sim"][keep].tolist()


def _quantile_bounds(quantiles: list) -> tuple[float, float]:
    # 201 quantiles are 0, 0.5, ..., 100 %: take 0.5 % and 99.5 %.
    lo, hi = float(quantiles[1]), float(quantiles[-2])
    if not hi > lo:
        raise ValueError(f"train-set similarity quantiles collapse to {lo}; use sim_range=fixed")
    return lo, hi


def _spec(cfg: PipelineConfig, prep: Prepared, lo: float, hi: float) -> FeatureSpec:
    return tir_feature_spec(item_fields=prep.item_fields, user_fields=prep.user_fields,
                            context_fields=prep.context_fields, intent_levels=cfg.intent_levels,
                            max_seq_len=cfg.max_seq_len, sim_range=(lo, hi),
                            explicit_threshold=cfg.explicit_threshold if cfg.explicit_threshold is not None
                            else transforms.explicit_threshold(cfg.intent_levels, cfg.explicit_top_levels, lo, hi),
                            views=cfg.views, realtime_len=cfg.realtime_len,
                            long_seq_len=cfg.long_seq_len, category_clicks=CATEGORY in prep.item_fields)


def _next_pow2(x: int) -> int:
    return 1 << max(4, int(np.ceil(np.log2(max(2, x)))))


def _finish(cfg: PipelineConfig, prep: Prepared, spec: FeatureSpec, plan: SplitPlan, bs: dict,
            out: str, seconds: float) -> dict:
    """Writes ``spec.json``, ``stats.json`` and ``config.json`` from the Beam job's merged stats
    ``bs`` and returns the stats.

    Steps: 1. the binning range and explicit threshold; 2. the final spec (with them and the
    hash-table sizes); 3. the counts and histograms; 4. the row accounting; 5. the split's
    errors and warnings on what was written.
    """
    lo, hi = bs.get("_sim_range", [[cfg.sim_lo, cfg.sim_hi]])[0]
    tau = cfg.explicit_threshold if cfg.explicit_threshold is not None else \
        transforms.explicit_threshold(cfg.intent_levels, cfg.explicit_top_levels, lo, hi)
    _final_spec(spec, prep, bs, lo, hi, tau).save(f"{out}/spec.json")
    stats = _counts(cfg, prep, plan, bs, seconds)
    if cfg.views:
        stats = _with_view_stats(stats, spec, bs, cfg.realtime_window_s)
    stats.update({"sim_range": [float(lo), float(hi)], "explicit_threshold": float(tau),
                  "embedding": prep.embedding_info, "notes": prep.notes})
    # Row accounting: every impression is written, dropped (counted, documented) or dead-lettered.
    # Formats whose impressions are generated per user (MovieLens) account for generated ones.
    if prep.user_hook is not None:
        stats["impressions_generated"] = {k: int(v) for k, v in bs.get("generated", {}).items()}
        imp_total = sum(stats["impressions_generated"].values())
    else:
        imp_total = stats["rows_in"].get("impressions", 0)
    stats["accounting"] = row_accounting(imp_total, stats["rows_in"].get("behaviours", 0),
                                         sum(stats["written"].values()), stats["behaviours_used"],
                                         stats["deadletter"], stats["dropped"])
    errors, warnings = plan.written_issues(stats["written"])
    stats["split"]["errors"] = errors
    stats["split"]["warnings"] += warnings
    for note in warnings:
        log.warning("split: %s", note)
    stats["level_warnings"] = level_warnings(stats["level_histogram_all"], cfg.sim_range, lo, hi)
    for note in stats["level_warnings"]:
        log.warning("levels: %s", note)
    stats["input_columns"] = _input_columns(bs, prep)
    write_json(f"{out}/stats.json", stats)
    write_json(f"{out}/config.json", dataclasses.asdict(cfg))
    return stats


def level_warnings(histogram: list[int], sim_range: str, lo: float, hi: float,
                   sparse: float = 0.01, crowded: float = 0.5) -> list[str]:
    """Notes on similarity levels that do not spread this data's rows: levels holding less than
    ``sparse`` of the rows, one level holding more than ``crowded`` (a cosine that rarely leaves
    a narrow band, binned into equal widths over ``[lo, hi]``). Empty when there are no rows."""
    total = sum(histogram)
    if not total:
        return []
    shares = [c / total for c in histogram]
    notes = []
    few = [i for i, x in enumerate(shares) if x < sparse]
    if few:
        notes.append(f"{len(few)} of {len(histogram)} similarity levels hold under {sparse:.0%} of the rows "
                     f"(levels {few})")
    top = max(range(len(shares)), key=shares.__getitem__)
    if shares[top] > crowded:
        notes.append(f"level {top} holds {shares[top]:.0%} of the rows")
    if notes and sim_range == "fixed":
        notes.append(f"the levels are equal-width over [{lo:g}, {hi:g}] (pipeline.sim_range=fixed); "
                     f"pipeline.sim_range=quantile spreads them over this data's similarities")
    return notes


def _final_spec(spec: FeatureSpec, prep: Prepared, bs: dict, lo: float, hi: float,
                tau: float) -> FeatureSpec:
    """``spec`` with the binning range, the explicit threshold and the hash-table sizes: twice
    the distinct ids seen, rounded up to a power of two."""
    n_users = max(int(bs.get("users_labeled", 0)), bs.get("rows_in", {}).get("users", 0))
    buckets = {"item": _next_pow2(2 * len(prep.items.ids)), "user": _next_pow2(2 * n_users)}
    for f in prep.item_fields:
        buckets[f] = _next_pow2(2 * len(np.unique(prep.items.fields[f])))
    return dataclasses.replace(
        spec, sim_range=(float(lo), float(hi)), explicit_threshold=float(tau),
    ).with_tables([TableSpec(k, v) for k, v in buckets.items()])


def _counts(cfg: PipelineConfig, prep: Prepared, plan: SplitPlan, bs: dict, seconds: float) -> dict:
    """The stats' row counts (in, written, dead-lettered, dropped), clicks, requests, users and
    histograms, from the Beam job's ``bs`` and the launcher's ``prep``."""
    written = {k: int(bs.get("written", {}).get(k, 0)) for k in SPLITS}
    clicks = {k: int(bs.get("clicks", {}).get(k, 0)) for k in SPLITS}
    dead = _dead_counts(bs, prep)
    rows_in = dict(bs.get("rows_in", {}))
    rows_in.update(prep.rows_in)
    req_click = int(bs.get("requests_with_click", 0))
    return {
        "format": cfg.format,
        "input": cfg.input,
        "seconds": round(seconds, 2),
        "rows_in": rows_in,
        "written": written,
        "deadletter": dead,
        "deadletter_total": int(sum(dead.values())),
        "dropped": {d.value: int(bs.get(d.value, 0)) for d in Drop},
        "ctr": {k: (clicks[k] / written[k] if written[k] else 0.0) for k in SPLITS},
        "clicks": clicks,
        "requests": int(bs.get("requests", 0)),
        "requests_with_click": req_click,
        "impressions_with_trigger": int(bs.get("with_trigger", 0)),
        **_histograms(bs, cfg.intent_levels, cfg.max_seq_len, req_click),
        "behaviours_used": int(bs.get("behaviours_used", 0)),
        "users_with_profile": int(bs.get("users_with_profile", 0)),
        "users_without_profile": int(bs.get("users_without_profile", 0)),
        "eval_from_ts": int(plan.eval_from_ts),
        "split": plan.to_stats(written),
    }


def _with_view_stats(stats: dict, spec: FeatureSpec, bs: dict, realtime_window_s: int) -> dict:
    """``stats`` with a ``views`` entry after the sequence histograms (``pipeline.views``): per
    view its length, rows written with a non-empty view, the mean length and the length
    histogram (upper bin edges by tenths of the length, as ``seq_len_histogram``)."""
    written = sum(stats["written"].values())
    views = {}
    for view, max_len in spec.histories().items():
        if view == HISTORY:
            continue
        views[view] = {
            "max_len": int(max_len),
            "rows_non_empty": int(bs.get("view_non_empty", {}).get(view, 0)),
            "mean_len": round(int(bs.get("view_len_sum", {}).get(view, 0)) / written, 4) if written else 0.0,
            "len_histogram": {"bin_upper_edges": [int(np.ceil(i * max_len / 10)) for i in range(11)],
                              "counts": np.asarray(bs.get("view_len_hist", {}).get(
                                  view, np.zeros(SEQ_HIST_BINS))).astype(int).tolist()}}
    if REALTIME in views:
        views[REALTIME]["window_s"] = int(realtime_window_s)
    out = {}
    for key, value in stats.items():
        out[key] = value
        if key == "explicit_len_histogram":
            out["views"] = views
    return out


def _input_columns(bs: dict, prep: Prepared) -> dict:
    """``stats.json``'s ``input_columns``: by ``"<table>/<column>"`` the rows kept whose empty
    optional value became the column's default (``filled_default``); by table the columns its
    files carry that are not read (``ignored``) and the rows equal in every field to another
    row of the user, kept where the format says equal rows are two events (``repeated_rows``)."""
    filled = dict(bs.get("filled_default", {}))
    _merge_into(filled, prep.filled)
    for key, n in sorted(filled.items()):
        log.warning("%s: %d rows had an empty value, read as the column's default", key, n)
    repeated = {t: int(n) for t, n in sorted(bs.get("repeated_rows", {}).items())}
    for table, n in repeated.items():
        if n:
            log.warning("%s: %d rows equal to another row of their user, kept (two events)", table, n)
    return {"filled_default": dict(sorted(filled.items())), "ignored": _ignored_columns(bs, prep),
            "repeated_rows": repeated}


def _ignored_columns(bs: dict, prep: Prepared) -> dict[str, list[str]]:
    """By table, the columns not read: the launcher's (from each file's header or first JSONL
    row, for the formats that list them) and those the readers met in the data (in JSONL also
    keys that only later rows carry); the latter are warned about here."""
    met = bs.get("unread_columns", {})
    tables = {*prep.ignored, *(t for t, cols in met.items() if cols)}
    ignored = {t: sorted({*prep.ignored.get(t, ()), *met.get(t, ())}) for t in sorted(tables)}
    for table, cols in ignored.items():
        late = sorted(set(cols) - set(prep.ignored.get(table, ())))
        if late:
            log.warning("%s: columns %s are in the data but not read (see pipeline/SCHEMA.md)", table, late)
    return ignored


def _dead_counts(bs: dict, prep: Prepared) -> dict:
    """Dead-letter counts by ``"<table>/<reason>"``: the Beam job's, then the launcher's."""
    dead = dict(sorted(bs.get("deadletter", {}).items()))
    for d in prep.dead:
        key = f"{d['table']}/{d['reason']}"
        dead[key] = dead.get(key, 0) + 1
    return dead


def _histograms(bs: dict, n: int, max_seq_len: int, req_click: int) -> dict:
    """The intent, level, sequence-length and explicit-length histograms of the stats."""
    mass = np.asarray(bs.get("intent_mass", np.zeros(n)), dtype=np.float64)

    def ints(key: str, size: int) -> list:
        return np.asarray(bs.get(key, np.zeros(size))).astype(int).tolist()

    return {
        "intent_histogram": (mass / req_click).round(6).tolist() if req_click else [0.0] * n,
        "level_histogram_all": ints("level_hist_all", n),
        "level_histogram_clicked": ints("level_hist_clicked", n),
        "seq_len_histogram": {"bin_upper_edges": [int(np.ceil(i * max_seq_len / 10)) for i in range(11)],
                              "counts": ints("seq_len_hist", 11)},
        "explicit_len_histogram": ints("explicit_len_hist", 11),
    }


def row_accounting(impressions_in: int, behaviours_in: int, written: int, behaviours_used: int,
                   dead: dict, drops: dict) -> dict:
    """The row balance of a run (``stats.json``'s ``accounting``).

    Every impression read (or generated) is written, dropped or dead-lettered; every behaviour
    read is used, dropped or dead-lettered. Drops are summed over :class:`Drop` by the table
    each drops from, dead letters by the table their ``"<table>/<reason>"`` key names, so any
    declared drop or dead-letter reason enters the balance.

    Args:
      impressions_in: impressions read, or generated by a format that derives them.
      behaviours_in: behaviour rows read.
      written: records written over all splits.
      behaviours_used: behaviours kept for labeling.
      dead: dead-letter counts by ``"<table>/<reason>"``.
      drops: counts by :class:`Drop` value.

    Returns:
      ``{"impressions_in", "written", "dropped", "deadlettered", "balanced",
      "behaviours_balanced"}``.

    Raises:
      ValueError: a ``drops`` key that is not a :class:`Drop` value.
    """
    def dropped(table: str) -> int:
        return sum(int(n) for d, n in drops.items() if Drop(d).table == table)

    def deadlettered(table: str) -> int:
        return sum(int(n) for k, n in dead.items() if k.startswith(f"{table}/"))

    acc = {"impressions_in": int(impressions_in), "written": int(written),
           "dropped": dropped("impressions"), "deadlettered": deadlettered("impressions")}
    acc["balanced"] = acc["impressions_in"] == acc["written"] + acc["dropped"] + acc["deadlettered"]
    acc["behaviours_balanced"] = int(behaviours_in) == (int(behaviours_used) + dropped("behaviours")
                                                        + deadlettered("behaviours"))
    return acc


def _check_outputs(stats: dict, plan: SplitPlan, work: str) -> None:
    """Raises unless the accounting balances and train and eval (and a requested valid split)
    hold records; removes the folder of an empty automatic valid split."""
    acc = stats["accounting"]
    where = f"Nothing was published; the partial output is in {work}"
    if not (acc["balanced"] and acc["behaviours_balanced"]):
        raise AccountingError(f"row accounting does not balance: {acc}. {where}", stats, work)
    if stats["split"]["errors"]:
        raise SplitError(f"{stats['split']['errors'][0]}. {where}")
    if plan.valid_from_ts is not None and not stats["written"]["valid"]:
        _rmtree(f"{work}/valid")


def _check_out(out: str) -> None:
    """Refuses an output folder that holds anything but a previous run's outputs: publishing
    replaces it."""
    if not out:
        raise ValueError("pipeline.out is empty; set --out or pipeline.out")
    if "://" in out:
        names = {p[len(out) + 1:].split("/", 1)[0] for p in _files_under(out)}
    elif os.path.isdir(out):
        names = set(os.listdir(out))
    elif os.path.exists(out):
        raise ValueError(f"pipeline.out {out!r} is a file, not a folder")
    else:
        names = set()
    foreign = sorted(n for n in names if n not in OUTPUT_NAMES and not n.startswith("beam-temp-"))
    if foreign:
        raise ValueError(f"pipeline.out {out!r} holds {foreign[:5]}, which tirec pipeline did not "
                         f"write; a run replaces its output folder, so choose an empty or new one")


def _publish(work: str, out: str) -> None:
    """Moves the checked output ``work`` to ``out`` (see :func:`run`)."""
    _check_out(out)  # it may have changed during the run
    if "://" in out:
        _publish_files(work, out)
        return
    old = None
    if os.path.exists(out):
        old = f"{out}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(work, out)
    if old:
        shutil.rmtree(old)


def _publish_files(work: str, out: str) -> None:
    """File-by-file publishing (object stores): delete the old files, move the new ones,
    ``stats.json`` last."""

    old = _files_under(out)
    if old:
        FileSystems.delete(old)
    src = sorted(_files_under(work), key=lambda p: p.endswith("/stats.json"))
    for path in src:
        dst = out + path[len(work):]
        _makedirs(os.path.dirname(dst))
        FileSystems.rename([path], [dst])
    _rmtree(work)


def _files_under(folder: str) -> list[str]:

    found = FileSystems.match([f"{folder}/**"])[0].metadata_list
    return sorted(m.path for m in found)


def _rmtree(path: str) -> None:

    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)
    elif _files_under(path):
        FileSystems.delete(_files_under(path))


def _save_artifact(prep: Prepared, directory: str) -> None:
    from tirec.pipeline.embeddings import EmbeddingArtifact

    _makedirs(directory)
    EmbeddingArtifact(ids=prep.items.ids, vectors=prep.items.vectors,
                      provider=prep.embedding_info.get("provider", ""),
                      info=prep.embedding_info).save(directory)


def _remove(path: str) -> None:

    FileSystems.delete([path])


def _makedirs(path: str) -> None:
    if "://" not in path:
        os.makedirs(path, exist_ok=True)
