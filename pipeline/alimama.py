"""Alimama / Taobao display-ad logs (Tianchi data set 56) as TIR data (``--format alimama``).

Input files (CSV as published; sharded, Parquet or JSONL copies work too, see
``pipeline/SCHEMA.md`` for file discovery):

* ``raw_sample``: ``user,time_stamp,adgroup_id,pid,nonclk,clk`` (8 days of ad impressions);
* ``ad_feature``: ``adgroup_id,cate_id,campaign_id,customer,brand,price`` (``brand`` may be
  ``NULL``);
* ``user_profile``: ``userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,
  shopping_level,occupation,new_user_class_level`` (the published header ends in
  ``"new_user_class_level "`` with a trailing space; names are whitespace-stripped);
* ``behavior_log``: ``user,time_stamp,btag,cate,brand`` (pv/cart/fav/buy events, no item id).

Conversion (docs/models.md#alimama-conversion):

* **Impressions** = ``raw_sample``: ``user_id`` <- ``user``, ``item_id`` <- ``adgroup_id``,
  ``ts`` <- ``time_stamp``, ``label`` <- ``clk``. A row must have ``clk + nonclk == 1``
  (otherwise dead letter ``bad_label``); ``nonclk`` is then dropped. ``pid`` (a string such as
  ``"430548_1007"``) becomes the context field ``ctx_pid = crc32(pid) % 2**31``.
* **Trigger** (``trigger_from="impressions"``): the user's most recent ``raw_sample`` click
  within ``trigger_window`` (4 h) strictly before the impression, following DIHN. A request is
  (user, trigger).
* **Behaviours** = ``behavior_log``. It has no item id, so each event gets the *pseudo item*
  ``PSEUDO_BASE + cate * 10**6 + brand`` with ``PSEUDO_BASE = 10**12`` (``brand`` missing or
  ``NULL`` -> 0). Ad ids (``adgroup_id``) are below ``10**12``, so the two id ranges never
  meet. ``brand`` must be below ``10**6`` (so distinct pairs get distinct ids) and ``cate``
  below ``10**6`` (so pseudo ids stay below ``2 * 10**12``); other rows are dead-lettered
  (``bad_id``). ``btag`` feeds ``hist_btag`` only (triggers come from impressions).
* **Items** = the ads of ``ad_feature`` (``cate_id``, ``brand_id`` (``NULL`` -> 0),
  ``price_bucket = min(floor(log2(price + 1)), 20)``, ``campaign_id``, ``customer``) plus every
  pseudo item seen in ``behavior_log`` (its ``cate_id``/``brand_id``; ``price_bucket``,
  ``campaign_id`` and ``customer`` 0), found by a chunked scan of ``behavior_log`` in the
  launcher.
* **User profile** = ``user_profile``: ``user_id`` <- ``userid`` and the eight profile columns
  as ``user_<column>`` int fields (empty -> 0).
* **Embeddings**: the data set has no multimodal vectors. The stand-in (named in
  ``embedding_info['stand_in']``) is ``cooccurrence-svd`` over (cate, brand) pseudo items: PPMI
  of pseudo items co-occurring in each user's time-ordered ``behavior_log`` sequence
  (consecutive repeats collapsed), factorised by truncated SVD. An ad's vector is the vector of
  its (cate_id, brand) pseudo item; items still without one get the fallback of
  :func:`tirec.pipeline.formats.build_item_table` (category mean, else zero). ``precomputed``
  vectors (``item_embeddings.*`` or ``embedding_path``) keyed by ad / pseudo item ids are
  accepted too.

The sequences for ``cooccurrence-svd`` are held in launcher memory: about 16 bytes per
``behavior_log`` row before the sort (the full public log of ~0.7 B rows needs tens of GB).

Row counts actually read are recorded in ``Prepared.notes['rows_read']`` (files read by the
launcher) and by the job in ``stats.json`` ``rows_in`` (``impressions`` = ``raw_sample``,
``behaviours`` = ``behavior_log``, ``users`` = ``user_profile``).

Rows that need a check across columns (``clk + nonclk``, a non-numeric ``brand``) are found by
the block functions' :meth:`reject` method, which returns the rows to dead-letter; the Beam job
must apply it before calling the block function (see :class:`ImpressionBlock`).

A ``raw_sample`` row equal in every field to another of the user is a row written twice
(dead-lettered, ``duplicate_row``); ``behavior_log`` rows are not checked: without an item id,
two views of one (cate, brand) in one second are two equal rows and two events.
"""
from __future__ import annotations

import logging
import os
import zlib

import numpy as np

from tirec.features.spec import PREFIXES
from tirec.pipeline import embeddings as emb
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.formats import (ITEM_FIELDS, Prepared, SourceFormat, build_item_table, dedupe,
                                    header_fields, load_vectors)
from tirec.pipeline.io import Column, TableSchema, dead_letter, discover, read_chunks

log = logging.getLogger(__name__)

PSEUDO_BASE = 10 ** 12
BRAND_LIMIT = 10 ** 6
CATE_LIMIT = 10 ** 6
PID_BUCKETS = 2 ** 31
MAX_PRICE_BUCKET = 20
PROFILE_FIELDS = ("cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                  "shopping_level", "occupation", "new_user_class_level")
AD_FIELDS = ITEM_FIELDS + ("campaign_id", "customer")
STAND_IN = ("cooccurrence-svd over (cate, brand) pseudo items in behavior_log: PPMI of pseudo "
            "items co-occurring in users' time-ordered behaviour sequences, truncated SVD; an ad "
            "gets the vector of its (cate_id, brand) pseudo item")
RAW_FILES = {"impressions": "raw_sample", "behaviours": "behavior_log", "users": "user_profile",
             "items": "ad_feature"}

RAW_SAMPLE = TableSchema("impressions", (
    Column("user_id", "id", source="user"), Column("item_id", "id", source="adgroup_id"),
    Column("ts", "ts", source="time_stamp"), Column("label", "label", source="clk"),
    Column("nonclk", "label"), Column("pid", "str"),
))
BEHAVIOR_LOG = TableSchema("behaviours", (
    Column("user_id", "id", source="user"), Column("ts", "ts", source="time_stamp"),
    Column("btag", "str"), Column("cate", "id"),
    Column("brand", "str", required=False, default=""),
))
USER_PROFILE = TableSchema("users", (Column("user_id", "id", source="userid"),),
                           extra_int_prefix=PREFIXES["user"])
AD_FEATURE = TableSchema("ad_feature", (
    Column("item_id", "id", source="adgroup_id"), Column("cate_id", "id"),
    Column("campaign_id", "id"), Column("customer", "id"),
    Column("brand", "str", required=False, default=""), Column("price", "float"),
))


def pseudo_item_id(cate: np.ndarray, brand: np.ndarray) -> np.ndarray:
    """``PSEUDO_BASE + cate * 10**6 + brand``: the item id of a (cate, brand) behaviour."""
    return PSEUDO_BASE + np.asarray(cate, np.int64) * BRAND_LIMIT + np.asarray(brand, np.int64)


def parse_brand(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brand strings to ints: empty or ``NULL`` (any case) -> 0.

    Returns:
      ``(brands, bad)``: int64 values (0 where bad) and a mask of values that are neither empty,
      ``NULL`` nor an integer in ``[0, 10**6)``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.utf8_trim_whitespace(pa.array(np.asarray(values, dtype=object), type=pa.string(),
                                           from_pandas=True).fill_null(""))
    empty = pc.or_(pc.equal(arr, ""), pc.equal(pc.utf8_upper(arr), "NULL"))
    try:  # fast path: every value is empty, NULL or an integer
        ints = pc.cast(pc.if_else(empty, "0", arr), pa.int64()).to_numpy(zero_copy_only=False)
        bad = (ints < 0) | (ints >= BRAND_LIMIT)
        return np.where(bad, 0, ints).astype(np.int64), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    uniq, inv = np.unique(np.asarray(arr.to_pylist(), dtype=str), return_inverse=True)
    out = np.zeros(uniq.shape[0], np.int64)
    bad = np.zeros(uniq.shape[0], bool)
    for i, u in enumerate(uniq.tolist()):
        if u == "" or u.upper() == "NULL":
            continue
        try:
            x = int(u)
        except ValueError:
            try:  # an integral float such as "7.0"
                f = float(u)
                x = int(f) if np.isfinite(f) and f == int(f) else -1
            except ValueError:
                x = -1
        if 0 <= x < BRAND_LIMIT:
            out[i] = x
        else:
            bad[i] = True
    inv = inv.reshape(-1)
    return out[inv], bad[inv]


def price_bucket(price: np.ndarray) -> np.ndarray:
    """``min(floor(log2(price + 1)), 20)`` for non-negative prices."""
    return np.minimum(np.floor(np.log2(np.asarray(price, np.float64) + 1.0)),
                      MAX_PRICE_BUCKET).astype(np.int64)


class ImpressionBlock:
    """Block function for ``raw_sample`` chunks.

    ``__call__`` adds ``ctx_pid`` and drops ``pid`` and ``nonclk``. :meth:`reject` names the rows
    the job must dead-letter before that: ``clk + nonclk != 1`` (``bad_label``) and ad ids at or
    above ``PSEUDO_BASE`` (``bad_id``, they would collide with pseudo items).
    """

    def reject(self, columns: dict[str, np.ndarray]) -> list[tuple[int, str, str, str]]:
        """Rows to dead-letter, as ``(row index in the chunk, reason, field, value)``."""
        out = []
        clk, nonclk = columns["label"], columns["nonclk"]
        for i in np.flatnonzero(clk + nonclk != 1).tolist():
            out.append((i, "bad_label", "clk+nonclk", f"clk={int(clk[i])},nonclk={int(nonclk[i])}"))
        bad_label = set(i for i, *_ in out)
        for i in np.flatnonzero(columns["item_id"] >= PSEUDO_BASE).tolist():
            if i not in bad_label:
                out.append((i, "bad_id", "adgroup_id", str(int(columns["item_id"][i]))))
        return sorted(out)

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cols = {k: v for k, v in columns.items() if k not in ("pid", "nonclk")}
        pid = np.asarray(columns["pid"]).astype(str)
        uniq, inv = np.unique(pid, return_inverse=True)
        codes = np.array([zlib.crc32(p.encode("utf-8")) % PID_BUCKETS for p in uniq.tolist()],
                         dtype=np.int64)
        cols["ctx_pid"] = codes[inv.reshape(-1)]
        return cols


class BehaviourBlock:
    """Block function for ``behavior_log`` chunks: ``item_id`` = the (cate, brand) pseudo item.

    :meth:`reject` names rows whose ``brand`` is not empty/``NULL``/an integer below ``10**6``
    or whose ``cate`` is not below ``10**6`` (``bad_id``); ``__call__`` computes ``item_id``
    (a rejected brand maps to 0) and drops ``cate`` and ``brand``.
    """

    def reject(self, columns: dict[str, np.ndarray]) -> list[tuple[int, str, str, str]]:
        """Rows to dead-letter, as ``(row index in the chunk, reason, field, value)``."""
        _, bad_brand = parse_brand(columns["brand"])
        out = [(i, "bad_id", "brand", str(columns["brand"][i]))
               for i in np.flatnonzero(bad_brand).tolist()]
        for i in np.flatnonzero((columns["cate"] >= CATE_LIMIT) & ~bad_brand).tolist():
            out.append((i, "bad_id", "cate", str(int(columns["cate"][i]))))
        return sorted(out)

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        brand, _ = parse_brand(columns["brand"])
        cols = {k: v for k, v in columns.items() if k not in ("cate", "brand")}
        cols["item_id"] = pseudo_item_id(columns["cate"], brand)
        return cols


class ProfileBlock:
    """Block function for ``user_profile`` chunks: strips whitespace from column names."""

    def reject(self, columns: dict[str, np.ndarray]) -> list[tuple[int, str, str, str]]:
        """No cross-column checks for profiles."""
        return []

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k.strip(): v for k, v in columns.items()}


def apply_block(block, columns: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                               list[tuple[int, str, str, str]]]:
    """Drops the rows ``block.reject`` names, then applies ``block``.

    Returns:
      ``(columns, kept row mask, rejected rows)``.
    """
    bad = block.reject(columns)
    keep = np.ones(len(next(iter(columns.values()))), dtype=bool)
    if bad:
        keep[[i for i, *_ in bad]] = False
        columns = {k: v[keep] for k, v in columns.items()}
    return block(columns), keep, bad


class AlimamaFormat(SourceFormat):
    """``--format alimama``: Taobao display-ad logs (Tianchi 56); see the module docstring."""

    name = "alimama"

    def prepare(self, cfg: PipelineConfig) -> Prepared:
        """Reads ads, scans ``behavior_log`` for pseudo items, builds items and vectors.

        Raises:
          FileNotFoundError: when ``raw_sample`` or ``ad_feature`` files are missing, or
            ``precomputed`` embeddings are requested but none exist.
          ValueError: when ``user_profile`` lacks a profile column, no ad row is valid, or the
            embedding provider is not supported by this format.
        """
        files = {"impressions": discover(cfg.input, "raw_sample"),
                 "behaviours": discover(cfg.input, "behavior_log"),
                 "users": discover(cfg.input, "user_profile")}
        if not files["impressions"]:
            raise FileNotFoundError(f"no raw_sample files in {cfg.input!r}: expected "
                                    f"raw_sample.csv (user,time_stamp,adgroup_id,pid,nonclk,clk)")
        if not files["behaviours"]:
            log.warning("alimama: no behavior_log files in %r; sequences will be empty", cfg.input)
        if not files["users"]:
            log.warning("alimama: no user_profile files in %r; profile fields will be 0", cfg.input)
        else:
            _check_profile_header(files["users"])
        provider = cfg.embedding_provider
        if provider == "auto":
            provider = "cooccurrence-svd"
        if provider not in ("cooccurrence-svd", "precomputed"):
            raise ValueError(f"embedding_provider={cfg.embedding_provider!r} is not supported by "
                             f"the alimama format (it has no item text); use auto, "
                             f"cooccurrence-svd or precomputed")

        dead: list[dict] = []
        rows_in: dict[str, int] = {}
        rows_read: dict[str, int] = {}
        ad_ids, ad_fields = _read_ads(cfg, dead, rows_in, rows_read)
        pseudo_ids, sequences = _scan_behaviours(files["behaviours"], cfg.chunk_rows,
                                                 provider == "cooccurrence-svd", rows_read)
        ids = np.concatenate([ad_ids, pseudo_ids])
        rel = pseudo_ids - PSEUDO_BASE
        fields = {
            "cate_id": np.concatenate([ad_fields["cate_id"], rel // BRAND_LIMIT]),
            "brand_id": np.concatenate([ad_fields["brand_id"], rel % BRAND_LIMIT]),
            "price_bucket": np.concatenate([ad_fields["price_bucket"], np.zeros_like(pseudo_ids)]),
            "campaign_id": np.concatenate([ad_fields["campaign_id"], np.zeros_like(pseudo_ids)]),
            "customer": np.concatenate([ad_fields["customer"], np.zeros_like(pseudo_ids)]),
        }
        if provider == "precomputed":
            art, info = _precomputed(cfg, dead, rows_in)
        else:
            art, info = _cooccurrence(cfg, sequences, ids, fields)
        items, info = build_item_table(ids, fields, art, info)
        log.info("alimama: %d ads + %d pseudo items; rows read %s", len(ad_ids), len(pseudo_ids),
                 rows_read)
        return Prepared(
            files=files,
            schemas={"impressions": RAW_SAMPLE, "behaviours": BEHAVIOR_LOG, "users": USER_PROFILE},
            items=items, item_fields=AD_FIELDS, user_fields=PROFILE_FIELDS,
            context_fields=("pid",),
            trigger_from="impressions" if cfg.trigger_from == "auto" else cfg.trigger_from,
            embedding_info=info, dead=dead, rows_in=rows_in,
            unique_rows=("impressions",),  # behavior_log has no item id: equal rows are two events
            block_fns={"impressions": ImpressionBlock(), "behaviours": BehaviourBlock(),
                       "users": ProfileBlock()},
            notes={"alimama": {
                "rows_read": rows_read,
                "rows_read_by_job": {f"{raw} ({table})": f"stats rows_in.{table}"
                                     for table, raw in RAW_FILES.items() if table != "items"},
                "ads": int(len(ad_ids)), "pseudo_items": int(len(pseudo_ids)),
                "pseudo_item_id": "10**12 + cate * 10**6 + brand (brand NULL/missing -> 0); "
                                  "ids below 10**12 are ads",
                "ctx_pid": "zlib.crc32(pid) % 2**31",
                "price_bucket": "min(floor(log2(price + 1)), 20); 0 for pseudo items",
            }})


def _check_profile_header(paths: list[str]) -> None:
    names = [n.strip() for n in header_fields(paths, USER_PROFILE)]
    if not names:
        log.warning("alimama: %s has no data rows; profile columns not checked", paths[0])
        return
    missing = [c for c in PROFILE_FIELDS if c not in names]
    if missing:
        raise ValueError(f"user_profile file {paths[0]} lacks profile column(s) {missing}; its "
                         f"columns are {['userid'] + [n for n in names if n != 'user_id']}")


def _read_ads(cfg: PipelineConfig, dead: list, rows_in: dict, rows_read: dict
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ads of ``ad_feature`` (sorted by id) with their side fields; bad rows to ``dead``."""
    paths = discover(cfg.input, "ad_feature")
    if not paths:
        raise FileNotFoundError(f"no ad_feature files in {cfg.input!r}: expected ad_feature.csv "
                                f"(adgroup_id,cate_id,campaign_id,customer,brand,price)")
    parts: dict[str, list[np.ndarray]] = {}
    n_in = 0
    for file_idx, path in enumerate(paths):
        n_file = 0
        for chunk, bad in read_chunks(path, AD_FEATURE, cfg.chunk_rows):
            dead.extend(bad)
            n_file += len(chunk) + len(bad)
            c = chunk.columns
            brand, bad_brand = parse_brand(c["brand"])
            checks = (
                (bad_brand, "bad_id", "brand", c["brand"]),
                (c["price"] < 0, "negative_price", "price", c["price"]),
                (c["item_id"] >= PSEUDO_BASE, "bad_id", "adgroup_id", c["item_id"]),
                (c["cate_id"] >= CATE_LIMIT, "bad_id", "cate_id", c["cate_id"]),
            )
            drop = np.zeros(len(chunk), dtype=bool)
            for mask, reason, field, values in checks:
                for i in np.flatnonzero(mask & ~drop).tolist():
                    dead.append(dead_letter("ad_feature", reason, field=field, value=values[i],
                                            file=path, row=int(chunk.rows[i])))
                drop |= mask
            keep = ~drop
            parts.setdefault("item_id", []).append(c["item_id"][keep])
            parts.setdefault("cate_id", []).append(c["cate_id"][keep])
            parts.setdefault("brand_id", []).append(brand[keep])
            parts.setdefault("price_bucket", []).append(price_bucket(c["price"][keep]))
            parts.setdefault("campaign_id", []).append(c["campaign_id"][keep])
            parts.setdefault("customer", []).append(c["customer"][keep])
            parts.setdefault("_file", []).append(np.full(int(keep.sum()), file_idx, dtype=np.int64))
            parts.setdefault("_row", []).append(chunk.rows[keep])
        rows_read[os.path.basename(path)] = n_file
        n_in += n_file
    rows_in["ad_feature"] = n_in
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    if not len(cols.get("item_id", ())):
        raise ValueError(f"ad_feature in {cfg.input!r} has no valid row (rows in: {n_in}; see the "
                         f"dead letters)")
    ids, first = dedupe(cols["item_id"], "ad_feature", dead, cols, paths)
    return ids, {k: cols[k][first].astype(np.int64) for k in AD_FIELDS}


def _scan_behaviours(paths: list[str], chunk_rows: int, want_sequences: bool, rows_read: dict
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted pseudo item ids in ``behavior_log`` and, if wanted, per-user sequences.

    Rows the job dead-letters (io checks and :meth:`BehaviourBlock.reject`) are skipped here;
    their dead letters are the job's, not the launcher's.
    """
    block = BehaviourBlock()
    uniq_parts: list[np.ndarray] = []
    users, items_, ts = [], [], []
    for path in paths:
        n_file = 0
        for chunk, bad in read_chunks(path, BEHAVIOR_LOG, chunk_rows):
            n_file += len(chunk) + len(bad)
            if not len(chunk):
                continue
            cols, _, _ = apply_block(block, chunk.columns)
            uniq_parts.append(np.unique(cols["item_id"]))
            if want_sequences:
                users.append(cols["user_id"].astype(np.uint32 if cols["user_id"].max() < 2 ** 32
                                                    else np.int64))
                items_.append(cols["item_id"])
                ts.append(cols["ts"].astype(np.uint32))  # io caps ts below 2**32
        rows_read[os.path.basename(path)] = n_file
    pseudo = np.unique(np.concatenate(uniq_parts)) if uniq_parts else np.zeros(0, np.int64)
    if not want_sequences or not users:
        return pseudo, []
    u = np.concatenate(users).astype(np.int64)
    it = np.concatenate(items_)
    t = np.concatenate(ts)
    del users, items_, ts
    order = np.lexsort((it, t, u))
    u, it = u[order], it[order]
    del order, t
    # collapse consecutive repeats of the same pseudo item within a user
    keep = np.ones(u.shape[0], dtype=bool)
    keep[1:] = (u[1:] != u[:-1]) | (it[1:] != it[:-1])
    u, it = u[keep], it[keep]
    cuts = np.flatnonzero(np.diff(u)) + 1
    return pseudo, np.split(it, cuts)


def _cooccurrence(cfg: PipelineConfig, sequences: list[np.ndarray], ids: np.ndarray,
                  fields: dict[str, np.ndarray]) -> tuple["emb.EmbeddingArtifact", dict]:
    """Pseudo-item vectors, and each ad keyed to its (cate_id, brand_id) pseudo item."""
    pseudo_art = emb.cooccurrence_svd(sequences, dim=cfg.emb_dim, seed=cfg.seed)
    key = np.where(ids >= PSEUDO_BASE, ids, pseudo_item_id(fields["cate_id"], fields["brand_id"]))
    vecs, found = pseudo_art.lookup(key)
    is_ad = ids < PSEUDO_BASE
    order = np.argsort(ids, kind="stable")
    order = order[found[order]]
    info = {"provider_requested": cfg.embedding_provider, "stand_in": STAND_IN,
            "ads_with_pseudo_vector": int((found & is_ad).sum()), "ads": int(is_ad.sum()),
            "pseudo_items_with_vector": int((found & ~is_ad).sum())}
    art = emb.EmbeddingArtifact(ids=ids[order], vectors=vecs[order], provider="cooccurrence-svd",
                                info=dict(pseudo_art.info))
    return art, info


def _precomputed(cfg: PipelineConfig, dead: list, rows_in: dict
                 ) -> tuple["emb.EmbeddingArtifact", dict]:
    art, path = load_vectors(cfg, dead, rows_in)
    return art, {"provider_requested": cfg.embedding_provider, "source": path,
                 "stand_in": "precomputed vectors keyed by adgroup_id / pseudo item id"}
