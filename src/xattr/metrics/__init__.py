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
from xattr.registry import UnknownNameError

METRICS.register("faithfulness")(DeletionInsertion)  # the model-in-the-loop metric


def available() -> list[str]:
    """Sorted names of every registered metric (map metrics and model-in-the-loop ones)."""
    return METRICS.available()


def model_metric_columns() -> dict[str, list[str]]:
    """``{metric: [column, ...]}`` for the registered metrics that write several columns."""
    return {
        name: list(cls.higher_is_better)
        for name, cls in METRICS.items()
        if isinstance(getattr(cls, "higher_is_better", None), dict)
    }


def get(name: str, **options: Any) -> Metric:
    """An instance of the metric registered as ``name``, configured with ``options``; a
    column name (``deletion_auc``) names the metric that writes it."""
    owner = next((m for m, cols in model_metric_columns().items() if name in cols), None)
    if owner is not None and name not in METRICS:
        raise UnknownNameError(
            f"{name!r} is a column of the {owner!r} metric: "
            f"xattr.metrics.get({owner!r}, ...) (metrics=[{owner}] in a run)"
        )
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
    "model_metric_columns",
    "paired_comparison",
    "parameter_randomisation",
    "results_table",
    "summarize",
    "summary_table",
    "top_region",
]
