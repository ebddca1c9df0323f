"""Seeded synthetic grounding data: coloured shapes on grey, a question about one, its exact mask.

Every knob the toy-model notes found to matter (number of objects, image size, shape and
colour vocabularies, question kinds and templates, object size, minimum gap) is a parameter.
Sample ``i`` of seed ``s`` depends only on ``(s, i)``, so ``generate_synthetic(5, s)[:3]``
equals ``generate_synthetic(3, s)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from xattr.data.sample import Sample

RGB = tuple[int, int, int]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated and far apart (and from the grey background) so they survive JPEG at q95.
PALETTE: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
}
BACKGROUND: RGB = (128, 128, 128)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("What color is the {shape}?",),
    "shape": ("What shape is {color}?",),
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int]) -> None:
    """Rasterise one filled shape inside the inclusive pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=255)
    else:  # guarded by SyntheticConfig; kept for object_mask on hand-made metadata
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render_mask(shape: str, box: Sequence[int], hw: tuple[int, int]) -> np.ndarray:
    """The exact bool mask of one shape drawn in ``box`` on an image of size ``hw``."""
    canvas = Image.new("L", (hw[1], hw[0]), 0)
    _draw_shape(ImageDraw.Draw(canvas), shape, box)
    return np.asarray(canvas) > 0


def object_mask(sample: Sample | Mapping[str, Any], index: int | None = None) -> np.ndarray:
    """Re-render the exact mask of object ``index`` (default: the queried one) from its meta."""
    meta = sample.meta if isinstance(sample, Sample) else sample
    index = meta["queried"] if index is None else index
    obj = meta["objects"][index]
    return render_mask(obj["shape"], obj["box"], tuple(meta["image_hw"]))


@dataclass(frozen=True)
class SyntheticConfig:
    """Validated generator parameters (also written next to the data for provenance)."""

    image_size: int = 112
    n_objects: int = 3
    shapes: tuple[str, ...] = SHAPES
    colors: dict[str, RGB] = field(default_factory=lambda: dict(PALETTE))
    background: RGB = BACKGROUND
    question_kinds: tuple[str, ...] = ("color",)
    templates: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(TEMPLATES))
    object_size: tuple[int, int] | None = None
    min_gap: int = 4
    margin: int = 2
    distinct: bool = True
    max_tries: int = 200

    def __post_init__(self) -> None:
        """Check the parameters can produce questions with a unique answer."""
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"shapes must be distinct names from {SHAPES}, got {self.shapes}")
        if self.n_objects < 1:
            raise ValueError("n_objects must be >= 1")
        for kind in self.question_kinds:
            if kind not in ("color", "shape"):
                raise ValueError(f"unknown question kind {kind!r}; known: color, shape")
            if not self.templates.get(kind):
                raise ValueError(f"no question template for kind {kind!r}")
        n = self.n_objects
        if self.distinct and (n > len(self.shapes) or n > len(self.colors)):
            raise ValueError(
                f"distinct=True needs n_objects <= number of shapes ({len(self.shapes)}) and "
                f"colours ({len(self.colors)}); got n_objects={n} (use distinct=False)"
            )
        if not self.distinct and n > 1:
            if "color" in self.question_kinds and len(self.shapes) < 2:
                raise ValueError("colour questions with several objects need >= 2 shapes")
            if "shape" in self.question_kinds and len(self.colors) < 2:
                raise ValueError("shape questions with several objects need >= 2 colours")
        lo, hi = self.size_range
        if not 1 <= lo <= hi <= self.image_size - 2 * self.margin:
            raise ValueError(f"object_size {(lo, hi)} does not fit a {self.image_size} px image")

    @property
    def size_range(self) -> tuple[int, int]:
        """Object side range in pixels; default scales with the image (18%-26% of its side)."""
        if self.object_size is None:
            return round(0.18 * self.image_size), round(0.26 * self.image_size)
        return int(self.object_size[0]), int(self.object_size[1])


def synthetic_config(**kwargs: Any) -> SyntheticConfig:
    """Build a SyntheticConfig from loose user arguments (names -> palette, int -> range)."""
    colors = kwargs.get("colors")
    if colors is not None and not isinstance(colors, Mapping):
        unknown = [c for c in colors if c not in PALETTE]
        if unknown:
            raise ValueError(
                f"unknown colours {unknown}; give a name->RGB mapping or use {list(PALETTE)}"
            )
        kwargs["colors"] = {c: PALETTE[c] for c in colors}
    elif colors is not None:
        kwargs["colors"] = {k: tuple(int(v) for v in rgb) for k, rgb in colors.items()}
    if kwargs.get("background") is not None:
        kwargs["background"] = tuple(int(v) for v in kwargs["background"])
    size = kwargs.get("object_size")
    if isinstance(size, int):
        kwargs["object_size"] = (size, size)
    elif size is not None:
        kwargs["object_size"] = tuple(size)
    templates = kwargs.get("templates")
    if templates is not None:
        merged = dict(TEMPLATES)
        merged.update({k: (v,) if isinstance(v, str) else tuple(v) for k, v in templates.items()})
        kwargs["templates"] = merged
    for key in ("shapes", "question_kinds"):
        if kwargs.get(key) is not None:
            kwargs[key] = (kwargs[key],) if isinstance(kwargs[key], str) else tuple(kwargs[key])
    return SyntheticConfig(**{k: v for k, v in kwargs.items() if v is not None})


def _attributes(cfg: SyntheticConfig, kind: str, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(shape, colour) per object; object 0 is the queried one and its queried attribute is unique."""
    shapes, colors, n = list(cfg.shapes), list(cfg.colors), cfg.n_objects
    if cfg.distinct:
        s = [shapes[i] for i in rng.permutation(len(shapes))[:n]]
        c = [colors[i] for i in rng.permutation(len(colors))[:n]]
        return list(zip(s, c))
    if kind == "color":  # the queried shape must appear once; colours may repeat
        s0 = shapes[rng.integers(len(shapes))]
        rest = [x for x in shapes if x != s0]
        s = [s0] + [rest[rng.integers(len(rest))] for _ in range(n - 1)]
        c = [colors[rng.integers(len(colors))] for _ in range(n)]
    else:  # the queried colour must appear once; shapes may repeat
        c0 = colors[rng.integers(len(colors))]
        rest = [x for x in colors if x != c0]
        c = [c0] + [rest[rng.integers(len(rest))] for _ in range(n - 1)]
        s = [shapes[rng.integers(len(shapes))] for _ in range(n)]
    return list(zip(s, c))


def _layout(cfg: SyntheticConfig, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Non-overlapping boxes (x0, y0, x1, y1), exclusive ends, at least ``min_gap`` px apart."""
    lo, hi = cfg.size_range
    size, gap, margin = cfg.image_size, cfg.min_gap, cfg.margin
    for _ in range(cfg.max_tries):
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(cfg.n_objects):
            side = int(rng.integers(lo, hi + 1))
            for _ in range(100):
                x0 = int(rng.integers(margin, size - margin - side + 1))
                y0 = int(rng.integers(margin, size - margin - side + 1))
                box = (x0, y0, x0 + side, y0 + side)
                if all(
                    box[0] >= b[2] + gap
                    or b[0] >= box[2] + gap
                    or box[1] >= b[3] + gap
                    or b[1] >= box[3] + gap
                    for b in boxes
                ):
                    boxes.append(box)
                    break
            else:
                break  # this object did not fit: restart the whole layout
        if len(boxes) == cfg.n_objects:
            return boxes
    raise ValueError(
        f"cannot place {cfg.n_objects} objects of {lo}-{hi} px with min_gap={gap} in a "
        f"{size} px image; reduce n_objects, object_size or min_gap"
    )


def _question_type(template: str) -> str:
    """VQA-style question type: the template's words before its first placeholder."""
    return template.split("{", 1)[0].strip().lower()


def draw_objects(
    cfg: SyntheticConfig, placed: Sequence[tuple[str, str, tuple[int, int, int, int]]]
) -> tuple[np.ndarray, list[dict[str, Any]], list[np.ndarray]]:
    """The image [H, W, 3] of ``(shape, colour, box)`` objects drawn in order (boxes with
    exclusive ends), each object's meta, and each one's exact mask."""
    hw = (cfg.image_size, cfg.image_size)
    canvas = np.empty((*hw, 3), dtype=np.uint8)
    canvas[:] = cfg.background
    objects, masks = [], []
    for shape, color, (x0, y0, x1, y1) in placed:
        box = [x0, y0, x1 - 1, y1 - 1]  # inclusive, as PIL draws it
        m = render_mask(shape, box, hw)
        canvas[m] = cfg.colors[color]
        ys, xs = np.nonzero(m)
        objects.append(
            {
                "shape": shape,
                "color": color,
                "rgb": list(cfg.colors[color]),
                "box": box,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                "area": int(m.sum()),
            }
        )
        masks.append(m)
    return canvas, objects, masks


def make_sample(cfg: SyntheticConfig, seed: int, index: int) -> Sample:
    """Draw sample ``index`` of ``seed``: image, question, answer, queried mask, object meta."""
    rng = np.random.default_rng([seed, index])
    kind = cfg.question_kinds[rng.integers(len(cfg.question_kinds))]
    attrs = _attributes(cfg, kind, rng)
    boxes = _layout(cfg, rng)
    order = rng.permutation(cfg.n_objects)  # object 0 (queried) lands at a random list position
    hw = (cfg.image_size, cfg.image_size)
    placed = [(*attrs[k], boxes[pos]) for pos, k in enumerate(order)]
    canvas, objects, masks = draw_objects(cfg, placed)
    queried = int(np.flatnonzero(order == 0)[0])
    queried_mask = masks[queried]
    for pos, obj in enumerate(objects):
        obj["queried"] = pos == queried
    templates = cfg.templates[kind]
    template = templates[rng.integers(len(templates))]
    shape, color = attrs[0]
    image_id = index + 1
    qid = image_id * 10  # VQA v1 convention: question ids are image_id * 10 + k
    return Sample(
        sample_id=str(qid),
        image=Image.fromarray(canvas),
        question=template.format(shape=shape, color=color),
        answer=color if kind == "color" else shape,
        answers=[color if kind == "color" else shape],
        human_map=queried_mask.astype(np.float32),
        mask=queried_mask,
        meta={
            "source": "synthetic",
            "seed": seed,
            "index": index,
            "question_id": qid,
            "image_id": image_id,
            "question_kind": kind,
            "question_type": _question_type(template),
            "answer_type": "other",
            "image_hw": list(hw),
            "background": list(cfg.background),
            "objects": objects,
            "queried": queried,
        },
    )


def generate_synthetic(
    n: int,
    seed: int,
    image_size: int = 112,
    n_objects: int = 3,
    *,
    shapes: Sequence[str] | None = None,
    colors: Sequence[str] | Mapping[str, RGB] | None = None,
    background: RGB | None = None,
    question_kinds: Sequence[str] | None = None,
    templates: Mapping[str, str | Sequence[str]] | None = None,
    object_size: int | tuple[int, int] | None = None,
    min_gap: int | None = None,
    margin: int | None = None,
    distinct: bool | None = None,
) -> list[Sample]:
    """``n`` deterministic synthetic samples for ``seed`` (see the module docstring for knobs)."""
    cfg = synthetic_config(
        image_size=image_size,
        n_objects=n_objects,
        shapes=shapes,
        colors=colors,
        background=background,
        question_kinds=question_kinds,
        templates=templates,
        object_size=object_size,
        min_gap=min_gap,
        margin=margin,
        distinct=distinct,
    )
    return [make_sample(cfg, seed, i) for i in range(n)]
