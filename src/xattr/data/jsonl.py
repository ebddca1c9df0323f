"""A folder of images plus a JSONL of questions: the simplest way to bring your own data.

Each line: ``{"id", "image", "question"}`` and optionally ``"answer"``, ``"answers"``
(list), ``"human_map"`` (grayscale PNG, 0..255 -> [0, 1]) and ``"mask"`` (PNG, nonzero =
inside). Paths are relative to ``root`` (absolute paths also work); other keys go to
``meta``. Maps and masks keep their own resolution.

A prompt of several images gives ``"images": [path, ...]`` instead of ``"image"`` (shown in
that order); its ``"human_map"`` and ``"mask"``, when given, are lists of the same length
(``null`` for an image without one). A video gives ``"video"``: a file (decoded with PyAV)
or a list of frame images, with optional ``"fps"`` and ``"num_frames"`` (`xattr.Video`); its
maps and masks are lists with one entry per *sampled* frame.

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
from xattr.video import Video

log = logging.getLogger(__name__)

REQUIRED = ("id", "question")  # and "image", "images" (a non-empty list) or "video"
INPUTS = ("image", "images", "video")
KNOWN = (
    *REQUIRED,
    *INPUTS,
    "fps",
    "num_frames",
    "answer",
    "answers",
    "human_map",
    "mask",
    "target",
    "contrast",
)


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
                problem = _images_problem(rec)
                if problem:
                    self._leave_out(where, lineno, problem)
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
        several = "images" in rec
        paths = rec["images"] if several else [rec.get("image") or rec["video"]]
        if "video" in rec:
            video = self._video(rec, sid)
        else:
            images = [load_rgb(self.root / p, sid) for p in paths]
        human_map = self._load(rec, "human_map", read_map_png, sid)
        mask = self._load(rec, "mask", read_mask_png, sid)
        answer = rec.get("answer")
        answers = rec.get("answers") or ([answer] if answer is not None else [])
        meta = {k: v for k, v in rec.items() if k not in KNOWN}
        meta.update(
            source="jsonl",
            image_path=str(self.root / (paths[0] if isinstance(paths[0], str) else paths[0][0])),
            human_map_hw=_shapes(human_map),
            mask_hw=_shapes(mask),
        )
        if several:
            meta["image_paths"] = [str(self.root / p) for p in paths]
        return Sample(
            sample_id=sid,
            image=video if "video" in rec else (images if several else images[0]),
            question=str(rec["question"]),
            answer=None if answer is None else str(answer),
            answers=[str(a) for a in answers],
            human_map=human_map,
            mask=mask,
            meta=meta,
            target=None if rec.get("target") is None else str(rec["target"]),
            contrast=None if rec.get("contrast") is None else str(rec["contrast"]),
        )

    def _video(self, rec: dict[str, Any], sid: str) -> Video:
        """The line's video: a file (checked to exist; decoded on use) or its frames, read now."""
        fps, count = rec.get("fps"), rec.get("num_frames")
        try:
            if isinstance(rec["video"], list):
                frames = [load_rgb(self.root / p, sid) for p in rec["video"]]
                return Video(frames, fps=fps, num_frames=count)
            path = self.root / rec["video"]
            if not path.is_file():
                raise SampleError(sid, f"video not found: {path}")
            return Video(path, fps=fps, num_frames=count)
        except (TypeError, ValueError) as err:
            raise SampleError(sid, f"bad video settings: {err}") from err

    def _load(self, rec: dict[str, Any], key: str, reader: Any, sid: str) -> Any:
        """Read the optional PNG ``rec[key]`` (a list of them, or nulls, for several images)
        with ``reader``, or None if the key is absent."""
        if not rec.get(key):
            return None
        if isinstance(rec[key], list):
            return [None if p is None else self._read_png(p, key, reader, sid) for p in rec[key]]
        return self._read_png(rec[key], key, reader, sid)

    def _read_png(self, relative: str, key: str, reader: Any, sid: str) -> Any:
        path = self.root / relative
        if not path.is_file():
            raise SampleError(sid, f"{key} not found: {path}")
        try:
            return reader(path)
        except (OSError, SyntaxError, ValueError) as exc:
            raise SampleError(sid, f"cannot read {key} {path}: {exc}") from exc


def _images_problem(rec: dict[str, Any]) -> str | None:
    """Why a line's image fields are unusable (None when they are fine)."""
    if sum(k in rec for k in INPUTS) != 1:
        return "give one of 'image' (a path), 'images' (a list of paths) or 'video'"
    if "video" in rec:
        video = rec["video"]
        if not (isinstance(video, str) and video.strip()) and not (
            isinstance(video, list) and video and all(isinstance(p, str) for p in video)
        ):
            return "'video' must be a file path or a non-empty list of frame paths"
        return None
    if "image" in rec:
        if not str(rec["image"] or "").strip():
            return "empty value(s) for ['image']"
        for key in ("human_map", "mask"):
            if isinstance(rec.get(key), list):
                return f"{key!r} is a list but the line has one image"
        return None
    images = rec["images"]
    if (
        not isinstance(images, list)
        or not images
        or not all(isinstance(p, str) and p.strip() for p in images)
    ):
        return "'images' must be a non-empty list of paths"
    for key in ("human_map", "mask"):
        value = rec.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != len(images)):
            return f"{key!r} must be a list of {len(images)} paths or nulls, one per image"
    return None


def _shapes(value: Any) -> Any:
    """A map's (h, w), or each map's for several images (None where absent)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [None if v is None else list(v.shape) for v in value]
    return list(value.shape)
