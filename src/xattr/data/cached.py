"""Datasets materialised on first use: the synthetic benchmark written once, then read from disk."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xattr.data.jsonl import JsonlDataset
from xattr.data.jsonl_writer import write_jsonl_folder
from xattr.data.synthetic import synthetic_config
from xattr.data.synthetic_pairs import generate_synthetic_pairs
from xattr.data.synthetic_video import generate_synthetic_videos
from xattr.data.synthetic_vqahat import (
    generator_record,
    read_synthetic_meta,
    write_synthetic_vqahat,
)
from xattr.data.vqahat import VQAHATDataset

# write_synthetic_vqahat's file-writing options (keyword-only) and their defaults, read off its
# signature; every other keyword drives the generator
WRITER_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(write_synthetic_vqahat).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


def synthetic_dataset(
    root: str | Path,
    n: int = 200,
    seed: int = 12345,
    split: str = "val",
    mask_threshold: float = 0.5,
    limit: int | None = None,
    relational: float = 0.0,
    **generator: Any,
) -> VQAHATDataset:
    """The synthetic grounding set in VQA-HAT layout under ``root``, generated if absent.

    ``relational``: the share of relational and counting questions ("What color is the
    shape left of the circle?", "How many circles are there?";
    `xattr.data.synthetic_relations.with_relations`).

    The files are rewritten when the recorded generator or writer parameters differ from
    the requested ones (compared after normalisation, so ``colors: [red, blue]`` matches
    the RGB values it was recorded as), so a config change never silently reuses stale
    data. Each sample's ``meta`` carries the generator's objects and queried index.
    """
    root = Path(root)
    sidecar = root / f"synthetic_{split}_meta.json"
    writer = {k: generator.get(k, v) for k, v in WRITER_DEFAULTS.items()}
    params = {k: v for k, v in generator.items() if k not in WRITER_DEFAULTS}
    wanted = generator_record(n, seed, relational, synthetic_config(**params))
    if not _matches(sidecar, wanted, writer):
        write_synthetic_vqahat(
            root, n=n, seed=seed, split=split, relational=relational, **generator
        )
    return VQAHATDataset(
        root,
        split=split,
        mask_threshold=mask_threshold,
        limit=limit,
        answer_types=("other", "number"),  # its counting questions are "number" (VQA's rule)
        extra_meta=read_synthetic_meta(root, split),
        label="synthetic (VQA-HAT layout)",
    )


def synthetic_pairs_dataset(
    root: str | Path, n: int = 100, seed: int = 12345, limit: int | None = None, **generator: Any
) -> JsonlDataset:
    """The two-image synthetic set (`synthetic_pairs`) as a JSONL folder under ``root``,
    generated if absent and rewritten when its recorded parameters differ from these."""
    wanted = {"n": n, "seed": seed, **asdict(synthetic_config(**generator))}
    return _jsonl_once(
        root, "pairs", wanted, lambda: generate_synthetic_pairs(n, seed, **generator), limit
    )


def synthetic_video_dataset(
    root: str | Path,
    n: int = 50,
    seed: int = 12345,
    frames: int = 8,
    limit: int | None = None,
    **generator: Any,
) -> JsonlDataset:
    """The moving-object videos (`synthetic_video`) as a JSONL folder under ``root``, generated
    if absent and rewritten when its recorded parameters differ from these."""
    wanted = {"n": n, "seed": seed, "frames": frames, **asdict(synthetic_config(**generator))}
    make = lambda: generate_synthetic_videos(n, seed, frames, **generator)  # noqa: E731
    return _jsonl_once(root, "video", wanted, make, limit)


def _jsonl_once(
    root: str | Path, name: str, wanted: dict[str, Any], make: Any, limit: int | None
) -> JsonlDataset:
    """A JSONL folder written by ``make()`` unless its ``<name>_meta.json`` records ``wanted``."""
    root = Path(root)
    sidecar = root / f"{name}_meta.json"
    fresh = sidecar.exists() and _same(json.loads(sidecar.read_text()).get("generator"), wanted)
    if not fresh:
        write_jsonl_folder(make(), root, wanted, name)
    return JsonlDataset(root, limit=limit)


def _matches(sidecar: Path, wanted: dict[str, Any], writer: dict[str, Any]) -> bool:
    if not sidecar.exists():
        return False
    recorded = json.loads(sidecar.read_text())
    return _same(recorded.get("generator", {}), wanted) and _same(recorded.get("writer"), writer)


def _same(a: Any, b: Any) -> bool:
    norm = lambda x: json.loads(json.dumps(x))  # noqa: E731  (tuples vs lists)
    return norm(a) == norm(b)
