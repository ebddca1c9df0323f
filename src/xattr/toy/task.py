"""The toy LVLMs' training task: seeded streams of synthetic grounding questions as arrays.

Every batch mixes 3- and 2-object images (the default benchmark is
``xattr.data.synthetic.generate_synthetic``: 112 px, 3 objects, 3 shapes, 4 colours), questions
about a shape that is not in the image, and images with the asked object or another one
Gaussian-blurred out (random radius and margin). Unanswerable questions are supervised with a
uniform target over the colours, so when the asked object is gone the model answers at chance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import ImageFilter
from torch import Tensor

from xattr.data.synthetic import PALETTE, SHAPES, SyntheticConfig, make_sample, render_mask

# Seeds of the training stream live far from small evaluation seeds (held-out sets use
# seeds < TRAIN_SEED_BASE; see xattr.toy.evaluate).
TRAIN_SEED_BASE = 1_000_003
QUESTION = "What color is the {shape}?"
BACKGROUND_WORD = "background"  # the word whose embedding is an empty cell's oracle token


@dataclass
class TaskMix:
    """What a training batch holds: object counts and the share of unanswerable questions."""

    n_objects: tuple[int, ...] = (3, 2)
    weights: tuple[float, ...] = (0.6, 0.4)
    p_absent: float = 0.1  # question about a shape that is not in the image (2-object images)
    p_blur_queried: float = 0.1  # the asked object blurred out (unanswerable)
    p_blur_other: float = 0.1  # another object blurred out (answer unchanged)
    blur_radius: tuple[float, float] = (6.0, 14.0)  # Gaussian radius range, px
    blur_grow: tuple[int, int] = (0, 5)  # margin around the bounding box, px
    image_size: int = 112

    def configs(self) -> dict[int, SyntheticConfig]:
        """The synthetic-data config per object count (2 always: absent-shape questions)."""
        return {
            k: SyntheticConfig(image_size=self.image_size, n_objects=k)
            for k in {*self.n_objects, 2}
        }


CLEAN_3 = TaskMix(
    n_objects=(3,), weights=(1.0,), p_absent=0.0, p_blur_queried=0.0, p_blur_other=0.0
)
# First stage: answerable questions only. The uniform target of unanswerable ones penalises the
# stepping stone "answer one of the colours present", which delays learning the binding.
ANSWERABLE = TaskMix(p_absent=0.0, p_blur_queried=0.0, p_blur_other=0.0)


@dataclass
class Batch:
    """A training/evaluation batch in plain arrays (model independent)."""

    images: np.ndarray  # [B, H, W, 3] uint8
    shape_q: Tensor  # [B] index into SHAPES of the asked shape
    answer: Tensor  # [B] index into COLORS of the answer, -1 when the shape is absent
    cover: Tensor  # [B, K, G] fraction of each grid cell covered by object k (0 for no object)
    obj_shape: Tensor  # [B, K] index into SHAPES (0 where no object)
    obj_color: Tensor  # [B, K] index into COLORS


COLORS: tuple[str, ...] = tuple(PALETTE)


def cell_cover(mask: np.ndarray, grid: int) -> np.ndarray:
    """Fraction of each of the grid x grid cells covered by a bool mask, raster order: [grid^2]."""
    h, w = mask.shape
    return mask.reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3)).reshape(-1)


@dataclass
class Item:
    """One training question: the sample, the shape asked about, the image shown, blurred objects."""

    sample: Any  # xattr.data.sample.Sample
    asked: str
    image: Any  # PIL image actually shown (the sample's, or with objects blurred out)
    blurred: tuple[int, ...] = ()  # indices into sample.meta["objects"]


def blur_out(image: Any, bbox: Sequence[int], radius: float, grow: int) -> Any:
    """Paste a Gaussian-blurred copy of the image over a bounding box grown by ``grow`` px."""
    x0, y0, x1, y1 = bbox
    w, h = image.size
    box = (max(0, x0 - grow), max(0, y0 - grow), min(w, x1 + grow), min(h, y1 + grow))
    out = image.copy()
    out.paste(image.filter(ImageFilter.GaussianBlur(radius)).crop(box), box[:2])
    return out


def draw_samples(mix: TaskMix, seed: int, start: int, n: int) -> list[Item]:
    """Items ``start..start+n`` of one seeded stream.

    A share asks about a shape that is not in the image (2-object images); a share has the
    asked object, or another one, blurred out (random radius and margin) -- the blurred
    object's shape is gone, so a blurred asked object makes the question unanswerable too.
    """
    cfgs = mix.configs()
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i, 17])
        if rng.random() < mix.p_absent:
            s = make_sample(cfgs[2], seed, i)
            present = {o["shape"] for o in s.meta["objects"]}
            out.append(Item(s, next(x for x in SHAPES if x not in present), s.image))
            continue
        k = mix.n_objects[
            rng.choice(len(mix.n_objects), p=np.asarray(mix.weights) / sum(mix.weights))
        ]
        s = make_sample(cfgs[k], seed, i)
        q = s.meta["queried"]
        item = Item(s, s.meta["objects"][q]["shape"], s.image)
        u = rng.random()
        others = [j for j in range(len(s.meta["objects"])) if j != q]
        target = None
        if u < mix.p_blur_queried:
            target = q
        elif u < mix.p_blur_queried + mix.p_blur_other and others:
            target = others[rng.integers(len(others))]
        if target is not None:
            radius = rng.uniform(*mix.blur_radius)
            grow = int(rng.integers(mix.blur_grow[0], mix.blur_grow[1] + 1))
            item.image = blur_out(s.image, s.meta["objects"][target]["bbox"], radius, grow)
            item.blurred = (target,)
        out.append(item)
    return out


def make_batch(items: Sequence[Item], grid: int, max_objects: int = 3) -> Batch:
    """Arrays of a list of items (a blurred object counts as absent: no cover, no answer)."""
    b = len(items)
    images = np.stack([np.asarray(it.image, dtype=np.uint8) for it in items])
    cover = np.zeros((b, max_objects, grid * grid), dtype=np.float32)
    obj_shape = np.zeros((b, max_objects), dtype=np.int64)
    obj_color = np.zeros((b, max_objects), dtype=np.int64)
    shape_q = np.zeros(b, dtype=np.int64)
    answer = np.full(b, -1, dtype=np.int64)
    for j, it in enumerate(items):
        hw = tuple(it.sample.meta["image_hw"])
        for k, o in enumerate(it.sample.meta["objects"]):
            obj_shape[j, k] = SHAPES.index(o["shape"])
            obj_color[j, k] = COLORS.index(o["color"])
            if k in it.blurred:
                continue
            cover[j, k] = cell_cover(render_mask(o["shape"], o["box"], hw), grid)
            if o["shape"] == it.asked:
                answer[j] = COLORS.index(o["color"])
        shape_q[j] = SHAPES.index(it.asked)
    return Batch(
        images, torch.from_numpy(shape_q), torch.from_numpy(answer), torch.from_numpy(cover),
        torch.from_numpy(obj_shape), torch.from_numpy(obj_color),
    )  # fmt: skip


def chat_messages(question: str) -> list[dict[str, Any]]:
    """The chat the model adapters build: one user turn with the image, then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


class BatchStream(torch.utils.data.IterableDataset):
    """The seeded training batches of one stage: ``steps`` batches from ``offset`` in the stream."""

    def __init__(
        self, mix: TaskMix, seed: int, offset: int, batch_size: int, grid: int, steps: int
    ) -> None:
        self.mix, self.seed, self.offset = mix, seed, offset
        self.batch_size, self.grid, self.steps = batch_size, grid, steps

    def __iter__(self) -> Iterator[Batch]:
        for step in range(self.steps):
            start = self.offset + step * self.batch_size
            yield make_batch(
                draw_samples(self.mix, TRAIN_SEED_BASE + self.seed, start, self.batch_size),
                self.grid,
            )
