"""Agreement with a continuous human attention map (SPEC §7): NSS, Spearman, CC, KL, SIM.

``S`` is the saliency map, ``H`` the human map. Unless a metric says otherwise, ``S`` is
first resized to ``H``'s size (bilinear, ``align_corners=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import stats

from xattr.metrics._base import METRICS, MapMetric, is_constant, top_region, undefined
from xattr.metrics._resize import resize_area

KL_EPS = 2.2204e-16


@METRICS.register("nss")
@dataclass(frozen=True)
class NSS(MapMetric):
    """Normalized Scanpath Saliency: mean z-scored saliency over the human map's top pixels.

    Definition: ``F = 1[H >= percentile(H, q)]`` (``q = percentile``, default 90, numpy's
    linear interpolation) and ``NSS = mean_{F} (S - mean S) / std S`` (population std,
    ddof=0). With ``exclude_min=True`` (default, our choice) pixels at ``H``'s minimum
    value are never in ``F``: this only matters when at least ``q``% of ``H`` sits at its
    minimum (a sparse or constant map), where the literal formula would put *every* pixel
    in ``F`` and return exactly 0. Hence a constant human map (all-zero included) has an
    empty ``F`` -> NaN with a warning. Constant ``S`` -> 0 with a warning (SPEC §7).

    Range: (-inf, inf), 0 = chance. Better: higher.
    """

    name: ClassVar[str] = "nss"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "(-inf, inf), 0 = chance"

    percentile: float = 90.0
    exclude_min: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")

    def _score(self, s: np.ndarray, h: np.ndarray) -> float:
        if self.exclude_min:
            fixated = top_region(h, self.percentile)
        else:
            fixated = h >= np.percentile(h, self.percentile)
        if not fixated.any():
            return undefined(self.name, "empty fixation set F (constant or all-zero human map)")
        if is_constant(s):
            return undefined(self.name, "constant saliency map has no z-score", 0.0)
        z = (s - s.mean()) / s.std()
        return float(z[fixated].mean())


@METRICS.register("spearman")
@dataclass(frozen=True)
class Spearman(MapMetric):
    """Spearman rank correlation between saliency and human map on a protocol grid.

    Definition: both maps are resized to ``grid`` (default 14x14, the VQA-HAT protocol) by
    exact area averaging, then ``rho = Pearson(rank(S), rank(H))`` with average ranks for
    ties (``scipy.stats.spearmanr``). ``grid=None`` keeps the reference's native resolution
    (``S`` resized to it bilinearly). A constant map (after resizing) -> NaN with a warning.

    Range: [-1, 1], 0 = no monotone association. Better: higher.
    """

    name: ClassVar[str] = "spearman"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "[-1, 1]"

    grid: tuple[int, int] | int | None = (14, 14)

    def __post_init__(self) -> None:
        if self.grid is None:
            return
        grid = (self.grid, self.grid) if isinstance(self.grid, int) else tuple(self.grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be None, an int or (rows, cols) >= 1, got {self.grid}")
        object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))

    def align(self, saliency: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resize both maps to the protocol grid by area averaging (or apply the default rule)."""
        if self.grid is None:
            return super().align(saliency, reference)
        return resize_area(saliency, self.grid), resize_area(reference, self.grid)

    def _score(self, s: np.ndarray, h: np.ndarray) -> float:
        if is_constant(s) or is_constant(h):
            return undefined(self.name, "constant input has no ranking")
        return float(stats.spearmanr(s.ravel(), h.ravel()).statistic)


@METRICS.register("cc")
@dataclass(frozen=True)
class CC(MapMetric):
    """Pearson linear correlation coefficient between saliency and human map.

    Definition: ``CC = sum (S - mean S)(H - mean H) / sqrt(sum (S - mean S)^2 sum (H - mean H)^2)``
    over pixels. A constant map -> NaN with a warning.

    Range: [-1, 1], 0 = uncorrelated. Better: higher.
    """

    name: ClassVar[str] = "cc"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "[-1, 1]"

    def _score(self, s: np.ndarray, h: np.ndarray) -> float:
        if is_constant(s) or is_constant(h):
            return undefined(self.name, "constant input has no variance")
        s0, h0 = s - s.mean(), h - h.mean()
        r = float((s0 * h0).sum() / np.sqrt((s0 * s0).sum() * (h0 * h0).sum()))
        return min(1.0, max(-1.0, r))


def _as_distribution(x: np.ndarray) -> np.ndarray | None:
    """Clip negatives to 0 and normalise to sum 1; None when no positive mass is left."""
    x = np.clip(x, 0.0, None)
    total = x.sum()
    return None if total <= 0 else x / total


@METRICS.register("kl")
@dataclass(frozen=True)
class KL(MapMetric):
    """Kullback-Leibler divergence of the saliency distribution from the human distribution.

    Definition: negatives are clipped to 0, ``S' = S / sum S``, ``H' = H / sum H``, then
    ``KL = sum H' log(eps + H' / (S' + eps))`` with ``eps = 2.2204e-16`` (natural log). A map
    with no positive mass (all <= 0) -> NaN with a warning.

    Range: [0, inf) up to eps effects (0 = identical distributions). Better: lower.
    """

    name: ClassVar[str] = "kl"
    higher_is_better: ClassVar[bool] = False
    range: ClassVar[str] = "[0, inf)"

    eps: float = KL_EPS

    def _score(self, s: np.ndarray, h: np.ndarray) -> float:
        sp, hp = _as_distribution(s), _as_distribution(h)
        if sp is None or hp is None:
            which = "saliency" if sp is None else "human map"
            return undefined(self.name, f"{which} has no positive mass")
        return float(np.sum(hp * np.log(self.eps + hp / (sp + self.eps))))


def _minmax_distribution(x: np.ndarray) -> np.ndarray:
    x = (x - x.min()) / (x.max() - x.min())
    return x / x.sum()


@METRICS.register("sim")
@dataclass(frozen=True)
class SIM(MapMetric):
    """Similarity (histogram intersection) of the two maps as distributions.

    Definition: each map is min-max normalised to [0, 1], then normalised to sum 1, and
    ``SIM = sum min(S', H')``. A constant map (no min-max range) -> NaN with a warning.

    Range: [0, 1] (1 = identical). Better: higher.
    """

    name: ClassVar[str] = "sim"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "[0, 1]"

    def _score(self, s: np.ndarray, h: np.ndarray) -> float:
        if is_constant(s) or is_constant(h):
            return undefined(self.name, "constant input cannot be min-max normalised")
        return float(np.minimum(_minmax_distribution(s), _minmax_distribution(h)).sum())
