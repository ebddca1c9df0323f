"""One-call explanation: capture a trace for one image and question, then run a method."""

from __future__ import annotations

import time
from typing import Any

from . import methods
from .explanation import Explanation
from .images import ImageLike
from .models.base import ModelAdapter


def explain(
    adapter: ModelAdapter,
    image: ImageLike,
    question: str,
    method: str = "glimpse",
    answer: str | None = None,
    **hparams: Any,
) -> Explanation:
    """Explain the model's answer (generated when ``answer`` is None) with ``method``."""
    attributor = methods.get(method, **hparams)
    needs = attributor.needs
    start = time.perf_counter()
    trace = adapter.trace(
        image, question, answer, gradients=needs.gradients, hidden_states=needs.hidden_states
    )
    if needs.model:
        trace.meta["adapter"] = adapter
        trace.meta["image"] = image
        trace.meta["question"] = question
    capture_s = time.perf_counter() - start
    expl = attributor.explain(trace)
    expl.timings["capture_s"] = capture_s
    expl.meta.setdefault("answer", trace.meta.get("answer_text"))
    expl.meta.setdefault("answer_source", trace.answer_source)
    return expl
