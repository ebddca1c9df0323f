"""Score one sample: answer -> one trace -> every method -> every metric -> rows.

This layer knows no method's or model's internals: it asks methods for their needs,
the adapter for a trace, and metrics for numbers.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.sample import Sample
from ..explanation import Explanation
from ..images import FULL_IMAGE
from ..methods import Attributor
from ..methods.common import AttributionWarning
from ..metrics import Metric, top_region
from ..models.base import ModelAdapter

log = logging.getLogger(__name__)

# Metrics compared with the continuous human map vs with the binary object mask.
MASK_METRICS = frozenset({"pointing_game", "iou_topk", "energy_pointing_game"})
# Without a mask, those metrics use the human map's top region (`xattr.metrics.top_region`).
HUMAN_MAP_TOP_PERCENTILE = 90.0

# A metric that needs the model: (adapter, image, question, trace, explanation) -> {name: value}
ModelMetric = Callable[..., dict[str, float]]


@dataclass
class SampleResult:
    """Rows for one sample and the explanations behind them (for overlays)."""

    rows: list[dict[str, Any]]
    explanations: dict[str, Explanation] = field(default_factory=dict)
    answer: str = ""
    failures: dict[str, str] = field(default_factory=dict)  # method -> "ErrorType: message"


class SampleEvaluator:
    """Runs every configured method and metric on one sample, sharing one trace."""

    def __init__(
        self,
        adapter: ModelAdapter,
        methods: Mapping[str, Attributor],
        map_metrics: Mapping[str, Metric],
        model_metrics: Mapping[str, ModelMetric] | None = None,
        answer: str = "generated",
    ) -> None:
        if answer not in ("generated", "given"):
            raise ValueError(f"answer must be 'generated' or 'given', got {answer!r}")
        self.adapter = adapter
        self.methods = dict(methods)
        self.map_metrics = dict(map_metrics)
        self.model_metrics = dict(model_metrics or {})
        self.answer_mode = answer
        self.on_method_start: Callable[[str], None] | None = None  # e.g. a progress bar's label
        self._warned: set[tuple[str, str]] = set()

    @property
    def metric_names(self) -> list[str]:
        names = list(self.map_metrics)
        for name in self.model_metrics:
            names.extend(getattr(self.model_metrics[name], "outputs", [name]))
        return names

    def evaluate(self, sample: Sample, methods: list[str] | None = None) -> SampleResult:
        """Rows ``{sample_id, method, <metric>..., answer, correct, seconds}`` for ``methods``."""
        todo = [m for m in (methods or self.methods)]
        image = sample.load_image()
        needs_grad = any(self.methods[m].needs.gradients for m in todo)
        needs_hidden = any(self.methods[m].needs.hidden_states for m in todo)
        given = sample.answer if self.answer_mode == "given" else None
        if self.answer_mode == "given" and not given:
            raise ValueError(f"sample {sample.sample_id} has no answer to teacher-force")
        start = time.perf_counter()
        trace = self.adapter.trace(
            image, sample.question, given, gradients=needs_grad, hidden_states=needs_hidden
        )
        capture_s = time.perf_counter() - start
        answer = trace.meta.get("answer_text", "")
        correct = _is_correct(answer, sample)
        result = SampleResult(rows=[], answer=answer)
        for name in todo:
            if self.on_method_start is not None:
                self.on_method_start(name)
            try:  # one method's failure is recorded for that method only
                expl, row = self._method_row(name, sample, image, trace)
            except Exception as err:
                result.failures[name] = f"{type(err).__name__}: {err}"
                continue
            row["answer"] = answer
            if not math.isnan(correct):  # no reference answer: accuracy is not computed
                row["correct"] = correct
            row.update(attribute_s=expl.timings.get("attribute_s", math.nan), capture_s=capture_s)
            result.rows.append(row)
            result.explanations[name] = expl
        return result

    def _method_row(
        self, name: str, sample: Sample, image: Any, trace: Any
    ) -> tuple[Explanation, dict[str, Any]]:
        """One method's explanation of the shared trace and its row of metric scores."""
        method = self.methods[name]
        if method.needs.model:
            trace.meta.update(adapter=self.adapter, image=image, question=sample.question)
        expl, notes = self._explain(name, method, trace)
        row: dict[str, Any] = {"sample_id": sample.sample_id, "method": name, "warnings": notes}
        row.update(self._map_scores(expl, sample))
        for metric in self.model_metrics.values():
            row.update(metric(self.adapter, image, sample.question, trace, expl))
        return expl, row

    def _explain(self, name: str, method: Attributor, trace: Any) -> tuple[Explanation, list[str]]:
        """Run one method; its AttributionWarnings go into the row (and the log, once each)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expl = method.explain(trace)
        notes: list[str] = []
        for w in caught:
            if not issubclass(w.category, AttributionWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            text = str(w.message)
            if text not in notes:
                notes.append(text)
            if (name, text) not in self._warned:
                self._warned.add((name, text))
                log.warning("%s (logged once; every occurrence is counted in summary.json)", text)
        return expl, notes

    def _map_scores(self, expl: Explanation, sample: Sample) -> dict[str, float]:
        """Map metrics against the human map (agreement) or the object mask (localisation).

        When the grid covers only part of the image (a centre crop), the map is first placed
        on the reference's pixels (`Explanation.visual_pixels`) so the two stay aligned.
        """
        grid_map = expl.visual.detach().float().numpy()
        whole_image = expl.image_region == FULL_IMAGE
        scores = {}
        for name, metric in self.map_metrics.items():
            reference = _reference_for(name, sample)
            if reference is None:  # nothing to compare with: not computed (no key in the row)
                continue
            saliency = grid_map if whole_image else expl.visual_pixels(reference.shape[:2]).numpy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined values are NaN, counted as skipped
                scores[name] = float(metric(saliency, reference))
        return scores


def _reference_for(metric: str, sample: Sample) -> np.ndarray | None:
    """The object mask for localisation metrics (else the human map's top region), the human map
    (else the mask) for agreement metrics; None when the sample has neither."""
    if metric in MASK_METRICS:
        if sample.mask is not None:
            return sample.mask
        if sample.human_map is not None:  # ties at the minimum never count (a sparse map)
            region = top_region(sample.human_map, HUMAN_MAP_TOP_PERCENTILE)
            return region if region.any() else None
        return None
    if sample.human_map is not None:
        return sample.human_map
    return sample.mask.astype(np.float32) if sample.mask is not None else None


def _is_correct(answer: str, sample: Sample) -> float:
    """1.0 when the answer matches a reference answer (normalised), NaN when there is none."""
    refs = [a for a in [sample.answer, *sample.answers] if a]
    if not refs:
        return math.nan
    norm = _normalise(answer)
    return float(any(norm == _normalise(r) for r in refs))


def _normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".!?").split())
