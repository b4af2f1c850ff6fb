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


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list; received {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false; received {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{where}: expected an integer; received {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number; received {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}: expected a string; received {value!r}")
        return str(value)
    return value
