"""Per-user TIR labeling: triggers, history, similarities, intent distributions, explicit masks.

This is the body of the Beam job's per-user step, written as plain numpy so that it is easy to
test and to read. One call handles all events of one user:

1. cap the user's behaviours and impressions (oldest dropped first, counted);
2. dead-letter events whose item is not in the item table;
3. find each request's trigger: the most recent click strictly before the request time and at
   most ``trigger_window`` earlier (:func:`tirec.features.transforms.assign_triggers`);
4. gather each impression's history: behaviours strictly before the impression, within
   ``history_days``, most recent first, at most ``max_seq_len``; and the behaviour views the
   spec holds (``pipeline.views``, :func:`view_rows`): the real-time view (the trigger
   candidate clicks strictly before the request's trigger query time, within
   ``realtime_window``) and the long-term view (behaviours strictly before the impression, no
   time limit);
5. cosine similarities of trigger vs target and trigger vs each behaviour.

:func:`finalize` then bins the similarities into levels, computes each request's intent
distribution, each request's prior intent (the user's time-decayed click levels strictly before
the request, :func:`prior_intent`) and the explicit-intent mask, once the binning range is known
(fixed, or from train-set quantiles computed across all users).
"""
from __future__ import annotations

import dataclasses
import logging
import zlib

import numpy as np

from tirec.features import transforms
from tirec.features.spec import (CATEGORY, CATEGORY_CLICKS, HISTORY, ITEM_ID, LONG_TERM, PREFIXES, REALTIME,
                                 FeatureSpec, time_context, tir_feature_spec)
from tirec.pipeline import split as splits
from tirec.pipeline.io import dead_letter, provenance
from tirec.pipeline.items import ItemTable
from tirec.pipeline.reasons import DeadReason, Drop

BTAG_IDS = {"click": 1, "pv": 1, "cart": 2, "fav": 3, "buy": 4, "rate": 5}


def btag_id(tag: str) -> int:
    """Stable small id of a behaviour type (known types fixed, others hashed into 16..1015)."""
    return BTAG_IDS.get(tag, 16 + zlib.crc32(tag.encode("utf-8")) % 1000)


def encode_btags(tags: np.ndarray, click_btags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(btag ids, is-click flags) for an array of behaviour-type strings. A type that differs
    from a click type only by case or surrounding spaces (``" click"`` from a CSV written with
    ", ") is not a click, and is named in a warning."""
    uniq, inv = np.unique(np.asarray(tags, dtype=str), return_inverse=True)
    ids = np.array([btag_id(t) for t in uniq], dtype=np.int64)
    clicks = np.isin(uniq, np.array(click_btags, dtype=str))
    folded = {c.strip().lower() for c in click_btags}
    near = [str(t) for t, c in zip(uniq, clicks) if not c and t.strip().lower() in folded]
    if near:
        logging.getLogger(__name__).warning(
            "behaviour types %s are not clicks (pipeline.click_btags=%s): they differ from one only by case "
            "or spaces; fix the logs or add them to click_btags", near, list(click_btags))
    return ids[inv].reshape(-1), clicks[inv].reshape(-1)


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """Constants of the labeling step (resolved from :class:`PipelineConfig`).

    ``spec`` is the record schema the columns are filled for (the job passes the one it
    writes); without it, the standard schema of the reader's item, user and context fields. The
    behaviour views labeling builds, and their lengths, are the spec's (``rt``, ``lt``:
    :func:`tirec.features.spec.tir_feature_spec` with ``views``); ``realtime_window_s`` is the
    real-time view's click window, at least ``trigger_window_s`` so that the trigger is its
    first entry.
    """

    intent_levels: int
    trigger_window_s: int
    history_s: int
    max_seq_len: int
    click_btags: tuple[str, ...]
    trigger_from: str          # behaviours | impressions | both
    no_trigger: str            # drop | pad
    max_events_per_user: int
    eval_from_ts: int          # impressions at or after this time go to eval
    item_fields: tuple[str, ...]
    user_fields: tuple[str, ...]
    context_fields: tuple[str, ...]
    valid_from_ts: int | None = None  # impressions in [valid_from_ts, eval_from_ts) are valid
    spec: FeatureSpec | None = None
    realtime_window_s: int = 4 * 3600

    def __post_init__(self):
        if self.spec is None:
            object.__setattr__(self, "spec", tir_feature_spec(
                item_fields=self.item_fields, user_fields=self.user_fields,
                context_fields=self.context_fields, intent_levels=self.intent_levels,
                max_seq_len=self.max_seq_len, category_clicks=CATEGORY in self.item_fields))
        if REALTIME in self.spec.histories() and self.realtime_window_s < self.trigger_window_s:
            raise ValueError(f"realtime_window_s={self.realtime_window_s} is shorter than "
                             f"trigger_window_s={self.trigger_window_s}: the real-time view would "
                             f"miss triggers")


@dataclasses.dataclass(frozen=True)
class Triggers:
    """Each kept impression's trigger (step 3), aligned with the impression rows.

    ``item`` and ``ts`` are 0 where ``has_trigger`` is False; ``has_request_id`` marks the
    impressions whose input names their request. ``query_ts`` is each impression's trigger
    query time (:func:`request_query_ts`); ``click_ts`` / ``click_item`` are the candidate
    clicks the triggers were chosen from, sorted by time (the real-time view's events).
    """

    has_trigger: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    has_request_id: np.ndarray
    query_ts: np.ndarray | None = None
    click_ts: np.ndarray | None = None
    click_item: np.ndarray | None = None


def label_user(user_id: int, imps: dict | None, behs: dict | None, profile: dict | None,
               items: ItemTable, s: LabelSettings, files: list[str]) -> tuple[dict, list, dict]:
    """Labels one user's impressions.

    Args:
      user_id: the user.
      imps: impression columns (``item_id``, ``ts``, ``label``, optional ``request_id``,
        ``ctx_*``, provenance ``_file``/``_row``), or None.
      behs: behaviour columns (``item_id``, ``ts``, ``btag_id``, ``is_click``, provenance), or
        None.
      profile: ``user_<field>`` values, or None when the user has no profile row.
      items: the item table.
      s: settings.
      files: file paths indexed by ``_file`` (for dead-letter records).

    Returns:
      ``(columns, dead_letters, stats)``; ``columns`` holds one row per kept impression with
      every record feature except the binned ones, plus ``_request`` (dense request index),
      ``_split`` (:data:`tirec.pipeline.split.TRAIN` / ``VALID`` / ``EVAL``) and the
      impression's provenance ``_file`` / ``_row`` (-1 when unknown). Pass it to
      :func:`finalize`.
    """
    stats: dict = {}
    dead: list = []
    imps, behs = _usable_events(imps, behs, items, s, files, stats, dead)       # steps 1-2
    imps, trig = find_triggers(imps, behs, s, stats)                             # step 3
    req_key = request_keys(user_id, imps["ts"], imps.get("request_id"), trig)
    rows = history_rows(behs["ts"], imps["ts"], s.history_s, s.max_seq_len)    # step 4
    views = view_rows(s.spec, behs, imps["ts"], trig, s.realtime_window_s)
    tgt_row, _ = items.index(imps["item_id"])
    trg_row, _ = items.index(trig.item)
    beh_row, _ = items.index(behs["item_id"])
    sim, hist_sim = similarities(items.vectors, tgt_row, trg_row, beh_row, rows,   # step 5
                                 trig.has_trigger)
    cols = {**_impression_columns(user_id, imps, trig, req_key, sim),
            **_history_columns(behs, rows, hist_sim),
            **view_columns(s.spec, views),
            **_context_columns(imps, req_key, s)}
    item_values = {"target": lambda col: col[tgt_row],
                   "trigger": lambda col: np.where(trig.has_trigger, col[trg_row], 0),
                   HISTORY: lambda col: (_hist_values(col[beh_row], rows) if beh_row.size
                                         else np.zeros(rows.shape, np.int64))}
    item_values.update({v: _view_values(items, view) for v, view in views.items()})
    cols.update(side_fields(s.spec, cols, len(imps["ts"]), items, item_values, profile, imps))
    if profile is None and len(imps["ts"]):
        _add(stats, "users_without_profile", 1)
    return cols, dead, stats


def _usable_events(imps: dict | None, behs: dict | None, items: ItemTable, s: LabelSettings,
                   files: list[str], stats: dict, dead: list) -> tuple[dict, dict]:
    """Steps 1-2: the user's events sorted by time, capped (most recent kept, the rest
    counted) and without unknown items (dead-lettered)."""
    imps = _sorted(imps or _empty_imps(), "ts")
    behs = _sorted(behs or _empty_behs(), "ts")
    _add(stats, "impressions_grouped", len(imps["ts"]))
    _add(stats, "behaviours_grouped", len(behs["ts"]))
    imps = _cap(imps, s.max_events_per_user, stats, Drop.IMPRESSIONS_USER_CAP)
    behs = _cap(behs, s.max_events_per_user, stats, Drop.BEHAVIOURS_USER_CAP)
    imps = _drop_unknown(imps, items, "impressions", dead, files, stats)
    behs = _drop_unknown(behs, items, "behaviours", dead, files, stats)
    _add(stats, "behaviours_used", len(behs["ts"]))
    return imps, behs


def find_triggers(imps: dict, behs: dict, s: LabelSettings, stats: dict) -> tuple[dict, Triggers]:
    """Step 3: each impression's trigger, the most recent click strictly before its request's
    time and at most ``s.trigger_window_s`` earlier.

    With ``s.no_trigger == "drop"`` the impressions without one are removed (counted as
    ``impressions_dropped_no_trigger``); with ``"pad"`` they stay with ``has_trigger`` False.

    Returns:
      ``(impressions kept, their triggers)``.
    """
    click_ts, click_item = _clicks(imps, behs, s)
    has_rid, query_ts = request_query_ts(imps["ts"], imps.get("request_id"))
    trig = transforms.assign_triggers(click_ts, query_ts, s.trigger_window_s)
    has_trig = trig >= 0
    if s.no_trigger == "drop":
        _add(stats, Drop.IMPRESSIONS_NO_TRIGGER.value, int((~has_trig).sum()))
        imps = {k: v[has_trig] for k, v in imps.items()}
        trig, has_rid, query_ts = trig[has_trig], has_rid[has_trig], query_ts[has_trig]
        has_trig = has_trig[has_trig]
    trig_item = np.where(has_trig, click_item[np.maximum(trig, 0)] if click_item.size else 0, 0)
    trig_ts = np.where(has_trig, click_ts[np.maximum(trig, 0)] if click_ts.size else 0, 0)
    return imps, Triggers(has_trigger=has_trig, item=trig_item, ts=trig_ts, has_request_id=has_rid,
                          query_ts=query_ts, click_ts=click_ts, click_item=click_item)


def request_query_ts(ts: np.ndarray, request_id: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(has request id, trigger query time)`` of each impression.

    A request shares one trigger, found at the request's first impression time; an impression
    without a request id (None column, or an empty id) is queried at its own time.
    """
    n = len(ts)
    has_rid = (np.array([bool(r) for r in request_id], dtype=bool) if request_id is not None
               else np.zeros(n, dtype=bool))
    query_ts = ts.copy()
    if has_rid.any():
        uniq, inv = np.unique(request_id[has_rid].astype(str), return_inverse=True)
        first = np.full(uniq.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, inv, ts[has_rid])
        query_ts[has_rid] = first[inv]
    return has_rid, query_ts


def request_keys(user_id: int, ts: np.ndarray, request_id: np.ndarray | None,
                 trig: Triggers) -> np.ndarray:
    """Each impression's request key (object array of str).

    The input's request id where it has one; else the user and trigger
    (``u<user>:t<item>@<trigger ts>``), so that impressions sharing a trigger form one request;
    else ``u<user>:none@<impression ts>``, one request per impression time.
    """
    keys = np.empty(len(ts), dtype=object)
    for i in range(len(ts)):
        if trig.has_request_id[i]:
            keys[i] = str(request_id[i])
        elif trig.has_trigger[i]:
            keys[i] = f"u{user_id}:t{trig.item[i]}@{trig.ts[i]}"
        else:
            keys[i] = f"u{user_id}:none@{ts[i]}"
    return keys


def history_rows(beh_ts: np.ndarray, imp_ts: np.ndarray, history_s: int | None,
                 max_len: int) -> np.ndarray:
    """Step 4: int64 ``[impressions, max_len]``, the behaviour rows of each impression's history
    (strictly before it, within ``history_s``, most recent first, the ``max_len`` most recent),
    -1 padded. ``history_s`` None: no time limit (the long-term view). ``beh_ts`` is sorted."""
    if history_s is None:
        if max_len <= 0:
            raise ValueError(f"max_len must be positive; received max_len={max_len}")
        end = np.searchsorted(np.asarray(beh_ts, np.int64), np.asarray(imp_ts, np.int64), side="left")
        start = np.maximum(end - max_len, 0)
    else:
        start, end = transforms.history_window(beh_ts, imp_ts, history_s, max_len)
    return transforms.gather_history(np.arange(len(beh_ts)), start, end, max_len, pad=-1)


@dataclasses.dataclass(frozen=True)
class View:
    """A behaviour view's events (``item``, ``ts``, sorted by time) and each impression's rows
    into them (``rows`` ``[impressions, L]``, most recent first, -1 padded)."""

    rows: np.ndarray
    item: np.ndarray
    ts: np.ndarray


def view_rows(spec: FeatureSpec, behs: dict, imp_ts: np.ndarray, trig: Triggers,
              realtime_window_s: int) -> dict[str, View]:
    """Step 4, GAP-Net's views (those ``spec`` holds, at its lengths).

    * ``rt`` (:data:`REALTIME`): the clicks triggers are chosen from (``trig.click_ts``, the
      same source as the trigger) strictly before the request's trigger query time
      ``trig.query_ts``, at most ``realtime_window_s`` earlier. The trigger is the most recent
      of them, so it is the first entry of every row with a trigger.
    * ``lt`` (:data:`LONG_TERM`): the behaviours strictly before the impression, over the whole
      log (no time limit).
    """
    lengths = spec.histories()
    out = {}
    if REALTIME in lengths:
        out[REALTIME] = View(history_rows(trig.click_ts, trig.query_ts, realtime_window_s,
                                          lengths[REALTIME]), trig.click_item, trig.click_ts)
    if LONG_TERM in lengths:
        out[LONG_TERM] = View(history_rows(behs["ts"], imp_ts, None, lengths[LONG_TERM]),
                              behs["item_id"], behs["ts"])
    return out


def view_columns(spec: FeatureSpec, views: dict[str, View]) -> dict:
    """Each view's item id, time (0 = padding) and length columns, found in ``spec`` by field
    (its item side fields come from :func:`side_fields`)."""
    out = {}
    for name, view in views.items():
        for f in spec.select(group="history", history=name):
            if f.field == ITEM_ID:
                out[f.name] = _hist_values(view.item.astype(np.int64), view.rows)
            elif f.field == "ts":
                out[f.name] = _hist_values(view.ts.astype(np.int64), view.rows)
            elif f.field == "len":
                out[f.name] = (view.rows >= 0).sum(axis=1).astype(np.int64)
    return out


def _view_values(items: ItemTable, view: View):
    """``item_values`` entry of a view: an item table column gathered at its rows."""
    event_row, _ = items.index(view.item)
    return lambda col: _hist_values(col[event_row], view.rows)


def similarities(vec: np.ndarray, tgt_row: np.ndarray, trg_row: np.ndarray, beh_row: np.ndarray,
                 hist_rows: np.ndarray, has_trig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: ``(trigger-target cosine [n], trigger-behaviour cosine [n, L])``, 0 without a
    trigger or a history entry (vectors are L2-normalised or zero, so a dot product is the
    cosine)."""
    sim = np.where(has_trig, np.clip(np.einsum("ij,ij->i", vec[trg_row], vec[tgt_row]), -1, 1), 0.0)
    hist_sim = np.zeros(hist_rows.shape, dtype=np.float32)
    if hist_rows.shape[0] and beh_row.shape[0]:
        utrig, tinv = np.unique(trg_row, return_inverse=True)
        sims_tb = np.clip(vec[utrig] @ vec[beh_row].T, -1, 1)  # [unique triggers, behaviours]
        valid = (hist_rows >= 0) & has_trig[:, None]
        hist_sim = np.where(valid, sims_tb[tinv[:, None], np.maximum(hist_rows, 0)], 0.0)
    return sim, hist_sim


def _hist_values(values: np.ndarray, rows: np.ndarray, pad=0) -> np.ndarray:
    """``values`` of the behaviour ``rows`` (-1 = padding, filled with ``pad``)."""
    if values.shape[0] == 0:
        return np.full(rows.shape, pad, dtype=values.dtype)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], pad)


def _impression_columns(user_id: int, imps: dict, trig: Triggers, req_key: np.ndarray,
                        sim: np.ndarray) -> dict:
    """The label, ids, and trigger columns of each kept impression."""
    return {
        "label": imps["label"].astype(np.int64),
        "user_id": np.full(len(imps["ts"]), user_id, dtype=np.int64),
        "request_id": np.array([str(k).encode("utf-8") for k in req_key], dtype=object),
        "impression_ts": imps["ts"],
        "target_item_id": imps["item_id"],
        "trigger_item_id": trig.item.astype(np.int64),
        "has_trigger": trig.has_trigger.astype(np.int64),
        "trigger_ts": trig.ts.astype(np.int64),
        "trigger_target_sim": sim.astype(np.float32),
    }


def _history_columns(behs: dict, rows: np.ndarray, hist_sim: np.ndarray) -> dict:
    """The ``hist_*`` sequence columns gathered from the behaviour ``rows``."""
    return {
        "hist_item_ids": _hist_values(behs["item_id"], rows),
        "hist_ts": _hist_values(behs["ts"], rows),
        "hist_btag": _hist_values(behs["btag_id"], rows),
        "hist_len": (rows >= 0).sum(axis=1).astype(np.int64),
        "hist_trigger_sim": hist_sim.astype(np.float32),
    }


def _context_columns(imps: dict, req_key: np.ndarray, s: LabelSettings) -> dict:
    """The time context, and the private request index, split and provenance columns."""
    n_imp = len(imps["ts"])
    req_idx = (np.unique(req_key.astype(str), return_inverse=True)[1] if n_imp
               else np.zeros(0, dtype=np.int64))
    return {
        **time_context(imps["ts"]),  # ctx_hour, ctx_dow (UTC; Monday = 0)
        "_request": req_idx.astype(np.int64),
        "_split": splits.assign(imps["ts"], s.eval_from_ts, s.valid_from_ts),
        "_file": imps.get("_file", np.full(n_imp, -1, np.int64)),
        "_row": imps.get("_row", np.full(n_imp, -1, np.int64)),
    }


def side_fields(spec: FeatureSpec, cols: dict, n_imp: int, items: ItemTable, item_values: dict,
                profile: dict | None, imps: dict) -> dict:
    """The spec's model inputs that ``cols`` does not hold yet, each from its group's source:
    an item group's field from the item table (``item_values[group]`` picks the rows; for the
    history group ``item_values[<behaviour sequence>]``), a user column from the profile (0
    without one), a context column from the impression row (0 when the input has no such
    column).

    Raises:
      ValueError: naming a column whose group has no source here (or of a behaviour sequence
        labeling does not build), or an item field the item table lacks.
    """
    out = {}
    for f in spec.select(model_input=True):
        if f.name in cols:
            continue
        source = f.history if f.group == "history" else f.group
        if f.group == "history" and source not in item_values:
            raise ValueError(f"spec column {f.name!r} belongs to behaviour sequence {f.history!r}; "
                             f"labeling builds the sequence {HISTORY!r} and, with pipeline.views, "
                             f"{REALTIME!r} and {LONG_TERM!r}")
        if source in item_values:
            if f.field not in items.fields:
                raise ValueError(f"spec column {f.name!r} holds item field {f.field!r}, which the "
                                 f"item table lacks; its fields: {sorted(items.fields)}")
            out[f.name] = item_values[source](items.fields[f.field])
        elif f.group == "user":
            value = 0 if profile is None else int(profile.get(f.name, 0))
            out[f.name] = np.full(n_imp, value, dtype=np.int64)
        elif f.group == "context":
            out[f.name] = imps.get(f.name, np.zeros(n_imp, dtype=np.int64)).astype(np.int64)
        else:
            raise ValueError(f"spec column {f.name!r} (group {f.group!r}) has no source in labeling")
    return out


def finalize(cols: dict, n_levels: int, lo: float, hi: float, tau: float, *,
             prior_half_life_s: int, category_clicks: bool = False) -> tuple[dict, dict]:
    """Adds levels, intent counts/distributions, the prior intent and the explicit mask; with
    ``category_clicks``, also each request's clicks in the trigger's category
    (:func:`request_category_clicks`).

    ``cols`` holds whole users (every labeled row of each user it contains, as
    :func:`label_user` returns them, possibly several users concatenated with distinct
    ``_request`` indices): :func:`prior_intent` reads a user's earlier requests.

    Returns:
      ``(record columns, stats)``, without the private keys (``_request``, ``_split``, ...).
    """
    level = transforms.bin_index(cols["trigger_target_sim"], n_levels, lo, hi)
    has_trig = cols["has_trigger"] == 1
    counts = transforms.grouped_intent_counts(cols["_request"], level,
                                              cols["label"] * has_trig, n_levels)
    out = {k: v for k, v in cols.items() if not k.startswith("_")}
    out["trigger_target_level"] = level.astype(np.int64)
    out["intent_counts"] = counts
    out["intent_dist"] = transforms.counts_to_distribution(counts)
    out["prior_intent"] = prior_intent(cols, level, n_levels, prior_half_life_s)
    if category_clicks:
        out[CATEGORY_CLICKS] = request_category_clicks(cols)
    valid = cols["hist_ts"] > 0
    out["explicit_mask"] = transforms.explicit_mask(cols["hist_trigger_sim"], valid & has_trig[:, None], tau)
    stats: dict = {}
    clicked = cols["label"] == 1
    _add(stats, "level_hist_all", np.bincount(level, minlength=n_levels))
    _add(stats, "level_hist_clicked", np.bincount(level[clicked], minlength=n_levels))
    return out, stats


def request_category_clicks(cols: dict) -> np.ndarray:
    """Each row's :data:`~tirec.features.spec.CATEGORY_CLICKS`: its request's clicks (label 1,
    with a trigger, the clicks ``intent_counts`` counts) on targets of the trigger's category.

    Args:
      cols: labeled columns with ``_request``, ``label``, ``has_trigger`` and the target's and
        the trigger's :data:`~tirec.features.spec.CATEGORY` columns.

    Returns:
      int64 array ``[k]``, the same for every row of a request.

    Raises:
      ValueError: naming the missing category column.
    """
    target, trigger = (PREFIXES[g] + CATEGORY for g in ("target", "trigger"))
    missing = [c for c in (target, trigger) if c not in cols]
    if missing:
        raise ValueError(f"{CATEGORY_CLICKS}: needs the columns {missing} (the item field {CATEGORY!r})")
    same = (cols[target] == cols[trigger]).astype(np.int64)
    clicks = cols["label"] * (cols["has_trigger"] == 1)
    return transforms.grouped_intent_counts(cols["_request"], same, clicks, 2)[:, 1]


def prior_intent(cols: dict, level: np.ndarray, n_levels: int, half_life_s: int) -> np.ndarray:
    """Each row's ``prior_intent``: the user's time-decayed click levels before its request.

    For request ``r`` of user ``u`` with ``T_r`` = its earliest impression time: the level
    distribution of ``u``'s clicks (label 1 with a trigger) at times ``t < T_r``, weighted
    ``2 ** (-(T_r - t) / half_life_s)``; all zeros when there is none
    (:func:`tirec.features.transforms.decayed_level_distribution`). Every click of ``r`` is at or
    after ``T_r``, so no label of the row's own request enters: DAIAN's stage 2 feeds this as
    its intent input (docs/models.md#prior-intent).

    Args:
      cols: whole users' labeled columns (``user_id``, ``_request``, ``impression_ts``,
        ``label``, ``has_trigger``).
      level: int array ``[k]``, each row's trigger-target level.
      n_levels: number of levels.
      half_life_s: the decay half-life in seconds.

    Returns:
      float32 array ``[k, n_levels]``, the same for every row of a request.
    """
    req = np.asarray(cols["_request"], dtype=np.int64)
    out = np.zeros((req.shape[0], n_levels), dtype=np.float32)
    if req.size == 0:
        return out
    n_req = int(req.max()) + 1
    start = np.full(n_req, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(start, req, cols["impression_ts"])
    req_user = np.zeros(n_req, dtype=np.int64)
    req_user[req] = cols["user_id"]
    queries = np.unique(req)  # the requests present, each owned by one user
    clicks = np.flatnonzero((cols["label"] == 1) & (cols["has_trigger"] == 1))
    users, q_group = np.unique(req_user[queries], return_inverse=True)
    c_group = np.searchsorted(users, cols["user_id"][clicks])
    q_split = _group_slices(q_group, len(users))
    c_split = _group_slices(c_group, len(users))
    by_req = np.zeros((n_req, n_levels), dtype=np.float32)
    for (qs, c) in zip(q_split, c_split):
        q, rows = queries[qs], clicks[c]
        by_req[q] = transforms.decayed_level_distribution(
            start[q], cols["impression_ts"][rows], level[rows], n_levels, half_life_s)
    return by_req[req]


def _group_slices(group: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Positions of each group ``0..n_groups-1`` in ``group`` (ascending within a group)."""
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _clicks(imps: dict, behs: dict, s: LabelSettings) -> tuple[np.ndarray, np.ndarray]:
    ts_parts, item_parts = [], []
    if s.trigger_from in ("behaviours", "both") and behs["ts"].shape[0]:
        is_click = behs["is_click"]
        ts_parts.append(behs["ts"][is_click])
        item_parts.append(behs["item_id"][is_click])
    if s.trigger_from in ("impressions", "both") and imps["ts"].shape[0]:
        is_click = imps["label"] == 1
        ts_parts.append(imps["ts"][is_click])
        item_parts.append(imps["item_id"][is_click])
    if not ts_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ts = np.concatenate(ts_parts)
    item = np.concatenate(item_parts)
    order = np.argsort(ts, kind="stable")
    return ts[order], item[order]


def _sorted(cols: dict, key: str) -> dict:
    order = np.argsort(cols[key], kind="stable")
    return {k: v[order] for k, v in cols.items()}


def drop_duplicates(cols: dict | None, table: str, dead: list, files: list[str]) -> dict | None:
    """``cols`` (one user's events of ``table``) without the rows equal in every field to
    another, which are dead-lettered as ``duplicate_row`` naming the row kept, the first in file
    order (a log written twice)."""
    if cols is None:
        return None
    first = _first_equal(cols)
    dup = first != np.arange(len(first))
    for i in np.flatnonzero(dup):
        dead.append(dead_letter(table, DeadReason.DUPLICATE_ROW, value=f"same as {_where(cols, first[i], files)}",
                                **provenance(cols, int(i), files)))
    return {k: v[~dup] for k, v in cols.items()} if dup.any() else cols


def repeated_rows(cols: dict | None) -> int:
    """How many of ``cols``' rows (one user's events of a table) equal another row in every
    field (counted, kept, where equal rows can be two events)."""
    return 0 if cols is None else int((_first_equal(cols) != np.arange(len(cols["ts"]))).sum())


def _first_equal(cols: dict) -> np.ndarray:
    """For each row the index of the first row (in file order: ``_file``, ``_row``, where the
    rows have them, then position) equal to it in every field but those (``_*``). Only rows
    sharing their time and item with another (few: a request's impressions differ in item)
    are compared in full."""
    n = len(cols["ts"])
    first = np.arange(n)
    coarse = [cols[k] for k in ("item_id", "ts") if k in cols]
    order = np.lexsort(coarse)
    same = np.logical_and.reduce([k[order][1:] == k[order][:-1] for k in coarse])
    if not same.any():
        return first
    rows = np.unique(np.concatenate([order[1:][same], order[:-1][same]]))
    first[rows] = rows[_first_equal_in_full({k: v[rows] for k, v in cols.items()})]
    return first


def _first_equal_in_full(cols: dict) -> np.ndarray:
    """:func:`_first_equal` comparing every field of every row."""
    n = len(cols["ts"])
    fields = [k for k in cols if not k.startswith("_")]
    keys = [np.unique(cols[k], return_inverse=True)[1].reshape(-1) if cols[k].dtype == object else cols[k]
            for k in fields]
    ties = [np.arange(n)] + [cols[k] for k in ("_row", "_file") if k in cols]
    order = np.lexsort(ties + keys[::-1])  # by the fields, then in file order
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = np.any([k[order][1:] != k[order][:-1] for k in keys], axis=0)
    first = np.empty(n, dtype=np.int64)
    first[order] = order[np.flatnonzero(new_group)][np.cumsum(new_group) - 1]
    return first


def _where(cols: dict, i: int, files: list[str]) -> str:
    p = provenance(cols, i, files)
    return f"row {p['row']} of {p['file']}" if p["row"] is not None else f"event {i}"


def _cap(cols: dict, cap: int, stats: dict, drop: Drop) -> dict:
    n = len(cols["ts"])
    if n <= cap:
        return cols
    _add(stats, drop.value, n - cap)
    return {k: v[n - cap:] for k, v in cols.items()}


def _drop_unknown(cols: dict, items: ItemTable, table: str, dead: list, files: list[str],
                  stats: dict) -> dict:
    _, found = items.index(cols["item_id"])
    if found.all():
        return cols
    for i in np.flatnonzero(~found):
        dead.append(dead_letter(table, DeadReason.UNKNOWN_ITEM, field="item_id", value=int(cols["item_id"][i]),
                                **provenance(cols, int(i), files)))
    return {k: v[found] for k, v in cols.items()}


def _empty_imps() -> dict:
    return {"item_id": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64),
            "label": np.zeros(0, np.int64)}


def _empty_behs() -> dict:
    return {"item_id": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64),
            "btag_id": np.zeros(0, np.int64), "is_click": np.zeros(0, bool)}


def _add(stats: dict, key: str, value) -> None:
    if key in stats:
        stats[key] = stats[key] + value
    else:
        stats[key] = value
