"""Synthetic grounding data: determinism, unique answers, exact masks, VQA-HAT round trip."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from xattr.data import (
    Sample,
    SampleError,
    VQAHATDataset,
    generate_synthetic,
    write_synthetic_vqahat,
)
from xattr.data.synthetic import PALETTE, object_mask
from xattr.data.synthetic_vqahat import read_synthetic_meta


def _same(a: Sample, b: Sample) -> bool:
    return (
        a.sample_id == b.sample_id
        and a.question == b.question
        and a.answer == b.answer
        and np.array_equal(np.asarray(a.image), np.asarray(b.image))
        and np.array_equal(a.mask, b.mask)
        and a.meta == b.meta
    )


def test_deterministic_for_a_seed_and_prefix_stable() -> None:
    a = generate_synthetic(6, seed=7, question_kinds=("color", "shape"))
    b = generate_synthetic(6, seed=7, question_kinds=("color", "shape"))
    assert all(_same(x, y) for x, y in zip(a, b))
    short = generate_synthetic(3, seed=7, question_kinds=("color", "shape"))
    assert all(_same(x, y) for x, y in zip(a, short))


def test_different_across_seeds() -> None:
    a = generate_synthetic(4, seed=0)
    b = generate_synthetic(4, seed=1)
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))


@pytest.mark.parametrize("distinct", [True, False])
def test_queried_attribute_is_unique_and_answer_matches(distinct: bool) -> None:
    n_objects = 3 if distinct else 5
    samples = generate_synthetic(
        40,
        seed=3,
        n_objects=n_objects,
        question_kinds=("color", "shape"),
        distinct=distinct,
        object_size=16,
        min_gap=2,
    )
    kinds = {s.meta["question_kind"] for s in samples}
    assert kinds == {"color", "shape"}
    for s in samples:
        objs = s.meta["objects"]
        q = objs[s.meta["queried"]]
        assert q["queried"] and sum(o["queried"] for o in objs) == 1
        if s.meta["question_kind"] == "color":
            assert [o["shape"] for o in objs].count(q["shape"]) == 1
            assert s.question == f"What color is the {q['shape']}?" and s.answer == q["color"]
        else:
            assert [o["color"] for o in objs].count(q["color"]) == 1
            assert s.question == f"What shape is {q['color']}?" and s.answer == q["shape"]
        if distinct:
            assert len({o["shape"] for o in objs}) == len({o["color"] for o in objs}) == len(objs)


def test_mask_covers_exactly_the_queried_object() -> None:
    for s in generate_synthetic(20, seed=5, n_objects=3):
        img = np.asarray(s.image)
        q = s.meta["objects"][s.meta["queried"]]
        assert s.mask.dtype == bool and s.mask.shape == img.shape[:2]
        assert (img[s.mask] == q["rgb"]).all()  # every masked pixel has the object's colour
        assert not (img[~s.mask] == q["rgb"]).all(axis=-1).any()  # and no pixel outside does
        assert s.mask.sum() == q["area"]
        x0, y0, x1, y1 = q["bbox"]
        assert s.mask[y0:y1, x0:x1].sum() == q["area"]
        assert np.array_equal(object_mask(s), s.mask)
        assert np.array_equal(s.human_map, s.mask.astype(np.float32))


def test_objects_do_not_overlap_and_keep_min_gap() -> None:
    gap = 6
    for s in generate_synthetic(20, seed=2, n_objects=3, min_gap=gap):
        boxes = [o["bbox"] for o in s.meta["objects"]]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert (
                    a[0] >= b[2] + gap
                    or b[0] >= a[2] + gap
                    or a[1] >= b[3] + gap
                    or b[1] >= a[3] + gap
                )


def test_parameters_and_their_errors() -> None:
    s = generate_synthetic(
        2,
        seed=0,
        image_size=64,
        n_objects=2,
        shapes=("circle", "square"),
        colors={"pink": (255, 0, 200), "cyan": (0, 220, 220)},
        object_size=(10, 12),
        templates={"color": "Which colour has the {shape}?"},
    )
    assert s[0].image.size == (64, 64) and s[0].question.startswith("Which colour has the ")
    assert s[0].answer in {"pink", "cyan"}
    with pytest.raises(ValueError, match="distinct=True"):
        generate_synthetic(1, seed=0, n_objects=4)
    with pytest.raises(ValueError, match="unknown question kind"):
        generate_synthetic(1, seed=0, question_kinds=("count",))
    with pytest.raises(ValueError, match="cannot place"):
        generate_synthetic(1, seed=0, image_size=40, object_size=18, min_gap=10)


def test_round_trip_through_vqahat_layout(tmp_path) -> None:
    written = write_synthetic_vqahat(tmp_path, 8, seed=11, question_kinds=("color", "shape"))
    assert (tmp_path / "vqahat_val" / f"{written[0].sample_id}_3.png").is_file()
    qs = json.loads((tmp_path / "OpenEnded_mscoco_val2014_questions.json").read_text())
    ann = json.loads((tmp_path / "mscoco_val2014_annotations.json").read_text())
    assert {"question_id", "image_id", "question"} <= set(qs["questions"][0])
    a0 = ann["annotations"][0]
    assert a0["answer_type"] == "other" and len(a0["answers"]) == 10
    assert {"answer", "answer_id", "answer_confidence"} <= set(a0["answers"][0])
    image_id = written[0].meta["image_id"]
    assert (tmp_path / "val2014" / f"COCO_val2014_{image_id:012d}.jpg").is_file()

    ds = VQAHATDataset(tmp_path, mask_threshold=0.5)
    assert len(ds) == 8 and not ds.skipped
    names = list(PALETTE)
    palette = np.array([PALETTE[c] for c in names], dtype=float)
    for w, r in zip(written, ds):
        assert (w.sample_id, w.question, w.answer) == (r.sample_id, r.question, r.answer)
        assert set(r.answers) == {w.answer}
        assert np.array_equal(r.human_map, w.mask.astype(np.float32))  # PNG maps are exact
        assert np.array_equal(r.mask, w.mask)
        # JPEG (q95, 4:4:4) keeps every pixel of the object classifiable by nearest colour.
        q = w.meta["objects"][w.meta["queried"]]
        px = np.asarray(r.image, dtype=float)[r.mask]
        nearest = np.argmin(((px[:, None] - palette[None]) ** 2).sum(-1), axis=1)
        assert (nearest == names.index(q["color"])).all()
    side = json.loads((tmp_path / "synthetic_val_meta.json").read_text())
    assert side["generator"]["seed"] == 11
    r0 = ds[0]
    r0.meta.update(read_synthetic_meta(tmp_path)[r0.sample_id])  # objects, for blurring one
    assert np.array_equal(object_mask(r0), written[0].mask)


def test_map_jitter_makes_annotators_differ(tmp_path) -> None:
    write_synthetic_vqahat(tmp_path, 3, seed=0, map_jitter=3)
    ds = VQAHATDataset(tmp_path, average_maps=False)
    assert len(ds) == 9 and ds.sample_ids[:3] == ["10_1", "10_2", "10_3"]
    maps = [ds[i].human_map for i in range(3)]
    assert not (np.array_equal(maps[0], maps[1]) and np.array_equal(maps[0], maps[2]))


def test_sample_validation_and_error_pickles() -> None:
    img = generate_synthetic(1, seed=0)[0].image
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Sample("x", img, "q?", human_map=np.full((4, 4), 2.0))
    s = Sample(7, img, "q?", human_map=np.ones((4, 4)), mask=np.ones((4, 4), dtype=np.uint8))
    assert s.sample_id == "7" and s.human_map.dtype == np.float32 and s.mask.dtype == bool
    assert s.human_map_at().shape == s.mask_at().shape == s.image_hw == (112, 112)
    err = pickle.loads(pickle.dumps(SampleError("42", "image not found: /x.jpg")))
    assert (err.sample_id, err.reason) == ("42", "image not found: /x.jpg")
    assert str(err) == "sample 42: image not found: /x.jpg"


def test_rewriting_removes_stale_maps(tmp_path) -> None:
    write_synthetic_vqahat(tmp_path, 4, seed=0, n_maps=4)
    (tmp_path / "notes.txt").write_text("kept")
    write_synthetic_vqahat(tmp_path, 2, seed=0, n_maps=3)
    ds = VQAHATDataset(tmp_path)
    assert len(ds) == 2 and not ds.skipped
    assert len(list((tmp_path / "vqahat_val").iterdir())) == 6
    assert len(list((tmp_path / "val2014").iterdir())) == 2
    assert (tmp_path / "notes.txt").is_file()


def test_cached_synthetic_set_is_reused_when_the_parameters_match(tmp_path, monkeypatch) -> None:
    """Colour names match their recorded RGB (no rewrite); a changed writer option rewrites."""
    from xattr.data import cached

    writes = []
    original = cached.write_synthetic_vqahat
    monkeypatch.setattr(
        cached, "write_synthetic_vqahat", lambda *a, **k: writes.append(k) or original(*a, **k)
    )
    root = tmp_path / "syn"
    first = cached.synthetic_dataset(root, n=4, seed=3, colors=["red", "blue", "green"])
    again = cached.synthetic_dataset(root, n=4, seed=3, colors=["red", "blue", "green"])
    assert len(writes) == 1 and len(first) == len(again) == 4
    cached.synthetic_dataset(root, n=4, seed=3, colors=["red", "blue", "green"], n_maps=2)
    assert len(writes) == 2  # a writer option changed: rewritten
    cached.synthetic_dataset(root, n=4, seed=4, colors=["red", "blue", "green"], n_maps=2)
    assert len(writes) == 3  # the seed changed


def test_cached_synthetic_samples_carry_their_objects(tmp_path) -> None:
    """Read back from disk, each sample knows its objects: the queried one's mask is the reference."""
    from xattr.data.cached import synthetic_dataset

    data = synthetic_dataset(tmp_path / "syn", n=3, seed=5)
    for sample in data:
        assert len(sample.meta["objects"]) == 3
        assert np.array_equal(object_mask(sample), sample.mask)
