"""VQA-HAT human attention maps joined with VQA v1 questions/answers and COCO images (SPEC §8).

Error policy, in two stages:

- Construction checks that the root, the maps folder, the questions JSON, the annotations
  JSON (when the answer-type filter needs it) and the images folder exist, and raises
  ``FileNotFoundError`` naming the first missing path before doing any other work. It then
  indexes using only the two JSON files and the maps folder listing. Metadata problems
  found there (a map file name that does not parse, a map whose question id has no
  question, no annotation when the filter needs one) leave the question out and are
  listed in ``dataset.skipped`` as ``(sample_id, reason)``; questions left out by the
  paper's protocol (answer type, too few maps) are counted in ``dataset.filtered``.
- Anything that needs a file's content (a missing or corrupt image, a corrupt map PNG)
  is found in ``__getitem__``, which raises :class:`SampleError` for that sample only;
  the evaluation loop catches, counts and logs it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from xattr.data import vqahat_layout as layout
from xattr.data.maps import read_map_png, resize_map
from xattr.data.sample import Sample, SampleError, load_rgb, missing

log = logging.getLogger(__name__)


def read_json_list(path: Path, key: str) -> list[dict[str, Any]]:
    """``data[key]`` of a JSON file, with an error naming the file if it is malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        items = data[key]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list ({exc})") from exc
    if not isinstance(items, list):
        raise ValueError(f"{path}: {key!r} is not a list")
    return items


@dataclass(frozen=True)
class _Entry:
    """One indexed item: a question and the map files it is evaluated against."""

    sample_id: str
    qid: int
    image_id: int
    question: str
    question_type: str | None
    answer_type: str | None
    answer: str | None
    answers: tuple[str, ...]
    maps: tuple[Path, ...]
    annotator: int | None  # set when maps are not averaged (one sample per map)


class VQAHATDataset(Dataset[Sample]):
    """VQA-HAT questions with their (averaged) human attention maps, as :class:`Sample` s.

    - ``open_ended_only`` keeps questions whose VQA ``answer_type`` is in ``answer_types``
      (default ``("other",)``: our reading of the paper's "open-ended questions", i.e. not
      ``yes/no`` and not ``number``; the paper does not define it further).
    - ``min_maps``: questions with fewer annotator maps are left out (paper: 3).
    - ``average_maps=True``: maps are resized (bilinear) to the image's size, then averaged
      into one reference at image resolution. ``False``: one sample per map
      (``sample_id = "<qid>_<n>"``), each map at its own resolution.
    - ``mask_threshold``: if set, ``mask = human_map >= mask_threshold`` (useful for the
      synthetic benchmark, whose maps are binary); real VQA-HAT has no masks.
    - ``images_dir`` overrides ``root/{split}2014`` (e.g. an existing COCO folder).
    - ``limit`` keeps the first ``limit`` samples (ordered by question id, then annotator)
      after filtering; ``filtered`` and ``skipped`` still describe the whole folder.
    - ``extra_meta``: per-question metadata keyed by question id (as a string), merged into
      each sample's ``meta`` (e.g. the synthetic generator's objects and queried index).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        images_dir: str | Path | None = None,
        open_ended_only: bool = True,
        min_maps: int = 3,
        average_maps: bool = True,
        limit: int | None = None,
        answer_types: Sequence[str] = ("other",),
        mask_threshold: float | None = None,
        extra_meta: Mapping[str, Mapping[str, Any]] | None = None,
        label: str = "VQA-HAT",
    ) -> None:
        self.root = Path(root)
        self.label = label  # what the log calls this set (the synthetic set shares the layout)
        self.extra_meta = dict(extra_meta or {})
        self.split = split
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.answer_types = tuple(answer_types) if open_ended_only else None
        self.min_maps = min_maps
        self.average_maps = average_maps
        self.mask_threshold = mask_threshold
        self.skipped: list[tuple[str, str]] = []
        self.filtered: Counter[str] = Counter()

        maps_dir, questions_path, annotations_path = self._check_paths()
        by_qid = self._scan_maps(maps_dir)
        questions = {int(q["question_id"]): q for q in read_json_list(questions_path, "questions")}
        annotations: dict[int, dict[str, Any]] = {}
        if annotations_path.is_file():
            for a in read_json_list(annotations_path, "annotations"):
                annotations[int(a["question_id"])] = a
        self._entries = self._index(by_qid, questions, annotations, limit)
        log.info("%s %s: %s", self.label, split, self.summary())

    def _check_paths(self) -> tuple[Path, Path, Path]:
        """Fail fast, naming the first missing path; return the maps, questions, annotations paths."""
        if not self.root.is_dir():
            raise missing(self.root, "VQA-HAT root folder")
        maps_dir = layout.maps_dir(self.root, self.split)
        if not maps_dir.is_dir():
            raise missing(maps_dir, f"VQA-HAT maps folder vqahat_{self.split}/")
        questions_path = layout.questions_file(self.root, self.split)
        if not questions_path.is_file():
            raise missing(questions_path, "VQA v1 questions file")
        annotations_path = layout.annotations_file(self.root, self.split)
        if self.answer_types is not None and not annotations_path.is_file():
            raise missing(annotations_path, "VQA v1 annotations file (needed for answer types)")
        self.images_dir = self.images_dir or layout.images_dir(self.root, self.split)
        if not self.images_dir.is_dir():
            raise missing(self.images_dir, "COCO images folder")
        return maps_dir, questions_path, annotations_path

    def _scan_maps(self, maps_dir: Path) -> dict[int, list[tuple[int, Path]]]:
        """Group ``<qid>_<n>.png`` files by question id; odd PNG names go to ``skipped``."""
        by_qid: dict[int, list[tuple[int, Path]]] = {}
        with os.scandir(maps_dir) as it:
            for entry in it:
                if not entry.name.lower().endswith(".png"):
                    continue  # e.g. .DS_Store, README
                m = layout.MAP_NAME.match(entry.name)
                if m is None:
                    self.skipped.append((entry.name, "map file name is not <qid>_<n>.png"))
                    continue
                by_qid.setdefault(int(m["qid"]), []).append((int(m["n"]), Path(entry.path)))
        return {qid: sorted(maps) for qid, maps in by_qid.items()}

    def _index(
        self,
        by_qid: dict[int, list[tuple[int, Path]]],
        questions: dict[int, dict[str, Any]],
        annotations: dict[int, dict[str, Any]],
        limit: int | None,
    ) -> list[_Entry]:
        """Join maps with questions and answers, apply the protocol filters, then ``limit``."""
        entries: list[_Entry] = []
        for qid in sorted(by_qid):
            maps = by_qid[qid]
            q = questions.get(qid)
            if q is None:
                self.skipped.append((str(qid), f"no question with id {qid} in the questions file"))
                continue
            ann = annotations.get(qid)
            if ann is None and self.answer_types is not None:
                self.skipped.append((str(qid), "no annotation (answer type unknown)"))
                continue
            ann = ann or {}
            if self.answer_types is not None and ann.get("answer_type") not in self.answer_types:
                self.filtered[f"answer_type={ann.get('answer_type')}"] += 1
                continue
            if len(maps) < self.min_maps:
                self.filtered[f"fewer than {self.min_maps} maps"] += 1
                continue
            common = {
                "qid": qid,
                "image_id": int(q["image_id"]),
                "question": str(q["question"]),
                "question_type": ann.get("question_type"),
                "answer_type": ann.get("answer_type"),
                "answer": ann.get("multiple_choice_answer"),
                "answers": tuple(str(a["answer"]) for a in ann.get("answers", [])),
            }
            if self.average_maps:
                paths = tuple(p for _, p in maps)
                entries.append(_Entry(sample_id=str(qid), maps=paths, annotator=None, **common))
            else:
                for n, p in maps:
                    entries.append(_Entry(sample_id=f"{qid}_{n}", maps=(p,), annotator=n, **common))
        return entries if limit is None else entries[:limit]

    def summary(self) -> str:
        """One line: how many samples were kept, filtered by protocol, and skipped as broken."""
        filt = ", ".join(f"{k}: {v}" for k, v in sorted(self.filtered.items())) or "none"
        return f"{len(self)} samples; filtered ({filt}); skipped {len(self.skipped)}"

    @property
    def sample_ids(self) -> list[str]:
        """Sample ids in dataset order (no file is opened)."""
        return [e.sample_id for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Sample:
        """Load one sample; raise :class:`SampleError` if its image or a map cannot be read."""
        e = self._entries[index]
        assert self.images_dir is not None
        image_path = self.images_dir / layout.image_name(self.split, e.image_id)
        image = load_rgb(image_path, e.sample_id)
        hw = (image.height, image.width)
        maps = []
        for p in e.maps:
            try:
                maps.append(read_map_png(p))
            except (OSError, SyntaxError, ValueError) as exc:
                raise SampleError(e.sample_id, f"cannot read map {p}: {exc}") from exc
        if self.average_maps:
            human_map = np.mean([resize_map(m, hw) for m in maps], axis=0).clip(0.0, 1.0)
        else:
            human_map = maps[0]
        mask = None if self.mask_threshold is None else human_map >= self.mask_threshold
        return Sample(
            sample_id=e.sample_id,
            image=image,
            question=e.question,
            answer=e.answer,
            answers=list(e.answers),
            human_map=human_map.astype(np.float32),
            mask=mask,
            meta={
                "source": "vqahat",
                "split": self.split,
                "question_id": e.qid,
                "image_id": e.image_id,
                "question_type": e.question_type,
                "answer_type": e.answer_type,
                "annotator": e.annotator,
                "image_path": str(image_path),
                "map_paths": [str(p) for p in e.maps],
                "map_hws": [list(m.shape) for m in maps],
                "human_map_hw": list(human_map.shape),
                **self.extra_meta.get(str(e.qid), {}),
            },
        )
