"""Saliency-map metrics behind a name registry (SPEC §7): ``get(name, **options)(saliency, reference)``.

Each metric module registers its classes in :data:`METRICS` on import; a new family
(e.g. ``faithfulness.py``, which needs a model in the loop) subclasses :class:`Metric`,
registers itself the same way and is imported below. Third-party packages plug in through
the ``xattr.metrics`` entry-point group.

Resize rule: when saliency and reference sizes differ, the saliency map is resized to the
reference's size (bilinear, ``align_corners=False``); ``spearman`` instead resizes both
maps to its protocol grid (default 14x14) by exact area averaging. Undefined values are NaN
with a :class:`MetricUndefinedWarning`.
"""

from __future__ import annotations

from typing import Any

from xattr.metrics import agreement, auc, localisation  # noqa: F401  (register metrics)
from xattr.metrics._base import METRICS, MapMetric, Metric, MetricUndefinedWarning, top_region
from xattr.metrics.faithfulness import DeletionInsertion, FaithfulnessCurves
from xattr.metrics.sanity import parameter_randomisation
from xattr.metrics.stats import (
    PairedResult,
    Summary,
    paired_comparison,
    results_table,
    summarize,
    summary_table,
)


def available() -> list[str]:
    """Sorted names of every registered metric."""
    return METRICS.available()


def get(name: str, **options: Any) -> Metric:
    """An instance of the metric registered as ``name``, configured with ``options``."""
    return METRICS.get_class(name)(**options)


__all__ = [
    "METRICS",
    "DeletionInsertion",
    "FaithfulnessCurves",
    "MapMetric",
    "Metric",
    "MetricUndefinedWarning",
    "PairedResult",
    "Summary",
    "available",
    "get",
    "paired_comparison",
    "parameter_randomisation",
    "results_table",
    "summarize",
    "summary_table",
    "top_region",
]
