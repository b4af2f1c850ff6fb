"""Client for a served tirec model: TIR requests in, ranked candidates out.

Uses only the official ``tensorflow_serving.apis`` stubs, so it talks to the real
``tensorflow_model_server`` and to ``tirec serve`` alike.

A **TIR request** (JSON) describes one user visit and the candidates to rank::

    {
      "user":       {"user_id": 17, "user_gender": 1, ...},          # the spec's user group
      "context":    {"impression_ts": 1700000000, "ctx_scene": 2, ...},  # its request-scoped context
      "trigger":    {"item_id": 5, "cate_id": 2, "brand_id": 40, "price_bucket": 3},  # or null
      "history":    [{"item_id": 3, "ts": 1699990000, "cate_id": 2, ...}, ...],  # most recent first
      "histories":  {"long": [...]},                                 # only for further sequences
      "candidates": [{"item_id": 9, "cate_id": 4, ...}, ...]
    }

Which keys each object needs comes from the FeatureSpec's groups (:meth:`FeatureSpec.select`):
the user and context objects hold their group's model inputs by feature name; items (the
trigger, history entries, candidates) hold ``item_id`` plus every item side field by field name
(``cate_id``, ...), history entries also ``ts`` (seconds); a candidate-scoped input of another
group (none in the standard records) is a candidate key by feature name. The time context
(``ctx_hour``, ``ctx_dow``) follows from ``impression_ts`` (Unix seconds, UTC; Monday = 0) as the
pipeline computes it (:func:`tirec.features.spec.time_context`): with ``impression_ts`` in the
context object it may be left out (it is derived; ``impression_ts`` is accepted even by a model
that does not read it), and a value given that disagrees with ``impression_ts`` is an error
naming both; without ``impression_ts`` it must be given. ``history`` is the
spec's first behaviour sequence, ``histories`` the others by name (each one the model reads;
``[]`` for none). A missing field, a key the model does not read (a candidate may carry a
``meta`` object of its own), a value that is not an integer in ``[0, 2**63)`` and a history not
most recent first (``ts`` non-increasing) are errors naming the field and the value. A history
longer than the model's sequence length keeps its most recent entries (logged).

    client = PredictClient("127.0.0.1:8500", "daian")
    ranked = client.rank(request)   # [(candidate, score), ...] best first; the request schema
                                    # comes from the served model's metadata
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from tirec.features.jsonio import read_text
from tirec.features.spec import (IMPRESSION_TS, ITEM_GROUPS, ITEM_ID, TIME_COLUMNS, Feature, FeatureSpec,
                                 derive_groups, history_lengths, select_features, time_context)

log = logging.getLogger(__name__)


# ---- requests -> features ------------------------------------------------------------------------

def _int(value, where: str) -> int:
    """``value`` as an int64 input: an integer (or an integral float) in ``[0, 2**63)``; ids,
    timestamps and the context fields are never negative (the pipeline dead-letters those)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"request: {where} must be an integer; received {value!r}")
    if not 0 <= int(value) < 2 ** 63:
        raise ValueError(f"request: {where} must be in [0, 2**63); received {value!r}")
    return int(value)


def _check_keys(obj: Any, expected, where: str, allowed=()) -> None:
    """Refuses an object with keys the model does not read, naming them (a misspelt field would
    otherwise be dropped and its input sent as missing)."""
    if isinstance(obj, Mapping):
        unknown = sorted(set(obj) - set(expected) - set(allowed))
        if unknown:
            raise ValueError(f"request: {where} has keys the model does not read {unknown}; expected "
                             f"{sorted(expected)}{f' (and optionally {list(allowed)})' if allowed else ''}")


def _field(obj: Mapping, key: str, where: str) -> int:
    if not isinstance(obj, Mapping):
        raise ValueError(f"request: {where} must be an object; received {obj!r}")
    if key not in obj:
        raise ValueError(f"request: {where}.{key} is missing (have {sorted(obj)})")
    return _int(obj[key], f"{where}.{key}")


class RequestSchema:
    """What a served model needs from a TIR request: its inputs with their groups, dtypes and
    sequence lengths.

    Built from a FeatureSpec (:meth:`from_spec`), or from the served model itself
    (:meth:`from_signature`, the ``predict`` signature of GetModelMetadata), so a client needs no
    local files to query a server. A signature carries only input names, so there the groups
    follow from the standard column names (:func:`tirec.features.spec.derive_groups`); a model
    whose spec names its columns otherwise is queried with its spec.

    Args:
      features: the model inputs (``FeatureSpec.select(model_input=True)``).

    Raises:
      ValueError: when the inputs lack a target item id or a behaviour sequence (not a TIR model).
    """

    def __init__(self, features: Sequence[Feature]):
        self.features = tuple(f for f in features if f.model_input)
        self.dtypes = {f.name: f.dtype for f in self.features}
        self.histories = history_lengths(self.features)
        if not self.select(group="target", field=ITEM_ID) or not self.histories:
            raise ValueError(f"RequestSchema: not a TIR model; its inputs {list(self.dtypes)} hold no "
                             f"target item id or no behaviour sequence")
        self.seq_len = next(iter(self.histories.values()))
        self.item_fields = [f.field for f in self.select(group="target") if f.field != ITEM_ID]

    def select(self, **where) -> tuple[Feature, ...]:
        """The inputs matching ``where`` (:meth:`FeatureSpec.select`)."""
        return select_features(self.features, **where)

    @staticmethod
    def key(feature: Feature) -> str:
        """The key of ``feature`` in its request object: the item field for items (trigger,
        history entries, candidates), the feature name for the user and context objects."""
        return feature.field if feature.group in ITEM_GROUPS else feature.name

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "RequestSchema":
        return cls(spec.select(model_input=True))

    @classmethod
    def from_signature(cls, signature_def: Mapping[str, Any]) -> "RequestSchema":
        """From the JSON form of a SignatureDef (``PredictClient.metadata()["signature_def"]
        ["signatureDef"]["predict"]``)."""
        names = {"DT_INT64": "int64", "DT_FLOAT": "float32", "DT_STRING": "string"}
        entries = []
        for name, info in signature_def.get("inputs", {}).items():
            dims = info.get("tensorShape", {}).get("dim", [])
            kind, length = ("sequence", int(dims[1]["size"])) if len(dims) == 2 else ("scalar", 1)
            entries.append({"name": name, "dtype": names.get(info.get("dtype"), info.get("dtype")),
                            "kind": kind, "length": length})
        try:
            derived = derive_groups(entries)
        except ValueError as err:
            raise ValueError(f"RequestSchema: not a TIR model with standard input names ({err}); "
                             f"pass the model's spec instead") from None
        return cls([Feature(**d) for d in derived])


_REQUEST_KEYS = ("user", "context", "trigger", "history", "histories", "candidates")


def request_features(schema: RequestSchema | FeatureSpec, request: Mapping[str, Any]
                     ) -> dict[str, np.ndarray]:
    """The model inputs of every candidate of a TIR request, one row per candidate.

    Returns one numpy array per model input: ``[C]`` for scalars, ``[C, L]`` for sequences
    (zero-padded), in the model's dtypes. The steps: check the request's shape, read the
    request-level values (user, context, trigger), the behaviour sequences and the candidates,
    then repeat the request-level values for every candidate.

    Raises:
      ValueError: naming the field for a missing or mistyped field, or no candidates.
    """
    if isinstance(schema, FeatureSpec):
        schema = RequestSchema.from_spec(schema)
    candidates = _check_request(request)
    shared = {**_request_values(schema, request), **_sequences(schema, request)}
    per_candidate = _candidate_values(schema, candidates)
    return _rows(schema, shared, per_candidate, len(candidates))


def request_warnings(request: Mapping[str, Any], schema: RequestSchema | None = None) -> list[str]:
    """Notes on a valid request (checked by :func:`request_features`) the model may never have
    seen the like of in training: no trigger when it reads one (its trigger inputs are 0 and
    ``trigger_present`` 0), or an empty history."""
    if not isinstance(request, Mapping):
        return []
    notes = []
    reads_trigger = schema is None or bool(schema.select(group="trigger"))
    if reads_trigger and request.get("trigger") is None:
        notes.append("the request has no trigger: a model trained with pipeline.no_trigger=drop (the "
                     "default) saw none without one, and its score for it is not calibrated")
    if not request.get("history"):
        notes.append("the request has an empty history: check the training data's seq_len_histogram "
                     "(stats.json) holds such rows before trusting its score")
    return notes


def _check_request(request: Any) -> Sequence:
    """The request's candidates, after checking its top-level shape."""
    if not isinstance(request, Mapping):
        raise ValueError(f"request: must be a JSON object; received {type(request).__name__}")
    unknown = sorted(set(request) - set(_REQUEST_KEYS))
    if unknown:
        raise ValueError(f"request: unknown keys {unknown}; expected {', '.join(_REQUEST_KEYS)}")
    cands = request.get("candidates")
    if not _is_list(cands) or not cands:
        raise ValueError(f"request: candidates must be a non-empty list; received {cands!r}")
    return cands


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _request_values(schema: RequestSchema, request: Mapping) -> dict[str, int]:
    """One value per request-level scalar input: the user and context objects by feature name,
    the trigger by item field."""
    return {**_object_values(schema, request.get("user", {}), "user"),
            **_object_values(schema, request.get("context", {}), "context"),
            **_trigger_values(schema, request.get("trigger"))}


def _object_values(schema: RequestSchema, obj: Any, group: str) -> dict[str, int]:
    """The request-scoped inputs of ``group`` (user or context) from its object by feature name;
    a model that reads the time context may be sent ``impression_ts`` in its place
    (:func:`_time_context`)."""
    feats = schema.select(group=group, scope="request")
    names = [f.name for f in feats]
    derivable = IMPRESSION_TS not in names and any(name in TIME_COLUMNS for name in names)
    _check_keys(obj, names, group, allowed=[IMPRESSION_TS] if derivable else ())
    implied = _time_context(feats, obj)
    return {f.name: implied[f.name] if f.name in implied else _field(obj, f.name, group) for f in feats}


def _trigger_values(schema: RequestSchema, trigger: Any) -> dict[str, int]:
    """The trigger's inputs by item field: all 0 without a trigger (field ``present`` says
    which)."""
    _check_keys(trigger, [f.field for f in schema.select(group="trigger") if f.field != "present"], "trigger")
    out = {}
    for f in schema.select(group="trigger"):
        if f.field == "present":
            out[f.name] = int(trigger is not None)
        else:
            out[f.name] = 0 if trigger is None else _field(trigger, f.field, "trigger")
    return out


def _time_context(feats: Sequence[Feature], context: Any) -> dict[str, int]:
    """The time context inputs among ``feats`` (``ctx_hour``, ``ctx_dow``) as the context
    object's ``impression_ts`` implies them (:func:`~tirec.features.spec.time_context`, as the
    pipeline computes them); {} when the object gives no ``impression_ts``.

    Raises:
      ValueError: naming the field, the value given and the value implied, when the object also
        gives a time context input that disagrees with its ``impression_ts``.
    """
    names = [f.name for f in feats if f.name in TIME_COLUMNS]
    if not names or not isinstance(context, Mapping) or IMPRESSION_TS not in context:
        return {}
    ts = _field(context, IMPRESSION_TS, "context")
    implied = {name: int(value) for name, value in time_context(ts).items() if name in names}
    for name, value in implied.items():
        if name in context and _field(context, name, "context") != value:
            raise ValueError(f"request: context.{name} is {context[name]!r} but context.{IMPRESSION_TS} = "
                             f"{ts} implies {name} = {value} (UTC; ctx_dow 0 = Monday); send them in "
                             f"agreement, or leave {name} out to have it derived")
    return implied


def _sequences(schema: RequestSchema, request: Mapping) -> dict[str, np.ndarray]:
    """The ``[L]`` columns of every behaviour sequence: the first from ``history``, the others
    from ``histories[name]``; entries by item field, most recent first, zero-padded."""
    extra = request.get("histories", {})
    names = list(schema.histories)
    if not isinstance(extra, Mapping) or set(extra) != set(names[1:]):
        raise ValueError(f"request: histories must map each of the model's further behaviour sequences "
                         f"{names[1:]} to a list ([] for none); received {extra!r}")
    out = {}
    for i, name in enumerate(names):
        entries = request.get("history", []) if i == 0 else extra[name]
        where = "history" if i == 0 else f"histories.{name}"
        out.update(_history(schema, name, entries, where))
    return out


def _history(schema: RequestSchema, name: str, entries: Any, where: str) -> dict[str, np.ndarray]:
    L = schema.histories[name]
    if not _is_list(entries):
        raise ValueError(f"request: {where} must be a list; received {entries!r}")
    feats = schema.select(group="history", history=name)
    rows = [_history_entry(entry, feats, f"{where}[{i}]") for i, entry in enumerate(entries)]
    times = [row["ts"] for row in rows if "ts" in row]
    for i in range(1, len(times)):
        if times[i] > times[i - 1]:
            raise ValueError(f"request: {where} must be most recent first: {where}[{i}].ts = {times[i]} "
                             f"is later than {where}[{i - 1}].ts = {times[i - 1]}")
    if len(rows) > L:
        log.warning("request: %s has %d entries; keeping the %d most recent", where, len(rows), L)
        rows = rows[:L]
    seq = {f.name: np.zeros(L, np.float32 if f.dtype == "float32" else np.int64) for f in feats}
    for i, row in enumerate(rows):
        for f in feats:
            seq[f.name][i] = row[f.field]
    return seq


def _history_entry(entry: Any, feats, where: str) -> dict[str, int]:
    """One history entry's values by item field (``ts`` > 0: 0 marks padding)."""
    _check_keys(entry, [f.field for f in feats], where)
    row = {f.field: _field(entry, f.field, where) for f in feats}
    if row.get("ts", 1) <= 0:
        raise ValueError(f"request: {where}.ts must be > 0 (0 marks padding); received {row['ts']}")
    return row


def _candidate_values(schema: RequestSchema, candidates: Sequence) -> dict[str, list]:
    """The candidate-level inputs, one value per candidate (the target's by item field)."""
    feats = schema.select(scope="candidate")
    for i, c in enumerate(candidates):
        _check_keys(c, [schema.key(f) for f in feats], f"candidates[{i}]", allowed=("meta",))
    return {f.name: [_field(c, schema.key(f), f"candidates[{i}]") for i, c in enumerate(candidates)]
            for f in feats}


def _rows(schema: RequestSchema, shared: Mapping, per_candidate: Mapping, n: int
          ) -> dict[str, np.ndarray]:
    """Every input as ``[n]`` or ``[n, L]`` in its dtype, request-level values repeated."""
    out: dict[str, np.ndarray] = {}
    for name, kind in schema.dtypes.items():
        dtype = np.float32 if kind == "float32" else np.int64
        if name in per_candidate:
            out[name] = np.asarray(per_candidate[name], dtype)
        elif np.ndim(shared[name]):
            out[name] = np.tile(np.asarray(shared[name])[None, :], (n, 1)).astype(dtype)
        else:
            out[name] = np.full(n, shared[name], dtype)
    return out


def to_examples(features: Mapping[str, np.ndarray]) -> list[bytes]:
    """Serialized ``tf.train.Example`` records, one per row of ``features``."""
    import tensorflow as tf

    n = len(next(iter(features.values())))
    out = []
    for i in range(n):
        feat = {}
        for k, v in features.items():
            x = np.atleast_1d(v[i])
            if x.dtype.kind == "f":
                feat[k] = tf.train.Feature(float_list=tf.train.FloatList(value=x.tolist()))
            elif x.dtype.kind in "SUO":
                feat[k] = tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[s if isinstance(s, bytes) else str(s).encode() for s in x.tolist()]))
            else:
                feat[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=x.tolist()))
        out.append(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    return out


RANK_FORMS = ("filled", "repeated", "one")


def rank_inputs(features: Mapping[str, np.ndarray], schema: RequestSchema | FeatureSpec,
                form: str = "filled") -> dict[str, list[bytes]]:
    """Inputs of the ``rank`` signature for one request's :func:`request_features`.

    Returns ``{"context": [...], "candidates": [one serialized tf.Example per candidate]}``: one
    context example holds every request-scoped input (taken from the first row: they are the
    same for every candidate of a request), each candidate example its candidate-scoped inputs.
    ``form`` says how ``context`` carries that example:

    - ``filled`` (default): one row per candidate, the example then empty strings (which repeat
      it), so that the inputs share their first dimension as TF Serving's batching requires;
    - ``repeated``: the example in every row (any export, with batching, also when TF Serving's
      ``enable_large_batch_splitting`` may split the request between rows);
    - ``one``: the example alone (a server without batching).
    """
    if form not in RANK_FORMS:
        raise ValueError(f"rank_inputs: form must be one of {list(RANK_FORMS)}; received form={form!r}")
    if isinstance(schema, FeatureSpec):
        schema = RequestSchema.from_spec(schema)
    per_candidate = {f.name for f in schema.select(scope="candidate")}
    context = to_examples({k: v[:1] for k, v in features.items() if k not in per_candidate})
    candidates = to_examples({k: v for k, v in features.items() if k in per_candidate})
    if candidates and form != "one":
        context += (context if form == "repeated" else [b""]) * (len(candidates) - 1)
    return {"context": context, "candidates": candidates}


def request_from_records(spec: FeatureSpec, records: Sequence[bytes],
                         request_id: str | None = None) -> dict:
    """A TIR request JSON rebuilt from pipeline records of one request.

    Picks ``request_id`` (default: the request with the most candidates among ``records``).
    Used for the demo's sample query and for ``tirec make-request``.
    """
    import tensorflow as tf

    parse = spec.parse_example_spec(include_label=False)
    cols = {k: v.numpy() for k, v in tf.io.parse_example(tf.constant(list(records)), parse).items()}
    rids = cols["request_id"].astype(str)
    if request_id is None:
        values, counts = np.unique(rids, return_counts=True)
        request_id = str(values[np.argmax(counts)])
    rows = np.flatnonzero(rids == request_id)
    if rows.size == 0:
        raise ValueError(f"request_id={request_id!r} is not among the {len(records)} records searched: only "
                         f"the first eval rows are read (`tirec make-request --rows N` searches N)")
    schema, r = RequestSchema.from_spec(spec), rows[0]

    def obj(feats, row, pos=None):
        return {schema.key(f): (cols[f.name][row] if pos is None else cols[f.name][row][pos]).item()
                for f in feats if f.field != "present"}

    present = schema.select(group="trigger", field="present")
    has_trigger = bool(cols[present[0].name][r]) if present else True
    histories = {}
    for name in schema.histories:
        feats = schema.select(group="history", history=name)
        ts = cols[schema.select(group="history", history=name, field="ts")[0].name][r]
        histories[name] = [obj(feats, r, i) for i in range(int((ts > 0).sum()))]
    first, *others = histories
    req = {
        "user": obj(schema.select(group="user"), r),
        "context": obj(schema.select(group="context", scope="request"), r),
        "trigger": obj(schema.select(group="trigger"), r) if has_trigger else None,
        "history": histories[first],
        "candidates": [obj(schema.select(scope="candidate"), i) for i in rows],
    }
    if others:
        req["histories"] = {name: histories[name] for name in others}
    return req


# ---- the gRPC client -----------------------------------------------------------------------------

def _predates_filled(err) -> bool:
    """Whether a ``rank`` call's error is an export older than the filled context form reading
    an empty context row as an example without features."""
    import grpc

    return err.code() == grpc.StatusCode.INVALID_ARGUMENT and "could not be found" in (err.details() or "")


class PredictClient:
    """A thin client over the official PredictionService / ModelService stubs.

    Args:
      target: ``host:port`` of the gRPC endpoint.
      model: the served model name.
      version: pin a version (default: the server's latest).
      version_label: pin a label such as ``stable`` (exclusive with ``version``).
      timeout: per-call deadline in seconds.
      max_message_bytes: gRPC message size limit for both directions.
      rank_form: how ``rank(..., signature="rank")`` sends the context (:func:`rank_inputs`):
        ``filled`` (default; a model exported before that form refuses the first call, which
        is retried ``repeated``, the form kept from then on), ``repeated`` (for such a model:
        skips that refused call, which under TF Serving's batching also fails the requests
        merged with it) or ``one``.
    """

    def __init__(self, target: str, model: str, version: int | None = None,
                 version_label: str | None = None, timeout: float = 10.0,
                 max_message_bytes: int = 64 << 20, rank_form: str = "filled"):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if version is not None and version_label is not None:
            raise ValueError("PredictClient: give version or version_label, not both")
        if rank_form not in RANK_FORMS:
            raise ValueError(f"PredictClient: rank_form must be one of {list(RANK_FORMS)}; received "
                             f"rank_form={rank_form!r}")
        self.model, self.version, self.version_label, self.timeout = model, version, version_label, timeout
        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel(target, options=opts)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.rank_form = rank_form  # see _rank

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, msg, signature: str | None = None) -> None:
        msg.model_spec.name = self.model
        if self.version is not None:
            msg.model_spec.version.value = int(self.version)
        if self.version_label is not None:
            msg.model_spec.version_label = self.version_label
        if signature is not None:
            msg.model_spec.signature_name = signature

    def predict_request(self, *, examples: Sequence[bytes] | None = None,
                        tensors: Mapping[str, np.ndarray] | None = None,
                        signature: str | None = None):
        """A ``PredictRequest`` for serialized examples (``serving_default``) or raw tensors
        (``predict``)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        if (examples is None) == (tensors is None):
            raise ValueError("predict_request: give exactly one of examples or tensors")
        req = predict_pb2.PredictRequest()
        self._spec(req, signature or ("serving_default" if examples is not None else "predict"))
        if examples is not None:
            req.inputs["examples"].CopyFrom(tf.make_tensor_proto(list(examples), dtype=tf.string))
        else:
            for k, v in tensors.items():
                req.inputs[k].CopyFrom(tf.make_tensor_proto(np.asarray(v)))
        return req

    def predict(self, *, examples: Sequence[bytes] | None = None,
                tensors: Mapping[str, np.ndarray] | None = None,
                signature: str | None = None) -> dict[str, np.ndarray]:
        """Scores a batch; returns the signature's outputs as numpy arrays."""
        import tensorflow as tf

        req = self.predict_request(examples=examples, tensors=tensors, signature=signature)
        resp = self.predictions.Predict(req, timeout=self.timeout)
        out = {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}
        out["_version"] = np.int64(resp.model_spec.version.value)
        return out

    def schema(self) -> RequestSchema:
        """The request schema of the served model, from its ``predict`` signature."""
        sigs = self.metadata()["signature_def"].get("signatureDef", {})
        if "predict" not in sigs:
            raise ValueError(f"model {self.model!r} has no `predict` signature (signatures: "
                             f"{sorted(sigs)}); was it exported by `tirec export`?")
        return RequestSchema.from_signature(sigs["predict"])

    def rank(self, request: Mapping[str, Any], schema: RequestSchema | FeatureSpec | None = None,
             signature: str = "serving_default") -> list[tuple[dict, float]]:
        """Scores every candidate of a TIR request; returns ``(candidate, ctr)`` best first.

        ``schema`` defaults to the served model's own (one GetModelMetadata call).
        """
        schema = schema if schema is not None else self.schema()
        feats = request_features(schema, request)
        if signature == "predict":
            out = self.predict(tensors=feats, signature=signature)
        elif signature == "rank":
            out = self._rank(feats, schema)
        else:
            out = self.predict(examples=to_examples(feats), signature=signature)
        scores = np.asarray(out["ctr"]).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        return [(request["candidates"][i], float(scores[i])) for i in order]

    def _rank(self, feats: Mapping[str, np.ndarray], schema: RequestSchema) -> dict[str, np.ndarray]:
        """``rank`` in this client's context form (``rank_form``, :func:`rank_inputs`). A model
        exported before the filled form refuses its empty rows (a required feature not found):
        that refusal is retried once with the example in every row, which every export takes,
        batching or not, and the client keeps to that form. If the retry fails too, its error
        is the request's own and is raised."""
        import grpc

        def call(form):
            inputs = rank_inputs(feats, schema, form=form)
            return self.predict(tensors={k: np.array(v, dtype=object) for k, v in inputs.items()},
                                signature="rank")

        form = self.rank_form
        try:
            return call(form)
        except grpc.RpcError as err:
            if form != "filled" or len(next(iter(feats.values()), ())) < 2 or not _predates_filled(err):
                raise
            out = call("repeated")
        self.rank_form = "repeated"
        log.info("model %s: its rank signature predates the filled context form; sending the context "
                 "example in every row", self.model)
        return out

    def metadata(self) -> dict:
        """The model's signature defs (GetModelMetadata) as a JSON-able dict."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        req = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(req)
        req.metadata_field.append("signature_def")
        resp = self.predictions.GetModelMetadata(req, timeout=self.timeout)
        sig = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sig)
        return {"version": resp.model_spec.version.value, "signature_def": json_format.MessageToDict(sig)}

    def status(self) -> list[dict]:
        """Version states of the model (GetModelStatus)."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = self.model
        if self.version is not None:
            req.model_spec.version.value = int(self.version)
        if self.version_label is not None:
            req.model_spec.version_label = self.version_label
        resp = self.models.GetModelStatus(req, timeout=self.timeout)
        return [json_format.MessageToDict(s) for s in resp.model_version_status]


def load_request(path: str) -> dict:
    """Reads a TIR request JSON file (``-`` for stdin)."""
    import sys

    if path != "-" and os.path.isdir(path):
        raise ValueError(f"request: {path} is a folder, not a request JSON file")
    try:
        return json.loads(sys.stdin.read()) if path == "-" else json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"request: {path} is not valid JSON: {err}") from None
