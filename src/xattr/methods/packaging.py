"""Packaging a method's vectors over V and P into an `Explanation` (one map per token grid)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .base import AttributionWarning


def pad_row(row: Tensor, size: int) -> Tensor:
    """Rows cropped to a block ``[..., n]``, zero-padded back to the sequence length: [..., size]."""
    if row.shape[-1] == size:
        return row
    out = row.new_zeros(*row.shape[:-1], size)
    out[..., : row.shape[-1]] = row
    return out


def make_explanation(
    trace: Trace,
    method: str,
    *,
    visual: Tensor,
    prompt: Tensor | None,
    token_relevance: Tensor,
    token_mask: Tensor,
    token_visual: Tensor | None = None,
    layer_visual: Tensor | None = None,
    meta: dict[str, Any] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Explanation:
    """Package vectors over V and P as an Explanation; warn (and flag) an all-zero map.

    ``visual`` [|V|] becomes one map per grid of the trace's layout; ``transform`` (e.g. a
    blur) is applied to each; ``token_visual`` [T, |V|] becomes the per-token maps and
    ``layer_visual`` [K, |V|] the per-layer maps. Results are moved to the CPU.
    """
    meta = dict(meta or {})
    maps = trace.layout.split(visual.detach().cpu())
    if transform is not None:
        maps = [transform(m) for m in maps]
    empty = not any(bool(m.any()) for m in maps)
    meta["empty_visual_map"] = empty
    if empty:
        warnings.warn(
            f"{method}: the visual map is all zero: no positive relevance on the image tokens "
            "(zero gradients or attention there, or every value clipped at zero by the method's "
            "ReLU); returned as zeros",
            AttributionWarning,
            stacklevel=3,
        )
    token_maps = None if token_visual is None else trace.layout.split(token_visual.detach().cpu())
    layer_maps = None if layer_visual is None else trace.layout.split(layer_visual.detach().cpu())
    return Explanation(
        method=method,
        visual=maps[0],
        answer_tokens=trace.answer_tokens,
        answer_pieces=trace.answer_pieces,
        token_relevance=token_relevance.detach().cpu(),
        prompt_tokens=trace.prompt_tokens,
        prompt_pieces=trace.prompt_pieces,
        prompt_relevance=None if prompt is None else prompt.detach().cpu(),
        token_maps=None if token_maps is None else token_maps[0],
        token_mask=token_mask.cpu(),
        meta=meta,
        grids=list(trace.layout.grids),
        more_maps=maps[1:],
        more_token_maps=None if token_maps is None else token_maps[1:],
        layer_maps=None if layer_maps is None else layer_maps[0],
        more_layer_maps=None if layer_maps is None else layer_maps[1:],
    )


def average_rows(
    trace: Trace,
    method: str,
    rows: Tensor,
    token_mask: Tensor,
    *,
    return_token_maps: bool = False,
    layer_rows: Tensor | None = None,
    meta: dict[str, Any] | None = None,
) -> Explanation:
    """The baselines' sequence-level adaptation: per-token rows averaged over tokens.

    ``rows`` [T, N] holds each answer token's relevance row read at p_t. The visual map and
    prompt relevance are the means of ``rows[:, V]`` and ``rows[:, P]`` over the selected
    tokens; a token's relevance is its row's total visual mass. ``layer_rows`` [T, K, N]
    (each layer's share of the rows) gives per-layer maps averaged the same way.
    """
    mask = token_mask.to(rows.device)
    visual_rows = rows[:, trace.visual_index.to(rows.device)]  # [T, |V|]
    prompt_rows = rows[:, trace.prompt_index.to(rows.device)]  # [T, |P|]
    meta = {**(meta or {}), "row_mass": rows.sum(dim=-1).cpu()}  # [T]
    layer_visual = None
    if layer_rows is not None:
        layer_visual = layer_rows[mask][..., trace.visual_index.to(rows.device)].mean(dim=0)
    return make_explanation(
        trace,
        method,
        visual=visual_rows[mask].mean(dim=0),
        prompt=prompt_rows[mask].mean(dim=0),
        token_relevance=visual_rows.sum(dim=-1),
        token_mask=token_mask,
        token_visual=visual_rows if return_token_maps else None,
        layer_visual=layer_visual,
        meta=meta,
    )
