"""Score one sample: answer -> one trace -> every method -> every metric -> rows.

This layer knows no method's or model's internals: it asks methods for their needs,
the adapter for a trace, and metrics for numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import targets
from ..api import capture, explain_target, image_dependence
from ..data.sample import Sample
from ..explanation import Explanation
from ..images import FULL_IMAGE
from ..methods import AttributionWarning, Attributor
from ..metrics import Metric, top_region
from ..metrics.stats import ACCURACY, IMAGE_HIT, PER_SENTENCE, VISUAL_DEPENDENCE
from ..models.base import ModelAdapter
from ..trace import OUT_OF_MEMORY, OutOfMemory, free_accelerator_memory

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
        target: str | None = None,
        contrast: str | None = None,
        visual_dependence: bool = False,
    ) -> None:
        if answer not in ("generated", "given"):
            raise ValueError(f"answer must be 'generated' or 'given', got {answer!r}")
        self.adapter = adapter
        self.methods = dict(methods)
        self.map_metrics = dict(map_metrics)
        self.model_metrics = dict(model_metrics or {})
        self.answer_mode = answer
        self.target, self.contrast = target, contrast  # a sample's own fields win
        self.visual_dependence = visual_dependence  # a column: the answer's mean image effect
        self.on_method_start: Callable[[str], None] | None = None  # e.g. a progress bar's label
        self._warned: set[tuple[str, str]] = set()

    @property
    def metric_names(self) -> list[str]:
        names = list(self.map_metrics)
        for name in self.model_metrics:
            names.extend(getattr(self.model_metrics[name], "outputs", [name]))
        return names

    def evaluate(self, sample: Sample, methods: list[str] | None = None) -> SampleResult:
        """Rows ``{sample_id, method, <metric>..., answer, correct, seconds}`` for ``methods``.

        One trace serves every method; gradient methods share one sweep over it.
        """
        chosen = {m: self.methods[m] for m in (methods or self.methods)}
        image = sample.prompt_images()  # one image, or the list a prompt of several shows
        given = sample.answer if self.answer_mode == "given" else None
        if self.answer_mode == "given" and not given:
            raise ValueError(f"sample {sample.sample_id} has no answer to teacher-force")
        trace, capture_s = capture(self.adapter, image, sample.question, given, chosen)
        answer = trace.meta.get("answer_text", "")
        target = sample.target or self.target
        contrast = sample.contrast or self.contrast
        correct = _is_correct(answer, sample)
        result = SampleResult(rows=[], answer=answer)

        def failed(name: str, err: Exception) -> None:  # recorded for that method only
            if isinstance(err, OUT_OF_MEMORY):  # the sample is too large: skipped as a whole
                free_accelerator_memory()
                raise OutOfMemory(trace.seq_len, trace.num_answer_tokens) from err
            result.failures[name] = f"{type(err).__name__}: {err}"

        if contrast is not None:  # methods that cannot explain a contrast fail by name
            for name, method in list(chosen.items()):
                if not method.contrastive:
                    failed(name, ValueError(f"{name} cannot explain a contrast"))
                    chosen.pop(name)
            span = targets.contrast(trace, self.adapter, contrast, target)
            target = (span.start, span.end)  # type: ignore[assignment]
        dependence = image_dependence(trace) if self.visual_dependence else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AttributionWarning)  # kept per method, logged below
            explanations = explain_target(
                trace, chosen, target, on_method=self.on_method_start, on_error=failed
            )
        for name, expl in explanations.items():
            try:
                row = self._method_row(name, expl, sample, image, trace)
            except Exception as err:
                failed(name, err)
                continue
            row["answer"] = answer
            if dependence is not None:
                expl.visual_dependence = dependence.clone()
                row[VISUAL_DEPENDENCE] = float(dependence.mean())
            if not math.isnan(correct):  # no reference answer: accuracy is not computed
                row[ACCURACY] = correct
            row.update(attribute_s=expl.timings.get("attribute_s", math.nan), capture_s=capture_s)
            result.rows.append(row)
            result.explanations[name] = expl
        return result

    def _method_row(
        self, name: str, expl: Explanation, sample: Sample, image: Any, trace: Any
    ) -> dict[str, Any]:
        """One method's row of metric scores for its explanation of the shared trace."""
        notes = expl.meta.get("warnings", [])
        self._log_once(name, notes)
        row: dict[str, Any] = {"sample_id": sample.sample_id, "method": name, "warnings": notes}
        row.update(self._map_scores(expl, sample))
        if len(expl.spans) > 1:  # target=sentences: each sentence's map scored too
            row.update(self._span_scores(expl, sample))
        for metric_name, metric in self.model_metrics.items():
            try:
                row.update(metric(self.adapter, image, sample.question, trace, expl))
            except NotImplementedError as err:  # e.g. perturbing video frames: not built yet
                self._log_once(metric_name, [f"{metric_name}: not computed ({err}); NaN"])
                row.update({out: math.nan for out in getattr(metric, "outputs", [metric_name])})
        return row

    def _log_once(self, name: str, notes: list[str]) -> None:
        """Log each method warning the first time it is seen (all are counted in summary.json)."""
        for text in notes:
            if (name, text) not in self._warned:
                self._warned.add((name, text))
                log.warning("%s (logged once; every occurrence is counted in summary.json)", text)

    def _span_scores(self, expl: Explanation, sample: Sample) -> dict[str, float]:
        """``<metric>_per_sentence``: each span's map scored as the holistic one, averaged over
        the sample's spans (NaN scores left out)."""
        per_span = [
            self._map_scores(
                dataclasses.replace(
                    expl, visual=span.visual_maps[0], more_maps=span.visual_maps[1:],
                    token_maps=None, more_token_maps=None, layer_maps=None,
                    more_layer_maps=None, spans=[],
                ),
                sample,
            )
            for span in expl.spans
        ]  # fmt: skip
        out = {}
        for name in per_span[0]:
            values = [s[name] for s in per_span if not math.isnan(s[name])]
            out[f"{name}{PER_SENTENCE}"] = float(np.mean(values)) if values else math.nan
        return out

    def _map_scores(self, expl: Explanation, sample: Sample) -> dict[str, float]:
        """Map metrics against the human map (agreement) or the object mask (localisation).

        When the grid covers only part of the image (a centre crop), the map is first placed
        on the reference's pixels (`Explanation.visual_pixels`) so the two stay aligned.
        Several images: `_strip_scores`.
        """
        if sample.num_images > 1:
            return self._strip_scores(expl, sample)
        grid_map = expl.visual.detach().float().numpy()
        whole_image = expl.image_region == FULL_IMAGE
        scores = {}
        for name, metric in self.map_metrics.items():
            reference = _reference_for(name, sample.mask, sample.human_map)  # type: ignore[arg-type]
            if reference is None:  # nothing to compare with: not computed (no key in the row)
                continue
            saliency = grid_map if whole_image else expl.visual_pixels(reference.shape[:2]).numpy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined values are NaN, counted as skipped
                scores[name] = float(metric(saliency, reference))
        return scores

    def _strip_scores(self, expl: Explanation, sample: Sample) -> dict[str, float]:
        """Several images, scored as one strip: the images side by side at the first one's
        height (each keeping its aspect), the map composed on each, the reference of each
        (zeros where an image has none). So the pointing game asks for the right spot in the
        right image, and NSS normalises over every image's pixels. ``image_hit``: whether the
        image with the largest share of relevance is the one image whose mask is non-empty.
        A video's sampled frames are its images, each scored on its frame group's map."""
        height = sample.hw_of(0)[0]
        sizes = []
        for k in range(sample.num_images):
            h, w = sample.hw_of(k)
            sizes.append((height, max(1, round(w * height / h))))

        def composed(k: int, hw: tuple[int, int]) -> np.ndarray:  # a video: frame k's map
            if sample.is_video:
                return expl.frame_pixels(hw, frame=k).numpy()
            return expl.visual_pixels(hw, image=k).numpy()

        saliency = np.concatenate([composed(k, hw) for k, hw in enumerate(sizes)], axis=1)
        masks = [sample.mask_at(hw, image=k) for k, hw in enumerate(sizes)]  # resampled once
        human_maps = [sample.human_map_at(hw, image=k) for k, hw in enumerate(sizes)]
        scores = {}
        for name, metric in self.map_metrics.items():
            refs = [_reference_for(name, m, h) for m, h in zip(masks, human_maps, strict=True)]
            if all(r is None for r in refs):
                continue
            dtype = next(r.dtype for r in refs if r is not None)
            strip = np.concatenate(
                [
                    np.zeros(hw, dtype) if r is None else r
                    for r, hw in zip(refs, sizes, strict=True)
                ],
                axis=1,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores[name] = float(metric(saliency, strip))
        holding = [k for k, m in enumerate(masks) if m is not None and m.any()]
        shares = expl.image_shares
        if len(holding) == 1 and not sample.is_video and not torch.isnan(shares).any():
            scores[IMAGE_HIT] = float(int(shares.argmax()) == holding[0])
        return scores


def _reference_for(
    metric: str, mask: np.ndarray | None, human_map: np.ndarray | None
) -> np.ndarray | None:
    """The object mask for localisation metrics (else the human map's top region), the human map
    (else the mask) for agreement metrics; None when the sample has neither."""
    if metric in MASK_METRICS:
        if mask is not None:
            return mask
        if human_map is not None:  # ties at the minimum never count (a sparse map)
            region = top_region(human_map, HUMAN_MAP_TOP_PERCENTILE)
            return region if region.any() else None
        return None
    if human_map is not None:
        return human_map
    return mask.astype(np.float32) if mask is not None else None


def _is_correct(answer: str, sample: Sample) -> float:
    """1.0 when the answer matches a reference answer (normalised), NaN when there is none."""
    refs = [a for a in [sample.answer, *sample.answers] if a]
    if not refs:
        return math.nan
    norm = _normalise(answer)
    return float(any(norm == _normalise(r) for r in refs))


def _normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".!?").split())
