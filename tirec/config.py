"""Typed configuration: frozen dataclasses loaded from YAML, with dotted overrides.

The root :class:`TirecConfig` has one section per package (``generator``, ``pipeline``,
``model``, ``train``); each
package reads only its own section. ``load_config("run.yaml", ["pipeline.intent_levels=8"])``
reads the file, applies the overrides (values parsed as YAML), checks every key against the
dataclass fields (an unknown key fails with the list of valid ones) and coerces types. The
resolved config is written next to every output (``config.json``).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping, Sequence

import yaml

from tirec.models.config import ModelConfig, TrainConfig
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.synthetic import GeneratorConfig


@dataclasses.dataclass(frozen=True)
class TirecConfig:
    """The whole run: one section per package."""

    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def load_config(path: str | None = None, overrides: Sequence[str] = (),
                cls: type = TirecConfig) -> Any:
    """Loads ``path`` (YAML; optional) and applies ``key.sub=value`` overrides."""
    raw: dict = {}
    if path:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config {path}: the top level must be a mapping; received {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return from_dict(cls, raw)


def from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, checking keys and coercing types."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a mapping; received {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}" if not where else f"{where}.{name}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


_SCALARS = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _coerce(tp, value, where: str):
    """``value`` as type ``tp``: no conversion between kinds (a number is not a string).

    Raises:
      ValueError: naming the key, the value with its type, and the type expected.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, {} if value is None else value, where)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, where)
    if origin is tuple:
        return _coerce_tuple(args, value, where)
    if tp not in _SCALARS:
        return value
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) or (isinstance(v, float) and v.is_integer()),
        float: lambda v: isinstance(v, (int, float)),
        str: lambda v: isinstance(v, str),
    }[tp](value) and (tp is bool or not isinstance(value, bool))
    if not ok:
        raise ValueError(f"{where}: expected {_SCALARS[tp]}; received {_shown(value)}")
    return tp(value)


def _coerce_union(args: tuple, value, where: str):
    """The first member type of a Union that accepts ``value`` as it is."""
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    for member in members:
        try:
            return _coerce(member, value, where)
        except ValueError:
            continue
    expected = " or ".join(_expected(a) for a in args)
    raise ValueError(f"{where}: expected {expected}; received {_shown(value)}")


def _coerce_tuple(args: tuple, value, where: str) -> tuple:
    if isinstance(value, str):  # "click,pv" -> ("click", "pv")
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected {_expected(tuple[args])}; received {_shown(value)}")
    if args and args[-1] is not Ellipsis and len(args) != len(value):
        raise ValueError(f"{where}: expected {len(args)} values; received {_shown(value)}")
    types_ = [args[0]] * len(value) if args and args[-1] is Ellipsis else list(args)
    return tuple(_coerce(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(types_, value)))


def _expected(tp) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))


def _shown(value) -> str:
    return f"{value!r} ({type(value).__name__})"
