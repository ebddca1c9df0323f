"""Answer-token selection policies: which answer tokens count in a sequence-level map.

Every method's ``token_policy`` names one of these (`POLICIES`):

- ``all``: every token.
- ``non_punctuation``: drop tokens that are only punctuation (the paper's practice note).
- ``visual`` (LVLM iGOS++): keep answer token t if
  ``log p(y_t | image) - log p(y_t | blurred) > threshold`` (default 1.0); special tokens never
  count; an answer of one (non-special) token is kept if ``p_blur <= ratio * p`` (default
  0.5). Two teacher-forced forward passes (`ModelAdapter.answer_logprobs`), memoised on the
  trace; needs the model (`Trace.context`).
- ``dexar``: DEX-AR's sequence filter ``delta_t > 0``, registered by `methods.dexar`.

A policy that keeps nothing falls back to every (non-special) token with a
`TokenSelectionWarning`. A policy declares what it needs captured, so a method's ``needs``
follow from its ``token_policy``.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..images import blur_images
from ..registry import Registry
from ..trace import ModelContext, Trace, TraceError
from ..warn import warn
from .base import Needs

# Markers tokenizers put in front of words (GPT-2 byte-level, SentencePiece).
_WORD_MARKERS = "Ġ▁Ċ"


class TokenSelectionWarning(UserWarning):
    """A selection policy kept no token and fell back to all tokens."""


@dataclass(frozen=True)
class TokenPolicy:
    """A rule ``(trace, **options) -> (keep [T] bool, special [T] bool)`` and what it needs."""

    name: str
    select: Callable[..., tuple[Tensor, Tensor]]
    needs: Needs | None = None


POLICIES: Registry[TokenPolicy] = Registry("token policy", "xattr.token_policies")


def register_policy(
    name: str, needs: Needs | None = None
) -> Callable[[Callable[..., tuple[Tensor, Tensor]]], Callable[..., tuple[Tensor, Tensor]]]:
    """Decorator: register a selection rule under ``name`` (see `TokenPolicy`)."""

    def decorator(fn: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
        POLICIES.register(name)(TokenPolicy(name, fn, needs))
        return fn

    return decorator


def policy_needs(policy: str) -> Needs | None:
    """What ``policy`` needs captured beyond the method's own needs (None: nothing)."""
    return POLICIES.get_class(policy).needs if policy in POLICIES else None


def clean_token(token: str) -> str:
    """A token's visible text: word markers and surrounding white space removed."""
    return token.strip(_WORD_MARKERS).strip()


def is_punctuation(token: str) -> bool:
    """True for tokens that are only punctuation, symbols or white space."""
    text = clean_token(token)
    return all(unicodedata.category(ch)[0] in "PSZ" for ch in text)


def punctuation_mask(texts: list[str]) -> list[bool]:
    """Which tokens are punctuation, by display text (`Trace.answer_tokens`). A token with no
    text of its own holds part of a character a later token completes (a CJK character in
    byte-level pieces) and is classed with that token; one at the very end is kept as text."""
    out = [False] * len(texts)
    pending: bool | None = False  # the class of the next token that shows text
    for i in range(len(texts) - 1, -1, -1):
        if texts[i]:
            pending = is_punctuation(texts[i])
        out[i] = bool(pending)
    return out


def select_tokens(trace: Trace, policy: str = "non_punctuation", **options: Any) -> Tensor:
    """Boolean mask [T] of the answer tokens that count under ``policy`` (module docstring).

    Options: ``threshold`` (1.0), ``ratio`` (0.5) and ``blur_radius`` (None: 1/10 of the long
    side) for "visual"; ``last_k`` (10) for "dexar".
    """
    if policy not in POLICIES:
        known = ", ".join(POLICIES.available())
        raise ValueError(f"unknown token policy {policy!r}; known: {known}")
    keep, special = POLICIES.get_class(policy).select(trace, **options)
    if trace.target is not None:  # only the target's tokens count (`xattr.targets`)
        keep, special = keep & trace.target, special | ~trace.target
    if not bool(keep.any()):
        everything = torch.ones_like(keep) if trace.target is None else trace.target.clone()
        fallback = ~special if bool((~special).any()) else everything
        warn(
            f"token policy {policy!r} kept none of the answer tokens {_listed(trace)}; "
            "using all of them" + (" but the special ones" if bool(special.any()) else ""),
            TokenSelectionWarning,
        )
        keep = fallback
    return keep


def _listed(trace: Trace) -> list[str]:
    """The answer tokens a policy chose from (the target's, when there is one)."""
    if trace.target is None:
        return trace.answer_tokens
    return [t for t, keep in zip(trace.answer_tokens, trace.target.tolist()) if keep]


def _none(trace: Trace) -> Tensor:
    return torch.zeros(trace.num_answer_tokens, dtype=torch.bool)


@register_policy("all")
def _all(trace: Trace, **_: Any) -> tuple[Tensor, Tensor]:
    return torch.ones(trace.num_answer_tokens, dtype=torch.bool), _none(trace)


@register_policy("non_punctuation")
def _non_punctuation(trace: Trace, **_: Any) -> tuple[Tensor, Tensor]:
    if trace.tokens is None:
        return _all(trace)
    keep = ~torch.tensor(punctuation_mask(trace.answer_tokens), dtype=torch.bool)
    return keep, _none(trace)


@register_policy("visual", needs=Needs(attentions=False, model=True))
def _visual(
    trace: Trace,
    threshold: float = 1.0,
    ratio: float = 0.5,
    blur_radius: float | None = None,
    **_: Any,
) -> tuple[Tensor, Tensor]:
    """The likelihood-ratio test of LVLM iGOS++: (kept [T], special [T])."""
    logp, logp_blur = visual_logprobs(trace, blur_radius)
    adapter = model_context(trace, "the 'visual' token policy").adapter
    special_ids = set(getattr(adapter.tokenizer, "all_special_ids", []) or [])
    special = torch.tensor([int(i) in special_ids for i in answer_ids(trace)], dtype=torch.bool)
    if int((~special).sum()) == 1:  # one-token answer: p_blur <= ratio * p
        keep = logp_blur <= logp + math.log(ratio)
    else:
        keep = (logp - logp_blur) > threshold
    return keep & ~special, special


def visual_logprobs(trace: Trace, blur_radius: float | None = None) -> Tensor:
    """Teacher-forced log p(y_t) under the image and its blurred copy: [2, T] (memoised on the trace)."""
    key = ("visual_logprobs", blur_radius)
    if key not in trace.memo:
        context = model_context(trace, "the 'visual' token policy")
        image = context.image  # one image, or one prompt's images (blurred alike)
        trace.memo[key] = context.adapter.answer_logprobs(
            [image, blur_images(image, blur_radius)], context.question, answer_ids(trace)
        )
    return trace.memo[key]


def answer_ids(trace: Trace) -> Tensor:
    """The answer's token ids y_1..y_T: [T]."""
    if trace.input_ids is None:
        raise TraceError("this trace has no input_ids; model-based token policies need them")
    return trace.input_ids[trace.answer_positions]


def model_context(trace: Trace, what: str) -> ModelContext:
    """The adapter, image and question behind ``trace``, or an error naming who needs them."""
    if trace.context is None:
        raise TraceError(
            f"{what} needs the model, but this trace has no context (adapter, image, question): "
            "capture it with adapter.trace(...) or set trace.context = ModelContext(...)"
        )
    return trace.context
