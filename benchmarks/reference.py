"""Single-process pandas reference of the TIR labeling (the parity check and speed reference).

Written independently of ``tirec.pipeline.labeling`` (pandas ``merge_asof`` and ``groupby``,
and one global sorted behaviour array instead of per-user numpy), for the generic/synthetic
input layout with ``request_id``s and the default settings: trigger = the most recent behaviour
click strictly before the request's first impression and at most ``window`` seconds earlier;
impressions without a trigger dropped; history = the 50 most recent behaviours strictly before
the impression within 14 days; n equal-width levels over [-1, 1]; intent distribution = clicks
per level / clicks of the request; explicit mask = history similarity to the trigger >= the
lower edge of the top two levels.

Returns one row per request: ``request_id``, ``user_id``, ``trigger_item_id``, ``trigger_ts``,
``n_impressions``, the intent distribution ``intent_0..intent_{n-1}``, and per-request sums
over its impressions of the history length, explicit-mask count and history item ids
(``hist_len_sum``, ``explicit_sum``, ``hist_item_sum``) for parity checks.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pandas as pd


def _read(directory: str, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    paths = sorted(glob.glob(os.path.join(directory, table, "*.parquet"))
                   + glob.glob(os.path.join(directory, f"{table}.parquet")))
    if not paths:
        raise FileNotFoundError(f"reference: no {table} parquet files in {directory}")
    return pd.concat([pd.read_parquet(p, columns=columns) for p in paths], ignore_index=True)


def label_requests(directory: str, n_levels: int = 6, window_s: int = 4 * 3600,
                   click_btag: str = "click", max_len: int = 50, horizon_s: int = 14 * 86400,
                   chunk: int = 8192) -> pd.DataFrame:
    """Per-request trigger and intent distribution of a generic-layout input directory."""
    imps = _read(directory, "impressions", ["user_id", "item_id", "ts", "label", "request_id"])
    behs = _read(directory, "behaviours", ["user_id", "item_id", "ts", "btag"])
    emb = _read(directory, "item_embeddings")

    vecs = np.stack(emb["embedding"].to_numpy()).astype(np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    row_of = pd.Series(np.arange(len(emb)), index=emb["item_id"].to_numpy())

    # Trigger per request, at the request's first impression time.
    req = imps.groupby("request_id", sort=False).agg(user_id=("user_id", "first"), ts=("ts", "min"),
                                                     n_impressions=("ts", "size")).reset_index()
    clicks = behs.loc[behs["btag"] == click_btag, ["user_id", "ts", "item_id"]]
    clicks = clicks.rename(columns={"ts": "trigger_ts", "item_id": "trigger_item_id"})
    clicks = clicks.sort_values("trigger_ts", kind="stable")
    req = req.sort_values("ts", kind="stable")
    req = pd.merge_asof(req, clicks, left_on="ts", right_on="trigger_ts", by="user_id",
                        allow_exact_matches=False, direction="backward",
                        tolerance=window_s)
    req = req.dropna(subset=["trigger_item_id"])
    req["trigger_item_id"] = req["trigger_item_id"].astype(np.int64)
    req["trigger_ts"] = req["trigger_ts"].astype(np.int64)

    # Levels of each impression's trigger-target similarity; clicks per level per request.
    m = imps.merge(req[["request_id", "trigger_item_id"]], on="request_id", how="inner")
    t = vecs[row_of.reindex(m["trigger_item_id"]).to_numpy()]
    c = vecs[row_of.reindex(m["item_id"]).to_numpy()]
    sim = np.clip(np.einsum("ij,ij->i", t, c, dtype=np.float64), -1.0, 1.0)
    m["level"] = np.clip(np.floor((sim + 1.0) / (2.0 / n_levels)), 0, n_levels - 1).astype(int)
    clicked = m[m["label"] == 1]
    counts = (clicked.groupby(["request_id", "level"]).size().unstack(fill_value=0)
              .reindex(columns=range(n_levels), fill_value=0))
    dist = counts.div(counts.sum(axis=1), axis=0)
    dist.columns = [f"intent_{j}" for j in range(n_levels)]
    out = req.merge(dist, left_on="request_id", right_index=True, how="left").fillna(
        {f"intent_{j}": 0.0 for j in range(n_levels)})

    # History: one global behaviour array sorted by (user, ts); key = user << 32 | ts.
    b_key = (behs["user_id"].to_numpy(np.int64) << 32) | behs["ts"].to_numpy(np.int64)
    order = np.argsort(b_key, kind="stable")
    b_key, b_item = b_key[order], behs["item_id"].to_numpy(np.int64)[order]
    b_vec_row = row_of.reindex(b_item).to_numpy()
    tau = -1.0 + (n_levels - 2) * (2.0 / n_levels)
    uid, ts = m["user_id"].to_numpy(np.int64), m["ts"].to_numpy(np.int64)
    hist_len = np.zeros(len(m), np.int64)
    explicit = np.zeros(len(m), np.int64)
    item_sum = np.zeros(len(m), np.int64)
    for a in range(0, len(m), chunk):
        sl = slice(a, a + chunk)
        end = np.searchsorted(b_key, (uid[sl] << 32) | ts[sl], side="left")
        start = np.maximum(np.searchsorted(b_key, (uid[sl] << 32) | (ts[sl] - horizon_s), side="left"),
                           end - max_len)
        lens = end - start
        pos = end[:, None] - 1 - np.arange(max_len)[None, :]
        valid = np.arange(max_len)[None, :] < lens[:, None]
        idx = np.where(valid, pos, 0)
        hsim = np.einsum("ijk,ik->ij", vecs[b_vec_row[idx]], t[sl])
        hist_len[sl] = lens
        explicit[sl] = ((hsim >= tau) & valid).sum(axis=1)
        item_sum[sl] = np.where(valid, b_item[idx], 0).sum(axis=1)
    sums = pd.DataFrame({"request_id": m["request_id"].to_numpy(), "hist_len_sum": hist_len,
                         "explicit_sum": explicit, "hist_item_sum": item_sum}
                        ).groupby("request_id").sum()
    out = out.merge(sums, left_on="request_id", right_index=True, how="left")
    return out[["request_id", "user_id", "trigger_item_id", "trigger_ts", "n_impressions"]
               + [f"intent_{j}" for j in range(n_levels)]
               + ["hist_len_sum", "explicit_sum", "hist_item_sum"]].reset_index(drop=True)
