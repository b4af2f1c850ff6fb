"""Input formats: how each raw layout maps onto impressions, behaviours, users and items.

A :class:`SourceFormat` names the schemas of its fact tables (read by the Beam job, chunk by
chunk) and prepares the item table (side fields + multimodal vectors) in the launcher. The
registry :data:`FORMATS` maps ``--format`` names to formats; an unknown name fails with the list.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import numpy as np

from tirec.features.spec import PREFIXES, raw_field
from tirec.pipeline import embeddings as emb
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.io import (Column, TableSchema, dead_letter, discover, file_columns,
                              provenance, read_chunks)
from tirec.pipeline.items import ItemTable

log = logging.getLogger(__name__)

ITEM_FIELDS = ("cate_id", "brand_id", "price_bucket")


@dataclasses.dataclass
class Prepared:
    """What the launcher hands to the Beam job."""

    files: dict[str, list[str]]            # impressions / behaviours / users -> paths
    schemas: dict[str, TableSchema]
    items: ItemTable
    item_fields: tuple[str, ...]
    user_fields: tuple[str, ...]
    context_fields: tuple[str, ...]
    trigger_from: str
    embedding_info: dict
    dead: list[dict]                       # dead letters found by the launcher
    rows_in: dict[str, int]                # launcher-read tables: rows in
    user_hook: Callable | None = None      # per-user impression builder (MovieLens)
    block_fns: dict[str, Callable] = dataclasses.field(default_factory=dict)  # per-table column fix-ups
    notes: dict = dataclasses.field(default_factory=dict)
    filled: dict[str, int] = dataclasses.field(default_factory=dict)  # launcher-read tables:
    # "<table>/<column>" -> rows whose empty value became the default
    ignored: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # table -> columns not read
    # The tables whose rows equal in every field are a row written twice (dead-lettered as
    # duplicate_row), not two events; the others' equal rows are kept and counted. Impressions
    # by default (one item shown twice in one request at one second); behaviours can repeat
    # (two clicks in one second), but not MovieLens ratings (one per user and movie).
    unique_rows: tuple[str, ...] = ("impressions",)


class SourceFormat:
    """Base class of the input formats."""

    name = ""

    def prepare(self, cfg: PipelineConfig) -> Prepared:
        raise TypeError(f"{type(self).__name__} must define prepare()")


IMPRESSIONS = TableSchema("impressions", (
    Column("user_id", "id"), Column("item_id", "id"), Column("ts", "ts"), Column("label", "label"),
    Column("request_id", "str", required=False, default=""),
), extra_int_prefix="", extra_match=PREFIXES["context"])
BEHAVIOURS = TableSchema("behaviours", (
    Column("user_id", "id"), Column("item_id", "id"), Column("ts", "ts"), Column("btag", "str"),
))
USERS = TableSchema("users", (Column("user_id", "id"),), extra_int_prefix=PREFIXES["user"])
ITEMS = TableSchema("items", (
    Column("item_id", "id"), Column("cate_id", "id"), Column("brand_id", "id"),
    Column("price_bucket", "int"), Column("text", "str", required=False),
), extra_int_prefix="")
ITEM_EMBEDDINGS = TableSchema("item_embeddings", (Column("item_id", "id"), Column("embedding", "vector")))


class GenericFormat(SourceFormat):
    """The documented generic schema (``pipeline/SCHEMA.md``), also written by ``tirec generate``."""

    name = "generic"

    def prepare(self, cfg: PipelineConfig) -> Prepared:
        files = {t: discover(cfg.input, t) for t in ("impressions", "behaviours", "users")}
        for t in ("impressions", "behaviours"):
            if not files[t]:
                raise FileNotFoundError(
                    f"no {t} files in {cfg.input!r}: expected {t}.csv|parquet|jsonl, {t}/*.<ext> "
                    f"or {t}-*.<ext> (see pipeline/SCHEMA.md)")
        dead: list[dict] = []
        rows_in: dict[str, int] = {}
        filled: dict[str, int] = {}
        item_cols, paths = read_table(cfg.input, ITEMS, cfg.chunk_rows, dead, rows_in, required=True,
                                      filled=filled)
        ids, keep = dedupe(item_cols["item_id"], "items", dead, item_cols, paths)
        item_cols = {k: v[keep] for k, v in item_cols.items()}
        extra = tuple(k for k in item_cols
                      if k not in ("item_id", "text") + ITEM_FIELDS and not k.startswith("_"))
        fields = {f: item_cols[f] for f in ITEM_FIELDS + extra}
        art, info = self._embeddings(cfg, ids, item_cols, files, dead, rows_in)
        items, info = build_item_table(ids, fields, art, info)
        return Prepared(
            files=files, schemas={"impressions": IMPRESSIONS, "behaviours": BEHAVIOURS, "users": USERS},
            items=items, item_fields=ITEM_FIELDS + extra,
            user_fields=tuple(header_fields(files["users"], USERS)),
            context_fields=context_fields(header_fields(files["impressions"], IMPRESSIONS)),
            trigger_from="behaviours" if cfg.trigger_from == "auto" else cfg.trigger_from,
            embedding_info=info, dead=dead, rows_in=rows_in, filled=filled,
            ignored={t: ignored_columns(files[t], schema) for t, schema in
                     (("impressions", IMPRESSIONS), ("behaviours", BEHAVIOURS))})

    def _embeddings(self, cfg, ids, item_cols, files, dead, rows_in):
        provider = cfg.embedding_provider
        if provider == "auto":
            provider = "precomputed" if precomputed_path(cfg) else "cooccurrence-svd"
        warn_unread_embedding_settings(cfg, provider)
        if provider == "precomputed":
            art, path = load_vectors(cfg, dead, rows_in)
            return art, {"source": path}
        if provider in ("tfidf-svd", "minilm"):
            texts = item_cols.get("text")
            if texts is None:
                raise ValueError(f"embedding_provider={provider!r} needs a 'text' column in items")
            fn = emb.tfidf_svd if provider == "tfidf-svd" else emb.minilm
            kwargs = {"dim": cfg.emb_dim, "seed": cfg.seed} if provider == "tfidf-svd" else {}
            return fn(ids, list(texts), **kwargs), {}
        sequences = behaviour_sequences(files["behaviours"], BEHAVIOURS, cfg.chunk_rows)
        return emb.cooccurrence_svd(sequences, dim=cfg.emb_dim, seed=cfg.seed), {}


def context_fields(columns: list[str]) -> tuple[str, ...]:
    """The context fields named by raw impression columns (``ctx_<f>``, the features' convention:
    :func:`tirec.features.spec.raw_field`)."""
    return tuple(f for f in (raw_field("context", c) for c in columns) if f)


def header_fields(paths: list[str], schema: TableSchema) -> list[str]:
    """Undeclared (extra) fields a table's files yield (the first row of each), without their
    prefix: for users the profile fields (``gender`` for column ``gender``, stored as
    ``user_gender``); for impressions the ``ctx_`` columns.

    Raises:
      ValueError: naming two files whose extra fields differ (the fields of one would be
        dropped, or filled with 0, in the other's rows).
    """
    declared = {c.name for c in schema.columns}
    prefix = schema.extra_int_prefix or ""
    first, fields = None, []
    for path in paths:
        for chunk, _ in read_chunks(path, schema, chunk_rows=1):
            extra = [n[len(prefix):] for n in chunk.columns if n not in declared]
            if first is None:
                first, fields = path, extra
            elif set(extra) != set(fields):
                raise ValueError(f"{schema.name}: {path} has the extra fields {sorted(extra)} and {first} "
                                 f"{sorted(fields)}; every file of a table needs the same ones")
            break
    return fields


def ignored_columns(paths: list[str], schema: TableSchema) -> list[str]:
    """The columns of a table's files that are not read (logged, for ``stats.json``), e.g. an
    impression column without the ``ctx_`` prefix that would make it a context feature."""
    ignored = sorted({c for path in paths for c in file_columns(path, schema) if not schema.reads(c)})
    if ignored:
        hint = f"; context columns need the prefix {schema.extra_match!r}" if schema.extra_match else ""
        log.warning("%s: columns %s are not read (see pipeline/SCHEMA.md)%s", schema.name, ignored, hint)
    return ignored


def read_table(directory: str, schema: TableSchema, chunk_rows: int, dead: list, rows_in: dict,
               required: bool = False, filled: dict | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Reads a whole (small, dimension) table in the launcher; bad rows go to ``dead``, the
    counts of empty values read as defaults to ``filled`` (``"<table>/<column>"``).

    Returns the columns, plus provenance ``_file`` (index into the returned paths) and ``_row``
    (row in that file), and the list of paths read.
    """
    paths = discover(directory, schema.name)
    filled = {} if filled is None else filled
    if required and not paths:
        raise FileNotFoundError(f"no {schema.name} files in {directory!r} (see pipeline/SCHEMA.md)")
    parts: dict[str, list] = {}
    n_in = 0
    for file_idx, path in enumerate(paths):
        for chunk, bad in read_chunks(path, schema, chunk_rows):
            dead.extend(bad)
            n_in += len(chunk) + len(bad)
            for col, n in chunk.filled.items():
                filled[f"{schema.name}/{col}"] = filled.get(f"{schema.name}/{col}", 0) + n
            cols = dict(chunk.columns, _file=np.full(len(chunk), file_idx), _row=chunk.rows)
            for k, v in cols.items():
                parts.setdefault(k, []).append(v)
    rows_in[schema.name] = rows_in.get(schema.name, 0) + n_in
    return {k: np.concatenate(v) for k, v in parts.items()}, paths


def dedupe(ids: np.ndarray, table: str, dead: list, cols: dict, paths: list[str]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and the index of each first occurrence; repeats are dead-lettered
    with their file and row (``cols`` carry ``_file`` and ``_row``, as :func:`read_table`'s)."""
    uniq, first = np.unique(ids, return_index=True)
    if first.shape[0] != ids.shape[0]:
        dup = np.ones(ids.shape[0], dtype=bool)
        dup[first] = False
        for i in np.flatnonzero(dup):
            dead.append(dead_letter(table, "duplicate_id", field="item_id", value=int(ids[i]),
                                    **provenance(cols, i, paths)))
    return uniq, first


# The settings each embedding provider reads (of emb_dim, seed and embedding_path).
PROVIDER_READS = {"precomputed": ("embedding_path",), "minilm": (), "tfidf-svd": ("emb_dim", "seed"),
                  "cooccurrence-svd": ("emb_dim", "seed")}


def warn_unread_embedding_settings(cfg: PipelineConfig, provider: str) -> list[str]:
    """Warns, naming them, on the non-default ``emb_dim`` / ``seed`` / ``embedding_path`` that
    ``provider`` (resolved from ``auto``) does not read; returns the keys."""
    unread = [k for k in ("emb_dim", "seed", "embedding_path") if k not in PROVIDER_READS[provider]
              and getattr(cfg, k) != getattr(PipelineConfig, k)]
    for key in unread:
        log.warning("pipeline.%s=%r not read: the item vectors come from embedding_provider=%s "
                    "(pipeline.embedding_provider=%s)", key, getattr(cfg, key), provider, cfg.embedding_provider)
    return unread


def warn_unread_format_settings(cfg: PipelineConfig) -> list[str]:
    """Warns, naming them, on the non-default ``pipeline.movielens.*`` settings when the format is
    not movielens (one config file may serve several formats); returns the keys."""
    if cfg.format == "movielens":
        return []
    default = type(cfg.movielens)()
    unread = [f"movielens.{f.name}" for f in dataclasses.fields(default)
              if getattr(cfg.movielens, f.name) != getattr(default, f.name)]
    for key in unread:
        log.warning("pipeline.%s not read: only format=movielens reads it (pipeline.format=%s)", key, cfg.format)
    return unread


def precomputed_path(cfg: PipelineConfig) -> str:
    """Where precomputed vectors are: ``embedding_path``, an ``item_embeddings`` table in the
    input directory, or the NPY pair ``item_embeddings.npy`` + ``.ids.npy``; "" when none."""
    if cfg.embedding_path:
        return cfg.embedding_path
    files = discover(cfg.input, "item_embeddings")
    if files:
        return files[0]
    npy = os.path.join(cfg.input, "item_embeddings.npy")
    return npy if os.path.exists(npy) else ""


def load_vectors(cfg: PipelineConfig, dead: list, rows_in: dict) -> tuple["emb.EmbeddingArtifact", str]:
    """Loads precomputed vectors (Parquet/JSONL/CSV table or NPY pair), dead-lettering bad rows.

    Returns the artifact and the path it was read from.
    """
    path = precomputed_path(cfg)
    if not path:
        raise FileNotFoundError(
            f"embedding_provider='precomputed' but no vectors: set embedding_path or put "
            f"item_embeddings.<parquet|jsonl|csv> or item_embeddings.npy + item_embeddings.ids.npy "
            f"in {cfg.input!r}")
    art, bad = emb.load_precomputed(path)
    dead.extend(b.to_dict() for b in bad)
    rows_in["item_embeddings"] = len(art.ids) + len(bad)
    return art, path


def build_item_table(ids: np.ndarray, fields: dict[str, np.ndarray], art: "emb.EmbeddingArtifact",
                     info: dict, popularity: np.ndarray | None = None,
                     groups: np.ndarray | None = None) -> tuple[ItemTable, dict]:
    """Joins side fields and vectors; items without a vector get the documented fallback."""
    if groups is None:
        groups = fields.get("cate_id")
    full, fallback_ids = emb.fill_missing(art, ids, groups)
    vectors, found = full.lookup(ids)
    if not found.all():
        raise RuntimeError("fill_missing left catalogue items without a vector")
    info = dict(info)
    info.update({"provider": art.provider, "dim": int(vectors.shape[1]),
                 "items_with_vector": int(len(ids) - len(fallback_ids)),
                 "fallback_items": int(len(fallback_ids)),
                 "fallback_rule": full.info.get("fallback_rule", ""),
                 "vectors_without_item": int(np.setdiff1d(art.ids, ids).shape[0])})
    info.update({k: v for k, v in art.info.items() if k not in info})
    pop = np.zeros(len(ids)) if popularity is None else popularity
    return ItemTable(ids=ids, fields=fields, vectors=vectors.astype(np.float32), popularity=pop), info


def behaviour_sequences(paths: list[str], schema: TableSchema, chunk_rows: int,
                        user_col: str = "user_id", item_col: str = "item_id") -> list[np.ndarray]:
    """Time-ordered item sequences per user, for co-occurrence embeddings."""
    users, items_, ts = [], [], []
    for path in paths:
        for chunk, _ in read_chunks(path, schema, chunk_rows):
            users.append(chunk.columns[user_col])
            items_.append(chunk.columns[item_col])
            ts.append(chunk.columns["ts"])
    if not users:
        return []
    u, it, t = np.concatenate(users), np.concatenate(items_), np.concatenate(ts)
    order = np.lexsort((t, u))
    u, it = u[order], it[order]
    cuts = np.flatnonzero(np.diff(u)) + 1
    return np.split(it, cuts)


def _lazy(module: str, name: str) -> Callable[[], SourceFormat]:
    """A factory importing the format's module on first use (the modules import this one)."""
    def make() -> SourceFormat:
        import importlib

        return getattr(importlib.import_module(module), name)()

    return make


FORMATS: dict[str, Callable[[], SourceFormat]] = {
    "generic": GenericFormat,
    "synthetic": GenericFormat,
    "movielens": _lazy("tirec.pipeline.movielens", "MovieLensFormat"),
    "alimama": _lazy("tirec.pipeline.alimama", "AlimamaFormat"),
}


def get_format(name: str) -> SourceFormat:
    """The format registered under ``name``; an unknown name lists the valid ones."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; valid formats: {sorted(FORMATS)}")
    return FORMATS[name]()
