"""Model registry: ``@register_model("din", DinConfig)`` builders and their settings, by name.

A builder takes ``(spec, model_config, num_items, item_dim)`` and returns a Keras model. Each
model registers, with its builder, the frozen dataclass of its own settings: the
``model.<name>`` config section (``model.daian.uim_attention``), which the model reads with
``model_config.section("<name>")``; the settings every model shares stay in the common ``model``
section (:class:`tirec.models.config.ModelConfig`). A new model is one module and one
registration (with a one-line ``description``), plus its entry in ``BUILTIN_MODULES``. The
dataclass checks its values in ``__post_init__``, e.g. with
:class:`tirec.features.config_io.Checks` (``Checks("model.<name>", self).counts("depth")``),
whose errors name the key and the value received.

The built-in model modules are listed in ``BUILTIN_MODULES`` and imported on the first lookup (an
explicit list, no directory scanning; importing them loads TensorFlow, which the config and CLI
should not pay for up front: only a config that names a model section, or a run, imports them).
An unknown name fails with the list of valid names.

Behaviour sequences: records may carry several (``hist``, and with ``pipeline.views`` GAP-Net's
real-time ``rt`` and long-term ``lt`` views). A model registers which it reads (``histories``:
``"first"``, the spec's first sequence, or ``"all"``); :func:`model_spec` narrows a data spec to
them, and that narrowed spec is the model's schema everywhere (the run's ``spec.json``, parsing,
the serving signatures), so a model never parses nor serves a sequence it does not read.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

_REGISTRY: dict[str, Callable] = {}
_CONFIGS: dict[str, type] = {}
_HISTORIES: dict[str, str] = {}
_DESCRIPTIONS: dict[str, str] = {}
HISTORY_CHOICES = ("first", "all")
BUILTIN_MODULES = ("tirec.models.din", "tirec.models.daian", "tirec.models.gapnet", "tirec.models.poso",
                   "tirec.models.mwuf", "tirec.models.qin",
                   "tirec.models.dien",
                   "tirec.models.dihn", "tirec.models.dian",
                   "tirec.models.dei2n", "tirec.models.tin")


def _load_builtins() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def register_model(name: str, config: type, histories: str = "first", *, description: str) -> Callable:
    """Decorator registering a model builder under ``name`` with ``config``, the frozen
    dataclass of its ``model.<name>`` settings (validated in its ``__post_init__``), the
    behaviour sequences it reads (``histories="first"``, the spec's first one, or ``"all"``) and
    a one-line ``description`` (what ``tirec models`` prints)."""
    if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        raise TypeError(f"register_model({name!r}): config must be a frozen dataclass; received {config!r}")
    if histories not in HISTORY_CHOICES:
        raise ValueError(f"register_model({name!r}): histories must be one of {HISTORY_CHOICES}; "
                         f"received {histories!r}")
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        raise ValueError(f"register_model({name!r}): description must be one non-empty line; "
                         f"received {description!r}")

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        _CONFIGS[name] = config
        _HISTORIES[name] = histories
        _DESCRIPTIONS[name] = description.strip()
        return builder

    return wrap


def model_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """The one-line description registered with model ``name``."""
    _check(name)
    return _DESCRIPTIONS[name]


def get_builder(name: str) -> Callable:
    """The builder registered as ``name``; raises ValueError listing the valid names."""
    _check(name)
    return _REGISTRY[name]


def config_class(name: str) -> type:
    """The settings dataclass registered with model ``name`` (its ``model.<name>`` section)."""
    _check(name)
    return _CONFIGS[name]


def model_spec(name: str, spec):
    """``spec`` (a FeatureSpec) narrowed to the behaviour sequences model ``name`` reads: the
    schema the model trains, evaluates and serves with."""
    _check(name)
    if _HISTORIES[name] == "all" or not spec.histories():
        return spec
    return spec.keep_histories([next(iter(spec.histories()))])


def _check(name: str) -> None:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {model_names()}")
