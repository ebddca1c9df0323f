"""Method variants: a ``conf/method`` config that is a registered method with other defaults.

``conf/method/igos_fast.yaml`` is iGOS++ with a smaller budget and ``tmme_last12.yaml`` is
TMME over the last 12 layers: each names its method in its defaults list
(``/xattr/method/<method>@_here_``) and overrides some hyper-parameters. Hydra composes
them; `variants` reads the same files (shipped in the package), so ``xattr list``,
``xattr explain --method`` and `xattr.methods.get` answer for a variant as for a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .base import METHODS, Attributor

CONF_METHODS = Path(__file__).resolve().parents[1] / "conf" / "method"
SCHEMA = "/xattr/method/"  # the defaults-list prefix of a method's schema


@dataclass(frozen=True)
class Variant:
    """``base`` (a registered method) with ``overrides`` of its defaults, from ``source``."""

    name: str
    base: str
    overrides: dict[str, Any]
    source: Path


def variants() -> dict[str, Variant]:
    """Every shipped method config whose name is not its method's, by name."""
    found = {}
    for path in sorted(CONF_METHODS.glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        bases = [
            d.removeprefix(SCHEMA).split("@")[0]
            for d in config.get("defaults", [])
            if isinstance(d, str) and d.startswith(SCHEMA)
        ]
        if len(bases) == 1 and bases[0] != path.stem:
            overrides = {k: v for k, v in config.items() if k != "defaults"}
            found[path.stem] = Variant(path.stem, bases[0], overrides, path)
    return found


def resolve(name: str) -> tuple[type[Attributor], Variant | None]:
    """The class of the method registered as ``name``, or of the variant ``name``'s method
    with the variant (an unknown name is the registry's error)."""
    variant = variants().get(name) if name not in METHODS else None
    return METHODS.get_class(variant.base if variant else name), variant


def instantiate(name: str, **hparams: Any) -> Attributor:
    """An instance of the method registered as ``name``, or of a variant's method with the
    variant's defaults (``igos_fast``), with the given hyper-parameters."""
    cls, variant = resolve(name)
    return cls(**{**(variant.overrides if variant else {}), **hparams})
