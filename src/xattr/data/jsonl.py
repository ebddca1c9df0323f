"""A folder of images plus a JSONL of questions: the simplest way to bring your own data.

Each line: ``{"id", "image", "question"}`` and optionally ``"answer"``, ``"answers"``
(list), ``"human_map"`` (grayscale PNG, 0..255 -> [0, 1]) and ``"mask"`` (PNG, nonzero =
inside). Paths are relative to ``root`` (absolute paths also work); other keys go to
``meta``. Maps and masks keep their own resolution.

Error policy (as for VQA-HAT): a missing root or JSONL raises ``FileNotFoundError`` at
construction; a line that is not valid JSON, lacks a required key or repeats an id is
left out and listed in ``dataset.skipped`` as ``(line id or "line N", reason)``; a
missing or unreadable image, map or mask raises :class:`SampleError` from
``__getitem__`` for that sample only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from xattr.data.maps import read_map_png, read_mask_png
from xattr.data.sample import Sample, SampleError, load_rgb, missing

log = logging.getLogger(__name__)

REQUIRED = ("id", "image", "question")
KNOWN = (*REQUIRED, "answer", "answers", "human_map", "mask", "target", "contrast")


class JsonlDataset(Dataset[Sample]):
    """Samples described one per line in ``root/questions`` (see the module docstring)."""

    def __init__(
        self, root: str | Path, questions: str | Path = "questions.jsonl", limit: int | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise missing(self.root, "dataset root folder")
        self.questions_path = self.root / questions
        if not self.questions_path.is_file():
            raise missing(self.questions_path, "questions JSONL file")
        self.skipped: list[tuple[str, str]] = []
        self._records = self._read(limit)

    def _read(self, limit: int | None) -> list[dict[str, Any]]:
        """Parse and validate lines; bad ones go to ``skipped``."""
        records: list[dict[str, Any]] = []
        first_line: dict[str, int] = {}  # id -> the line that holds it
        with open(self.questions_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"line {lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    self._leave_out(where, lineno, f"invalid JSON: {exc}")
                    continue
                if not isinstance(rec, dict):
                    self._leave_out(where, lineno, "not a JSON object")
                    continue
                absent = [k for k in REQUIRED if k not in rec or rec[k] is None]
                if absent:
                    self._leave_out(where, lineno, f"missing required key(s) {absent}")
                    continue
                empty = [k for k in REQUIRED if not str(rec[k]).strip()]
                if empty:
                    self._leave_out(where, lineno, f"empty value(s) for {empty}")
                    continue
                sid = str(rec["id"])
                if sid in first_line:
                    reason = f"duplicate id {sid!r} (first on line {first_line[sid]})"
                    self._leave_out(f"{sid} ({where})", lineno, reason)
                    continue
                first_line[sid] = lineno
                records.append(rec)
        return records if limit is None else records[:limit]

    def _leave_out(self, key: str, lineno: int, reason: str) -> None:
        """List a bad line in ``skipped`` and say so in the log (file:line)."""
        self.skipped.append((key, reason))
        log.warning("%s:%d: %s; line left out", self.questions_path, lineno, reason)

    @property
    def sample_ids(self) -> list[str]:
        """Sample ids in file order (no file is opened)."""
        return [str(r["id"]) for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        """Load one sample; raise :class:`SampleError` if its image, map or mask cannot be read."""
        rec = self._records[index]
        sid = str(rec["id"])
        image = load_rgb(self.root / rec["image"], sid)
        human_map = self._load(rec, "human_map", read_map_png, sid)
        mask = self._load(rec, "mask", read_mask_png, sid)
        answer = rec.get("answer")
        answers = rec.get("answers") or ([answer] if answer is not None else [])
        meta = {k: v for k, v in rec.items() if k not in KNOWN}
        meta.update(
            source="jsonl",
            image_path=str(self.root / rec["image"]),
            human_map_hw=None if human_map is None else list(human_map.shape),
            mask_hw=None if mask is None else list(mask.shape),
        )
        return Sample(
            sample_id=sid,
            image=image,
            question=str(rec["question"]),
            answer=None if answer is None else str(answer),
            answers=[str(a) for a in answers],
            human_map=human_map,
            mask=mask,
            meta=meta,
            target=None if rec.get("target") is None else str(rec["target"]),
            contrast=None if rec.get("contrast") is None else str(rec["contrast"]),
        )

    def _load(self, rec: dict[str, Any], key: str, reader: Any, sid: str) -> Any:
        """Read the optional PNG ``rec[key]`` with ``reader``, or None if the key is absent."""
        if not rec.get(key):
            return None
        path = self.root / rec[key]
        if not path.is_file():
            raise SampleError(sid, f"{key} not found: {path}")
        try:
            return reader(path)
        except (OSError, SyntaxError, ValueError) as exc:
            raise SampleError(sid, f"cannot read {key} {path}: {exc}") from exc
