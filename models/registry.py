"""Model registry: ``@register_model("din")`` builders keyed by name.

A builder takes ``(spec, model_config, num_items, item_dim)`` and returns a Keras model. The
built-in model modules are listed in ``BUILTIN_MODULES`` and imported on the first lookup (an
explicit list, no directory scanning; importing them loads TensorFlow, which the config and CLI
should not pay for up front). An unknown name fails with the list of valid names.
"""
from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, Callable] = {}
BUILTIN_MODULES = ("tirec.models.din", "tirec.models.daian")


def _load_builtins() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def register_model(name: str) -> Callable:
    """Decorator registering a model builder under ``name``."""
    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return wrap


def model_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable:
    """The builder registered as ``name``; raises ValueError listing the valid names."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {model_names()}")
    return _REGISTRY[name]
