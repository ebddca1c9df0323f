"""Datasets materialised on first use: the synthetic benchmark written once, then read from disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xattr.data.synthetic import write_synthetic_vqahat
from xattr.data.vqahat import VQAHATDataset


def synthetic_dataset(
    root: str | Path,
    n: int = 200,
    seed: int = 12345,
    split: str = "val",
    mask_threshold: float = 0.5,
    limit: int | None = None,
    **generator: Any,
) -> VQAHATDataset:
    """The synthetic grounding set in VQA-HAT layout under ``root``, generated if absent.

    The files are rewritten when the recorded generator parameters differ from the
    requested ones, so a config change never silently reuses stale data.
    """
    root = Path(root)
    sidecar = root / f"synthetic_{split}_meta.json"
    wanted = {"n": n, "seed": seed, **generator}
    if not _matches(sidecar, wanted):
        write_synthetic_vqahat(root, n=n, seed=seed, split=split, **generator)
    return VQAHATDataset(root, split=split, mask_threshold=mask_threshold, limit=limit)


def _matches(sidecar: Path, wanted: dict[str, Any]) -> bool:
    if not sidecar.exists():
        return False
    recorded = json.loads(sidecar.read_text()).get("generator", {})
    return all(_same(recorded.get(k), v) for k, v in wanted.items())


def _same(a: Any, b: Any) -> bool:
    norm = lambda x: json.loads(json.dumps(x))  # noqa: E731  (tuples vs lists)
    return norm(a) == norm(b)
