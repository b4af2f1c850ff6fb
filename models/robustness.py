"""Evaluation under interaction noise and on label-free slices, for every registered model.

Noise (``tirec evaluate --noise P``): :class:`HistoryNoise` replaces ``P`` % of the real
(non-padding) positions of every behaviour sequence of the run's spec (``hist`` and, for a model
that reads them, GAP-Net's ``rt`` / ``lt`` views, each independently) with random items of the
catalogue, the data folder's item table ``DATA/items/items.npz``. Per row and sequence
``round(P / 100 * real length)`` positions (halves round up) are drawn without replacement among
the real ones. A replaced position gets the random item's id and all its item side fields
(``cate_id``, ``brand_id``, ...) from the table, and its trigger similarity (``trigger_sim``,
``explicit``) is recomputed from the table's vectors; the behaviour's own attributes (``ts``,
``btag``) and the sequence length stay. The random item is never the position's own item nor
the padding id 0. The draws are keyed on ``(seed, request id, sequence name)``: the same request
gets the same noisy history whatever the batch order, and every candidate of a request sees the
same one.

Slices (``tirec evaluate --slice NAME``) are computed from label-free columns of the clean eval
records (membership never depends on the noise, so a slice holds the same rows at every P):

"The last behaviours" are the last :data:`RECENT` behaviours of the main history (``hist``, else
the spec's first sequence) other than the trigger's own click: the trigger is the user's latest
click, so the pipeline's history usually starts with it, and counting it would put every
trigger's category among the recent ones by construction.

* ``drift``: the impression has a trigger, and the trigger's category (item field
  :data:`CATEGORY_FIELD`) is absent from the categories of the last behaviours (none counts as
  absent). On data without that field:
  the trigger's own similarity level (the top level, the one holding cos = 1) is absent from the
  levels of those behaviours' similarity to the trigger (``trigger_sim``, binned with the spec's
  ``intent_levels`` and ``sim_range``). Intent drift: the trigger opens an interest the recent
  behaviours do not show.
* ``no_drift``: has a trigger and is not ``drift``.
* ``new_user`` / ``returning_user``: the user has no / some record in ``DATA/train`` (when
  ``--data`` is the data the run trained on: users the model never saw in training).
* ``no_history``: the main history has no real behaviour at all.
* ``intent_specific`` / ``intent_broad``: the distinct categories (without a category field:
  distinct trigger-similarity levels, on rows with a trigger) among the last behaviours number 1 to :data:`SPECIFIC_MAX` / at least :data:`BROAD_MIN`; rows in between, or
  with an empty history, are in neither.
* ``trigger`` / ``no_trigger``: the request has / has no trigger (``has_trigger``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os

import numpy as np

from tirec.features import transforms
from tirec.features.spec import HISTORY, ITEM_ID, FeatureSpec

CATEGORY_FIELD = "cate_id"  # the item field the drift and intent slices read, when the data has it
RECENT = 10  # the last behaviours the drift and intent-diversity slices look at
SPECIFIC_MAX = 2  # intent_specific: 1..SPECIFIC_MAX distinct categories (or levels) among them
BROAD_MIN = 4  # intent_broad: at least BROAD_MIN distinct categories (or levels)
ITEM_TABLE = os.path.join("items", "items.npz")  # the pipeline's item table in a data folder
KEPT_FIELDS = ("ts", "btag", "len")  # behaviour attributes a replaced position keeps
SIM_FIELD, EXPLICIT_FIELD = "trigger_sim", "explicit"  # recomputed for a replaced position
SLICES = {
    "drift": "has a trigger whose category is absent from the last 10 behaviours (the trigger's own "
             "click excluded)",
    "no_drift": "has a trigger whose category is among the last 10 behaviours (the trigger's own "
                "click excluded)",
    "new_user": "the user has no record in the data's train split",
    "returning_user": "the user has records in the data's train split",
    "no_history": "the main history is empty",
    "intent_specific": f"1-{SPECIFIC_MAX} distinct categories among the last 10 behaviours "
                       f"(the trigger's own click excluded)",
    "intent_broad": f">= {BROAD_MIN} distinct categories among the last 10 behaviours "
                    f"(the trigger's own click excluded)",
    "trigger": "has a trigger",
    "no_trigger": "has no trigger",
}


# ---- the catalogue ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Catalogue:
    """The items noise draws from: ids (sorted), their side fields and L2-normalised vectors."""

    ids: np.ndarray
    fields: dict
    vectors: np.ndarray
    source: str = ""

    def rows(self, item_ids: np.ndarray, what: str) -> np.ndarray:
        """The table row of each id; raises naming ``what`` and the ids the table lacks."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, item_ids), self.ids.size - 1)
        missing = self.ids[pos] != item_ids
        if missing.any():
            raise ValueError(f"--noise: {what} holds items absent from the item table {self.source}: "
                             f"{sorted(set(item_ids[missing].tolist()))[:10]}; their side fields "
                             f"cannot be found")
        return pos


def load_catalogue(data_dir: str) -> Catalogue:
    """The data folder's item table (``DATA/items/items.npz``, written by ``tirec pipeline``).

    Raises:
      FileNotFoundError: when the folder has none (no side fields to give a random item).
    """
    import tensorflow as tf

    path = os.path.join(data_dir, ITEM_TABLE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--noise needs the item table {path} (id -> side fields, written by "
                                f"`tirec pipeline`) to give a random item its side fields; it is "
                                f"missing: run the pipeline again into --data")
    with tf.io.gfile.GFile(path, "rb") as fh:
        z = np.load(io.BytesIO(fh.read()))
        fields = {k[len("field__"):]: z[k].astype(np.int64) for k in z.files if k.startswith("field__")}
        ids, vectors = z["ids"].astype(np.int64), z["vectors"].astype(np.float32)
    if ids.size < 2 or np.any(np.diff(ids) <= 0):
        raise ValueError(f"{path}: ids must be sorted, unique and at least 2; received {ids.size} ids")
    return Catalogue(ids, fields, vectors, path)


# ---- noise ------------------------------------------------------------------------------------

def noise_count(percent: float, real: np.ndarray) -> np.ndarray:
    """Positions replaced per row: ``round(percent / 100 * real)``, halves rounded up."""
    return np.floor(np.asarray(real) * (percent / 100.0) + 0.5).astype(np.int64)


def check_percent(percent) -> float:
    """``--noise`` as a float in [0, 100]; raises naming the flag and the value."""
    try:
        value = float(percent)
    except (TypeError, ValueError):
        raise ValueError(f"--noise must be a percentage in [0, 100]; received {percent!r}") from None
    if not (0.0 <= value <= 100.0):
        raise ValueError(f"--noise must be a percentage in [0, 100]; received {percent!r}")
    return value


@dataclasses.dataclass(frozen=True)
class _Sequence:
    """The columns of one behaviour sequence, by what noise does with them."""

    name: str
    item: str
    real: str  # the column whose nonzero values mark real positions (ts, else the item id)
    side: dict  # column -> catalogue field
    sim: str | None
    explicit: str | None


class HistoryNoise:
    """Replaces ``percent`` % of each behaviour sequence's real positions with random items.

    Args:
      spec: the run's spec (its behaviour sequences are the ones noised).
      catalogue: the item table (:func:`load_catalogue`).
      percent: P in [0, 100].
      seed: the noise seed (``--noise-seed``).

    Raises:
      ValueError: for P outside [0, 100], or a history column whose field noise cannot handle.
    """

    def __init__(self, spec: FeatureSpec, catalogue: Catalogue, percent: float, seed: int = 0):
        self.percent, self.seed, self.catalogue = check_percent(percent), int(seed), catalogue
        self.sequences = [self._columns(spec, h) for h in spec.histories()]
        trig = spec.select(group="trigger", field=ITEM_ID)
        present = spec.select(group="trigger", field="present")
        self.trigger = trig[0].name if trig else None
        self.present = present[0].name if present else None
        self.tau = spec.explicit_threshold
        self.request = request_column(spec)
        self.replaced = {s.name: 0 for s in self.sequences}
        self.real = {s.name: 0 for s in self.sequences}

    def _columns(self, spec: FeatureSpec, h: str) -> _Sequence:
        cols = {f.field: f.name for f in spec.select(group="history", history=h, kind="sequence")}
        if ITEM_ID not in cols:
            raise ValueError(f"--noise: behaviour sequence {h!r} has no item_id column")
        side, unknown = {}, []
        for field, name in cols.items():
            if field in (ITEM_ID, SIM_FIELD, EXPLICIT_FIELD) or field in KEPT_FIELDS:
                continue
            if field in self.catalogue.fields:
                side[name] = field
            else:
                unknown.append(name)
        if unknown:
            raise ValueError(f"--noise: cannot give a random item the values of {unknown} (behaviour "
                             f"sequence {h!r}): their fields are not item fields of "
                             f"{self.catalogue.source} (fields {sorted(self.catalogue.fields)}) nor "
                             f"behaviour attributes kept as they are {list(KEPT_FIELDS)}")
        return _Sequence(h, cols[ITEM_ID], cols.get("ts", cols[ITEM_ID]), side,
                         cols.get(SIM_FIELD), cols.get(EXPLICIT_FIELD))

    def __call__(self, batch: dict) -> dict:
        """A copy of ``batch`` (numpy columns, with the request column) with noisy histories."""
        out = dict(batch)
        if self.percent == 0:
            return out
        keys = [_text(r) for r in np.asarray(batch[self.request]).reshape(-1)]
        for seq in self.sequences:
            self._noise(seq, batch, out, keys)
        return out

    def _noise(self, seq: _Sequence, batch: dict, out: dict, keys: list[str]) -> None:
        real = np.asarray(batch[seq.real]) != 0
        items = np.array(batch[seq.item], dtype=np.int64)
        n = noise_count(self.percent, real.sum(axis=1))
        orig = self.catalogue.rows(items[real], f"behaviour sequence {seq.name!r}")
        rows = np.full(items.shape, -1, dtype=np.int64)
        rows[real] = orig
        new_rows = rows.copy()
        drawn: dict = {}  # the candidates of a request share its draws: computed once per batch
        for i in np.flatnonzero(n):
            real_pos = np.flatnonzero(real[i])
            key = (keys[i], real_pos.tobytes())
            if key not in drawn:
                drawn[key] = self._draws(keys[i], seq.name, real_pos, int(n[i]))
            pos, draw = drawn[key]
            draw = draw + (draw >= rows[i, pos])  # never the position's own item
            new_rows[i, pos] = draw
        hit = new_rows != rows
        self.replaced[seq.name] += int(hit.sum())
        self.real[seq.name] += int(real.sum())
        out[seq.item] = np.where(hit, self.catalogue.ids[np.maximum(new_rows, 0)], items)
        for col, field in seq.side.items():
            values = self.catalogue.fields[field][np.maximum(new_rows, 0)]
            out[col] = np.where(hit, values, batch[col]).astype(np.asarray(batch[col]).dtype)
        self._similarity(seq, batch, out, new_rows, hit)

    def _draws(self, key: str, name: str, real_pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The positions and catalogue rows (before skipping the own item) of one row's noise."""
        digest = hashlib.blake2b(f"{key}\x00{name}".encode(), digest_size=8).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
        pos = np.sort(rng.choice(real_pos, size=k, replace=False))
        pool = self.catalogue.ids.size - 1 - int(self.catalogue.ids[0] == 0)
        draw = rng.integers(0, pool, size=k) + int(self.catalogue.ids[0] == 0)  # never id 0
        return pos, draw

    def _similarity(self, seq: _Sequence, batch: dict, out: dict, rows: np.ndarray, hit: np.ndarray) -> None:
        """Recomputes the trigger similarity (and explicit mask) of the replaced positions."""
        if seq.sim is None or self.trigger is None or not hit.any():
            return
        has = np.asarray(batch[self.present]).reshape(-1) != 0 if self.present else \
            np.ones(hit.shape[0], dtype=bool)
        trig_ids = np.asarray(batch[self.trigger], dtype=np.int64).reshape(-1)
        trig_rows = np.zeros(trig_ids.shape, dtype=np.int64)
        trig_rows[has] = self.catalogue.rows(trig_ids[has], "the trigger column")
        vec = self.catalogue.vectors
        sims = np.clip(np.einsum("bd,bld->bl", vec[trig_rows], vec[np.maximum(rows, 0)]), -1, 1)
        sims = np.where(has[:, None], sims, 0.0)
        out[seq.sim] = np.where(hit, sims, batch[seq.sim]).astype(np.float32)
        if seq.explicit:
            flag = (sims >= self.tau).astype(np.asarray(batch[seq.explicit]).dtype)
            out[seq.explicit] = np.where(hit, flag, batch[seq.explicit])

    def summary(self) -> dict:
        """The settings and counts for ``metrics.json``."""
        return {"percent": self.percent, "seed": self.seed, "catalogue": self.catalogue.source,
                "catalogue_items": int(self.catalogue.ids.size),
                "sequences": {h: {"real_positions": self.real[h], "replaced": self.replaced[h]}
                              for h in self.real}}


def request_column(spec: FeatureSpec) -> str:
    """The request id column (the meta group's request-scoped string column)."""
    cols = spec.select(group="meta", scope="request", dtype="string")
    if len(cols) != 1:
        raise ValueError(f"the spec needs exactly one request id column (meta group, request scope, "
                         f"string); it has {[f.name for f in cols]}")
    return cols[0].name


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---- slices -----------------------------------------------------------------------------------

def check_slices(names) -> list[str]:
    """The slice names of ``--slice`` (repeated or comma-separated), validated, in order."""
    out = []
    for name in names or ():
        for part in str(name).split(","):
            part = part.strip()
            if part not in SLICES:
                raise ValueError(f"--slice: unknown slice {part!r}; valid slices: {', '.join(SLICES)}")
            if part not in out:
                out.append(part)
    return out


def main_history(spec: FeatureSpec) -> str:
    """The main behaviour sequence the slices read: ``hist``, else the spec's first."""
    histories = list(spec.histories())
    if not histories:
        raise ValueError("--slice: the run's spec has no behaviour sequence")
    return HISTORY if HISTORY in histories else histories[0]


def _one(spec: FeatureSpec, **where) -> str | None:
    cols = spec.select(**where)
    return cols[0].name if cols else None


def slice_columns(spec: FeatureSpec) -> dict[str, str | None]:
    """The label-free columns the slices read, by role (None where the spec has none)."""
    h = main_history(spec)
    hist = dict(group="history", history=h)
    return {"user": _one(spec, group="user", table="user"),
            "present": _one(spec, group="trigger", field="present"),
            "trigger_cate": _one(spec, group="trigger", field=CATEGORY_FIELD),
            "hist_cate": _one(spec, field=CATEGORY_FIELD, **hist),
            "hist_real": _one(spec, field="ts", **hist) or _one(spec, field=ITEM_ID, **hist),
            "hist_sim": _one(spec, field=SIM_FIELD, **hist),
            "hist_item": _one(spec, field=ITEM_ID, **hist),
            "trigger_item": _one(spec, group="trigger", field=ITEM_ID),
            "trigger_ts": _one(spec, group="trigger", field="ts"),
            "hist_ts": _one(spec, field="ts", **hist)}


def _recent(cols: dict, c: dict) -> np.ndarray:
    """The last :data:`RECENT` real positions other than the trigger's own click (sequences are
    most recent first). The trigger is the user's latest click, so it is usually the history's
    first behaviour; counting it would make every trigger's category "recent" by construction.
    Its behaviour is the position holding the trigger item at the trigger time (any position
    holding the trigger item when the spec has no trigger time)."""
    real = np.asarray(cols[c["hist_real"]]) != 0
    if c["trigger_item"] and c["hist_item"]:
        own = np.asarray(cols[c["hist_item"]]) == np.asarray(cols[c["trigger_item"]]).reshape(-1, 1)
        if c["trigger_ts"] and c["hist_ts"]:
            own &= np.asarray(cols[c["hist_ts"]]) == np.asarray(cols[c["trigger_ts"]]).reshape(-1, 1)
        real &= ~own
    return real & (np.cumsum(real, axis=1) <= RECENT)


def _distinct(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Distinct values per row among the kept positions."""
    sentinel = np.iinfo(np.int64).min
    v = np.sort(np.where(keep, values.astype(np.int64), sentinel), axis=1)
    new = np.ones(v.shape, dtype=bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]
    return (new & (v != sentinel)).sum(axis=1)


def _intent_view(spec: FeatureSpec, cols: dict, c: dict, has: np.ndarray):
    """``(values [rows, L], trigger value [rows], usable rows)``: categories when the data has
    them, else trigger-similarity levels (usable only on rows with a trigger)."""
    if c["trigger_cate"] and c["hist_cate"]:
        return cols[c["hist_cate"]], cols[c["trigger_cate"]].reshape(-1), np.ones(has.shape, bool)
    if not c["hist_sim"]:
        raise ValueError(f"--slice: the drift and intent slices need the item field {CATEGORY_FIELD!r} "
                         f"of the trigger and the main history, or the history's trigger "
                         f"similarity ({SIM_FIELD}); the run's spec has neither")
    n, (lo, hi) = spec.intent_levels, spec.sim_range
    levels = transforms.bin_index(cols[c["hist_sim"]], n, lo, hi)
    top = int(transforms.bin_index(np.array([1.0]), n, lo, hi)[0])
    return levels, np.full(has.shape, top, dtype=np.int64), has


def slice_masks(spec: FeatureSpec, cols: dict, names: list[str], train_users: np.ndarray | None = None) -> dict:
    """``{slice: bool mask over rows}`` from the clean label-free columns ``cols``."""
    c = slice_columns(spec)
    rows = np.asarray(cols[c["user"]]).reshape(-1).shape[0]
    has = np.asarray(cols[c["present"]]).reshape(-1) != 0 if c["present"] else np.zeros(rows, bool)
    recent = _recent(cols, c)
    out = {}
    for name in names:
        if name in ("trigger", "no_trigger"):
            out[name] = has if name == "trigger" else ~has
        elif name == "no_history":
            out[name] = ~(np.asarray(cols[c["hist_real"]]) != 0).any(axis=1)
        elif name in ("new_user", "returning_user"):
            if train_users is None:
                raise ValueError(f"--slice {name}: needs the users of the data's train split")
            seen = np.isin(np.asarray(cols[c["user"]]).reshape(-1), train_users)
            out[name] = ~seen if name == "new_user" else seen
        else:
            values, trig, usable = _intent_view(spec, cols, c, has)
            if name in ("drift", "no_drift"):
                found = (recent & (values == trig[:, None])).any(axis=1)
                out[name] = has & (~found if name == "drift" else found)
            else:
                k = np.where(usable, _distinct(values, recent), 0)
                out[name] = (k >= 1) & (k <= SPECIFIC_MAX) if name == "intent_specific" else k >= BROAD_MIN
    return out


def slice_metrics(labels: np.ndarray, probs: np.ndarray, users: np.ndarray, mask: np.ndarray) -> dict:
    """AUC, GAUC, logloss, impressions and users of one slice; the metrics a slice cannot
    define (empty, one class, no user with both classes) are null with the reason."""
    from tirec.models import metrics as M

    y, p, u = labels[mask], probs[mask], users[mask]
    out = {"n": int(y.size), "users": int(np.unique(u).size), "positives": int(y.sum()),
           "auc": None, "gauc": None, "logloss": None}
    if y.size == 0:
        out["reason"] = "empty slice"
        return out
    out["logloss"] = M.logloss(y, p)
    if out["positives"] in (0, y.size):
        out["reason"] = "one class only: AUC and GAUC undefined"
        return out
    out["auc"] = M.auc(y, p)
    value, stats = M.gauc(y, p, u)
    out["gauc_users_used"] = stats["users_used"]
    if math.isnan(value):
        out["reason"] = "no user has both classes: GAUC undefined"
    else:
        out["gauc"] = value
    return out


def train_users(data_dir: str, spec: FeatureSpec) -> np.ndarray:
    """The distinct users of the data folder's train split."""
    from tirec.models.data import read_columns

    col = slice_columns(spec)["user"]
    return np.unique(read_columns(data_dir, "train", spec, [col])[col].reshape(-1))


def evaluate_slices(spec: FeatureSpec, data_dir: str, p: dict, names: list[str]) -> dict:
    """``{slice: metrics}`` over the eval predictions ``p`` (:func:`predict_eval` with the slice
    columns kept), each with its definition."""
    c = slice_columns(spec)
    cols = {k: np.asarray(v) for k, v in p.items()}
    users = None
    if {"new_user", "returning_user"} & set(names):
        users = train_users(data_dir, spec)
    masks = slice_masks(spec, cols, names, users)
    labels, probs = cols["label"].astype(np.int64), cols["prob"]
    uid = cols[c["user"]].reshape(-1)
    return {name: {**slice_metrics(labels, probs, uid, masks[name]), "definition": SLICES[name]}
            for name in names}
