"""Relational synthetic questions: the answer object is found through an anchor object, with
exact masks of both, kept apart; counting questions: every object of the asked shape counted,
their masks united."""

from __future__ import annotations

import numpy as np
import pytest

from xattr.data.synthetic import object_mask, synthetic_config
from xattr.data.synthetic_counting import NUMBERS, make_counting_sample
from xattr.data.synthetic_relations import (
    NEAREST_MARGIN,
    generate_relational,
    make_composite_sample,
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


def test_counting_questions_count_every_object_of_the_asked_shape():
    samples = generate_relational(45, seed=3, kinds=("count",))
    counts = set()
    for s in samples:
        objects = s.meta["objects"]
        asked = s.question.removeprefix("How many ").removesuffix("s are there?")
        counted = [k for k, o in enumerate(objects) if o["shape"] == asked]
        assert s.meta["counted"] == counted and s.meta["question_kind"] == "count"
        assert s.answer == ("one", "two", "three")[len(counted) - 1]
        assert [o["queried"] for o in objects] == [k in counted for k in range(len(objects))]
        union = np.zeros_like(s.mask)
        for k in counted:
            union |= object_mask(s, k)
        assert np.array_equal(s.mask, union) and s.mask.sum() == sum(
            objects[k]["area"] for k in counted
        )
        pixels = np.asarray(s.load_image())
        for k in counted:  # each counted object in its own colour under the mask
            assert (pixels[object_mask(s, k)] == objects[k]["rgb"]).all()
        assert len({o["color"] for o in objects}) == len(objects)
        counts.add(len(counted))
    assert counts == {1, 2, 3}


def test_counting_needs_a_countable_scene():
    with pytest.raises(ValueError, match="n_objects=4"):
        make_counting_sample(synthetic_config(n_objects=4, distinct=False), 0, 0)
    with pytest.raises(ValueError, match="unknown question kind 'above'; known: .*count"):
        make_composite_sample(synthetic_config(), 0, 0, "above")
    assert NUMBERS == ("one", "two", "three")


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
    assert {"left_color", "next_shape", "count"} <= set(kinds)
    assert len({s.sample_id for s in data}) == 60
    cfg = synthetic_config()
    for i, s in enumerate(data):
        if kinds[i] == "color":  # index i of the plain generator, untouched
            assert s.question == make_sample(cfg, 12345, i).question
        elif kinds[i] == "count":  # the counted objects' union, read back
            union = np.any([object_mask(s.meta, k) for k in s.meta["counted"]], axis=0)
            assert np.array_equal(s.mask, union)
        else:  # the mask read back is the answer object's, not the anchor's
            assert np.array_equal(s.mask, object_mask(s.meta) > 0)
            assert not np.array_equal(s.mask, object_mask(s.meta, s.meta["anchor"]) > 0)
    plain = synthetic_dataset(tmp_path / "syn", n=60, seed=12345)
    assert all(s.meta["question_kind"] == "color" for s in plain)


def test_a_set_written_before_counting_is_rewritten_not_reused(tmp_path):
    """The sidecar records the question kinds mixed in: a set whose record lacks them (written
    before counting existed) is drawn again, so no stale mix is silently read back."""
    import json

    from xattr.data.cached import synthetic_dataset

    synthetic_dataset(tmp_path / "syn", n=20, seed=3, relational=0.5)
    sidecar = tmp_path / "syn" / "synthetic_val_meta.json"
    record = json.loads(sidecar.read_text())
    assert record["generator"]["composite"] == ["left_color", "next_shape", "count"]
    del record["generator"]["composite"]
    sidecar.write_text(json.dumps(record))
    synthetic_dataset(tmp_path / "syn", n=20, seed=3, relational=0.5)
    assert "composite" in json.loads(sidecar.read_text())["generator"]
