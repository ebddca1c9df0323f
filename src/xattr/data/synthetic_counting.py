"""Seeded counting questions: "How many circles are there?", every object of one shape found.

The image holds ``n_objects`` shapes of distinct colours; the asked shape appears ``c`` times,
``c`` drawn uniformly from 1..``n_objects`` (the other objects take the other shapes, drawn
with replacement). The answer is the count's word (`NUMBERS`); ``mask`` is the union of the
counted objects' exact masks, since the answer is about all of them; ``meta["counted"]``
lists their indices in ``meta["objects"]`` and ``meta["queried"]`` is the first of them
(`synthetic.object_mask(sample, k)` re-renders each one apart). Sample ``i`` of seed ``s``
depends only on ``(s, i)``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from xattr.data.sample import Sample
from xattr.data.synthetic import SyntheticConfig, _layout, _question_type, draw_objects

COUNT_QUESTION = "How many {shape}s are there?"  # the vocabulary's shapes pluralise with -s
NUMBERS: tuple[str, ...] = ("one", "two", "three")  # the answer words, count 1..3
COUNT_STREAM = 5  # the counting draws: their own stream of the sample's seed


def make_counting_sample(cfg: SyntheticConfig, seed: int, index: int) -> Sample:
    """Sample ``index`` of ``seed``: a counting question, its answer word, the counted objects'
    mask (their union) and their indices."""
    n = cfg.n_objects
    if not 1 <= n <= len(NUMBERS) or len(cfg.shapes) < 2 or n > len(cfg.colors):
        raise ValueError(
            f"counting questions need 1..{len(NUMBERS)} objects, >= 2 shapes and a colour per "
            f"object; got n_objects={n}, {len(cfg.shapes)} shapes, {len(cfg.colors)} colours"
        )
    rng = np.random.default_rng([seed, index, COUNT_STREAM])
    shapes, colors = list(cfg.shapes), list(cfg.colors)
    asked = shapes[rng.integers(len(shapes))]
    count = int(rng.integers(1, n + 1))
    rest = [s for s in shapes if s != asked]
    drawn = [asked] * count + [rest[rng.integers(len(rest))] for _ in range(n - count)]
    order = rng.permutation(n)  # the counted objects land at random list positions
    drawn = [drawn[k] for k in order]
    palette = [colors[k] for k in rng.permutation(len(colors))[:n]]
    boxes = _layout(cfg, rng)
    canvas, objects, masks = draw_objects(cfg, list(zip(drawn, palette, boxes)))
    counted = [k for k, s in enumerate(drawn) if s == asked]
    for k, obj in enumerate(objects):
        obj["queried"] = k in counted
    mask = np.any([masks[k] for k in counted], axis=0)
    answer = NUMBERS[count - 1]
    qid = (index + 1) * 10
    return Sample(
        sample_id=str(qid),
        image=Image.fromarray(canvas),
        question=COUNT_QUESTION.format(shape=asked),
        answer=answer,
        answers=[answer],
        human_map=mask.astype(np.float32),
        mask=mask,
        meta={
            "source": "synthetic_counting", "seed": seed, "index": index, "question_id": qid,
            "image_id": index + 1, "question_kind": "count",
            "question_type": _question_type(COUNT_QUESTION), "answer_type": "number",
            "image_hw": [cfg.image_size, cfg.image_size], "background": list(cfg.background),
            "objects": objects, "queried": counted[0], "counted": counted,
        },
    )  # fmt: skip
