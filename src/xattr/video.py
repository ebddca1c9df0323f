"""A video given in place of an image: frames, or a file decoded with PyAV, sampled as asked.

``Video(frames_or_path, fps=None, num_frames=None)``. Frames are PIL images or a
``[T, H, W, 3]`` uint8 array; a path is decoded with PyAV (``av``). ``fps`` is the rate of
the frames the model is shown: a file is sampled at it (every ``native / fps``-th frame,
from the first; default: every frame, at the file's own rate); a list of frames is taken to
be at it (default `DEFAULT_FPS`, the rate Qwen-VL samples its training videos at), which
sets the time between frames (Qwen2.5-VL places frames in time by it). ``num_frames``
keeps that many frames spread evenly (the first and the last included) after the fps
sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .images import ImageError, blur_image, load_image

DEFAULT_FPS = 2.0  # frames per second assumed for a list of frames


@dataclass(eq=False)  # frames, not values: compared by identity
class Video:
    """Frames of one video in time order, sampled as the module docstring says."""

    source: list | np.ndarray | str | Path
    fps: float | None = None
    num_frames: int | None = None
    _frames: list[Image.Image] = field(default_factory=list, init=False, repr=False)
    _times: list[float] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")

    def frames(self) -> list[Image.Image]:
        """The sampled RGB frames (decoded on first call, then kept)."""
        if not self._frames:
            frames, rate = self._read()
            keep = np.arange(len(frames))
            if self.num_frames is not None and self.num_frames < len(frames):
                keep = np.linspace(0, len(frames) - 1, self.num_frames).round().astype(int)
            self._frames = [frames[i] for i in keep]
            self._times = [float(i) / rate for i in keep]
        return self._frames

    def timestamps(self) -> list[float]:
        """Each sampled frame's time in seconds, from the first frame of the source."""
        self.frames()
        return list(self._times)

    def blurred(self, radius: float | None = None) -> Video:
        """The same frames at the same times, each blurred (`images.blur_image`)."""
        return self.with_frames([blur_image(f, radius) for f in self.frames()])

    def with_frames(self, frames: list[Image.Image]) -> Video:
        """Other frames (a perturbed copy of each) at this video's sampled times."""
        if len(frames) != len(self.frames()):
            raise ValueError(f"{len(frames)} frames for a video of {len(self.frames())}")
        out = Video(list(frames))
        out._frames, out._times = out._read()[0], list(self._times)
        return out

    def _read(self) -> tuple[list[Image.Image], float]:
        """Every frame at the sampling rate, and that rate (frames per second)."""
        if isinstance(self.source, (str, Path)):
            frames, rate = decode(Path(self.source), self.fps)
        elif isinstance(self.source, (list, tuple, np.ndarray)):
            if isinstance(self.source, np.ndarray) and (
                self.source.ndim != 4 or self.source.shape[-1] != 3
            ):
                raise ImageError(f"video frames must be [T, H, W, 3], got {self.source.shape}")
            frames = [load_image(f) for f in self.source]
            rate = self.fps or DEFAULT_FPS
        else:
            raise ImageError(
                "a Video takes a list of frames, a [T, H, W, 3] array or a file path, got "
                f"{type(self.source).__name__}"
            )
        if not frames:
            raise ImageError("a video with no frames")
        sizes = {f.size for f in frames}
        if len(sizes) > 1:
            raise ImageError(f"video frames differ in size: {sorted(sizes)}")
        return frames, rate


def decode(path: Path, fps: float | None) -> tuple[list[Image.Image], float]:
    """A video file's frames (every one, or sampled at ``fps``) and their rate, via PyAV."""
    import av

    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            native = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
            frames = [frame.to_image().convert("RGB") for frame in container.decode(stream)]
    except (av.error.FFmpegError, IndexError, ValueError) as err:
        raise ImageError(f"cannot decode video {path}: {err}") from err
    if not frames:
        raise ImageError(f"video {path} holds no frames")
    if fps is None or fps >= native:
        return frames, native
    keep = np.arange(0.0, len(frames), native / fps).astype(int)
    return [frames[i] for i in keep], fps
