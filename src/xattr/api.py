"""One-call explanation: capture one trace for an image and a question, run one or more methods."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from . import methods, targets
from .explanation import Explanation
from .images import PromptImages
from .methods.base import Attributor, Needs
from .methods.tokens import visual_logprobs
from .models.base import ModelAdapter
from .targets import Target
from .trace import Trace

MethodSpec = (
    str | Attributor | Sequence[str | Attributor] | Mapping[str, Mapping[str, Any] | Attributor]
)


def build_methods(method: MethodSpec, **hparams: Any) -> dict[str, Attributor]:
    """Methods by name from a name, an instance, a list of either, or ``{name: hparams}``.

    ``hparams`` go to every listed method that declares them (a name no method declares is
    an error), so ``method=["glimpse", "tmme"], return_token_maps=True`` asks both.
    """
    if isinstance(method, (str, Attributor)):
        method = [method]
    items: list[tuple[str, Attributor | Mapping[str, Any]]]
    if isinstance(method, Mapping):
        items = list(method.items())
    else:
        items = [(m.name, m) if isinstance(m, Attributor) else (m, {}) for m in method]
        methods.refuse_twins([name for name, _ in items])
    if not items:
        raise ValueError("no method given: pass method='glimpse' or method=['glimpse', 'tmme']")
    used: set[str] = set()
    built = {}
    for name, spec in items:
        if isinstance(spec, Attributor):
            built[name] = spec
            continue
        cls, variant = methods.resolve(name)
        fields = {f.name for f in cls.hparam_fields()}
        shared = {k: v for k, v in hparams.items() if k in fields}
        used |= set(shared)
        own = variant.overrides if variant else {}
        built[name] = cls(**{**own, **shared, **dict(spec)})
    unknown = sorted(set(hparams) - used)
    if unknown:
        raise TypeError(f"no selected method takes the hyper-parameter(s) {unknown}")
    return built


def capture_needs(chosen: Mapping[str, Attributor]) -> Needs:
    """What one shared capture must record for every chosen method."""
    needs = Needs(attentions=False)
    for m in chosen.values():
        needs = needs | m.needs
    return needs


def explain(
    adapter: ModelAdapter,
    image: PromptImages,
    question: str,
    method: MethodSpec = "glimpse",
    answer: str | None = None,
    target: Target = None,
    contrast: str | None = None,
    visual_dependence: bool = False,
    **hparams: Any,
) -> Explanation | dict[str, Explanation]:
    """Explain the model's answer to ``question`` about ``image`` (or a list of images, shown
    in order where the family's template puts them: each map says which image it covers,
    `Explanation.image_shares` how the relevance splits between them) — the whole answer
    (generated when ``answer`` is None), or the part of it
    ``target`` names (`xattr.targets`: a phrase, ``(start, end)``, ``"sentences"``,
    ``"final"``, ``"reasoning"``). ``contrast`` explains the answer against an alternative
    (the target phrase replaced by it, or a whole other answer): the difference of the two
    tokens' logits where the answers first differ (`targets.contrast`), for the methods that
    follow any z_t (GLIMPSE, TMME, Grad-CAM). ``visual_dependence`` adds each answer token's
    ``log p(y_t | image) − log p(y_t | blurred image)`` (two more forward passes).

    One method (a name or an instance) gives an `Explanation`; several (a list, or
    ``{name: hparams}``) give ``{name: Explanation}`` from ONE capture, each answer token's
    gradients computed once whatever the number of methods (once per span and once for
    the whole answer with ``target="sentences"``).
    """
    chosen = build_methods(method, **hparams)
    if contrast is not None:
        refused = sorted(name for name, m in chosen.items() if not m.contrastive)
        if refused:
            raise ValueError(
                f"{', '.join(refused)} cannot explain a contrast: they read attention or the "
                "answer's own probabilities, not a difference of logits; use glimpse, tmme or "
                "gradcam"
            )
    trace, capture_s = capture(adapter, image, question, answer, chosen)
    if contrast is not None:
        span = targets.contrast(trace, adapter, contrast, target)
        target = (span.start, span.end)
    out = explain_target(trace, chosen, target)
    if visual_dependence:
        dependence = image_dependence(trace)
        for expl in out.values():
            expl.visual_dependence = dependence.clone()
    for expl in out.values():
        expl.timings["capture_s"] = capture_s
        expl.meta.setdefault("answer", trace.meta.get("answer_text"))
        expl.meta.setdefault("answer_source", trace.answer_source)
        expl.meta.setdefault("answer_cut", trace.meta.get("answer_cut", False))
    if isinstance(method, (str, Attributor)):
        return next(iter(out.values()))
    return out


def explain_target(
    trace: Trace,
    chosen: Mapping[str, Attributor],
    target: Target = None,
    **options: Any,
) -> dict[str, Explanation]:
    """Every chosen method's explanation of ``target`` in ``trace``'s answer, with its spans:
    the target's, or each sentence's (whose holistic map is the whole answer's). ``options``
    go to `methods.explain_all` (``on_method``, ``on_error``)."""
    spans = targets.resolve(trace.answer_tokens, target)
    length = trace.num_answer_tokens
    parts: list[dict[str, Explanation]] = []
    try:
        if target == "sentences":
            for span in spans:
                trace.target = targets.mask(span, length)
                parts.append(methods.explain_all(trace, chosen, **options))
            trace.target = None
        else:
            trace.target = None if target is None else targets.mask(spans[0], length)
        out = methods.explain_all(trace, chosen, **options)
    finally:
        trace.target = None
    for name, expl in out.items():
        expl.meta["target"] = target if target is None or isinstance(target, str) else list(target)
        if "contrast" in trace.meta:  # `targets.contrast` made z_d a difference of logits
            expl.meta["contrast"] = trace.meta["contrast"]
        if target is None:
            continue
        own = [p[name].visual_maps for p in parts if name in p] or [expl.visual_maps]
        expl.spans = [
            targets.Span(s.text, s.start, s.end, float(expl.token_relevance[s.start : s.end].sum()),
                         [m.clone() for m in maps])  # its own tensors (saved apart)
            for s, maps in zip(spans, own, strict=True)
        ]  # fmt: skip
    return out


def image_dependence(trace: Trace) -> Tensor:
    """[T] ``log p(y_t | image) − log p(y_t | blurred)`` of the trace's answer (the `visual`
    token policy's likelihood ratio; two teacher-forced passes, memoised on the trace)."""
    logp, blurred = visual_logprobs(trace)
    return (logp - blurred).float().cpu()


def capture(
    adapter: ModelAdapter,
    image: PromptImages,
    question: str,
    answer: str | None,
    chosen: Mapping[str, Attributor],
) -> tuple[Trace, float]:
    """The one trace every chosen method needs, and the seconds it took."""
    needs = capture_needs(chosen)
    start = time.perf_counter()
    trace = adapter.trace(
        image, question, answer, gradients=needs.gradients, hidden_states=needs.hidden_states
    )
    return trace, time.perf_counter() - start
