"""Evaluation data: the Sample type, VQA-HAT, JSONL folders, synthetic grounding data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xattr.data.sample import Sample, SampleError

if TYPE_CHECKING:
    from xattr.data.datamodule import XattrDataModule
    from xattr.data.jsonl import JsonlDataset
    from xattr.data.synthetic import generate_synthetic, object_mask
    from xattr.data.synthetic_vqahat import read_synthetic_meta, write_synthetic_vqahat
    from xattr.data.vqahat import VQAHATDataset
    from xattr.data.vqahat_writer import write_vqahat

# Imported on first use so `import xattr.data` stays cheap (torch / lightning load lazily).
_LAZY = {
    "XattrDataModule": "xattr.data.datamodule",
    "JsonlDataset": "xattr.data.jsonl",
    "VQAHATDataset": "xattr.data.vqahat",
    "generate_synthetic": "xattr.data.synthetic",
    "object_mask": "xattr.data.synthetic",
    "read_synthetic_meta": "xattr.data.synthetic_vqahat",
    "write_synthetic_vqahat": "xattr.data.synthetic_vqahat",
    "write_vqahat": "xattr.data.vqahat_writer",
}

__all__ = [
    "JsonlDataset",
    "Sample",
    "SampleError",
    "VQAHATDataset",
    "XattrDataModule",
    "generate_synthetic",
    "object_mask",
    "read_synthetic_meta",
    "write_synthetic_vqahat",
    "write_vqahat",
]


# Submodules reachable as attributes (``xattr.data.synthetic.object_mask``) after ``import xattr``.
_SUBMODULES = (
    "cached",
    "datamodule",
    "jsonl",
    "jsonl_writer",
    "maps",
    "sample",
    "synthetic",
    "synthetic_pairs",
    "synthetic_relations",
    "synthetic_video",
    "vqahat",
)


def __getattr__(name: str) -> Any:
    """Resolve the lazily imported public names and submodules."""
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'xattr.data' has no attribute {name!r}")
