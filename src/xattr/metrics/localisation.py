"""Localisation against a binary ground-truth mask (SPEC §7): pointing game, top-k IoU, energy.

The reference is a mask: ``M = reference > mask_threshold`` (default 0, so ``{0, 1}``,
``{0, 255}`` and boolean masks all work). ``S`` is resized to the mask's size (bilinear,
``align_corners=False``) and all pixel quantities are at the mask's resolution. An empty
mask -> NaN with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from scipy import ndimage

from xattr.metrics._base import METRICS, MapMetric, is_constant, undefined


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels whose centre lies within Euclidean distance ``radius`` of a mask pixel."""
    if radius <= 0:
        return mask
    return ndimage.distance_transform_edt(~mask) <= radius


class _MaskMetric(MapMetric):
    mask_threshold: float

    def _score(self, s: np.ndarray, r: np.ndarray) -> float:
        mask = r > self.mask_threshold
        if not mask.any():
            return undefined(self.name, f"empty mask (reference > {self.mask_threshold})")
        return self._score_mask(s, mask)

    def _score_mask(self, s: np.ndarray, mask: np.ndarray) -> float:
        raise NotImplementedError


@METRICS.register("pointing_game")
@dataclass(frozen=True)
class PointingGame(_MaskMetric):
    """Pointing game: 1 if the saliency peak falls in the (tolerance-dilated) mask, else 0.

    Definition: the mask is dilated by ``tolerance`` pixels (Euclidean, default 15, at the
    mask's resolution; 0 = no tolerance); the score is a hit if the argmax of ``S`` lies in
    it. Ties for the maximum (``ties``): ``"any"`` (default) = hit if any maximal pixel
    hits; ``"first"`` = the first maximal pixel in row-major order (``np.argmax``, what
    most implementations do); ``"mean"`` = fraction of maximal pixels that hit (the
    expected score under uniform random tie-breaking). A constant saliency map has no peak
    -> NaN with a warning.

    Range: {0, 1} per sample ([0, 1] with ``ties="mean"``); the mean over samples is the
    hit rate. Better: higher.
    """

    name: ClassVar[str] = "pointing_game"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "{0, 1} per sample"

    tolerance: float = 15.0
    ties: Literal["any", "first", "mean"] = "any"
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.ties not in ("any", "first", "mean"):
            raise ValueError(f"ties must be 'any', 'first' or 'mean', got {self.ties!r}")

    def _score_mask(self, s: np.ndarray, mask: np.ndarray) -> float:
        if is_constant(s):
            return undefined(self.name, "constant saliency map has no peak")
        region = dilate(mask, self.tolerance)
        if self.ties == "first":
            return float(region.flat[int(np.argmax(s))])
        hits = region[s == s.max()]
        return float(hits.any()) if self.ties == "any" else float(hits.mean())


@METRICS.register("iou_topk")
@dataclass(frozen=True)
class TopKIoU(_MaskMetric):
    """Top-k% IoU: intersection over union of the k% most salient pixels with the mask.

    Definition: ``n = round(k * #pixels)`` (at least 1), ``k`` a fraction in (0, 1]
    defaulting to the mask's own area fraction (so ``n = |M|``); ``T = {S >= v_n}`` with
    ``v_n`` the n-th largest saliency value; ``IoU = |T & M| / |T | M|``. Ties at ``v_n``
    are all included (deterministic, so ``T`` may exceed ``n`` pixels). A constant
    saliency map ranks nothing -> NaN with a warning.

    Range: [0, 1]. Better: higher.
    """

    name: ClassVar[str] = "iou_topk"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "[0, 1]"

    k: float | None = None
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.k is not None and not 0.0 < self.k <= 1.0:
            raise ValueError(f"k is a fraction in (0, 1], got {self.k}")

    def _score_mask(self, s: np.ndarray, mask: np.ndarray) -> float:
        if is_constant(s):
            return undefined(self.name, "constant saliency map has no top-k region")
        frac = float(mask.mean()) if self.k is None else self.k
        n = min(s.size, max(1, int(np.floor(frac * s.size + 0.5))))
        flat = s.ravel()
        kth = np.partition(flat, s.size - n)[s.size - n]
        top = s >= kth
        return float((top & mask).sum() / (top | mask).sum())


@METRICS.register("energy_pointing_game")
@dataclass(frozen=True)
class EnergyPointingGame(_MaskMetric):
    """Energy-based pointing game: share of the saliency mass that falls inside the mask.

    Definition: ``S`` is treated as non-negative energy: negative values are clipped to 0
    (signed maps score their positive part only); ``EPG = sum_{M} S+ / sum S+``. No
    positive saliency at all -> NaN with a warning. A constant positive map scores the
    mask's area fraction (the chance level).

    Range: [0, 1]. Better: higher.
    """

    name: ClassVar[str] = "energy_pointing_game"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "[0, 1]"

    mask_threshold: float = 0.0

    def _score_mask(self, s: np.ndarray, mask: np.ndarray) -> float:
        pos = np.clip(s, 0.0, None)
        total = pos.sum()
        if total <= 0:
            return undefined(self.name, "saliency map has no positive energy")
        return float(pos[mask].sum() / total)
