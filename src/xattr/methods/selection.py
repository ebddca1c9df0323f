"""Answer-token selection policies every method can use: which answer tokens count.

``select_answer_tokens(trace, policy, **options) -> BoolTensor[T]``:

- ``"all"`` and ``"non_punctuation"``: delegated to `tokens.select_tokens`.
- ``"visual"`` (LVLM iGOS++, SPEC §5): keep answer token t if
  ``log p(y_t | image) - log p(y_t | blurred) > threshold`` (default 1.0); special tokens
  never count; an answer of one (non-special) token is kept if ``p_blur <= ratio * p``
  (default 0.5). Costs two teacher-forced forward passes (the image and its blurred copy,
  `ModelAdapter.answer_logprobs`), memoised on the trace. Needs the adapter, image and
  question in ``trace.meta`` (``xattr.explain`` and the evaluator put them there for methods
  whose ``needs.model`` is True: see `policy_needs`).
- ``"dexar"``: keep t if DEX-AR's sequence filter ``delta_t > 0`` (SPEC §4; `dexar.dexar_stats`).
  Needs a trace captured with gradients and hidden states (memoised like DEX-AR's own pass).

Every method's ``token_policy`` hyper-parameter reaches these through `tokens.select_tokens`,
and `Attributor.__init__` widens the method's needs with `policy_needs` so the framework
captures what the policy uses. When a model-based policy keeps no token, every (non-special) token is kept
and a `TokenSelectionWarning` says so, as `tokens.select_tokens` does.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ..trace import Trace, TraceError
from .base import Needs
from .common import trace_memo
from .tokens import TokenSelectionWarning, select_tokens

POLICIES = ("all", "non_punctuation", "visual", "dexar")

# What each policy adds to a method's needs.
_POLICY_NEEDS: dict[str, dict[str, bool]] = {
    "visual": {"model": True},
    "dexar": {"gradients": True, "hidden_states": True},
}


def policy_needs(needs: Needs, policy: str) -> Needs:
    """``needs`` widened by what ``policy`` requires captured (model passes, gradients, hidden states)."""
    extra = _POLICY_NEEDS.get(policy, {})
    return dataclasses.replace(needs, **{k: getattr(needs, k) or v for k, v in extra.items()})


def select_answer_tokens(trace: Trace, policy: str = "all", **options: Any) -> Tensor:
    """Boolean mask [T] of the answer tokens that count under ``policy`` (see the module docstring).

    Options: ``threshold`` (1.0) and ``ratio`` (0.5) and ``blur_radius`` (None: 1/10 of the
    long side) for "visual"; ``last_k`` (10) for "dexar".
    """
    if policy in ("all", "non_punctuation"):
        return select_tokens(trace, policy)
    if policy == "visual":
        keep, special = _visual_keep(trace, **options)
    elif policy == "dexar":
        from .dexar import dexar_stats

        keep = dexar_stats(trace, last_k=options.get("last_k", 10)).delta > 0
        special = torch.zeros_like(keep)
    else:
        raise ValueError(f"unknown token policy {policy!r}; known: {', '.join(POLICIES)}")
    if not bool(keep.any()):
        fallback = ~special if bool((~special).any()) else torch.ones_like(keep)
        warnings.warn(
            f"token policy {policy!r} kept none of the answer tokens {trace.answer_tokens}; "
            "using all of them" + (" but the special ones" if bool(special.any()) else ""),
            TokenSelectionWarning,
            stacklevel=2,
        )
        keep = fallback
    return keep


def visual_logprobs(trace: Trace, blur_radius: float | None = None) -> Tensor:
    """Teacher-forced log p(y_t) under the image and its blurred copy: [2, T] (memoised on the trace)."""
    memo = trace_memo(trace)
    key = ("visual_logprobs", blur_radius)
    if memo is not None and key in memo:
        return memo[key]
    adapter, image, question = _model_context(trace, "the 'visual' token policy")
    from ..images import blur_image, load_image

    image = load_image(image)
    logp = adapter.answer_logprobs(
        [image, blur_image(image, blur_radius)], question, answer_ids(trace)
    )
    if memo is not None:
        memo[key] = logp
    return logp


def _visual_keep(
    trace: Trace,
    threshold: float = 1.0,
    ratio: float = 0.5,
    blur_radius: float | None = None,
    **_: Any,
) -> tuple[Tensor, Tensor]:
    """SPEC §5's likelihood-ratio test: (kept [T], special [T])."""
    logp, logp_blur = visual_logprobs(trace, blur_radius)
    adapter = trace.meta["adapter"]
    special_ids = set(getattr(adapter.tokenizer, "all_special_ids", []) or [])
    special = torch.tensor([int(i) in special_ids for i in answer_ids(trace)], dtype=torch.bool)
    if int((~special).sum()) == 1:  # one-token answer: p_blur <= ratio * p
        keep = logp_blur <= logp + math.log(ratio)
    else:
        keep = (logp - logp_blur) > threshold
    return keep & ~special, special


def answer_ids(trace: Trace) -> Tensor:
    """The answer's token ids y_1..y_T: [T]."""
    if trace.input_ids is None:
        raise TraceError("this trace has no input_ids; model-based token policies need them")
    return trace.input_ids[trace.answer_positions]


def _model_context(trace: Trace, what: str) -> tuple[Any, Any, str]:
    """(adapter, image, question) from ``trace.meta``, or a clear error."""
    missing = [k for k in ("adapter", "image", "question") if trace.meta.get(k) is None]
    if missing:
        raise TraceError(
            f"{what} needs the model: trace.meta lacks {missing}. Methods using it declare "
            "Needs(model=True) (see selection.policy_needs), so xattr.explain and the evaluator "
            "put the adapter, image and question there"
        )
    return trace.meta["adapter"], trace.meta["image"], trace.meta["question"]
