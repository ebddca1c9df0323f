"""The test-time DataModule: one Sample per step, broken samples passed through as values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from xattr.data import JsonlDataset, Sample, SampleError, XattrDataModule


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.new("RGB", (8, 8), (0, 0, 200)).save(tmp_path / "a.png")
    lines = [
        {"id": "a", "image": "a.png", "question": "One?"},
        {"id": "b", "image": "a.png", "question": "Two?"},
        {"id": "gone", "image": "missing.png", "question": "Where?"},
        {"id": "c", "image": "a.png", "question": "Three?"},
    ]
    (tmp_path / "questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return tmp_path


def test_datamodule_yields_samples_and_errors(folder: Path) -> None:
    items = list(XattrDataModule(JsonlDataset(folder)).test_dataloader())
    assert [type(x) for x in items] == [Sample, Sample, SampleError, Sample]
    assert items[2].sample_id == "gone" and "image not found" in items[2].reason
    assert len(list(XattrDataModule(JsonlDataset(folder), limit=2).test_dataloader())) == 2


def test_datamodule_instantiates_a_hydra_config(folder: Path) -> None:
    cfg = {"_target_": "xattr.data.jsonl.JsonlDataset", "root": str(folder), "limit": 1}
    (only,) = list(XattrDataModule(cfg).test_dataloader())
    assert isinstance(only, Sample) and only.sample_id == "a"
