"""Seeded relational questions: one object found first (the anchor), another read (the answer).

"What color is the shape left of the circle?" is answered by finding the circle, then the one
object left of it, then reading that object's colour; "What shape is next to the red one?"
by finding the red object, then its nearest neighbour. Neither can be answered by looking for
one word's object, so a model must route from the anchor to the target. Layouts are drawn
(`synthetic._layout`, distinct shapes and colours) until the relation has exactly one answer:
exactly one object lies wholly left of the anchor's box, or the anchor's nearest object (by
centre distance) is nearer than `NEAREST_MARGIN` times the next one. ``mask`` is the answer
object's exact mask; ``meta["anchor"]`` indexes the anchor in ``meta["objects"]``
(`synthetic.object_mask(sample, meta["anchor"])` re-renders its mask, kept apart), and
``meta["queried"]`` the answer object. Sample ``i`` of seed ``s`` depends only on ``(s, i)``.

`COMPOSITE` adds counting ("How many circles are there?", `xattr.data.synthetic_counting`) to
the relations: the questions that need more than one object found, which `with_relations`
mixes into today's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from xattr.data.sample import Sample
from xattr.data.synthetic import (
    SyntheticConfig,
    _attributes,
    _layout,
    _question_type,
    draw_objects,
    make_sample,
    synthetic_config,
)
from xattr.data.synthetic_counting import COUNT_QUESTION, make_counting_sample

RELATIONS: dict[str, str] = {
    "left_color": "What color is the shape left of the {shape}?",  # answer: a colour
    "next_shape": "What shape is next to the {color} one?",  # answer: a shape
}
# Every question that needs more than one object found: the relations and counting.
COMPOSITE: dict[str, str] = {**RELATIONS, "count": COUNT_QUESTION}
NEAREST_MARGIN = (
    0.75  # "next to": the nearest object at most this fraction of the next one's distance
)
RELATION_STREAM = 3  # the relational draws: their own stream of the sample's seed


def relation_target(kind: str, boxes: list[tuple[int, int, int, int]], anchor: int) -> int | None:
    """The one object the relation picks from ``anchor`` (boxes with exclusive ends), or None
    when it has no single answer."""
    ax0, ay0, ax1, ay1 = boxes[anchor]
    others = [k for k in range(len(boxes)) if k != anchor]
    if kind == "left_color":
        left = [k for k in others if boxes[k][2] <= ax0]
        return left[0] if len(left) == 1 else None
    centre = np.array([(ax0 + ax1) / 2, (ay0 + ay1) / 2])
    dist = {k: float(np.linalg.norm(np.array([(boxes[k][0] + boxes[k][2]) / 2,
                                                (boxes[k][1] + boxes[k][3]) / 2]) - centre))
            for k in others}  # fmt: skip
    ranked = sorted(others, key=dist.__getitem__)
    if len(ranked) > 1 and dist[ranked[0]] > NEAREST_MARGIN * dist[ranked[1]]:
        return None
    return ranked[0]


def make_relational_sample(cfg: SyntheticConfig, seed: int, index: int, kind: str) -> Sample:
    """Sample ``index`` of ``seed`` for relation ``kind`` (`RELATIONS`): image, question, the
    answer object's mask, the anchor's index in the objects' meta."""
    if kind not in RELATIONS:
        raise ValueError(f"unknown relation {kind!r}; known: {', '.join(RELATIONS)}")
    if not cfg.distinct or cfg.n_objects < 2:
        raise ValueError("relational questions need distinct=True and at least 2 objects")
    rng = np.random.default_rng([seed, index, RELATION_STREAM])
    for _ in range(cfg.max_tries):
        attrs = _attributes(cfg, "color", rng)  # distinct shapes and colours
        boxes = _layout(cfg, rng)
        anchor = int(rng.integers(cfg.n_objects))
        target = relation_target(kind, boxes, anchor)
        if target is not None:
            break
    else:
        raise ValueError(
            f"no layout of {cfg.n_objects} objects gave {kind!r} a single answer in "
            f"{cfg.max_tries} tries"
        )
    canvas, objects, masks = draw_objects(cfg, [(*attrs[k], boxes[k]) for k in range(len(boxes))])
    for k, obj in enumerate(objects):
        obj["queried"] = k == target
        obj["anchor"] = k == anchor
    shape, color = attrs[anchor]
    template = RELATIONS[kind]
    answer = attrs[target][1] if kind == "left_color" else attrs[target][0]
    qid = (index + 1) * 10
    return Sample(
        sample_id=str(qid),
        image=Image.fromarray(canvas),
        question=template.format(shape=shape, color=color),
        answer=answer,
        answers=[answer],
        human_map=masks[target].astype(np.float32),
        mask=masks[target],
        meta={
            "source": "synthetic_relations", "seed": seed, "index": index, "question_id": qid,
            "image_id": index + 1, "question_kind": kind, "question_type": _question_type(template),
            "answer_type": "other", "image_hw": [cfg.image_size, cfg.image_size],
            "background": list(cfg.background), "objects": objects, "queried": target,
            "anchor": anchor,
        },
    )  # fmt: skip


def make_composite_sample(cfg: SyntheticConfig, seed: int, index: int, kind: str) -> Sample:
    """Sample ``index`` of ``seed`` for question kind ``kind`` (`COMPOSITE`)."""
    if kind == "count":
        return make_counting_sample(cfg, seed, index)
    if kind not in COMPOSITE:
        raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(COMPOSITE)}")
    return make_relational_sample(cfg, seed, index, kind)


def with_relations(cfg: SyntheticConfig, n: int, seed: int, share: float) -> list[Sample]:
    """Samples ``0..n-1`` of ``seed``: each a composite question (`COMPOSITE`, kind drawn
    uniformly) with probability ``share``, else today's `synthetic.make_sample`; one sample
    per index, so ids stay unique."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"relational share must lie in [0, 1], got {share}")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, RELATION_STREAM, 1])
        if share and rng.random() < share:
            kind = tuple(COMPOSITE)[int(rng.integers(len(COMPOSITE)))]
            out.append(make_composite_sample(cfg, seed, i, kind))
        else:
            out.append(make_sample(cfg, seed, i))
    return out


def generate_relational(
    n: int, seed: int, kinds: tuple[str, ...] = tuple(RELATIONS), **generator: Any
) -> list[Sample]:
    """``n`` deterministic samples, the kind of each drawn from ``kinds`` (`COMPOSITE`: the
    relations, "count"; ``generator``: `synthetic.generate_synthetic`'s knobs)."""
    cfg = synthetic_config(**generator)
    out = []
    for i in range(n):
        kind = kinds[int(np.random.default_rng([seed, i, RELATION_STREAM, 0]).integers(len(kinds)))]
        out.append(make_composite_sample(cfg, seed, i, kind))
    return out
