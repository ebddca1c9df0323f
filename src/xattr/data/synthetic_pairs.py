"""Seeded two-image grounding data: the queried shape is in one of two images, with its exact mask.

"Which image did the model use?" needs a prompt where only one image can answer. Each sample
shows two synthetic images (`synthetic.make_sample`): the *queried* image holds the asked-about
object as the one-image set does; the *distractor* holds other objects but never the asked-about
shape (colour questions) or colour (shape questions), so the answer is in one image only. Which
of the two comes first is drawn per sample. The mask list holds the object's exact mask for
the queried image and None for the distractor. Sample ``i`` of seed ``s`` depends only on
``(s, i)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xattr.data.sample import Sample
from xattr.data.synthetic import SyntheticConfig, make_sample, synthetic_config

DISTRACTOR_STREAM = 1  # the distractor image's draws: its own stream of the sample's seed


def distractor_config(cfg: SyntheticConfig, kind: str, queried: dict[str, Any]) -> SyntheticConfig:
    """The generator of a distractor: without the asked-about shape (colour questions) or colour
    (shape questions), with at most as many objects as that leaves distinct."""
    if kind == "color":
        shapes = tuple(s for s in cfg.shapes if s != queried["shape"])
        colors = cfg.colors
    else:
        shapes = cfg.shapes
        colors = {c: rgb for c, rgb in cfg.colors.items() if c != queried["color"]}
    most = min(len(shapes), len(colors)) if cfg.distinct else cfg.n_objects
    return dataclasses.replace(
        cfg, shapes=shapes, colors=colors, n_objects=max(1, min(cfg.n_objects, most)),
        question_kinds=(("color",) if len(shapes) > 1 else ("shape",)),
    )  # fmt: skip


def make_pair_sample(cfg: SyntheticConfig, seed: int, index: int) -> Sample:
    """Sample ``index`` of ``seed``: two images, the question about the queried one, per-image masks."""
    main = make_sample(cfg, seed, index)
    meta = main.meta
    queried = meta["objects"][meta["queried"]]
    other_cfg = distractor_config(cfg, meta["question_kind"], queried)
    other = make_sample(other_cfg, seed, index * 2 + DISTRACTOR_STREAM)
    first = int(np.random.default_rng([seed, index, DISTRACTOR_STREAM]).integers(2))
    order = [main, other] if first == 0 else [other, main]
    answer_image = 0 if first == 0 else 1
    masks = [main.mask if s is main else None for s in order]
    return Sample(
        sample_id=main.sample_id,
        image=[s.image for s in order],
        question=main.question,
        answer=main.answer,
        answers=list(main.answers),
        human_map=[None if m is None else m.astype(np.float32) for m in masks],
        mask=masks,
        meta={
            **meta,
            "source": "synthetic_pairs",
            "answer_image": answer_image,
            "images": [s.meta["objects"] for s in order],
        },
    )


def generate_synthetic_pairs(n: int, seed: int, **generator: Any) -> list[Sample]:
    """``n`` deterministic two-image samples (``generator``: `synthetic.generate_synthetic`'s knobs)."""
    cfg = synthetic_config(**generator)
    return [make_pair_sample(cfg, seed, i) for i in range(n)]
