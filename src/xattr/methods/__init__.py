"""Attribution methods, registered by name behind the `Attributor` interface.

Every module of this package is imported here, so a method is registered by its file
alone (``class MyMethod(Attributor, name="my_method")``); methods from other packages
register through the ``xattr.methods`` entry-point group.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from typing import Any

from .base import METHODS, AttributionWarning, Attributor, Needs, hparam
from .runner import explain_all, refuse_twins
from .sweep import GradientConsumer, LayerStep, StreamingAttributor
from .variants import Variant, instantiate, resolve, variants

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        import_module(f"{__name__}.{_info.name}")


def available() -> list[str]:
    """Names of every registered method (built-in and entry-point plugins)."""
    return METHODS.available()


def get(name: str, **hparams: Any) -> Attributor:
    """An instance of the method registered as ``name``, or of a variant's method with the
    variant's defaults (``igos_fast``), with the given hyper-parameters."""
    return instantiate(name, **hparams)


def builtin() -> list[str]:
    """Names of the methods defined in this package (not plugins)."""
    return sorted(n for n, cls in METHODS.items() if cls.__module__.startswith(__name__ + "."))


__all__ = [
    "METHODS",
    "AttributionWarning",
    "Attributor",
    "GradientConsumer",
    "LayerStep",
    "Needs",
    "StreamingAttributor",
    "Variant",
    "available",
    "builtin",
    "explain_all",
    "get",
    "hparam",
    "refuse_twins",
    "resolve",
    "variants",
]
