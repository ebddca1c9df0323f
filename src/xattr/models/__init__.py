"""Model adapters, registered by family name; `load` is the one way a model comes in.

Every module of this package is imported here, so a family is registered by its module
alone; families from other packages register through the ``xattr.models`` entry points.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from .base import ADAPTERS, ModelAdapter, adapter_for, checked_family, checkpoint_model_type
from .capture import AnswerCutWarning
from .placement import check_device, torch_dtype
from .prompting import CaptureError, PreparedInputs

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        import_module(f"{__name__}.{_info.name}")


def available() -> list[str]:
    """Names of every registered model family."""
    return ADAPTERS.available()


def load(
    family_or_path: str | Path | None = None,
    path: str | Path | None = None,
    *,
    family: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> ModelAdapter:
    """Load a checkpoint (hub id or local directory) with its family's adapter.

    ``load(path)`` and ``load(path=path)`` read the family from the checkpoint's
    ``model_type``; ``load(family, path)`` (or ``family=``) names it. A named family must
    match the checkpoint, unless no family claims the checkpoint's type (then the named
    adapter is tried on it). Eager attention unless ``attn_implementation`` says otherwise.
    """
    if path is None:
        path = family_or_path
    elif family is None and family_or_path is not None:
        family = str(family_or_path)
    if path is None:
        raise TypeError("load() needs the checkpoint's path or hub id")
    if family is not None:
        ADAPTERS.get_class(family)  # an unknown family is named first
    check_device(device)  # then a device or dtype this machine cannot give
    torch_dtype(dtype)
    model_type = checkpoint_model_type(path)  # a missing directory is named before anything loads
    cls = adapter_for(model_type) if family is None else checked_family(family, model_type, path)
    return cls.load(path, dtype=dtype, device=device, **kwargs)


__all__ = [
    "ADAPTERS",
    "AnswerCutWarning",
    "CaptureError",
    "ModelAdapter",
    "PreparedInputs",
    "available",
    "load",
]
