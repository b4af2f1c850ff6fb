"""Typed configuration of a whole run: one section per package, loaded by one loader.

The root :class:`TirecConfig` has one section per package (``generator``, ``pipeline``,
``model``, ``train``); each package reads only its own section, and each section validates
itself when it is built. ``load_config("run.yaml", ["pipeline.intent_levels=8"])`` reads the
file (YAML, JSON), applies the overrides (values parsed as YAML), checks every key against the
dataclass fields (an unknown key fails naming it, its value and the valid ones) and coerces
types: :func:`tirec.features.config_io.load`, the one loader, which also reads a run folder's
``config.json`` (:func:`tirec.models.config.load_run_config`). The resolved config is written
next to every output (``config.json``).

The ``model`` section holds the settings all models share and one sub-section per registered
model (``model.daian.uim_attention``); see :class:`tirec.models.config.ModelConfig`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from tirec.features.config_io import from_dict, load, to_dict  # noqa: F401  (re-exported)
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
    """Loads ``path`` (YAML or JSON; optional) and applies ``key.sub=value`` overrides."""
    return load(cls, path, overrides)
