"""Video files for tests: frames encoded with PyAV, as a user's clip would be."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_mp4(path: Path, frames: Sequence[Any], rate: int) -> Path:
    """Encode frames (PIL images or [H, W, 3] uint8 arrays, even sizes) as H.264 at ``rate``
    frames per second."""
    import av

    arrays = [np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = arrays[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for array in arrays:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
