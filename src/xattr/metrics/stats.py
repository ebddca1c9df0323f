"""Statistics over per-sample metric scores (SPEC §7): mean ± SEM, bootstrap CIs, paired tests, tables.

Non-finite scores (NaN from an undefined metric, or inf) are never averaged in: they are
counted as ``skipped`` and reported next to ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from xattr.metrics._base import METRICS

_BOOT_CHUNK = 1 << 21  # resampled values per chunk: bounds bootstrap memory to ~16 MB


@dataclass(frozen=True)
class Summary:
    """Mean ± SEM of the finite scores, their count ``n``, the non-finite count, a bootstrap CI."""

    mean: float
    sem: float
    n: int
    skipped: int
    ci_low: float
    ci_high: float

    def format(self, digits: int = 3) -> str:
        """``"mean ± sem (n=…)"``, plus ``", skipped k"`` when k > 0; ``"n/a"`` when n = 0."""
        counts = f"n={self.n}" + (f", skipped {self.skipped}" if self.skipped else "")
        if self.n == 0:
            return f"n/a ({counts})"
        value = f"{self.mean:.{digits}f}"
        if math.isfinite(self.sem):
            value += f" ± {self.sem:.{digits}f}"
        return f"{value} ({counts})"


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of two methods on the same samples (differences ``a - b``)."""

    mean_diff: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    n: int
    skipped: int


def _as_vector(scores: Iterable[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {x.shape}")
    return x


def bootstrap_mean_ci(
    x: np.ndarray, *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x``; NaN when ``len(x) < 2`` or ``n_boot < 1``."""
    if x.size < 2 or n_boot < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    rows = max(1, _BOOT_CHUNK // x.size)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    scores: Iterable[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Summary:
    """Mean, SEM (ddof=1), finite count, skipped count and a 95% percentile bootstrap CI of the mean.

    ``sem`` is NaN for n < 2; the CI is NaN for n < 2 or ``n_boot=0``; everything but the
    counts is NaN for n = 0. The CI is deterministic for a given ``seed``.
    """
    x = _as_vector(scores)
    finite = x[np.isfinite(x)]
    n, skipped = int(finite.size), int(x.size - finite.size)
    mean = float(finite.mean()) if n else math.nan
    sem = float(finite.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    low, high = bootstrap_mean_ci(finite, n_boot=n_boot, seed=seed, confidence=confidence)
    return Summary(mean=mean, sem=sem, n=n, skipped=skipped, ci_low=low, ci_high=high)


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedResult:
    """Compare two methods scored on the same samples: mean of ``a - b``, Wilcoxon, paired bootstrap CI.

    ``a[i]`` and ``b[i]`` must be the same sample. Pairs where either score is non-finite
    are dropped (``skipped``). The Wilcoxon signed-rank test is ``scipy.stats.wilcoxon``
    with its defaults (two-sided; zero differences dropped, ``zero_method="wilcox"``).
    When every difference is exactly 0 there is no evidence of a difference: statistic 0,
    p-value 1.0 (without calling scipy, whose behaviour there varies across versions).
    With no finite pair everything is NaN. The CI resamples pairs (i.e. differences).
    """
    xa, xb = _as_vector(a), _as_vector(b)
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must pair up sample by sample, got {xa.size} and {xb.size}")
    keep = np.isfinite(xa) & np.isfinite(xb)
    d = xa[keep] - xb[keep]
    n, skipped = int(d.size), int(xa.size - d.size)
    if n == 0:
        nan = math.nan
        return PairedResult(nan, nan, nan, nan, nan, n=0, skipped=skipped)
    if not d.any():
        statistic, p_value = 0.0, 1.0
    else:
        res = stats.wilcoxon(d)
        statistic, p_value = float(res.statistic), float(res.pvalue)
    low, high = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed, confidence=confidence)
    return PairedResult(
        mean_diff=float(d.mean()),
        ci_low=low,
        ci_high=high,
        statistic=statistic,
        p_value=p_value,
        n=n,
        skipped=skipped,
    )


_ID_KEYS = ("method", "sample_id")


def _order(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    methods: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for rec in records:
        methods.setdefault(rec["method"], None)
        for key, value in rec.items():  # numeric columns only (not answers or warning lists)
            if key not in _ID_KEYS and (value is None or isinstance(value, (int, float))):
                metrics.setdefault(key, None)
    return list(methods), list(metrics)


def summary_table(
    records: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Summary]]:
    """Summaries ``[method][metric]`` from per-sample records.

    Input form: one dict per (method, sample): ``{"method": str, "sample_id": ..., "<metric>":
    float, ...}``. ``metrics`` / ``methods`` default to every metric key / method in order of
    first appearance. A record missing a metric key counts as skipped for that metric
    (like NaN). A repeated (method, sample_id) pair is an error.
    """
    seen: set[tuple[Any, Any]] = set()
    for rec in records:
        if "sample_id" in rec:
            key = (rec["method"], rec["sample_id"])
            if key in seen:
                raise ValueError(f"duplicate record for method {key[0]!r}, sample {key[1]!r}")
            seen.add(key)
    found_methods, found_metrics = _order(records)
    methods = found_methods if methods is None else list(methods)
    metrics = found_metrics if metrics is None else list(metrics)
    table: dict[str, dict[str, Summary]] = {}
    for method in methods:
        rows = [rec for rec in records if rec["method"] == method]
        table[method] = {
            metric: summarize([rec.get(metric, math.nan) for rec in rows], n_boot=n_boot, seed=seed)
            for metric in metrics
        }
    return table


ACCURACY = "correct"  # the column the evaluation writes: 1 when the model's answer is right
VISUAL_DEPENDENCE = "visual_dependence"  # mean log-likelihood ratio image / blurred (a fact)
PER_SENTENCE = "_per_sentence"  # a map metric averaged over each answer's sentences
IMAGE_HIT = (
    "image_hit"  # several images: 1 when the image holding the most relevance is the queried one
)


def split_columns(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """``columns`` as (scores of the maps, accuracy and costs): the second are facts about the
    model's answer or the price of a metric, tabled and tested apart from the scores."""
    costs = {c for _, cls in METRICS.items() for c in getattr(cls, "costs", ())}
    other = {ACCURACY, VISUAL_DEPENDENCE, *costs}
    return [c for c in columns if c not in other], [c for c in columns if c in other]


def results_tables(
    records: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> str:
    """`results_table` of the scores, then (when there are some) one of accuracy and costs."""
    cols = list(metrics) if metrics is not None else _order(records)[1]
    scores, other = split_columns(cols)
    text = results_table(records, scores, methods)
    if other:
        text += "\n\nAccuracy and costs (not scores of the maps):\n\n"
        text += results_table(records, other, methods)
    return text


def column_header(metric: str) -> str:
    """A column's name with its better direction (↑ / ↓) where a registered metric states it
    (a model metric's columns included); costs and accuracy carry none."""
    higher = None
    base = metric.removesuffix(PER_SENTENCE)  # a metric averaged over sentences: its direction
    if base in METRICS:
        higher = METRICS.get_class(base).higher_is_better
    for _, cls in METRICS.items():
        by_column = getattr(cls, "higher_is_better", None)
        if isinstance(by_column, dict) and metric in by_column:
            higher = by_column[metric]
    if not isinstance(higher, bool) or metric in split_columns([metric])[1]:
        return metric
    return f"{metric} {'↑' if higher else '↓'}"


def results_table(
    records: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    *,
    digits: int = 3,
) -> str:
    """A markdown table, methods x metrics, cells ``"mean ± sem (n=…[, skipped k])"``.

    Same input form as :func:`summary_table`. Headers of registered metrics carry their
    better direction (↑ / ↓).
    """
    table = summary_table(records, metrics, methods, n_boot=0)
    cols = metrics if metrics is not None else _order(records)[1]
    lines = [
        "| method | " + " | ".join(column_header(m) for m in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method, row in table.items():
        cells = [row[m].format(digits) for m in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
