"""What the methods do on each layer kind (`trace.LAYER_KINDS`; docs/methods.md, "Layer kinds").

A softmax layer's attention is non-negative with rows summing to 1 over its support. A
linear layer's implicit attention (Gated DeltaNet, docs/math.md) is exact but signed and
unnormalised. Two rules cover every method:

- methods that read attention as weights (rollout, raw attention) use ``rownorm(|A|)`` on a
  linear layer: how strongly each earlier position enters the output, as shares of a row;
  on a softmax layer ``|A| = A`` and the rows already sum to 1, so the rule changes nothing;
- methods that weight attention by its gradient (GLIMPSE, TMME) use ``(A ⊙ G)^+``, the
  positive part of the first-order term ``A ⊙ dz/dA``; where ``A >= 0`` this equals
  ``A ⊙ G^+``, their softmax definition, exactly.

Grad-CAM's attention variant and DEX-AR read ``G = dz/dA`` (and Grad-CAM the rows of ``A``)
as on softmax layers: its final ReLU clips what a signed row makes negative.

``layer_kinds`` restricts a method to some kinds: ``"all"`` (the default), ``"softmax"``,
``"linear"``, ``"cross"``, or a list of them; it intersects with the method's own layer
subset. Rollout treats a layer left out as the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..trace import LAYER_KINDS, LINEAR, Trace, TraceError
from .propagation import select_layers


def is_kind_spec(value: Any) -> bool:
    """``"all"``, one kind, or a non-empty list of kinds."""
    if value == "all" or value in LAYER_KINDS:
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(k, str) and k in LAYER_KINDS for k in value)
    )


KIND_RULE = f"must be all, one of {', '.join(LAYER_KINDS)}, or a list of them"


def kinds_of(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The kinds a ``layer_kinds`` value names."""
    if spec == "all":
        return LAYER_KINDS
    return (spec,) if isinstance(spec, str) else tuple(spec)


def layers_for(
    trace: Trace, layers: Any, layer_kinds: str | Sequence[str], method: str
) -> list[int]:
    """The method's layer subset restricted to ``layer_kinds``: 0-based, ascending."""
    chosen = select_layers(trace.num_layers, layers)
    kinds = kinds_of(layer_kinds)
    assert trace.layer_kinds is not None
    kept = [layer for layer in chosen if trace.layer_kinds[layer] in kinds]
    if not kept:
        present = sorted(set(trace.layer_kinds[layer] for layer in chosen))
        raise ValueError(
            f"{method}: layer_kinds={layer_kinds!r} keeps none of the layers {chosen} "
            f"(their kinds: {', '.join(present)})"
        )
    return kept


def as_weights(attention: Tensor, kind: str) -> Tensor:
    """Attention read as non-negative row shares: ``rownorm(|A|)`` on linear layers, A as it is
    on softmax and cross-attention layers (non-negative, rows already sum to 1).

    ``attention`` [H, n, n] (a causal block); a new tensor on linear layers, ``attention``
    itself on the others. A row of zeros stays zero.
    """
    if kind != LINEAR:  # softmax and cross-attention rows are shares already
        return attention
    weights = attention.abs()
    total = weights.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny), 0.0)


def refuse_visual_prefix(trace: Trace, method: str) -> None:
    """Methods that read the language model's hidden states are not defined on a trace whose
    image tokens are a prefix outside the model's sequence (cross-attention models)."""
    if trace.meta.get("visual_prefix"):
        raise TraceError(
            f"{method} reads the language model's hidden states, which hold text positions "
            f"only; it is not defined for {trace.meta.get('family', 'this model')}, whose image "
            "reaches the text through cross-attention"
        )


def refuse_layer_subset(trace: Trace, method: str) -> None:
    """Methods that read a hidden state after each traced layer are not defined on a trace
    that holds some decoder layers only (``meta["decoder_layers"]``: LFM2's attention layers),
    whose hidden states are one per decoder layer."""
    layers = trace.meta.get("decoder_layers")
    if layers is not None and list(layers) != list(range(trace.num_layers)):
        raise TraceError(
            f"{method} reads the hidden state after each traced layer; it is not defined for "
            f"{trace.meta.get('family', 'this model')}, whose trace holds decoder layers "
            f"{list(layers)} only (its softmax-attention layers)"
        )
