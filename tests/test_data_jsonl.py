"""JSONL folder dataset: records, optional maps and masks, error policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xattr.data import JsonlDataset, SampleError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 10), (200, 0, 0)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.full((5, 6), 128, dtype=np.uint8)).save(tmp_path / "a_map.png")
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[2:4, 3:7] = 7
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    lines = [
        {
            "id": "a",
            "image": "img/a.png",
            "question": "What?",
            "answer": "red",
            "human_map": "a_map.png",
            "mask": "a_mask.png",
            "source_split": "demo",
        },
        {"id": 2, "image": "img/a.png", "question": "Plain?"},
        {"id": "gone", "image": "img/missing.png", "question": "Where?"},
        {"id": "badmap", "image": "img/a.png", "question": "Map?", "human_map": "nope.png"},
        {"id": "a", "image": "img/a.png", "question": "Duplicate?"},
        {"image": "img/a.png", "question": "No id?"},
        {"id": "blank", "image": "img/a.png", "question": "  "},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n\n"
    (tmp_path / "questions.jsonl").write_text(text)
    return tmp_path


def test_reads_records_and_optional_maps(folder: Path) -> None:
    ds = JsonlDataset(folder)
    assert ds.sample_ids == ["a", "2", "gone", "badmap"]
    s = ds[0]
    assert (s.question, s.answer, s.answers) == ("What?", "red", ["red"])
    assert s.image.size == (20, 10)
    assert s.human_map.shape == (5, 6) and np.allclose(s.human_map, 128 / 255)  # own resolution
    assert s.mask.dtype == bool and s.mask.sum() == 8 and s.mask[2, 3]
    assert s.meta["source_split"] == "demo" and s.meta["human_map_hw"] == [5, 6]
    assert s.human_map_at().shape == (10, 20)
    plain = ds[1]
    assert plain.sample_id == "2" and plain.answer is None and plain.human_map is None


def test_error_policy(folder: Path) -> None:
    ds = JsonlDataset(folder)
    assert ds.skipped[:3] == [
        ("a (line 5)", "duplicate id 'a' (first on line 1)"),
        ("line 6", "missing required key(s) ['id']"),
        ("line 7", "empty value(s) for ['question']"),  # the key is there, its text is blank
    ]
    assert ds.skipped[3][0] == "line 8" and ds.skipped[3][1].startswith("invalid JSON")
    assert len(ds.skipped) == 4
    with pytest.raises(SampleError, match="image not found"):
        ds[2]
    with pytest.raises(SampleError, match="human_map not found"):
        ds[3]
    assert len(JsonlDataset(folder, limit=1)) == 1


def test_missing_root_and_file(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        JsonlDataset(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="other.jsonl"):
        JsonlDataset(folder, questions="other.jsonl")
