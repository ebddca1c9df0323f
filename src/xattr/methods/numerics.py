"""Precision and finiteness rules every method follows.

Work happens in float32 (float64 for float64 traces): half-precision attentions and
gradients are upcast before any reduction. Finiteness is checked from reductions the
methods compute anyway and reported per (token, layer) in one host synchronisation per
chunk, never one per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..trace import Trace


def working_dtype(trace: Trace) -> torch.dtype:
    """float64 for float64 traces, float32 otherwise (half-precision traces are upcast)."""
    return torch.float64 if trace.dtype == torch.float64 else torch.float32


def check_finite(x: Tensor, what: str) -> None:
    """Raise ValueError naming ``what`` if ``x`` holds NaN or +-inf (one read-only pass).

    A non-finite total is confirmed element-wise before raising, since a sum of huge finite
    values can overflow.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(x.sum(dtype=acc))):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"non-finite values in {what} (fp16 overflow?)")


def finite_flag(x: Tensor) -> Tensor:
    """A 0-d bool tensor on ``x``'s device: is the sum of ``x`` finite (no host sync)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.isfinite(x.sum(dtype=acc))


def check_attentions(trace: Trace, layers: Sequence[int]) -> None:
    """Every selected layer's attention is finite (checked once per trace and layer).

    The per-layer totals are gathered first and read back in one synchronisation.
    """
    todo = [layer for layer in layers if ("attention_ok", layer) not in trace.memo]
    if not todo:
        return
    flags = [finite_flag(trace.attentions[layer]) for layer in todo]
    gathered = torch.stack([f.to(flags[0].device) for f in flags]).tolist()  # one sync
    for layer, ok in zip(todo, gathered, strict=True):
        if not ok:
            check_finite(trace.attentions[layer], f"attentions of layer {layer}")
        trace.memo["attention_ok", layer] = True


def raise_first_bad(flags: Tensor, tokens: Sequence[int], layers: Sequence[int], what: str) -> None:
    """``flags`` [c, K] bool (one per token and layer): raise naming the first False entry."""
    bad = (~flags.cpu()).nonzero().tolist()
    if bad:
        i, k = bad[0]
        raise ValueError(
            f"non-finite values in {what} of answer token {tokens[i]}, layer {layers[k]} "
            "(fp16 overflow?)"
        )
