"""FeatureSpec: the one schema shared by the Beam job, Keras training and the serving signature.

A :class:`FeatureSpec` lists every column of the TFRecords (name, dtype, fixed length, which
embedding table it reads) and the labeling constants the records were built with (number of
intent levels, similarity range, explicit-intent threshold, sequence length). Beam encodes
``tf.train.Example`` records with it, Keras builds its inputs from it, and the serving signature
parses with :meth:`FeatureSpec.parse_example_spec`. It round-trips through ``spec.json``.

Embedding tables (:class:`TableSpec`) are declared apart from features: target, trigger and
history item ids all name the table ``item``, by reference rather than by a name prefix. Ids stay
raw in the records; hashing into ``num_buckets`` rows happens inside the TF graph.

Each feature also says what it describes, so no package parses a feature name:

* ``group``: ``user``, ``context``, ``trigger``, ``target``, ``history``, ``label``, ``intent``
  (the intent supervision and inputs: ``intent_counts``, ``intent_dist``, ``prior_intent``) or
  ``meta`` (bookkeeping and analysis columns such as ``request_id``, ``trigger_target_sim``);
* ``scope``: ``request`` (one value for every candidate of a request: sent once by a client and in
  the ``rank`` signature's context example) or ``candidate`` (one value per candidate);
* ``field``: what the column holds within its group; for the item groups (target, trigger,
  history) the item attribute (``item_id``, ``cate_id``, ...), for a history also ``ts`` (the
  behaviour time, 0 = padding), for the trigger ``present`` (``has_trigger``);
* ``history``: for the history group, the name of the behaviour sequence the column belongs to.
  A spec may hold several (e.g. real-time, short- and long-term views), each with its own name
  and length; the standard records have one, ``hist``;
* ``model_input``: whether the column is a model input (an input of every serving signature,
  sent by the client); the other columns are written for training targets, analysis and
  bookkeeping.

:meth:`FeatureSpec.select` is how every package asks, e.g. ``spec.select(group="history")``,
``spec.select(scope="request", model_input=True)``. ``spec.json`` stores every attribute
(format version 2); a version-1 file, written before the groups existed, still loads: its groups
are derived from the standard column names, once, by :func:`derive_groups`.

Example:
  >>> spec = tir_feature_spec(item_fields=("cate_id",), user_fields=("gender",))
  >>> spec.feature("hist_item_ids").length
  50
  >>> FeatureSpec.from_json(spec.to_json()) == spec
  True
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tirec.features.jsonio import read_json, write_json

SPEC_VERSION = 2
LEGACY_SPEC_VERSION = 1  # no groups: they are derived from the column names (derive_groups)
DTYPES = ("int64", "float32", "string")
KINDS = ("scalar", "sequence", "vector")
ROLES = ("label", "feature", "intent", "meta")
GROUPS = ("user", "context", "trigger", "target", "history", "label", "intent", "meta")
SCOPES = ("request", "candidate")
ITEM_GROUPS = ("target", "trigger", "history")  # groups whose columns describe an item
INPUT_GROUPS = ("user", "context", "trigger", "target", "history")  # groups a model may read
ITEM_ID = "item_id"  # the field of an item group's id column
HISTORY = "hist"  # the name of the standard records' behaviour sequence (GAP-Net's short-term view)
REALTIME = "rt"  # the real-time view: the clicks of the last hours, trigger first (pipeline.views)
LONG_TERM = "lt"  # the long-term view: behaviours over the whole log window (pipeline.views)
CATEGORY = "cate_id"  # the item field that holds an item's (leaf) category
CATEGORY_CLICKS = "intent_cate_clicks"  # the request's clicks in the trigger's category
# Training targets the records gained after runs had been trained without them: a trained run
# that lacks one still evaluates on records that have it (tirec.models.train.check_run_data).
LATER_TARGETS = (CATEGORY_CLICKS,)
# The fixed scope of a group (context, intent and meta columns may be either).
GROUP_SCOPES = {"user": "request", "trigger": "request", "history": "request",
                "target": "candidate", "label": "candidate"}
# The standard records name a field's column ``<prefix><field>`` (e.g. ``target_cate_id``); raw
# input headers use the same prefixes (``ctx_<f>`` impression columns). Only this module reads
# them: everything else asks the spec.
PREFIXES = {"user": "user_", "context": "ctx_", "target": "target_", "trigger": "trigger_",
            "history": "hist_"}
LEGACY_TABLE_KEYS = ("dim", "shards")  # in spec.json files of older tirec versions; see TableSpec.from_dict


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """An embedding table of the data: raw ids are hashed into ``num_buckets`` rows.

    The bucket count is a property of the data (the pipeline sizes it from the distinct ids it
    saw). The row width and the row sharding are model choices and live in the model config
    (``model.emb_dim``, ``model.table_shards``), not here.

    Args:
      name: table name referenced by :attr:`Feature.table`.
      num_buckets: hash bucket count (rows of the table).
    """

    name: str
    num_buckets: int

    def __post_init__(self):
        _check_name("TableSpec.name", self.name)
        value = self.num_buckets
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"TableSpec {self.name!r}: num_buckets must be a positive integer; "
                             f"received num_buckets={value!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TableSpec":
        """A table from its ``spec.json`` entry. Entries written before the width and sharding
        moved to the model config also carry ``dim`` and ``shards``: no model ever read them,
        so they are accepted (when positive integers) and left out."""
        d = dict(d)
        for legacy in LEGACY_TABLE_KEYS:
            value = d.pop(legacy, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TableSpec {d.get('name')!r}: {legacy} must be a positive integer; "
                                 f"received {legacy}={value!r}")
        extra = sorted(set(d) - {"name", "num_buckets"})
        if extra:
            raise ValueError(f"TableSpec {d.get('name')!r}: unknown keys {extra}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Feature:
    """One column of the records.

    Args:
      name: the ``tf.train.Example`` key.
      dtype: ``int64``, ``float32`` or ``string``.
      kind: ``scalar`` (length 1), ``sequence`` (``length`` = max sequence length, padded) or
        ``vector`` (a fixed-width value such as the intent distribution).
      length: fixed number of values per record.
      table: the embedding table the ids are looked up in, or None.
      role: ``label``, ``feature`` (a model input or a derived column), ``intent`` (intent
        supervision and inputs) or ``meta`` (bookkeeping: request id, timestamps); the columns a
        training batch parses.
      group: what the column describes (:data:`GROUPS`, module docstring).
      scope: ``request`` or ``candidate`` (:data:`SCOPES`); fixed for the user, trigger, history,
        target and label groups.
      field: the attribute within the group (``item_id``, ``cate_id``, ``ts``, ...); required for
        a model input of an item group.
      history: the behaviour sequence of a history column (required there, None elsewhere).
      model_input: a model input: every serving signature takes it, a client sends it and the
        models may read it (``impression_ts`` is one that today's models do not read).
    """

    name: str
    dtype: str
    kind: str = "scalar"
    length: int = 1
    table: str | None = None
    role: str = "feature"
    group: str = "meta"
    scope: str = "candidate"
    field: str | None = None
    history: str | None = None
    model_input: bool = False

    def __post_init__(self):
        _check_name("Feature.name", self.name)
        if self.dtype not in DTYPES:
            raise ValueError(f"Feature {self.name!r}: dtype must be one of {DTYPES}; "
                             f"received dtype={self.dtype!r}")
        if self.kind not in KINDS:
            raise ValueError(f"Feature {self.name!r}: kind must be one of {KINDS}; "
                             f"received kind={self.kind!r}")
        if self.role not in ROLES:
            raise ValueError(f"Feature {self.name!r}: role must be one of {ROLES}; "
                             f"received role={self.role!r}")
        if not isinstance(self.length, (int, np.integer)) or self.length < 1:
            raise ValueError(f"Feature {self.name!r}: length must be a positive integer; "
                             f"received length={self.length!r}")
        if self.kind == "scalar" and self.length != 1:
            raise ValueError(f"Feature {self.name!r}: a scalar has length 1; received length={self.length}")
        if self.table is not None and self.dtype != "int64":
            raise ValueError(f"Feature {self.name!r}: only int64 ids can read table {self.table!r}; "
                             f"received dtype={self.dtype!r}")
        self._check_group()

    def _check_group(self) -> None:
        """The group attributes agree with each other and with ``role``."""
        def bad(what):
            raise ValueError(f"Feature {self.name!r}: {what}")

        if self.group not in GROUPS:
            bad(f"group must be one of {GROUPS}; received group={self.group!r}")
        if self.scope not in SCOPES:
            bad(f"scope must be one of {SCOPES}; received scope={self.scope!r}")
        fixed = GROUP_SCOPES.get(self.group)
        if fixed is not None and self.scope != fixed:
            bad(f"a {self.group} column has scope {fixed!r}; received scope={self.scope!r}")
        for role in ("label", "intent"):
            if (self.role == role) != (self.group == role):
                bad(f"role {role!r} goes with group {role!r}; received role={self.role!r}, "
                    f"group={self.group!r}")
        if (self.group == "history") != (self.history is not None):
            bad(f"a history column names its behaviour sequence, and only it; received "
                f"group={self.group!r}, history={self.history!r}")
        if self.history is not None:
            _check_name("Feature.history", self.history)
        if not isinstance(self.model_input, bool):
            bad(f"model_input must be true or false; received model_input={self.model_input!r}")
        if self.model_input and self.group not in INPUT_GROUPS:
            bad(f"a model input belongs to one of the groups {INPUT_GROUPS}; received "
                f"group={self.group!r}")
        if self.model_input and self.group in ITEM_GROUPS and self.field is None:
            bad(f"a model input of the {self.group} group names the item field it holds (field=...)")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """The full record schema plus the labeling constants the records were built with.

    Args:
      features: the columns, in a fixed order.
      tables: embedding tables referenced by the features.
      label: the name of the label feature.
      intent_levels: number n of similarity levels.
      sim_range: ``(lo, hi)`` binning range of the trigger-target similarity.
      explicit_threshold: tau, the similarity at or above which a behaviour is explicit intent.
      max_seq_len: the behaviour sequence length L.
      version: schema format version.
    """

    features: tuple[Feature, ...]
    tables: tuple[TableSpec, ...] = ()
    label: str = "label"
    intent_levels: int = 6
    sim_range: tuple[float, float] = (-1.0, 1.0)
    explicit_threshold: float = 1.0 / 3.0
    max_seq_len: int = 50
    version: int = SPEC_VERSION

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "tables", tuple(self.tables))
        object.__setattr__(self, "sim_range", tuple(float(x) for x in self.sim_range))
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"FeatureSpec: duplicate feature names {dup}")
        table_names = [t.name for t in self.tables]
        dup = sorted({n for n in table_names if table_names.count(n) > 1})
        if dup:
            raise ValueError(f"FeatureSpec: duplicate table names {dup}")
        for f in self.features:
            if f.table is not None and f.table not in table_names:
                raise ValueError(f"Feature {f.name!r} reads table {f.table!r}, which the spec does "
                                 f"not declare; declared tables: {sorted(table_names)}")
        if self.label not in names:
            raise ValueError(f"FeatureSpec: label {self.label!r} is not a feature")
        self._check_groups()
        lo, hi = self.sim_range
        if not hi > lo:
            raise ValueError(f"FeatureSpec: sim_range needs lo < hi; received {self.sim_range}")
        if self.intent_levels < 1:
            raise ValueError(f"FeatureSpec: intent_levels must be >= 1; received {self.intent_levels}")
        if self.version != SPEC_VERSION:
            raise ValueError(f"FeatureSpec: unsupported version {self.version}; "
                             f"this tirec reads version {SPEC_VERSION}")

    def _check_groups(self) -> None:
        """Fields are unique within a group (and history); a history's sequences share a length."""
        seen: dict = {}
        for f in self.features:
            if f.field is None:
                continue
            key = (f.group, f.history, f.field)
            if key in seen:
                raise ValueError(f"FeatureSpec: features {seen[key]!r} and {f.name!r} both hold field "
                                 f"{f.field!r} of group {f.group!r}"
                                 + (f" (history {f.history!r})" if f.history else ""))
            seen[key] = f.name
        lengths: dict = {}
        for f in self.select(group="history", kind="sequence"):
            first = lengths.setdefault(f.history, (f.name, f.length))
            if f.length != first[1]:
                raise ValueError(f"FeatureSpec: history {f.history!r} mixes sequence lengths: "
                                 f"{first[0]!r} has {first[1]}, {f.name!r} has {f.length}")

    # ---- lookups -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def select(self, **where: Any) -> tuple[Feature, ...]:
        """The features whose attributes match ``where``, in spec order: the one way to ask
        (:func:`select_features`), e.g. ``spec.select(group="history")``."""
        return select_features(self.features, **where)

    def histories(self) -> dict[str, int]:
        """The behaviour sequences, ``{history name: length}``, in spec order."""
        return history_lengths(self.features)

    def keep_histories(self, names: Iterable[str]) -> "FeatureSpec":
        """A copy without the columns of the behaviour sequences not in ``names`` (in spec
        order). A model reads its own spec narrowed this way, so records that carry extra
        sequences (e.g. GAP-Net's views) stay readable by every model, and a model that does not
        read a sequence neither parses nor serves it.

        Raises:
          ValueError: naming the sequences of ``names`` the spec lacks.
        """
        names = set(names)
        missing = sorted(names - set(self.histories()))
        if missing:
            raise ValueError(f"FeatureSpec: no behaviour sequence {missing}; it has {list(self.histories())}")
        keep = tuple(f for f in self.features if f.group != "history" or f.history in names)
        return dataclasses.replace(self, features=keep)

    def without(self, names: Iterable[str]) -> "FeatureSpec":
        """A copy without the columns ``names`` (those it has; the others are ignored)."""
        names = set(names)
        return dataclasses.replace(self, features=tuple(f for f in self.features if f.name not in names))

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in the spec; features: {list(self.names)}")

    def table(self, name: str) -> TableSpec:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"no table {name!r} in the spec; tables: {[t.name for t in self.tables]}")

    def with_tables(self, tables: Iterable[TableSpec]) -> "FeatureSpec":
        """A copy whose tables are replaced by name (bucket counts known after a data pass)."""
        by_name = {t.name: t for t in tables}
        unknown = sorted(set(by_name) - {t.name for t in self.tables})
        if unknown:
            raise KeyError(f"with_tables: unknown tables {unknown}")
        return dataclasses.replace(self, tables=tuple(by_name.get(t.name, t) for t in self.tables))

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "label": self.label,
            "intent_levels": self.intent_levels,
            "sim_range": list(self.sim_range),
            "explicit_threshold": self.explicit_threshold,
            "max_seq_len": self.max_seq_len,
            "tables": [dataclasses.asdict(t) for t in self.tables],
            "features": [dataclasses.asdict(f) for f in self.features],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        """A spec from its ``spec.json`` form; a version-1 file gets its groups derived from the
        column names (:func:`derive_groups`) and loads as the current version."""
        known = {"version", "label", "intent_levels", "sim_range", "explicit_threshold",
                 "max_seq_len", "tables", "features"}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"spec.json has unknown keys {extra}")
        version = int(d.get("version", SPEC_VERSION))
        features = d["features"]
        if version == LEGACY_SPEC_VERSION:
            features, version = derive_groups(features), SPEC_VERSION
        return cls(
            features=tuple(_feature_from_dict(f) for f in features),
            tables=tuple(TableSpec.from_dict(t) for t in d.get("tables", ())),
            label=d.get("label", "label"),
            intent_levels=int(d.get("intent_levels", 6)),
            sim_range=tuple(d.get("sim_range", (-1.0, 1.0))),
            explicit_threshold=float(d.get("explicit_threshold", 1.0 / 3.0)),
            max_seq_len=int(d.get("max_seq_len", 50)),
            version=version,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        return cls.from_dict(json.loads(text))

    def save(self, path: str) -> None:
        """Writes ``spec.json`` (remote paths through Beam's filesystems, see :mod:`tirec.features.jsonio`)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "FeatureSpec":
        return cls.from_dict(read_json(path))

    def diff(self, other: "FeatureSpec") -> list[str]:
        """Human-readable differences; empty when the specs are equal."""
        out = []
        a, b = self.to_dict(), other.to_dict()
        for key in ("version", "label", "intent_levels", "sim_range", "explicit_threshold",
                    "max_seq_len"):
            if a[key] != b[key]:
                out.append(f"{key}: {a[key]!r} != {b[key]!r}")
        for kind, left, right in (("feature", self.features, other.features),
                                  ("table", self.tables, other.tables)):
            lmap, rmap = {x.name: x for x in left}, {x.name: x for x in right}
            for name in sorted(set(lmap) - set(rmap)):
                out.append(f"{kind} {name!r} only in the first spec")
            for name in sorted(set(rmap) - set(lmap)):
                out.append(f"{kind} {name!r} only in the second spec")
            for name in sorted(set(lmap) & set(rmap)):
                if lmap[name] != rmap[name]:
                    out.append(f"{kind} {name!r}: {_field_diff(lmap[name], rmap[name])}")
            if not out and [x.name for x in left] != [x.name for x in right]:
                out.append(f"{kind} order differs")
        return out

    def check_compatible(self, other: "FeatureSpec", what: str = "data", shown: int = 5) -> None:
        """Raises ValueError naming the first ``shown`` differences (and how many more there
        are) when ``other`` differs from this spec."""
        d = self.diff(other)
        if d:
            raise ValueError(f"the {what} spec differs from the expected spec: {first_of(d, shown, 'more difference(s)')}")

    # ---- TensorFlow ----------------------------------------------------------------------
    def parse_example_spec(self, include_label: bool = True,
                           roles: Sequence[str] | None = None) -> dict:
        """The ``tf.io.parse_example`` feature dict (``FixedLenFeature`` per column).

        Args:
          include_label: False for serving signatures, which have no label.
          roles: keep only features with these roles (all when None).
        """
        import tensorflow as tf  # local: the Beam workers and pure helpers need no TF graph

        tf_dtypes = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}
        out = {}
        for f in self.features:
            if f.name == self.label and not include_label:
                continue
            if roles is not None and f.role not in roles:
                continue
            shape = [] if f.kind == "scalar" else [f.length]
            out[f.name] = tf.io.FixedLenFeature(shape, tf_dtypes[f.dtype])
        return out


def first_of(items: Sequence[str], shown: int = 5, rest: str = "more") -> str:
    """The first ``shown`` of ``items`` joined by "; ", and how many more there are (``; and 3
    more``, ``rest`` naming them), for messages listing differences."""
    more = f"; and {len(items) - shown} {rest}" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def _field_diff(a, b) -> str:
    """The fields in which dataclasses ``a`` and ``b`` (two features, or two tables) differ:
    ``length 50 != 20``."""
    return ", ".join(f"{f.name} {getattr(a, f.name)!r} != {getattr(b, f.name)!r}"
                     for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name))


def select_features(features: Iterable[Feature], **where: Any) -> tuple[Feature, ...]:
    """The ``features`` whose attributes match ``where``, in their order.

    Each keyword is a :class:`Feature` attribute; its value is the wanted value or a
    tuple / list / set of accepted values. For example ``group="history"``,
    ``scope="request", model_input=True``, ``group=("target", "trigger"), field="item_id"``.

    Raises:
      ValueError: for an unknown attribute, or a group or scope value that does not exist.
    """
    attrs = {f.name for f in dataclasses.fields(Feature)}
    unknown = sorted(set(where) - attrs)
    if unknown:
        raise ValueError(f"FeatureSpec.select: unknown attributes {unknown}; known: {sorted(attrs)}")
    wanted = {k: set(v) if isinstance(v, (tuple, list, set, frozenset)) else {v}
              for k, v in where.items()}
    for key, allowed in (("group", GROUPS), ("scope", SCOPES)):
        bad = sorted(str(v) for v in wanted.get(key, ()) if v not in allowed)
        if bad:
            raise ValueError(f"FeatureSpec.select: {key} must be one of {allowed}; received {bad}")
    return tuple(f for f in features if all(getattr(f, k) in v for k, v in wanted.items()))


def history_lengths(features: Iterable[Feature]) -> dict[str, int]:
    """``{history name: sequence length}`` of the behaviour sequences among ``features``."""
    out: dict[str, int] = {}
    for f in select_features(features, group="history", kind="sequence"):
        out.setdefault(f.history, f.length)
    return out


def tir_feature_spec(*, item_fields: Sequence[str] = ("cate_id", "brand_id", "price_bucket"),
                     user_fields: Sequence[str] = (), context_fields: Sequence[str] = (),
                     intent_levels: int = 6, max_seq_len: int = 50,
                     sim_range: tuple[float, float] = (-1.0, 1.0),
                     explicit_threshold: float | None = None,
                     buckets: Mapping[str, int] | None = None, views: bool = False,
                     realtime_len: int = 10, long_seq_len: int = 200,
                     category_clicks: bool = False) -> FeatureSpec:
    """The standard TIR record schema written by ``tirec pipeline``.

    Columns (L = ``max_seq_len``, n = ``intent_levels``):
      * ``label``; ``user_id``; ``request_id`` (string); ``impression_ts``.
      * ``target_item_id``, ``trigger_item_id``, ``has_trigger``, ``trigger_ts``.
      * ``trigger_target_sim`` (cosine of the multimodal vectors), ``trigger_target_level``
        (its 0-based level), ``intent_counts`` / ``intent_dist`` (the request's clicks per level,
        and the same normalised; all zero when the request has no click).
      * ``prior_intent`` (float32, length n): the user's clicks (label 1, with a trigger) strictly
        before the request's earliest impression time ``T``, per level, each weighted
        ``2 ** (-(T - t) / pipeline.prior_intent_half_life)`` and normalised to sum 1; all zero
        when there is none. No label of the row's own request enters it: DAIAN's stage 2 feeds
        it as the intent input (docs/models.md#prior-intent). One caveat: without request ids
        and with triggers taken from impression clicks (Alimama), a request is (user, trigger),
        so an earlier impression's label can decide which request, and trigger, later
        impressions get; that is the user's past, not the row's own label. Role ``intent``, like
        ``intent_counts`` / ``intent_dist``: training reads it, serving inputs never include it.
      * With ``category_clicks`` (the pipeline sets it when the items have :data:`CATEGORY`),
        after ``prior_intent``: :data:`CATEGORY_CLICKS` (int64), the request's clicks (label 1,
        with a trigger) on targets whose ``cate_id`` is the trigger's: the paper rule of DIHN's
        and DIAN's request intent label (``model.<name>.intent_rule=category``). Role
        ``intent``: a training target, never a model input.
      * ``hist_item_ids``, ``hist_ts`` (0 = padding), ``hist_btag``, ``hist_len``,
        ``hist_trigger_sim`` and ``explicit_mask`` (1 where the behaviour's similarity to the
        trigger is >= tau), most recent first.
      * ``target_<f>``, ``trigger_<f>``, ``hist_<f>`` for each item side field ``f``.
      * ``user_<f>`` for each user profile field, ``ctx_<f>`` for each context field, plus
        ``ctx_hour`` and ``ctx_dow`` from the impression time.
      * With ``views`` (``pipeline.views``, GAP-Net's behaviour views), last, for each view
        ``v`` of :data:`REALTIME` (``rt``, length ``realtime_len``) and :data:`LONG_TERM`
        (``lt``, length ``long_seq_len``): ``<v>_item_ids``, ``<v>_ts`` (0 = padding),
        ``<v>_<f>`` for each item side field (model inputs) and ``<v>_len`` (not a model
        input), most recent first; their behaviour sequence (``Feature.history``) is ``v``.
        ``hist_*`` is the short-term view. Without ``views`` the spec is the same as ever.
    """
    from tirec.features import transforms

    lo, hi = sim_range
    if explicit_threshold is None:
        try:
            explicit_threshold = transforms.explicit_threshold(intent_levels, 2, lo, hi)
        except ValueError as err:
            raise ValueError(f"explicit_threshold: needed with intent_levels={intent_levels} (the default takes the "
                             f"top 2 levels): {err}") from err
    if category_clicks and CATEGORY not in item_fields:
        raise ValueError(f"category_clicks: needs the item field {CATEGORY!r} (the trigger's category); "
                         f"item_fields: {list(item_fields)}")
    buckets = dict(buckets or {})
    L, n = max_seq_len, intent_levels
    lengths = {"scalar": 1, "sequence": L, "vector": n}
    columns = _CORE_COLUMNS
    if category_clicks:
        at = [c[0] for c in columns].index("prior_intent") + 1
        columns = columns[:at] + (_CATEGORY_CLICKS_COLUMN,) + columns[at:]
    feats = [Feature(name, dtype, kind, lengths[kind], table, role, **_CORE[name])
             for name, dtype, kind, table, role in columns]
    tables = {"item": 1 << 20, "user": 1 << 18, "btag": 16, "ctx_hour": 24, "ctx_dow": 7}
    for f in item_fields:
        feats += [Feature(name, "int64", "sequence" if group == "history" else "scalar",
                          L if group == "history" else 1, f, **_side_field(group, f))
                  for group, name in ((g, PREFIXES[g] + f) for g in ("target", "trigger", "history"))]
        tables[f] = 1 << 14
    for f in user_fields:
        name = PREFIXES["user"] + f
        feats.append(Feature(name, "int64", table=name, **_side_field("user", f)))
        tables[name] = 256
    feats += [Feature(name, "int64", table=name, **_CORE[name]) for name in TIME_COLUMNS]
    for f in context_fields:
        name = PREFIXES["context"] + f
        feats.append(Feature(name, "int64", table=name, **_side_field("context", f)))
        tables[name] = 256
    if views:
        feats += view_features(REALTIME, realtime_len, item_fields)
        feats += view_features(LONG_TERM, long_seq_len, item_fields)
    unknown = sorted(set(buckets) - set(tables))
    if unknown:
        raise ValueError(f"bucket counts given for unknown tables {unknown}; tables: {sorted(tables)}")
    table_specs = tuple(
        TableSpec(name, int(buckets.get(name, default)))
        for name, default in tables.items())
    return FeatureSpec(features=tuple(feats), tables=table_specs, label="label",
                       intent_levels=n, sim_range=(lo, hi),
                       explicit_threshold=float(explicit_threshold), max_seq_len=L)


def view_features(view: str, length: int, item_fields: Sequence[str]) -> list[Feature]:
    """The columns of behaviour view ``view`` (history ``view``, ``length`` long): item ids,
    times, each item side field (its table is the field's, as for ``hist_<f>``) and the length.

    Raises:
      ValueError: naming the view when ``length`` is not a positive integer.
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"behaviour view {view!r}: length must be a positive integer; "
                         f"received {length!r}")
    seq = {"kind": "sequence", "length": int(length), "group": "history", "scope": "request",
           "history": view}
    return ([Feature(f"{view}_item_ids", "int64", table="item", field=ITEM_ID, model_input=True, **seq),
             Feature(f"{view}_ts", "int64", field="ts", model_input=True, **seq)]
            + [Feature(f"{view}_{f}", "int64", table=f, field=f, model_input=True, **seq)
               for f in item_fields]
            + [Feature(f"{view}_len", "int64", group="history", scope="request", field="len",
                       history=view)])


# The fixed columns of the standard records (name, dtype, kind, table, role), in order; the
# item and user side fields follow them, then TIME_COLUMNS and the context fields
# (tir_feature_spec; run folders compare specs in order, so the order stays).
_CORE_COLUMNS = (
    ("label", "int64", "scalar", None, "label"),
    ("user_id", "int64", "scalar", "user", "feature"),
    ("request_id", "string", "scalar", None, "meta"),
    ("impression_ts", "int64", "scalar", None, "meta"),
    ("target_item_id", "int64", "scalar", "item", "feature"),
    ("trigger_item_id", "int64", "scalar", "item", "feature"),
    ("has_trigger", "int64", "scalar", None, "feature"),
    ("trigger_ts", "int64", "scalar", None, "meta"),
    ("trigger_target_sim", "float32", "scalar", None, "feature"),
    ("trigger_target_level", "int64", "scalar", None, "feature"),
    ("intent_counts", "int64", "vector", None, "intent"),
    ("intent_dist", "float32", "vector", None, "intent"),
    ("prior_intent", "float32", "vector", None, "intent"),
    ("hist_item_ids", "int64", "sequence", "item", "feature"),
    ("hist_ts", "int64", "sequence", None, "feature"),
    ("hist_btag", "int64", "sequence", "btag", "feature"),
    ("hist_len", "int64", "scalar", None, "feature"),
    ("hist_trigger_sim", "float32", "sequence", None, "feature"),
    ("explicit_mask", "int64", "sequence", None, "feature"),
)
# The optional column of tir_feature_spec(category_clicks=True), after prior_intent.
_CATEGORY_CLICKS_COLUMN = (CATEGORY_CLICKS, "int64", "scalar", None, "intent")
# The impression time's context columns (after the user fields; their tables are fixed-size),
# and the column they are derived from (time_context).
TIME_COLUMNS = ("ctx_hour", "ctx_dow")
IMPRESSION_TS = "impression_ts"


def time_context(ts: np.ndarray | int) -> dict:
    """The time context columns of impression time(s) ``ts`` (Unix seconds, an int or an integer
    array), in UTC: ``ctx_hour`` (0-23) and ``ctx_dow`` (0-6, Monday = 0). The pipeline writes
    them with it and the serving client derives or checks a request's with it."""
    hour = (ts // 3600) % 24
    dow = (ts // 86400 + 3) % 7  # 1970-01-01 was a Thursday
    return dict(zip(TIME_COLUMNS, (hour, dow)))


def _attrs(group, scope, field=None, model_input=False):
    return {"group": group, "scope": scope, "field": field,
            "history": HISTORY if group == "history" else None, "model_input": model_input}


# The group attributes of each fixed column. ``impression_ts`` is a serving input (the client
# sends it with the context) that today's models do not read; the columns that are not model
# inputs are the training targets and what the pipeline's statistics and analyses read.
_CORE = {
    "label": _attrs("label", "candidate"),
    "user_id": _attrs("user", "request", model_input=True),
    "request_id": _attrs("meta", "request"),
    "impression_ts": _attrs("context", "request", model_input=True),
    "target_item_id": _attrs("target", "candidate", ITEM_ID, True),
    "trigger_item_id": _attrs("trigger", "request", ITEM_ID, True),
    "has_trigger": _attrs("trigger", "request", "present", True),
    "trigger_ts": _attrs("trigger", "request", "ts"),
    "trigger_target_sim": _attrs("meta", "candidate", "sim"),
    "trigger_target_level": _attrs("meta", "candidate", "level"),
    "intent_counts": _attrs("intent", "request", "counts"),
    "intent_dist": _attrs("intent", "request", "dist"),
    "prior_intent": _attrs("intent", "request", "prior"),
    CATEGORY_CLICKS: _attrs("intent", "request", "cate_clicks"),
    "hist_item_ids": _attrs("history", "request", ITEM_ID, True),
    "hist_ts": _attrs("history", "request", "ts", True),
    "hist_btag": _attrs("history", "request", "btag"),
    "hist_len": _attrs("history", "request", "len"),
    "hist_trigger_sim": _attrs("history", "request", "trigger_sim"),
    "explicit_mask": _attrs("history", "request", "explicit"),
    "ctx_hour": _attrs("context", "request", model_input=True),
    "ctx_dow": _attrs("context", "request", model_input=True),
}


def _side_field(group: str, field: str) -> dict:
    """The group attributes of side field ``field`` of ``group`` (a model input)."""
    return _attrs(group, GROUP_SCOPES.get(group, "request"),
                  field if group in ITEM_GROUPS else None, True)


def raw_field(group: str, column: str) -> str | None:
    """The field a raw input column holds for ``group`` by the naming convention
    (:data:`PREFIXES`: ``ctx_device`` is context field ``device``), or None when it follows none.
    Readers use it for undeclared raw headers; the records' columns are found with
    :meth:`FeatureSpec.select`."""
    prefix = PREFIXES[group]
    return column[len(prefix):] if column.startswith(prefix) and len(column) > len(prefix) else None


def standard_column(group: str, field: str) -> str | None:
    """The column of the standard records (:func:`tir_feature_spec`) that holds ``field`` of
    ``group`` among its fixed columns, or None; for messages about records that lack it."""
    for name, attrs in _CORE.items():
        if attrs["group"] == group and attrs["field"] == field:
            return name
    return None


_GROUP_KEYS = ("group", "scope", "field", "history", "model_input")


def derive_groups(features: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The group attributes of columns named by the standard convention, for features written
    before the spec carried them (``spec.json`` version 1, or a served model's input names).

    The one place a feature name is parsed: the fixed columns of :func:`tir_feature_spec` by
    name, and its side fields by prefix (:data:`PREFIXES`), where an item side field is one
    with a ``target_<f>`` column. The result equals what :func:`tir_feature_spec` writes today.

    Args:
      features: dicts with at least ``name`` (a version-1 ``spec.json`` entry).

    Returns:
      copies of the dicts with ``group``, ``scope``, ``field``, ``history`` and ``model_input``.

    Raises:
      ValueError: naming a feature whose group its name does not tell, or one that already
        carries group attributes.
    """
    names = [f["name"] for f in features]
    item_fields = {raw_field("target", n) for n in names if n not in _CORE} - {None}
    out = []
    for f in features:
        name = f["name"]
        given = sorted(k for k in _GROUP_KEYS if k in f)
        if given:
            raise ValueError(f"spec.json version {LEGACY_SPEC_VERSION}: feature {name!r} carries "
                             f"{given}, which only version {SPEC_VERSION} files have")
        attrs = _CORE.get(name) or _derived_side_field(name, item_fields)
        out.append({**f, **attrs})
    return out


def _derived_side_field(name: str, item_fields: set) -> dict:
    for group in ("target", "trigger", "history"):
        field = raw_field(group, name)
        if field in item_fields:
            return _side_field(group, field)
    for group in ("user", "context"):
        if raw_field(group, name) is not None:
            return _side_field(group, name)
    raise ValueError(
        f"spec.json version {LEGACY_SPEC_VERSION}: the group of feature {name!r} does not follow "
        f"from its name (known: the columns of tir_feature_spec, and {sorted(PREFIXES.values())} "
        f"side fields); write the spec again with version {SPEC_VERSION}, which states each "
        f"feature's group, scope and field")


def _feature_from_dict(d: Mapping[str, Any]) -> Feature:
    """A feature from its ``spec.json`` entry; unknown keys are named."""
    known = {f.name for f in dataclasses.fields(Feature)}
    extra = sorted(set(d) - known)
    if extra:
        raise ValueError(f"spec.json: feature {d.get('name')!r} has unknown keys {extra}")
    return Feature(**d)


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{what} must be a non-empty identifier of letters, digits and '_'; "
                         f"received {name!r}")
