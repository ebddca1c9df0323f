"""The two resizing rules metrics use to put a saliency map and a reference on one grid.

- :func:`resize_bilinear`: the default rule, saliency -> reference size, bilinear
  (``torch.nn.functional.interpolate``, ``align_corners=False``, no antialiasing).
- :func:`resize_area`: exact area averaging onto a protocol grid (rank correlation):
  each output cell is the area-weighted mean of the input pixels it covers, a pixel cut by
  a cell border counting with the covered fraction. It equals average pooling when the
  sizes divide, preserves the map's mean, and also works for upsampling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_size(size: tuple[int, int] | list[int]) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {tuple(size)}")
    return h, w


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map to ``size`` by bilinear interpolation (``align_corners=False``)."""
    size = _as_size(size)
    if x.shape == size:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None, None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of exact overlap fractions for 1-D area resampling."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize_area(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map to ``size`` by exact area averaging (separable, rows then columns)."""
    size = _as_size(size)
    if x.shape == size:
        return x
    wh = area_weights(x.shape[0], size[0])
    ww = area_weights(x.shape[1], size[1])
    return wh @ x @ ww.T
