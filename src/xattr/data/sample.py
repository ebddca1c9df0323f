"""One evaluation item (image, question, answer, reference maps) and the per-sample error type."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xattr.data.maps import resize_map

ImageLike = Image.Image | str | Path


class SampleError(Exception):
    """One sample could not be loaded; the evaluation loop catches, counts and logs it."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(sample_id, reason)  # args kept so the error pickles across workers
        self.sample_id = sample_id
        self.reason = reason

    def __str__(self) -> str:
        return f"sample {self.sample_id}: {self.reason}"


def missing(path: str | Path, what: str) -> FileNotFoundError:
    """A FileNotFoundError whose message and ``filename`` name the missing path (fail-fast checks)."""
    return FileNotFoundError(errno.ENOENT, f"{what} not found", str(path))


def load_rgb(path: str | Path, sample_id: str) -> Image.Image:
    """Open and fully decode an image as RGB, turning any failure into a SampleError."""
    path = Path(path)
    if not path.is_file():
        raise SampleError(sample_id, f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated/corrupt file fails here, not later
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SampleError(sample_id, f"cannot read image {path}: {exc}") from exc


@dataclass
class Sample:
    """An image, a question about it, its answer(s) and optional reference maps.

    ``image`` is an RGB PIL image, or a path opened on first use by :meth:`load_image`.
    ``human_map`` (float32 in [0, 1]) and ``mask`` (bool) keep their own resolution, which
    may differ from the image's; :meth:`human_map_at` / :meth:`mask_at` resample them.
    """

    sample_id: str
    image: ImageLike
    question: str
    answer: str | None = None
    answers: list[str] = field(default_factory=list)
    human_map: np.ndarray | None = None
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # what of the answer to explain, for this sample (`xattr.targets`; None: the run's setting)
    target: str | None = None
    contrast: str | None = None  # an alternative answer (or word, with a phrase target)

    def __post_init__(self) -> None:
        """Normalise dtypes and reject maps that break the shared conventions."""
        self.sample_id = str(self.sample_id)
        if self.human_map is not None:
            hm = np.asarray(self.human_map, dtype=np.float32)
            if hm.ndim != 2:
                raise ValueError(f"human_map must be HxW, got shape {hm.shape}")
            if hm.size and (not np.isfinite(hm).all() or hm.min() < 0 or hm.max() > 1):
                raise ValueError("human_map values must be finite and in [0, 1]")
            self.human_map = hm
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise ValueError(f"mask must be HxW, got shape {m.shape}")
            self.mask = m.astype(bool, copy=False)

    def load_image(self) -> Image.Image:
        """The RGB image, decoding it from its path on first call (then cached)."""
        if not isinstance(self.image, Image.Image):
            self.image = load_rgb(self.image, self.sample_id)
        elif self.image.mode != "RGB":
            self.image = self.image.convert("RGB")
        return self.image

    @property
    def image_hw(self) -> tuple[int, int]:
        """Image (height, width) in pixels; loads the image if it is still a path."""
        width, height = self.load_image().size
        return height, width

    def human_map_at(self, hw: tuple[int, int] | None = None) -> np.ndarray | None:
        """The human map bilinearly resampled to ``hw`` (default: the image's size)."""
        if self.human_map is None:
            return None
        return resize_map(self.human_map, hw or self.image_hw).clip(0.0, 1.0)

    def mask_at(self, hw: tuple[int, int] | None = None) -> np.ndarray | None:
        """The mask nearest-neighbour resampled to ``hw`` (default: the image's size)."""
        if self.mask is None:
            return None
        hw = hw or self.image_hw
        if self.mask.shape == tuple(hw):
            return self.mask
        img = Image.fromarray(self.mask.astype(np.uint8) * 255)
        return np.asarray(img.resize((hw[1], hw[0]), Image.Resampling.NEAREST)) > 0
