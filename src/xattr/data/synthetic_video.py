"""Seeded moving-object videos: one shape crosses the frame among still ones, with exact masks.

"What color is the object that moves?" can only be answered by finding the one object whose
place changes. Each sample starts from a one-image synthetic layout (`synthetic.make_sample`):
its queried object becomes the mover, drawn last (on top) at evenly spaced places on a
straight line from its box to a seeded end point at least its own size away; the other
objects stay still. The mask list holds the mover's exact mask in every frame. Sample ``i``
of seed ``s`` depends only on ``(s, i)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from xattr.data.sample import Sample
from xattr.data.synthetic import SyntheticConfig, make_sample, render_mask, synthetic_config
from xattr.video import Video

QUESTION = "What color is the object that moves?"
MOTION_STREAM = 2  # the end point's draws: their own stream of the sample's seed
FPS = 2.0  # the frames' rate, recorded with them


def make_video_sample(cfg: SyntheticConfig, seed: int, index: int, frames: int = 8) -> Sample:
    """Sample ``index`` of ``seed``: ``frames`` frames, the question, per-frame masks of the mover."""
    if frames < 2:
        raise ValueError(f"a moving object needs at least 2 frames, got {frames}")
    base = make_sample(cfg, seed, index)
    meta = base.meta
    objects = meta["objects"]
    mover = objects[meta["queried"]]
    x0, y0, x1, _ = mover["box"]  # inclusive
    side = x1 - x0 + 1
    size, margin = cfg.image_size, cfg.margin
    rng = np.random.default_rng([seed, index, MOTION_STREAM])
    for _ in range(1000):
        ex, ey = (int(v) for v in rng.integers(margin, size - margin - side + 1, size=2))
        if max(abs(ex - x0), abs(ey - y0)) >= side:
            break
    else:  # the image leaves no room to move a whole size away
        raise ValueError(f"a {side} px object cannot move its own size in a {size} px image")
    hw = (size, size)
    still = np.empty((*hw, 3), dtype=np.uint8)
    still[:] = cfg.background
    for k, obj in enumerate(objects):
        if k != meta["queried"]:
            still[render_mask(obj["shape"], obj["box"], hw)] = obj["rgb"]
    pictures, masks, path = [], [], []
    for f in range(frames):
        a = f / (frames - 1)
        dx, dy = round(x0 + a * (ex - x0)), round(y0 + a * (ey - y0))
        box = [dx, dy, dx + side - 1, dy + side - 1]
        mask = render_mask(mover["shape"], box, hw)
        canvas = still.copy()
        canvas[mask] = mover["rgb"]
        pictures.append(Image.fromarray(canvas))
        masks.append(mask)
        path.append(box)
    return Sample(
        sample_id=base.sample_id,
        image=Video(pictures, fps=FPS),
        question=QUESTION,
        answer=mover["color"],
        answers=[mover["color"]],
        human_map=[m.astype(np.float32) for m in masks],
        mask=masks,
        meta={**meta, "source": "synthetic_video", "question_kind": "motion", "path": path},
    )


def generate_synthetic_videos(n: int, seed: int, frames: int = 8, **generator: Any) -> list[Sample]:
    """``n`` deterministic moving-object videos (``generator``: `synthetic.generate_synthetic`'s knobs)."""
    cfg = synthetic_config(**generator)
    return [make_video_sample(cfg, seed, i, frames) for i in range(n)]
