"""Video samples: the moving-object set, JSONL lines with a video (a file or frames), and the
per-frame scoring of a video map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import xattr
from support.video import write_mp4
from xattr.data import JsonlDataset, Sample, SampleError
from xattr.data.cached import synthetic_video_dataset
from xattr.data.synthetic_video import generate_synthetic_videos
from xattr.explanation import Explanation
from xattr.layout import Grid
from xattr.pipeline.evaluator import SampleEvaluator


def test_the_mover_moves_and_its_masks_are_exact():
    samples = generate_synthetic_videos(12, seed=4, frames=6)
    assert [s.answer for s in samples] == [s.answer for s in generate_synthetic_videos(12, 4, 6)]
    for s in samples:
        frames = [np.asarray(f) for f in s.load_images()]
        assert len(frames) == 6 == len(s.mask)
        mover = s.meta["objects"][s.meta["queried"]]
        assert s.answer == mover["color"]
        for f, m in zip(frames, s.mask, strict=True):
            assert (f[m] == mover["rgb"]).all()  # drawn on top: every mask pixel its colour
        centres = [np.argwhere(m).mean(axis=0) for m in s.mask]
        side = mover["box"][2] - mover["box"][0] + 1
        assert np.abs(centres[-1] - centres[0]).max() >= side - 1  # it moved its own size
        changed = np.any(frames[0] != frames[-1], axis=-1)
        assert not (changed & ~(s.mask[0] | s.mask[-1])).any()  # nothing else moved


def test_jsonl_reads_a_video_file_or_its_frames(tmp_path: Path):
    rgb = np.zeros((4, 32, 32, 3), np.uint8)
    rgb[:, :, :8] = 200
    write_mp4(tmp_path / "clip.mp4", list(rgb), rate=4)
    lines = [
        {"id": "file", "video": "clip.mp4", "fps": 2, "question": "q?"},
        {"id": "gone", "video": "missing.mp4", "question": "q?"},
        {"id": "bad", "video": [], "question": "q?"},
        {"id": "two", "video": "clip.mp4", "image": "x.png", "question": "q?"},
    ]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ds = JsonlDataset(tmp_path)
    assert ds.sample_ids == ["file", "gone"]
    assert "file path or a non-empty list" in dict(ds.skipped)["line 3"]
    s = ds[0]
    assert s.is_video and s.num_images == 2  # 4 frames at 4 fps, sampled at 2
    assert s.image.timestamps() == pytest.approx([0.0, 0.5])
    with pytest.raises(SampleError, match="video not found"):
        ds[1]


def test_video_dataset_round_trips_its_frames(tmp_path: Path):
    ds = synthetic_video_dataset(tmp_path / "v", n=3, seed=2, frames=4)
    made = generate_synthetic_videos(3, 2, 4)
    for i, want in enumerate(made):
        got = ds[i]
        assert got.is_video and got.answer == want.answer and got.question == want.question
        for a, b in zip(got.load_images(), want.load_images(), strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(got.mask, want.mask, strict=True):
            assert np.array_equal(a, b)
        assert got.image.timestamps() == pytest.approx(want.image.timestamps())


def test_a_video_map_is_scored_frame_by_frame():
    """Four 8 x 8 frames in two pairs; the object is in frames 3-4's top-left quarter. A map
    peaking there (pair 2) hits; one peaking at the same spot of pair 1 misses."""
    masks = [np.zeros((8, 8), bool) for _ in range(4)]
    for m in masks[2:]:
        m[:4, :4] = True
    video = xattr.Video([np.zeros((8, 8, 3), np.uint8)] * 4)
    sample = Sample("v", video, "q?", mask=masks)
    metrics = {"pointing_game": xattr.metrics.get("pointing_game", tolerance=0)}
    evaluator = SampleEvaluator(adapter=None, methods={}, map_metrics=metrics)  # type: ignore[arg-type]
    grids = [Grid(2, 2, image=0, frames=(0, 2)), Grid(2, 2, image=1, frames=(2, 4))]
    for peak, hit in ((1, 1.0), (0, 0.0)):
        maps = [torch.full((2, 2), 0.1), torch.full((2, 2), 0.1)]
        maps[peak][0, 0] = 1.0
        expl = Explanation("m", maps[0], [], torch.zeros(0), more_maps=[maps[1]], grids=grids)
        assert evaluator._map_scores(expl, sample) == {"pointing_game": hit}


def test_video_sample_with_the_wrong_number_of_masks_is_named():
    video = xattr.Video([np.zeros((8, 8, 3), np.uint8)] * 3)
    sample = Sample("v", video, "q?", mask=[np.zeros((8, 8), bool)] * 2)
    with pytest.raises(SampleError, match="3 images or frames but 2 masks"):
        sample.load_images()
