"""Model registry: ``@register_model("din", DinConfig)`` builders and their settings, by name.

A builder takes ``(spec, model_config, num_items, item_dim)`` and returns a Keras model. Each
model registers, with its builder, the frozen dataclass of its own settings: the
``model.<name>`` config section (``model.daian.uim_attention``), which the model reads with
``model_config.section("<name>")``; the settings every model shares stay in the common ``model``
section (:class:`tirec.models.config.ModelConfig`). A new model is one module and one
registration, plus its entry in ``BUILTIN_MODULES``.

The built-in model modules are listed in ``BUILTIN_MODULES`` and imported on the first lookup (an
explicit list, no directory scanning; importing them loads TensorFlow, which the config and CLI
should not pay for up front: only a config that names a model section, or a run, imports them).
An unknown name fails with the list of valid names.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

_REGISTRY: dict[str, Callable] = {}
_CONFIGS: dict[str, type] = {}
BUILTIN_MODULES = ("tirec.models.din", "tirec.models.daian")


def _load_builtins() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def register_model(name: str, config: type) -> Callable:
    """Decorator registering a model builder under ``name`` with ``config``, the frozen
    dataclass of its ``model.<name>`` settings (validated in its ``__post_init__``)."""
    if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        raise TypeError(f"register_model({name!r}): config must be a frozen dataclass; received {config!r}")

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        _CONFIGS[name] = config
        return builder

    return wrap


def model_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable:
    """The builder registered as ``name``; raises ValueError listing the valid names."""
    _check(name)
    return _REGISTRY[name]


def config_class(name: str) -> type:
    """The settings dataclass registered with model ``name`` (its ``model.<name>`` section)."""
    _check(name)
    return _CONFIGS[name]


def _check(name: str) -> None:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {model_names()}")
