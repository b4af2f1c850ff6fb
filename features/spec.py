"""FeatureSpec: the one schema shared by the Beam job, Keras training and the serving signature.

A :class:`FeatureSpec` lists every column of the TFRecords (name, dtype, fixed length, which
embedding table it reads) and the labeling constants the records were built with (number of
intent levels, similarity range, explicit-intent threshold, sequence length). Beam encodes
``tf.train.Example`` records with it, Keras builds its inputs from it, and the serving signature
parses with :meth:`FeatureSpec.parse_example_spec`. It round-trips through ``spec.json``.

Embedding tables (:class:`TableSpec`) are declared apart from features: target, trigger and
history item ids all name the table ``item``, by reference rather than by a name prefix. Ids stay
raw in the records; hashing into ``num_buckets`` rows happens inside the TF graph.

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

SPEC_VERSION = 1
DTYPES = ("int64", "float32", "string")
KINDS = ("scalar", "sequence", "vector")
ROLES = ("label", "feature", "intent", "meta")
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
      role: ``label``, ``feature`` (model input), ``intent`` (intent supervision) or ``meta``
        (bookkeeping: request id, timestamps).
    """

    name: str
    dtype: str
    kind: str = "scalar"
    length: int = 1
    table: str | None = None
    role: str = "feature"

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
        lo, hi = self.sim_range
        if not hi > lo:
            raise ValueError(f"FeatureSpec: sim_range needs lo < hi; received {self.sim_range}")
        if self.intent_levels < 1:
            raise ValueError(f"FeatureSpec: intent_levels must be >= 1; received {self.intent_levels}")
        if self.version != SPEC_VERSION:
            raise ValueError(f"FeatureSpec: unsupported version {self.version}; "
                             f"this tirec reads version {SPEC_VERSION}")

    # ---- lookups -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

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
        known = {"version", "label", "intent_levels", "sim_range", "explicit_threshold",
                 "max_seq_len", "tables", "features"}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"spec.json has unknown keys {extra}")
        return cls(
            features=tuple(Feature(**f) for f in d["features"]),
            tables=tuple(TableSpec.from_dict(t) for t in d.get("tables", ())),
            label=d.get("label", "label"),
            intent_levels=int(d.get("intent_levels", 6)),
            sim_range=tuple(d.get("sim_range", (-1.0, 1.0))),
            explicit_threshold=float(d.get("explicit_threshold", 1.0 / 3.0)),
            max_seq_len=int(d.get("max_seq_len", 50)),
            version=int(d.get("version", SPEC_VERSION)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        return cls.from_dict(json.loads(text))

    def save(self, path: str) -> None:
        """Writes ``spec.json`` (any filesystem Beam can write when the path is remote)."""
        _write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str) -> "FeatureSpec":
        return cls.from_json(_read_text(path))

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
                    out.append(f"{kind} {name!r}: {lmap[name]} != {rmap[name]}")
            if not out and [x.name for x in left] != [x.name for x in right]:
                out.append(f"{kind} order differs")
        return out

    def check_compatible(self, other: "FeatureSpec", what: str = "data") -> None:
        """Raises ValueError listing every difference when ``other`` differs from this spec."""
        d = self.diff(other)
        if d:
            raise ValueError(f"the {what} spec differs from the expected spec: " + "; ".join(d))

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


def tir_feature_spec(*, item_fields: Sequence[str] = ("cate_id", "brand_id", "price_bucket"),
                     user_fields: Sequence[str] = (), context_fields: Sequence[str] = (),
                     intent_levels: int = 6, max_seq_len: int = 50,
                     sim_range: tuple[float, float] = (-1.0, 1.0),
                     explicit_threshold: float | None = None,
                     buckets: Mapping[str, int] | None = None) -> FeatureSpec:
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
      * ``hist_item_ids``, ``hist_ts`` (0 = padding), ``hist_btag``, ``hist_len``,
        ``hist_trigger_sim`` and ``explicit_mask`` (1 where the behaviour's similarity to the
        trigger is >= tau), most recent first.
      * ``target_<f>``, ``trigger_<f>``, ``hist_<f>`` for each item side field ``f``.
      * ``user_<f>`` for each user profile field, ``ctx_<f>`` for each context field, plus
        ``ctx_hour`` and ``ctx_dow`` from the impression time.
    """
    from tirec.features import transforms

    lo, hi = sim_range
    if explicit_threshold is None:
        explicit_threshold = transforms.explicit_threshold(intent_levels, min(2, intent_levels), lo, hi)
    buckets = dict(buckets or {})
    L, n = max_seq_len, intent_levels

    def scalar(name, dtype="int64", table=None, role="feature"):
        return Feature(name, dtype, "scalar", 1, table, role)

    def seq(name, dtype="int64", table=None):
        return Feature(name, dtype, "sequence", L, table, "feature")

    feats = [
        scalar("label", role="label"),
        scalar("user_id", table="user"),
        scalar("request_id", "string", role="meta"),
        scalar("impression_ts", role="meta"),
        scalar("target_item_id", table="item"),
        scalar("trigger_item_id", table="item"),
        scalar("has_trigger"),
        scalar("trigger_ts", role="meta"),
        scalar("trigger_target_sim", "float32"),
        scalar("trigger_target_level"),
        Feature("intent_counts", "int64", "vector", n, None, "intent"),
        Feature("intent_dist", "float32", "vector", n, None, "intent"),
        Feature("prior_intent", "float32", "vector", n, None, "intent"),
        seq("hist_item_ids", table="item"),
        seq("hist_ts"),
        seq("hist_btag", table="btag"),
        scalar("hist_len"),
        seq("hist_trigger_sim", "float32"),
        seq("explicit_mask"),
    ]
    tables = {"item": 1 << 20, "user": 1 << 18, "btag": 16, "ctx_hour": 24, "ctx_dow": 7}
    for f in item_fields:
        feats += [scalar(f"target_{f}", table=f), scalar(f"trigger_{f}", table=f), seq(f"hist_{f}", table=f)]
        tables[f] = 1 << 14
    for f in user_fields:
        feats.append(scalar(f"user_{f}", table=f"user_{f}"))
        tables[f"user_{f}"] = 256
    for f in ("hour", "dow"):
        feats.append(scalar(f"ctx_{f}", table=f"ctx_{f}"))
    for f in context_fields:
        feats.append(scalar(f"ctx_{f}", table=f"ctx_{f}"))
        tables[f"ctx_{f}"] = 256
    unknown = sorted(set(buckets) - set(tables))
    if unknown:
        raise ValueError(f"bucket counts given for unknown tables {unknown}; tables: {sorted(tables)}")
    table_specs = tuple(
        TableSpec(name, int(buckets.get(name, default)))
        for name, default in tables.items())
    return FeatureSpec(features=tuple(feats), tables=table_specs, label="label",
                       intent_levels=n, sim_range=(lo, hi),
                       explicit_threshold=float(explicit_threshold), max_seq_len=L)


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{what} must be a non-empty identifier of letters, digits and '_'; "
                         f"received {name!r}")


def _write_text(path: str, text: str) -> None:
    if "://" in path:  # remote (gs://, s3://, hdfs://): TensorFlow's filesystem layer
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "w") as fh:
            fh.write(text)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)


def _read_text(path: str) -> str:
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "r") as fh:
            return fh.read()
    with open(path, encoding="utf-8") as fh:
        return fh.read()
