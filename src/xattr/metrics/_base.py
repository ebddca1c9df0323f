"""The metric protocol: registry, base classes, input checks and the undefined-value warning.

Every metric is a small frozen dataclass whose fields are its options, registered under a
name in :data:`METRICS`; an instance is called on one sample and returns one float. A
metric that is undefined for a sample returns NaN and emits :class:`MetricUndefinedWarning`
(never a silent 0), so statistics can count the sample as skipped.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from xattr.metrics._resize import resize_bilinear
from xattr.registry import Registry
from xattr.warn import outside_stacklevel

METRICS: Registry[type[Metric]] = Registry("metric", "xattr.metrics")
"""All metrics by name; third-party packages add theirs via the ``xattr.metrics`` entry-point group."""


class MetricUndefinedWarning(UserWarning):
    """A metric was undefined for one sample (NaN returned) or set to a value by convention."""


def undefined(metric: str, reason: str, value: float = float("nan")) -> float:
    """Warn that ``metric`` is undefined because of ``reason`` and return ``value`` (NaN by default)."""
    shown = "NaN" if np.isnan(value) else repr(value)
    message = f"{metric}: {reason}; returning {shown}"
    warnings.warn(message, MetricUndefinedWarning, stacklevel=outside_stacklevel())
    return value


def as_map(x: Any, what: str) -> np.ndarray:
    """Convert a 2-D numpy array / torch tensor / nested list to a float64 array (no resizing)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D map, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    return arr


def is_constant(x: np.ndarray) -> bool:
    """True when every entry of ``x`` is equal (exact comparison, no tolerance)."""
    return bool(x.max() == x.min())


def top_region(h: np.ndarray, percentile: float = 90.0) -> np.ndarray:
    """The human map's top region: ``h >= percentile(h, q)`` and above ``h``'s minimum.

    Ties at the minimum never count, so a sparse map (>= q% zeros) gives its nonzero pixels,
    not the whole image, and a constant map gives an empty region.
    """
    return (h >= np.percentile(h, percentile)) & (h > h.min())


class Metric:
    """Anything registered in :data:`METRICS`: a name, a better direction and a value range."""

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[str] = ""

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        """Score one sample; the arguments depend on the metric family."""
        raise NotImplementedError


class MapMetric(Metric):
    """A metric comparing a saliency map with a reference map: ``metric(saliency, reference) -> float``.

    Inputs are 2-D numpy arrays or torch tensors. A NaN or inf anywhere in either input
    gives NaN with a :class:`MetricUndefinedWarning`. When the sizes differ, :meth:`align`
    resizes the saliency map to the reference's size by bilinear interpolation
    (``torch.nn.functional.interpolate``, ``align_corners=False``, no antialiasing);
    subclasses may override it (rank correlation uses its own protocol grid).
    """

    def __call__(self, saliency: Any, reference: Any) -> float:
        """Score one saliency map against one reference map."""
        s = as_map(saliency, "saliency")
        r = as_map(reference, "reference")
        for arr, what in ((s, "saliency"), (r, "reference")):
            if not np.isfinite(arr).all():
                return undefined(self.name, f"{what} contains NaN or inf")
        s, r = self.align(s, r)
        return float(self._score(s, r))

    def align(self, saliency: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bring both maps onto one grid: the saliency map is resized to the reference's size."""
        return resize_bilinear(saliency, reference.shape), reference

    def _score(self, saliency: np.ndarray, reference: np.ndarray) -> float:
        raise NotImplementedError
