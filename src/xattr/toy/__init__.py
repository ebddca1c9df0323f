"""Tiny, randomly initialised vision-language models of the real transformers classes.

``checkpoint(family)`` locates the shipped toy LVLMs trained on synthetic grounding
(see :mod:`xattr.toy.train`); load them like any model directory, e.g.
``xattr.models.load("qwen2_5_vl", xattr.toy.checkpoint("qwen2_5_vl"))``.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED = ("qwen2_5_vl", "llava")


def checkpoint(family: str) -> Path:
    """Directory of the shipped trained toy checkpoint of ``family`` ("qwen2_5_vl" or "llava")."""
    if family not in SHIPPED:
        raise ValueError(
            f"no shipped toy checkpoint for family {family!r}; shipped: {', '.join(SHIPPED)}"
        )
    path = CHECKPOINT_DIR / family
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the toy checkpoint of {family!r} is missing at {path}; retrain it with "
            f"`python -m xattr.toy.train --family {family} --seed 0 --out {path}`"
        )
    return path


__all__ = ["CHECKPOINT_DIR", "SHIPPED", "checkpoint"]
