"""VQA-HAT loader on a small hand-made folder with the real dataset's quirks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xattr.data import SampleError, VQAHATDataset

IMAGE_HW = (16, 24)


def _map(path: Path, value: float, hw: tuple[int, int]) -> None:
    Image.fromarray(np.full(hw, round(value * 255), dtype=np.uint8)).save(path)


def make_fake_vqahat(root: Path) -> Path:
    """Questions 1..7 each exercising one rule (see the comments)."""
    maps, images = root / "vqahat_val", root / "val2014"
    maps.mkdir(parents=True)
    images.mkdir()
    spec = {  # qid: (answer_type, map sizes)
        1: ("other", [(8, 8)] * 3),  # kept
        2: ("yes/no", [(8, 8)] * 3),  # filtered: answer type
        3: ("other", [(8, 8)] * 2),  # filtered: too few maps
        4: ("other", [(10, 10), (20, 15), (7, 9)]),  # kept: maps of different sizes
        5: ("other", [(8, 8)] * 3),  # kept, but map 2 is a corrupt PNG
        6: ("number", [(8, 8)] * 3),  # filtered: answer type
        7: ("other", [(8, 8)] * 3),  # kept, but its image is missing
    }
    questions, annotations = [], []
    for qid, (atype, sizes) in spec.items():
        for n, hw in enumerate(sizes, start=1):
            _map(maps / f"{qid}_{n}.png", 0.2 * n, hw)
        image_id = 100 + qid
        if qid != 7:
            Image.new("RGB", IMAGE_HW[::-1], (10, 20, 30)).save(
                images / f"COCO_val2014_{image_id:012d}.jpg"
            )
        questions.append({"question_id": qid, "image_id": image_id, "question": f"Q{qid}?"})
        answers = [
            {"answer": f"a{qid}", "answer_id": i, "answer_confidence": "yes"} for i in (1, 2)
        ]
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "answer_type": atype,
                "multiple_choice_answer": f"a{qid}",
                "answers": answers,
            }
        )
    (maps / "5_2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for n in (1, 2, 3):
        _map(maps / f"99_{n}.png", 0.5, (8, 8))  # qid 99 has no question
    _map(maps / "oops.png", 0.5, (8, 8))  # not <qid>_<n>.png
    (maps / ".DS_Store").write_bytes(b"")  # ignored silently
    (root / "OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"questions": questions})
    )
    (root / "mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return make_fake_vqahat(tmp_path)


def test_protocol_filters_and_skips(fake: Path) -> None:
    ds = VQAHATDataset(fake)
    assert ds.sample_ids == ["1", "4", "5", "7"]
    assert ds.filtered == {"answer_type=yes/no": 1, "answer_type=number": 1, "fewer than 3 maps": 1}
    reasons = dict(ds.skipped)
    assert set(reasons) == {"99", "oops.png"}
    assert "no question with id 99" in reasons["99"]
    assert "<qid>_<n>.png" in reasons["oops.png"]
    assert "4 samples" in ds.summary()


def test_filter_options(fake: Path) -> None:
    assert VQAHATDataset(fake, open_ended_only=False).sample_ids == ["1", "2", "4", "5", "6", "7"]
    assert VQAHATDataset(fake, answer_types=("other", "number")).sample_ids == [
        "1",
        "4",
        "5",
        "6",
        "7",
    ]
    assert VQAHATDataset(fake, min_maps=2).sample_ids == ["1", "3", "4", "5", "7"]
    assert VQAHATDataset(fake, limit=2).sample_ids == ["1", "4"]


def test_sample_contents_and_map_averaging(fake: Path) -> None:
    ds = VQAHATDataset(fake)
    s = ds[0]
    assert (s.question, s.answer, s.answers) == ("Q1?", "a1", ["a1", "a1"])
    assert s.image.size == IMAGE_HW[::-1]
    assert s.human_map.shape == IMAGE_HW  # averaged at the image's resolution
    np.testing.assert_allclose(s.human_map, 0.4, atol=1 / 255)  # mean of 0.2, 0.4, 0.6
    s4 = ds[1]  # maps of three different sizes, each resized to the image first
    assert s4.human_map.shape == IMAGE_HW and s4.meta["map_hws"] == [[10, 10], [20, 15], [7, 9]]
    np.testing.assert_allclose(s4.human_map, 0.4, atol=1 / 255)
    assert s4.meta["answer_type"] == "other" and s4.meta["question_id"] == 4 and s4.mask is None


def test_per_annotator_maps_keep_their_own_size(fake: Path) -> None:
    ds = VQAHATDataset(fake, average_maps=False)
    ids = ds.sample_ids
    assert ids[:6] == ["1_1", "1_2", "1_3", "4_1", "4_2", "4_3"]
    s = ds[ids.index("4_2")]
    assert s.human_map.shape == (20, 15) and s.meta["annotator"] == 2


def test_broken_samples_raise_sample_error(fake: Path) -> None:
    ds = VQAHATDataset(fake)
    with pytest.raises(SampleError, match=r"cannot read map .*5_2\.png") as e5:
        ds[ds.sample_ids.index("5")]
    assert e5.value.sample_id == "5"
    with pytest.raises(SampleError, match=r"image not found: .*COCO_val2014_000000000107\.jpg"):
        ds[ds.sample_ids.index("7")]
    ds[0]  # the dataset still works after errors


def test_corrupt_image_raises_sample_error(fake: Path) -> None:
    (fake / "val2014" / "COCO_val2014_000000000101.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(SampleError, match="cannot read image"):
        VQAHATDataset(fake)[0]


def test_images_dir_override(fake: Path, tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    (fake / "val2014").rename(coco)
    with pytest.raises(FileNotFoundError, match="val2014"):
        VQAHATDataset(fake)
    assert VQAHATDataset(fake, images_dir=coco)[0].image.size == IMAGE_HW[::-1]


@pytest.mark.parametrize(
    "remove",
    ["vqahat_val", "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json"],
)
def test_missing_files_name_the_path(fake: Path, remove: str) -> None:
    target = fake / remove
    if target.is_dir():
        for p in target.iterdir():
            p.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(FileNotFoundError) as e:
        VQAHATDataset(fake)
    assert str(target) in str(e.value) and e.value.filename == str(target)


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VQAHATDataset(root)


def test_annotations_optional_without_answer_filter(fake: Path) -> None:
    (fake / "mscoco_val2014_annotations.json").unlink()
    ds = VQAHATDataset(fake, open_ended_only=False)
    s = ds[0]
    assert s.answer is None and s.answers == [] and len(ds) == 6
