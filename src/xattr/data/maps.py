"""Reading, writing and resampling attention maps stored as grayscale PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def read_map_png(path: str | Path) -> np.ndarray:
    """Read a map PNG as float32 HxW in [0, 1] (8-bit / 255, 16-bit / 65535, colour -> luma)."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return (np.asarray(img, dtype=np.float32) / 65535.0).clip(0.0, 1.0)
        if img.mode == "1":
            return np.asarray(img, dtype=np.float32)
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img, dtype=np.float32) / 255.0


def write_map_png(path: str | Path, values: np.ndarray) -> None:
    """Write a map in [0, 1] as an 8-bit grayscale PNG (values rounded to 1/255)."""
    arr = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    Image.fromarray(np.round(arr * 255.0).astype(np.uint8)).save(path, format="PNG")


def read_mask_png(path: str | Path) -> np.ndarray:
    """Read a mask PNG as bool HxW: any nonzero pixel (in any channel) is inside."""
    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img)
    return arr.any(axis=-1) if arr.ndim == 3 else arr != 0


def resize_map(values: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinearly resample a float map to ``hw`` = (height, width); identity if already that size."""
    values = np.asarray(values, dtype=np.float32)
    hw = (int(hw[0]), int(hw[1]))
    if values.shape == hw:
        return values
    img = Image.fromarray(values)  # mode "F": keeps full float precision
    return np.asarray(img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR), dtype=np.float32)
