"""Samples of several images: the JSONL folder format, the two-image synthetic set, and how the
evaluation scores a map over several images (one strip, and which image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xattr
from xattr.data import JsonlDataset, Sample
from xattr.data.cached import synthetic_pairs_dataset
from xattr.data.synthetic import object_mask
from xattr.data.synthetic_pairs import generate_synthetic_pairs
from xattr.explanation import Explanation
from xattr.layout import Grid
from xattr.pipeline.evaluator import SampleEvaluator


def test_jsonl_reads_several_images_and_per_image_masks(tmp_path: Path):
    Image.new("RGB", (20, 10), (200, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(tmp_path / "b.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 2:5] = 255
    Image.fromarray(mask).save(tmp_path / "b_mask.png")
    lines = [
        {"id": "two", "images": ["a.png", "b.png"], "question": "Which is blue?",
         "mask": [None, "b_mask.png"], "answer": "the second"},
        {"id": "both", "image": "a.png", "images": ["a.png"], "question": "?"},
        {"id": "empty", "images": [], "question": "?"},
        {"id": "short", "images": ["a.png", "b.png"], "question": "?", "mask": ["b_mask.png"]},
        {"id": "listed", "image": "a.png", "question": "?", "mask": ["b_mask.png"]},
        {"id": "gone", "images": ["a.png", "missing.png"], "question": "?"},
    ]  # fmt: skip
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ds = JsonlDataset(tmp_path)
    assert ds.sample_ids == ["two", "gone"]
    reasons = dict(ds.skipped)
    assert "one of 'image'" in reasons["line 2"] and "non-empty list" in reasons["line 3"]
    assert "list of 2 paths or nulls" in reasons["line 4"]
    assert "is a list but the line has one image" in reasons["line 5"]
    s = ds[0]
    assert s.num_images == 2 and [im.size for im in s.load_images()] == [(20, 10), (8, 8)]
    assert s.mask[0] is None and s.mask[1].sum() == 6
    assert s.mask_at((16, 16), image=1).sum() == 24 and s.mask_at(image=0) is None
    with pytest.raises(xattr.data.SampleError, match="2 images; use load_images"):
        s.load_image()
    with pytest.raises(xattr.data.SampleError, match="missing.png"):
        ds[1]


def test_pairs_put_the_queried_object_in_exactly_one_image():
    samples = generate_synthetic_pairs(24, seed=3)
    assert [s.question for s in samples] == [s.question for s in generate_synthetic_pairs(24, 3)]
    firsts = set()
    for s in samples:
        k = s.meta["answer_image"]
        firsts.add(k)
        assert s.mask[1 - k] is None and s.mask[k].any()
        asked = "shape" if s.meta["question_kind"] == "color" else "color"
        target = s.meta["images"][k][s.meta["queried"]]
        assert target["queried"] and s.answer == target[s.meta["question_kind"]]
        # the asked-about attribute is nowhere in the distractor image
        assert all(o[asked] != target[asked] for o in s.meta["images"][1 - k])
        # the mask is the object's pixels, drawn in its colour
        np.testing.assert_array_equal(
            s.mask[k], object_mask({**s.meta, "objects": s.meta["images"][k]})
        )
        pixels = np.asarray(s.load_images()[k])[s.mask[k]]
        assert (pixels == target["rgb"]).all()
    assert firsts == {0, 1}


def test_pairs_dataset_round_trips_through_jsonl(tmp_path: Path):
    ds = synthetic_pairs_dataset(tmp_path / "pairs", n=6, seed=5)
    made = generate_synthetic_pairs(6, 5)
    assert len(ds) == 6
    for got, want in zip((ds[i] for i in range(6)), made, strict=True):
        assert got.question == want.question and got.answer == want.answer
        for a, b in zip(got.load_images(), want.load_images(), strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))  # PNG: lossless
        for a, b in zip(got.mask, want.mask, strict=True):
            assert (a is None and b is None) or np.array_equal(a, b)
    stamp = (tmp_path / "pairs" / "questions.jsonl").stat().st_mtime_ns
    synthetic_pairs_dataset(tmp_path / "pairs", n=6, seed=5)  # same parameters: reused
    assert (tmp_path / "pairs" / "questions.jsonl").stat().st_mtime_ns == stamp
    assert len(synthetic_pairs_dataset(tmp_path / "pairs", n=4, seed=5)) == 4  # rewritten


def _two_image_explanation(peak_image: int) -> Explanation:
    """2 x 2 maps over two images, a single peak at the top-left cell of ``peak_image``."""
    maps = [torch.full((2, 2), 0.1), torch.full((2, 2), 0.1)]
    maps[peak_image][0, 0] = 1.0
    return Explanation("m", maps[0], [], torch.zeros(0), more_maps=[maps[1]],
                       grids=[Grid(2, 2, image=0), Grid(2, 2, image=1)])  # fmt: skip


@pytest.mark.parametrize("peak_image, hit", [(1, 1.0), (0, 0.0)])
def test_several_images_are_scored_as_one_strip(peak_image, hit):
    """The object is in the top-left quarter of image 1 (of two 8 x 8 images): a map peaking
    there scores a pointing-game hit and an image hit; one peaking at the same spot of
    image 0 misses both."""
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    sample = Sample("s", [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))], "q?",
                    mask=[None, mask])  # fmt: skip
    metrics = {"pointing_game": xattr.metrics.get("pointing_game", tolerance=0)}
    evaluator = SampleEvaluator(adapter=None, methods={}, map_metrics=metrics)  # type: ignore[arg-type]
    scores = evaluator._map_scores(_two_image_explanation(peak_image), sample)
    assert scores == {"pointing_game": hit, "image_hit": hit}


def test_strip_keeps_each_image_aspect():
    """A 16 x 8 (W x H) image beside an 8 x 8 one: the strip is 8 high and 24 wide, and an NSS
    of the map over it equals NSS computed by hand on that strip."""
    sample = Sample("s", [Image.new("RGB", (16, 8)), Image.new("RGB", (8, 8))], "q?",
                    human_map=[np.ones((8, 16), np.float32), None])  # fmt: skip
    expl = _two_image_explanation(1)
    metrics = {"nss": xattr.metrics.get("nss")}
    score = SampleEvaluator(adapter=None, methods={}, map_metrics=metrics)._map_scores(expl, sample)  # type: ignore[arg-type]
    strip = np.concatenate(
        [expl.visual_pixels((8, 16), image=0).numpy(), expl.visual_pixels((8, 8), image=1).numpy()],
        axis=1,
    )
    z = (strip - strip.mean()) / strip.std()
    expected = float(z[:, :16].mean())  # the human map covers image 0 uniformly
    assert score["nss"] == pytest.approx(expected, rel=1e-5)
    assert "image_hit" not in score  # no mask: which image holds the object is not known
