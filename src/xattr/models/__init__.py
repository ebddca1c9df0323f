"""Model adapters, registered by family name; `load` is the one way a model comes in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import llava, qwen2_vl  # noqa: F401  (register the built-in families)
from .base import ADAPTERS, CaptureError, ModelAdapter, PreparedInputs


def available() -> list[str]:
    """Names of every registered model family."""
    return ADAPTERS.available()


def load(
    family: str,
    path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> ModelAdapter:
    """Load ``path`` (hub id or local directory) with the adapter of ``family``, eager attention."""
    return ADAPTERS.get_class(family).load(path, dtype=dtype, device=device, **kwargs)


__all__ = ["ADAPTERS", "CaptureError", "ModelAdapter", "PreparedInputs", "available", "load"]
