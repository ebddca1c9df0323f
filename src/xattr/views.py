"""Views of one image and what each sees of a mask drawn over the image.

A processor turns one image into *views*: boxes of the original image, each resampled to
its own processed size (a resized image, canvas tiles, a thumbnail, pan-and-scan crops).
A mask over a box of the image reaches a view by cropping it to the view's box and
resampling it to the view's size (`sample_mask`), differentiably, so every view sees the
same edit at its own resolution. `models.pixels` blends images with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .images import FULL_IMAGE, Region

MASK_MODES = ("bilinear", "nearest")


@dataclass(frozen=True)
class PixelView:
    """One processed view: ``box`` of the original image resampled to ``size`` = (h, w)."""

    box: Region  # (top, left, bottom, right) fractions of the original image (may pass [0, 1])
    size: tuple[int, int]
    name: str = "image"

    def density(self) -> tuple[float, float]:
        """View pixels per unit of image height and width."""
        top, left, bottom, right = self.box
        return self.size[0] / (bottom - top), self.size[1] / (right - left)


def _axis(
    n_out: int, start: float, end: float, m_start: float, m_end: float, n_mask: int
) -> Tensor:
    """Mask pixel coordinates (pixel ``k`` spans [k, k+1)) of ``n_out`` view pixel centres
    spread over [start, end) of the image, for a mask of ``n_mask`` pixels over [m_start, m_end)."""
    centres = start + (torch.arange(n_out, dtype=torch.float64) + 0.5) / n_out * (end - start)
    return (centres - m_start) / (m_end - m_start) * n_mask  # [n_out]


def _read(mask: Tensor, dim: int, coords: Tensor, mode: str) -> Tensor:
    """``mask`` read along ``dim`` at ``coords`` (mask pixel units): nearest cell, or linear
    between pixel centres clamped at the border (``lerp``: constant masks stay exact)."""
    n = mask.shape[dim]
    if mode == "nearest":
        index = torch.clamp(torch.floor(coords + 1e-9), 0, n - 1).long().to(mask.device)
        return mask.index_select(dim, index)
    pos = torch.clamp(coords - 0.5, 0, n - 1)
    i0 = torch.floor(pos).long()
    i1 = torch.clamp(i0 + 1, max=n - 1)
    shape = [1] * mask.dim()
    shape[dim] = -1
    t = (pos - i0).to(mask.device, mask.dtype).reshape(shape)
    return torch.lerp(
        mask.index_select(dim, i0.to(mask.device)), mask.index_select(dim, i1.to(mask.device)), t
    )


def sample_mask(mask: Tensor, box: Region, view: PixelView, mode: str = "bilinear") -> Tensor:
    """What ``view`` sees of masks [B, mh, mw] over ``box`` of the image: [B, h, w], differentiable.

    ``bilinear``: a smooth mask (iGOS), area-averaged first along an axis where it has at
    least two mask pixels per view pixel; ``nearest``: a per-cell mask (faithfulness), each
    view pixel taking the cell under its centre (cells past the mask's edge: the nearest).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; known: {', '.join(MASK_MODES)}")
    if mask.dim() != 3:
        raise ValueError(f"masks must be [B, h, w], got shape {tuple(mask.shape)}")
    m_top, m_left, m_bottom, m_right = box
    top, left, bottom, right = view.box
    h, w = view.size
    if mode == "bilinear":  # antialias: no more than ~one mask pixel per view pixel
        per_y = mask.shape[1] / (m_bottom - m_top) / view.density()[0]
        per_x = mask.shape[2] / (m_right - m_left) / view.density()[1]
        target = (
            mask.shape[1] if per_y < 2 else max(1, round(mask.shape[1] / per_y)),
            mask.shape[2] if per_x < 2 else max(1, round(mask.shape[2] / per_x)),
        )
        if target != tuple(mask.shape[1:]):
            mask = F.adaptive_avg_pool2d(mask[:, None], target)[:, 0]
    rows = _axis(h, top, bottom, m_top, m_bottom, mask.shape[1])
    cols = _axis(w, left, right, m_left, m_right, mask.shape[2])
    return _read(_read(mask, 1, rows, mode), 2, cols, mode)  # [B, h, w]


def bounding_box(boxes: Sequence[Region], clip: Region = FULL_IMAGE) -> Region:
    """The smallest box holding ``boxes``, intersected with ``clip``."""
    tops, lefts, bottoms, rights = zip(*boxes, strict=True)
    return (
        max(min(tops), clip[0]),
        max(min(lefts), clip[1]),
        min(max(bottoms), clip[2]),
        min(max(rights), clip[3]),
    )
