"""What part of the answer to explain: the whole of it, a phrase, a token range, each
sentence, or the final answer / the reasoning of a thinking model.

A target is a set of answer tokens. Every method aggregates over the tokens its token
policy keeps (`methods.tokens.select_tokens`); a target narrows that set (`Trace.target`),
so every method supports targets with no code of its own: the map of a target is the
method's map of the answer with only the target's tokens counted. Spans are found in the
tokens' display texts (`Trace.answer_tokens`), so a phrase is given as the answer reads.

- ``None``: the whole answer.
- ``"red umbrella"``: the tokens that span that text (exact, else ignoring case; a token
  partly inside counts); an error naming the answer when it is not there.
- ``(start, end)``: answer tokens ``start .. end - 1``.
- ``"sentences"``: one span per sentence (ended by ``.``, ``!``, ``?``, ``。``, ``！``, ``？``
  or a blank line); the holistic map is the whole answer's.
- ``"final"`` / ``"reasoning"``: after / inside the answer's thinking section
  (``<think> … </think>``); without one, ``"final"`` is the whole answer and
  ``"reasoning"`` an error. A final part wrapped in ``<answer> … </answer>`` (GLM-4.1V-Thinking
  writes ``<think>…</think><answer>…</answer>``) is the text inside the tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Target = str | tuple[int, int] | None
KEYWORDS = ("sentences", "final", "reasoning")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n\s*\n")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"  # GLM-4.1V-Thinking's final-answer tags


class TargetError(ValueError):
    """A target that is not in the answer (named with the answer)."""


@dataclass
class Span:
    """A part of the answer: its text, answer tokens ``start .. end - 1``, and once explained
    its share of the method's token relevance and its own map per token grid."""

    text: str
    start: int
    end: int
    relevance: float | None = None
    visual_maps: list[Tensor] = field(default_factory=list)  # [h, w] per grid of the parent

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "relevance": self.relevance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], maps: list[Tensor] | None = None) -> Span:
        return cls(str(data["text"]), int(data["start"]), int(data["end"]),
                   data.get("relevance"), list(maps or []))  # fmt: skip


def _offsets(texts: list[str]) -> list[tuple[int, int]]:
    """Each token's character range in the answer text ``"".join(texts)``."""
    out, at = [], 0
    for text in texts:
        out.append((at, at + len(text)))
        at += len(text)
    return out


def _tokens_in(texts: list[str], begin: int, end: int) -> tuple[int, int]:
    """The token range covering characters ``begin .. end - 1`` of the answer text; a token
    with no text of its own (part of a character) joins the token that completes it."""
    spans = _offsets(texts)
    inside = [t for t, (a, b) in enumerate(spans) if a < end and b > begin]
    if not inside:
        raise TargetError(f"characters {begin}..{end} of {''.join(texts)!r} hold no token")
    first, last = inside[0], inside[-1]
    while first > 0 and not texts[first - 1]:
        first -= 1
    return first, last + 1


def _span(texts: list[str], begin: int, end: int) -> Span:
    first, stop = _tokens_in(texts, begin, end)
    return Span("".join(texts[first:stop]), first, stop)


def resolve(texts: list[str], target: Target) -> list[Span]:
    """The spans ``target`` names in an answer whose tokens show ``texts`` (module docstring)."""
    answer = "".join(texts)
    whole = Span(answer, 0, len(texts))
    if target is None:
        return [whole]
    if isinstance(target, (tuple, list)):
        if len(target) != 2 or not all(isinstance(i, int) for i in target):
            raise TargetError(f"a token range is (start, end), got {target!r}")
        start, end = target
        if not 0 <= start < end <= len(texts):
            raise TargetError(
                f"token range {tuple(target)} is not inside the answer's {len(texts)} tokens "
                f"({answer!r})"
            )
        return [Span("".join(texts[start:end]), start, end)]
    if not isinstance(target, str) or not target.strip():
        raise TargetError(
            f"a target is None, a phrase, (start, end) or one of {KEYWORDS}; got {target!r}"
        )
    if target == "sentences":
        return sentences(texts)
    if target in ("final", "reasoning"):
        return [thinking_part(texts, target)]
    at = answer.find(target)
    if at < 0:
        at = answer.lower().find(target.lower())
    if at < 0:
        raise TargetError(f"{target!r} is not in the answer {answer!r}")
    return [_span(texts, at, at + len(target))]


def sentences(texts: list[str]) -> list[Span]:
    """One span per sentence of the answer (module docstring); blank stretches are left out."""
    answer = "".join(texts)
    out, begin = [], 0
    for match in [*SENTENCE_END.finditer(answer), None]:
        end = len(answer) if match is None else match.start()
        if answer[begin:end].strip():
            lead = len(answer[begin:end]) - len(answer[begin:end].lstrip())
            out.append(_span(texts, begin + lead, end))
        begin = len(answer) if match is None else match.end()
    return out or [Span(answer, 0, len(texts))]


def thinking_part(texts: list[str], part: str) -> Span:
    """The tokens after (``"final"``) or inside (``"reasoning"``) the thinking section."""
    answer = "".join(texts)
    close = answer.find(THINK_CLOSE)
    if close < 0:
        if part == "final":
            return Span(answer, 0, len(texts))
        raise TargetError(
            f"the answer has no thinking section ({THINK_OPEN}…{THINK_CLOSE}): {answer!r}"
        )
    opening = answer.find(THINK_OPEN)
    if part == "reasoning":  # whole tokens from after <think> up to the one </think> starts in
        begin = opening + len(THINK_OPEN) if 0 <= opening < close else 0
        spans = _offsets(texts)  # (a marker's token may carry a space before it: " </think>")
        stop = next(t for t, (_, b) in enumerate(spans) if b > close)
        first = next((t for t, (a, _) in enumerate(spans) if a >= begin), stop)
        if first >= stop:
            raise TargetError(f"the thinking section is empty: no reasoning in {answer!r}")
        return Span("".join(texts[first:stop]), first, stop)
    begin, end = close + len(THINK_CLOSE), len(answer)
    rest = answer[begin:end]
    begin += len(rest) - len(rest.lstrip())
    if answer.startswith(ANSWER_OPEN, begin):  # <answer> … </answer>: the text inside
        begin += len(ANSWER_OPEN)
        closing = answer.find(ANSWER_CLOSE, begin)
        end = closing if closing >= 0 else end
        inside = answer[begin:end]
        begin += len(inside) - len(inside.lstrip())
        end -= len(inside) - len(inside.rstrip())
    if begin >= end:
        raise TargetError(f"the answer ends with its thinking section: nothing final in {answer!r}")
    return _span(texts, begin, end)


def mask(span: Span, length: int) -> Tensor:
    """Bool [T]: the span's answer tokens."""
    out = torch.zeros(length, dtype=torch.bool)
    out[span.start : span.end] = True
    return out


# ---------------------------------------------------------------------------- contrast
def alternative_answer(texts: list[str], target: Target, contrast: str) -> str:
    """The answer ``contrast`` stands for: with a phrase target, the answer with that phrase
    replaced by ``contrast`` ("why yellow and not green?"); otherwise ``contrast`` itself."""
    if isinstance(target, str) and target not in KEYWORDS:
        (span,) = resolve(texts, target)
        head, tail = "".join(texts[: span.start]), "".join(texts[span.end :])
        lead = span.text[: len(span.text) - len(span.text.lstrip())]
        return head + lead + contrast + tail
    return contrast


def contrast_position(answer_ids: list[int], alternative_ids: list[int], answer: str) -> int:
    """The first answer token where the alternative differs (the token explained)."""
    for t, (a, b) in enumerate(zip(answer_ids, alternative_ids)):
        if a != b:
            return t
    if len(alternative_ids) <= len(answer_ids):
        raise TargetError(f"the alternative does not differ from the answer {answer!r} in a token")
    raise TargetError(f"the alternative only continues the answer {answer!r}: no token to contrast")


def contrast(trace: Any, adapter: Any, alternative: str, target: Target = None) -> Span:
    """Make ``trace`` explain ``logit(y_d) − logit(y'_d)`` at the first answer token d where
    the alternative answer differs (Yin & Neubig's contrastive explanation): its z_d, and so
    its gradients, become that difference; the target becomes token d. Returns its span."""
    graph = trace.graph or {}
    if trace.gradient_source is None or "logit_rows" not in graph:
        raise TargetError("a contrast needs a trace captured with gradients")
    texts = trace.answer_tokens
    alternative = alternative_answer(texts, target, alternative)
    answer_ids = trace.input_ids[trace.answer_positions].tolist()
    other = adapter.encode_answer(alternative).tolist()
    d = contrast_position(answer_ids, other, "".join(texts))
    with torch.enable_grad():  # new z in the capture's graph
        rows, z = graph["logit_rows"], graph["logits"]
        pick = torch.zeros_like(z)
        pick[d] = 1.0
        z = z - pick * rows[d, other[d]]
    graph["logits"] = z
    trace.gradient_source = trace.gradient_source.with_logits(z)
    trace.meta["contrast"] = {
        "alternative": alternative,
        "token": d,
        "answer_token": texts[d],
        "alternative_token": adapter.tokenizer.decode([other[d]]),
        "logit_difference": float(z[d].detach()),
    }
    return Span(texts[d], d, d + 1)
