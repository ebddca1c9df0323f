"""Attribution methods, registered by name behind the `Attributor` interface."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .base import METHODS, Attributor, Needs, register

# Built-in methods register themselves on import; a new method is one more module here.
_BUILTIN = ("glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar", "igos")
for _module in _BUILTIN:
    import_module(f"{__name__}.{_module}")


def available() -> list[str]:
    """Names of every registered method (built-in and entry-point plugins)."""
    return METHODS.available()


def get(name: str, **hparams: Any) -> Attributor:
    """An instance of the method registered as ``name`` with the given hyper-parameters."""
    return METHODS.get_class(name)(**hparams)


__all__ = ["METHODS", "Attributor", "Needs", "available", "get", "register"]
