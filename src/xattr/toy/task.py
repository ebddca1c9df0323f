"""The toy LVLMs' training task: seeded streams of synthetic grounding questions as arrays.

Four kinds of question (`KINDS`): ``"color"`` -- "What color is the circle?" (the default
benchmark, ``xattr.data.synthetic.generate_synthetic``: 112 px, 3 objects, 3 shapes,
4 colours) -- two relations that need one object found before another is read
(``xattr.data.synthetic_relations``): ``"left_color"`` -- "What color is the shape left of
the circle?" -- and ``"next_shape"`` -- "What shape is next to the red one?" -- and
``"count"`` -- "How many circles are there?" (``xattr.data.synthetic_counting``: every
object of the shape found, the answer "one".."three"). A batch holds
one kind (its prompts then share one length); the kind of each batch is drawn from the
mix's weights. ``"color"`` batches mix 3- and 2-object images, questions about a shape that
is not in the image, and images with the asked object or another one Gaussian-blurred out
(random radius and margin). Unanswerable questions are supervised with a uniform target
over the answer words, so when the asked object is gone the model answers at chance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import ImageFilter
from torch import Tensor

from xattr.data.synthetic import PALETTE, SHAPES, SyntheticConfig, make_sample, render_mask
from xattr.data.synthetic_counting import COUNT_QUESTION, NUMBERS
from xattr.data.synthetic_relations import RELATIONS, make_composite_sample

# Seeds of the training stream live far from small evaluation seeds (held-out sets use
# seeds < TRAIN_SEED_BASE; see xattr.toy.evaluate).
TRAIN_SEED_BASE = 1_000_003
QUESTION = "What color is the {shape}?"
BACKGROUND_WORD = "background"  # the word whose embedding is an empty cell's oracle token
COLORS: tuple[str, ...] = tuple(PALETTE)
VOCABULARIES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": COLORS, "count": NUMBERS}


@dataclass(frozen=True)
class Kind:
    """A question kind: its template, the vocabulary of the word it names, of its answer."""

    template: str  # with one field named after ``word``: {shape} or {color}
    word: str  # "shape" | "color"
    answer: str  # "shape" | "color" | "count" (`VOCABULARIES`)

    def question(self, word: str) -> str:
        """The question naming ``word``."""
        return self.template.format(**{self.word: word})


KINDS: dict[str, Kind] = {
    "color": Kind(QUESTION, "shape", "color"),
    "left_color": Kind(RELATIONS["left_color"], "shape", "color"),
    "next_shape": Kind(RELATIONS["next_shape"], "color", "shape"),
    "count": Kind(COUNT_QUESTION, "shape", "count"),
}


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
    kinds: tuple[str, ...] = ("color",)  # question kinds (`KINDS`), one per batch
    kind_weights: tuple[float, ...] = (1.0,)

    def answerable(self) -> TaskMix:
        """This mix without unanswerable questions (no absent shapes, nothing blurred out).

        The first stage's data: the uniform target of unanswerable questions penalises the
        stepping stone "answer one of the colours present", which delays learning the binding.
        """
        return replace(self, p_absent=0.0, p_blur_queried=0.0, p_blur_other=0.0)

    def batch_kind(self, seed: int, start: int) -> str:
        """The question kind of the batch starting at item ``start`` of stream ``seed``."""
        if len(self.kinds) == 1:
            return self.kinds[0]
        p = np.asarray(self.kind_weights, dtype=float)
        return self.kinds[np.random.default_rng([seed, start, 29]).choice(len(p), p=p / p.sum())]

    def configs(self) -> dict[int, SyntheticConfig]:
        """The synthetic-data config per object count (2 always: absent-shape questions)."""
        return {
            k: SyntheticConfig(image_size=self.image_size, n_objects=k)
            for k in {*self.n_objects, 2, 3}
        }


CLEAN_3 = TaskMix(
    n_objects=(3,), weights=(1.0,), p_absent=0.0, p_blur_queried=0.0, p_blur_other=0.0
)


@dataclass
class Batch:
    """A training/evaluation batch in plain arrays (model independent)."""

    images: np.ndarray  # [B, H, W, 3] uint8
    word: Tensor  # [B] index of the question's word in its vocabulary (KINDS[kind].word)
    answer: Tensor  # [B] index of the answer in its vocabulary, -1 when unanswerable
    cover: Tensor  # [B, K, G] fraction of each grid cell covered by object k (0 for no object)
    obj_shape: Tensor  # [B, K] index into SHAPES (0 where no object)
    obj_color: Tensor  # [B, K] index into COLORS
    target: Tensor  # [B] the object the answer is about (index into K), -1 when none or several
    kind: str = "color"  # the question kind of every row (KINDS)


def cell_cover(mask: np.ndarray, grid: int) -> np.ndarray:
    """Fraction of each of the grid x grid cells covered by a bool mask, raster order: [grid^2]."""
    h, w = mask.shape
    return mask.reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3)).reshape(-1)


@dataclass
class Item:
    """One training question: the sample, the word the question names, the image shown, blurred objects."""

    sample: Any  # xattr.data.sample.Sample
    asked: str  # the question's word: a shape ("color", "left_color") or a colour ("next_shape")
    image: Any  # PIL image actually shown (the sample's, or with objects blurred out)
    blurred: tuple[int, ...] = ()  # indices into sample.meta["objects"]
    kind: str = "color"


def blur_out(image: Any, bbox: Sequence[int], radius: float, grow: int) -> Any:
    """Paste a Gaussian-blurred copy of the image over a bounding box grown by ``grow`` px."""
    x0, y0, x1, y1 = bbox
    w, h = image.size
    box = (max(0, x0 - grow), max(0, y0 - grow), min(w, x1 + grow), min(h, y1 + grow))
    out = image.copy()
    out.paste(image.filter(ImageFilter.GaussianBlur(radius)).crop(box), box[:2])
    return out


def draw_samples(
    mix: TaskMix, seed: int, start: int, n: int, kind: str | None = None
) -> list[Item]:
    """Items ``start..start+n`` of one seeded stream, all of one question kind.

    ``kind`` defaults to the mix's draw for this batch (`TaskMix.batch_kind`). Relational
    items name the anchor's shape or colour (3-object images). ``"color"`` items: a share
    asks about a shape that is not in the image (2-object images); a share has the asked
    object, or another one, blurred out (random radius and margin) -- the blurred object's
    shape is gone, so a blurred asked object makes the question unanswerable too.
    """
    cfgs = mix.configs()
    kind = kind or mix.batch_kind(seed, start)
    if kind != "color":
        word = KINDS[kind].word
        out = []
        for i in range(start, start + n):
            s = make_composite_sample(cfgs[3], seed, i, kind)
            named = s.meta["objects"][s.meta.get("anchor", s.meta["queried"])][word]
            out.append(Item(s, named, s.image, kind=kind))
        return out
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
    """Arrays of a list of items of one kind (a blurred object counts as absent: no cover, no answer)."""
    kinds = {it.kind for it in items}
    if len(kinds) != 1:
        raise ValueError(f"a batch holds one question kind, got {sorted(kinds)}")
    kind = KINDS[(name := kinds.pop())]
    b = len(items)
    images = np.stack([np.asarray(it.image, dtype=np.uint8) for it in items])
    cover = np.zeros((b, max_objects, grid * grid), dtype=np.float32)
    obj_shape = np.zeros((b, max_objects), dtype=np.int64)
    obj_color = np.zeros((b, max_objects), dtype=np.int64)
    word = np.zeros(b, dtype=np.int64)
    answer = np.full(b, -1, dtype=np.int64)
    target = np.full(b, -1, dtype=np.int64)
    answers = VOCABULARIES[kind.answer]
    for j, it in enumerate(items):
        meta = it.sample.meta
        hw = tuple(meta["image_hw"])
        for k, o in enumerate(meta["objects"]):
            obj_shape[j, k] = SHAPES.index(o["shape"])
            obj_color[j, k] = COLORS.index(o["color"])
            if k in it.blurred:
                continue
            cover[j, k] = cell_cover(render_mask(o["shape"], o["box"], hw), grid)
            if name == "color" and o["shape"] == it.asked:
                target[j] = k
        if name == "color":  # answerable when the asked shape is shown (not absent, not blurred)
            if target[j] >= 0:
                answer[j] = answers.index(meta["objects"][target[j]][kind.answer])
        else:  # a composite question: the generator's answer; counting has no single target
            answer[j] = answers.index(it.sample.answer)
            if name != "count":
                target[j] = meta["queried"]
        word[j] = VOCABULARIES[kind.word].index(it.asked)
    return Batch(
        images, torch.from_numpy(word), torch.from_numpy(answer), torch.from_numpy(cover),
        torch.from_numpy(obj_shape), torch.from_numpy(obj_color), torch.from_numpy(target), name,
    )  # fmt: skip


def batch_for(
    mix: TaskMix, seed: int, start: int, n: int, grid: int, kind: str | None = None
) -> Batch:
    """The batch of items ``start..start+n`` of stream ``seed`` (`draw_samples`, `make_batch`)."""
    return make_batch(draw_samples(mix, seed, start, n, kind), grid)


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
            yield batch_for(
                self.mix, TRAIN_SEED_BASE + self.seed, start, self.batch_size, self.grid
            )
