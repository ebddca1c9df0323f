"""Shared fixtures: tiny models of the real transformers classes, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads only add overhead (and contention in CI)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: family -> directory of a saved tiny random model (built once per family)."""
    from support.families import SPECS
    from xattr.toy.build import build_tiny_model

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            out = tmp_path_factory.mktemp(f"tiny_{family}")
            built[family] = build_tiny_model(family, out, seed=0, **SPECS[family].build_options)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir):
    """Factory: family -> adapter loaded through `xattr.models.load(path)` (cached per family)."""
    import xattr

    loaded = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = xattr.models.load(tiny_model_dir(family))
        return loaded[family]

    return get
