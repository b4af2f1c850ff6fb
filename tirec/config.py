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
import logging
import posixpath
from typing import Any, Sequence

from tirec.features.config_io import (RUN_CONFIG, apply_overrides, from_dict, is_folder, load,  # noqa: F401
                                      read_mapping, to_dict)
from tirec.features.jsonio import exists
from tirec.models.config import ModelConfig, TrainConfig, run_settings
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.synthetic import GeneratorConfig


@dataclasses.dataclass(frozen=True)
class TirecConfig:
    """The whole run: one section per package."""

    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


log = logging.getLogger("tirec")


def load_config(path: str | None = None, overrides: Sequence[str] = (), cls: type = TirecConfig,
                skip: Sequence[str] = ()) -> Any:
    """Loads ``path`` (optional: YAML or JSON, or a folder tirec wrote, see
    :func:`config_mapping`) and applies ``key.sub=value`` overrides; the top-level keys in
    ``skip`` (another command's sections) are left unread."""
    folder = _folder_of(path)
    if folder is None:
        return load(cls, path, overrides, skip=skip)
    settings, note = _lent(folder)
    log.info("--config %s: %s", path, note)
    raw = {k: v for k, v in settings.items() if k not in skip}
    return from_dict(cls, apply_overrides(raw, overrides), moved=[])  # tirec wrote it: old keys load quietly


def config_mapping(path: str) -> dict:
    """The settings in config file ``path``, or those a folder tirec wrote lends (the folder, or
    its ``config.json``): a ``tirec train`` run folder (or an export's ``assets/``) its ``model``
    and ``train`` sections (:func:`tirec.models.config.run_settings`; the data folder it
    recorded is not a setting), a ``tirec pipeline`` output its settings as the ``pipeline``
    section."""
    folder = _folder_of(path)
    return read_mapping(path) if folder is None else _lent(folder)[0]


def _lent(folder: str) -> tuple[dict, str]:
    """:func:`config_mapping` of a folder tirec wrote, and a line saying what is read."""
    raw = read_mapping(folder)
    if "model" not in raw and exists(posixpath.join(folder, "spec.json")):
        return {"pipeline": raw}, "a `tirec pipeline` output; its settings are read as the pipeline section"
    settings = run_settings(folder)
    warm = settings["train"].get("warm_start")
    return settings, (f"a run folder; its model and train sections are read (the data folder it recorded, "
                      f"{raw.get('data') or 'none'}, is not a setting)"
                      + (f"; its train.warm_start={warm!r} is lent too" if warm else ""))


def _folder_of(path: str | None) -> str | None:
    """The folder tirec wrote that ``path`` names (the folder, or its ``config.json``), or None."""
    if not path:
        return None
    if is_folder(path):
        return path
    head, name = posixpath.split(path)
    return head or "." if name == RUN_CONFIG and exists(posixpath.join(head or ".", "spec.json")) else None
