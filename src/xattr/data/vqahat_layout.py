"""File names of the VQA-HAT / VQA v1 / COCO layout (SPEC §8), shared by the reader and writer."""

from __future__ import annotations

import re
from pathlib import Path

#: ``<qid>_<n>.png``: VQA v1 question id, then the 1-based annotator number.
MAP_NAME = re.compile(r"^(?P<qid>\d+)_(?P<n>\d+)\.png$", re.IGNORECASE)


def maps_dir(root: Path, split: str) -> Path:
    """Flat folder of human attention maps: ``vqahat_{split}/``."""
    return root / f"vqahat_{split}"


def map_file(root: Path, split: str, qid: int, n: int) -> Path:
    """Map of annotator ``n`` (1-based) for question ``qid``."""
    return maps_dir(root, split) / f"{qid}_{n}.png"


def questions_file(root: Path, split: str) -> Path:
    """VQA v1 open-ended questions: ``OpenEnded_mscoco_{split}2014_questions.json``."""
    return root / f"OpenEnded_mscoco_{split}2014_questions.json"


def annotations_file(root: Path, split: str) -> Path:
    """VQA v1 answers and answer types: ``mscoco_{split}2014_annotations.json``."""
    return root / f"mscoco_{split}2014_annotations.json"


def images_dir(root: Path, split: str) -> Path:
    """COCO images folder: ``{split}2014/``."""
    return root / f"{split}2014"


def image_name(split: str, image_id: int) -> str:
    """COCO file name: ``COCO_{split}2014_{image_id:012d}.jpg``."""
    return f"COCO_{split}2014_{int(image_id):012d}.jpg"
