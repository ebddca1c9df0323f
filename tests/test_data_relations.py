"""Relational synthetic questions: the answer object is found through an anchor object, with
exact masks of both, kept apart."""

from __future__ import annotations

import numpy as np
import pytest

from xattr.data.synthetic import object_mask, synthetic_config
from xattr.data.synthetic_relations import (
    NEAREST_MARGIN,
    generate_relational,
    make_relational_sample,
)


def _centre(box: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = box  # inclusive
    return np.array([(x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2])


def test_each_question_has_one_answer_through_its_anchor():
    samples = generate_relational(40, seed=11)
    assert {s.meta["question_kind"] for s in samples} == {"left_color", "next_shape"}
    for s in samples:
        objects, anchor, target = s.meta["objects"], s.meta["anchor"], s.meta["queried"]
        a = objects[anchor]
        assert anchor != target and objects[target]["queried"] and a["anchor"]
        if s.meta["question_kind"] == "left_color":
            assert s.question == f"What color is the shape left of the {a['shape']}?"
            left = [k for k, o in enumerate(objects) if o["box"][2] < a["box"][0]]
            assert left == [target] and s.answer == objects[target]["color"]
        else:
            assert s.question == f"What shape is next to the {a['color']} one?"
            dist = sorted(
                (float(np.linalg.norm(_centre(o["box"]) - _centre(a["box"]))), k)
                for k, o in enumerate(objects) if k != anchor
            )  # fmt: skip
            assert dist[0][1] == target and dist[0][0] <= NEAREST_MARGIN * dist[1][0]
            assert s.answer == objects[target]["shape"]
        # the anchor's attribute names one object only (distinct shapes and colours)
        key = "shape" if s.meta["question_kind"] == "left_color" else "color"
        assert sum(o[key] == a[key] for o in objects) == 1
        # exact, separate masks: the answer's in its colour, the anchor's re-rendered
        pixels = np.asarray(s.load_image())
        assert (pixels[s.mask] == objects[target]["rgb"]).all()
        anchor_mask = object_mask(s, anchor)
        assert (pixels[anchor_mask] == a["rgb"]).all() and not (anchor_mask & s.mask).any()


def test_sample_i_depends_only_on_seed_and_index():
    many, few = generate_relational(12, seed=4), generate_relational(5, seed=4)
    for a, b in zip(many, few):
        assert a.question == b.question
        assert np.array_equal(np.asarray(a.load_image()), np.asarray(b.load_image()))
    assert [s.question for s in generate_relational(5, seed=5)] != [s.question for s in few]


def test_bad_relations_are_named():
    cfg = synthetic_config()
    with pytest.raises(ValueError, match="unknown relation 'above'"):
        make_relational_sample(cfg, 0, 0, "above")
    with pytest.raises(ValueError, match="distinct=True"):
        make_relational_sample(synthetic_config(distinct=False), 0, 0, "left_color")


def test_default_set_mixes_relational_questions_with_unique_ids(tmp_path):
    """`relational=0.3`: about 30% relational samples, the rest today's, every id unique; the
    share is recorded, so changing it rewrites the set instead of reusing it."""
    from xattr.data.cached import synthetic_dataset
    from xattr.data.synthetic import make_sample

    data = synthetic_dataset(tmp_path / "syn", n=60, seed=12345, relational=0.3)
    sidecar = tmp_path / "syn" / "synthetic_val_meta.json"
    written = sidecar.stat().st_mtime_ns
    synthetic_dataset(tmp_path / "syn", n=60, seed=12345, relational=0.3)
    assert sidecar.stat().st_mtime_ns == written  # read back, not rewritten
    kinds = [s.meta["question_kind"] for s in data]
    assert 0.15 <= np.mean([k != "color" for k in kinds]) <= 0.45
    assert len({s.sample_id for s in data}) == 60
    cfg = synthetic_config()
    for i, s in enumerate(data):
        if kinds[i] == "color":  # index i of the plain generator, untouched
            assert s.question == make_sample(cfg, 12345, i).question
        else:  # the mask read back is the answer object's, not the anchor's
            assert np.array_equal(s.mask, object_mask(s.meta) > 0)
            assert not np.array_equal(s.mask, object_mask(s.meta, s.meta["anchor"]) > 0)
    plain = synthetic_dataset(tmp_path / "syn", n=60, seed=12345)
    assert all(s.meta["question_kind"] == "color" for s in plain)
