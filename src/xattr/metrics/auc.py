"""AUC-Judd: how well the saliency map separates fixated from non-fixated pixels (SPEC §7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xattr.metrics._base import METRICS, MapMetric, undefined


def auc_judd(s: np.ndarray, fixated: np.ndarray) -> float:
    """Judd ROC area with thresholds at the distinct saliency values of fixated pixels."""
    pos = np.sort(s[fixated])
    neg = np.sort(s[~fixated])
    thresholds = np.unique(pos)[::-1]  # descending; equal values form one step
    tp = (pos.size - np.searchsorted(pos, thresholds, side="left")) / pos.size
    fp = (neg.size - np.searchsorted(neg, thresholds, side="left")) / neg.size
    tp = np.concatenate(([0.0], tp, [1.0]))
    fp = np.concatenate(([0.0], fp, [1.0]))
    return float(np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2.0))


@METRICS.register("auc_judd")
@dataclass(frozen=True)
class AUCJudd(MapMetric):
    """AUC-Judd: area under the ROC of fixated (positive) vs all other (negative) pixels.

    Definition: fixated pixels are ``reference > threshold`` (default 0: any positive human
    attention, or the ones of a binary fixation map); every other pixel is a negative. The
    thresholds are the distinct saliency values of fixated pixels, high to low; at each
    threshold ``t``, TPR = fraction of fixated pixels with ``S >= t``, FPR = fraction of
    negatives with ``S >= t``. The curve (0,0) -> (FPR_t, TPR_t) ... -> (1,1) is integrated
    with the trapezoid rule. Ties are exact: pixels with equal saliency enter at one
    threshold step (no random jitter), so a constant saliency map scores exactly 0.5. No
    fixated pixel, or no negative pixel -> NaN with a warning.

    Range: [0, 1], 0.5 = chance. Better: higher.
    """

    name: ClassVar[str] = "auc_judd"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = "[0, 1], 0.5 = chance"

    threshold: float = 0.0

    def _score(self, s: np.ndarray, h: np.ndarray) -> float:
        fixated = h > self.threshold
        if not fixated.any():
            return undefined(self.name, f"no fixated pixel (reference > {self.threshold})")
        if fixated.all():
            return undefined(self.name, "every pixel is fixated: no negatives")
        return auc_judd(s, fixated)
