"""One evaluation item (image, question, answer, reference maps) and the per-sample error type."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xattr.data.maps import resize_map
from xattr.video import Video

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
    """An image (or several, in prompt order), a question, its answer(s) and optional reference maps.

    ``image`` is an RGB PIL image, or a path opened on first use by :meth:`load_image`; a list
    of them is a prompt of several images (:meth:`load_images`), whose ``human_map`` and
    ``mask`` are lists too, one per image (None where an image has none).
    ``human_map`` (float32 in [0, 1]) and ``mask`` (bool) keep their own resolution, which
    may differ from the image's; :meth:`human_map_at` / :meth:`mask_at` resample them.
    """

    sample_id: str
    image: ImageLike | list[ImageLike] | Video
    question: str
    answer: str | None = None
    answers: list[str] = field(default_factory=list)
    human_map: np.ndarray | list[np.ndarray | None] | None = None
    mask: np.ndarray | list[np.ndarray | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # what of the answer to explain, for this sample (`xattr.targets`; None: the run's setting)
    target: str | None = None
    contrast: str | None = None  # an alternative answer (or word, with a phrase target)

    def __post_init__(self) -> None:
        """Normalise dtypes and reject maps that break the shared conventions."""
        self.sample_id = str(self.sample_id)
        several = isinstance(self.image, (list, tuple, Video))
        if isinstance(self.image, (list, tuple)):
            self.image = list(self.image)
            if not self.image:
                raise ValueError(f"sample {self.sample_id}: an empty list of images")
        for name, check in (("human_map", _human_map), ("mask", _mask)):
            value = getattr(self, name)
            if value is None:
                continue
            if several:
                if not isinstance(value, (list, tuple)):
                    raise ValueError(
                        f"sample {self.sample_id}: several images (or a video's frames) need "
                        f"a list of {name}s, one per image or frame (None where there is none)"
                    )
                setattr(self, name, [None if v is None else check(v) for v in value])
            else:
                setattr(self, name, check(value))

    @property
    def is_video(self) -> bool:
        return isinstance(self.image, Video)

    @property
    def num_images(self) -> int:
        """Images of the prompt (a video: its sampled frames)."""
        if isinstance(self.image, Video):
            return len(self._frames())
        return len(self.image) if isinstance(self.image, list) else 1

    def _frames(self) -> list[Image.Image]:
        try:
            return self.image.frames()  # type: ignore[union-attr]
        except (OSError, ValueError) as err:
            raise SampleError(self.sample_id, f"cannot read the video: {err}") from err

    def load_images(self) -> list[Image.Image]:
        """Every RGB image of the prompt, in order, each decoded on first call (then cached);
        a video's sampled frames."""
        if isinstance(self.image, Video):
            frames = self._frames()
            self._check_references(len(frames))
            return frames
        images = self.image if isinstance(self.image, list) else [self.image]
        loaded = [_rgb(image, self.sample_id) for image in images]
        self.image = loaded if isinstance(self.image, list) else loaded[0]
        self._check_references(len(loaded))
        return loaded

    def load_image(self) -> Image.Image:
        """The RGB image of a one-image sample, decoding it from its path on first call."""
        if self.num_images > 1:
            raise SampleError(self.sample_id, f"shows {self.num_images} images; use load_images")
        return self.load_images()[0]

    def prompt_images(self) -> Image.Image | list[Image.Image] | Video:
        """What the model is shown: the image, the list of images, or the video."""
        images = self.load_images()
        if isinstance(self.image, Video):
            return self.image
        return images if isinstance(self.image, list) else images[0]

    def _check_references(self, count: int) -> None:
        """Per-image references, one per image (or per sampled frame of a video)."""
        for name in ("human_map", "mask"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != count:
                raise SampleError(
                    self.sample_id,
                    f"{count} images or frames but {len(value)} {name}s (one each, None where none)",
                )

    @property
    def image_hw(self) -> tuple[int, int]:
        """Image (height, width) in pixels (the first image's); loads it if still a path."""
        return self.hw_of(0)

    def hw_of(self, image: int) -> tuple[int, int]:
        """Image ``image``'s (height, width) in pixels."""
        width, height = self.load_images()[image].size
        return height, width

    def _reference(self, name: str, image: int) -> np.ndarray | None:
        value = getattr(self, name)
        return value[image] if isinstance(value, list) else (value if image == 0 else None)

    def human_map_at(self, hw: tuple[int, int] | None = None, image: int = 0) -> np.ndarray | None:
        """Image ``image``'s human map bilinearly resampled to ``hw`` (default: its size)."""
        human_map = self._reference("human_map", image)
        if human_map is None:
            return None
        return resize_map(human_map, hw or self.hw_of(image)).clip(0.0, 1.0)

    def mask_at(self, hw: tuple[int, int] | None = None, image: int = 0) -> np.ndarray | None:
        """Image ``image``'s mask nearest-neighbour resampled to ``hw`` (default: its size)."""
        mask = self._reference("mask", image)
        if mask is None:
            return None
        hw = hw or self.hw_of(image)
        if mask.shape == tuple(hw):
            return mask
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        return np.asarray(img.resize((hw[1], hw[0]), Image.Resampling.NEAREST)) > 0


def _rgb(image: ImageLike, sample_id: str) -> Image.Image:
    """One image of a sample as RGB (a path decoded by `load_rgb`)."""
    if not isinstance(image, Image.Image):
        return load_rgb(image, sample_id)
    return image if image.mode == "RGB" else image.convert("RGB")


def _human_map(value: Any) -> np.ndarray:
    hm = np.asarray(value, dtype=np.float32)
    if hm.ndim != 2:
        raise ValueError(f"human_map must be HxW, got shape {hm.shape}")
    if hm.size and (not np.isfinite(hm).all() or hm.min() < 0 or hm.max() > 1):
        raise ValueError("human_map values must be finite and in [0, 1]")
    return hm


def _mask(value: Any) -> np.ndarray:
    m = np.asarray(value)
    if m.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {m.shape}")
    return m.astype(bool, copy=False)
