"""Write samples with reference maps to disk in the VQA-HAT layout, so its loader reads them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xattr.data import vqahat_layout as layout
from xattr.data.maps import write_map_png
from xattr.data.sample import Sample


def _shift(values: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a map by (dy, dx) pixels, filling the uncovered border with 0."""
    out = np.zeros_like(values)
    h, w = values.shape
    src = values[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _clean(root: Path, split: str) -> None:
    """Delete this split's map PNGs and COCO-named images (only names the layout defines)."""
    if layout.maps_dir(root, split).is_dir():
        for p in layout.maps_dir(root, split).iterdir():
            if layout.MAP_NAME.match(p.name):
                p.unlink()
    if layout.images_dir(root, split).is_dir():
        for p in layout.images_dir(root, split).glob(f"COCO_{split}2014_*.jpg"):
            p.unlink()


def _ids(sample: Sample) -> tuple[int, int]:
    """(question_id, image_id) from meta, else the numeric sample id for both."""
    try:
        qid = int(sample.meta.get("question_id", sample.sample_id))
    except ValueError as exc:
        raise ValueError(f"sample id {sample.sample_id!r} is not a VQA question id") from exc
    return qid, int(sample.meta.get("image_id", qid))


def write_vqahat(
    samples: Sequence[Sample],
    root: str | Path,
    split: str = "val",
    *,
    n_maps: int = 3,
    map_jitter: int = 0,
    seed: int = 0,
    n_answers: int = 10,
    jpeg_quality: int = 95,
    clean: bool = False,
) -> Path:
    """Write images, ``n_maps`` map PNGs per question, questions and annotations JSON; return root.

    The reference is ``human_map`` (else ``mask``), written at its own resolution.
    Annotator 1's map is exact; with ``map_jitter > 0`` annotators 2.. are shifted by up
    to that many pixels (seeded), imitating annotator disagreement. Images are JPEG as in
    COCO, at ``jpeg_quality`` with no chroma subsampling so flat colours stay classifiable.
    Existing files of the same names are overwritten; ``clean=True`` first deletes this
    split's map PNGs (``<qid>_<n>.png``) and COCO-named images, so no stale map from an
    earlier, larger write is averaged in. Other files are never touched.
    """
    root = Path(root)
    if clean:
        _clean(root, split)
    layout.maps_dir(root, split).mkdir(parents=True, exist_ok=True)
    layout.images_dir(root, split).mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for sample in samples:
        qid, image_id = _ids(sample)
        ref = sample.human_map if sample.human_map is not None else sample.mask
        if ref is None:
            raise ValueError(f"sample {sample.sample_id} has neither human_map nor mask")
        ref = np.asarray(ref, dtype=np.float32)
        rng = np.random.default_rng([seed, qid])
        for n in range(1, n_maps + 1):
            values = ref
            if map_jitter > 0 and n > 1:
                dy, dx = (int(v) for v in rng.integers(-map_jitter, map_jitter + 1, size=2))
                values = _shift(ref, dy, dx)
            write_map_png(layout.map_file(root, split, qid, n), values)
        image_path = layout.images_dir(root, split) / layout.image_name(split, image_id)
        sample.load_image().save(image_path, format="JPEG", quality=jpeg_quality, subsampling=0)
        questions.append({"question_id": qid, "image_id": image_id, "question": sample.question})
        answers = list(sample.answers) or ([sample.answer] if sample.answer is not None else [])
        answers = [answers[i % len(answers)] for i in range(n_answers)] if answers else []
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "question_type": sample.meta.get("question_type", ""),
                "answer_type": sample.meta.get("answer_type", "other"),
                "multiple_choice_answer": sample.answer if sample.answer is not None else "",
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                    for i, a in enumerate(answers)
                ],
            }
        )
    subtype = f"{split}2014"
    header = {
        "info": {"description": "written by xattr.data"},
        "license": {},
        "data_subtype": subtype,
    }
    layout.questions_file(root, split).write_text(
        json.dumps(
            {**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}
        )
    )
    layout.annotations_file(root, split).write_text(
        json.dumps({**header, "data_type": "mscoco", "annotations": annotations})
    )
    return root
