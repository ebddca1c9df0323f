"""One tiny-model builder per family: the module named after the family (see `_common`).

A builder module defines ``build(out_dir, sizes, *, seed, image_size, ...)`` and
``NATIVE_SIZE`` (a square image of that size goes through its processor unresized, one
token per grid cell). Builders are found by module name, so a new family's builder is one
new module here.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from types import ModuleType


def families() -> list[str]:
    """Every family with a tiny-model builder."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def builder(family: str) -> ModuleType:
    """The builder module of ``family``, or a ValueError listing the known ones."""
    if family not in families():
        raise ValueError(f"unknown family {family!r}; known: {', '.join(families())}")
    return import_module(f"{__name__}.{family}")
