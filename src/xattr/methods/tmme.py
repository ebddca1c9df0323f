"""TMME (Chefer et al. 2021): gradient-weighted attention propagated additively.

Per answer token t and layer l: ``Abar[l] = mean_h (A[l,h] ⊙ G_t[l,h])^+``; from ``R = I``,
``R <- R + Abar[l] @ R`` through all layers (or only the last ``last_k``); the token's map is
``R[p_t, V]``; the answer's map is the mean over the selected tokens. ``Abar`` equals
GLIMPSE's head mean of ``A ⊙ G^+`` (A >= 0), so the two share one pass over each gradient.
The row vector is propagated layer by layer as the sweep walks down, so nothing is kept
per layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .base import hparam
from .kinds import KIND_RULE, is_kind_spec, layers_for
from .packaging import average_rows, pad_row
from .sweep import HEAD_MEAN, GradientConsumer, LayerStep, StreamingAttributor
from .tokens import POLICIES, policy_needs, select_tokens


def _last_k_rule(k: object) -> bool:
    return k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)


class TMME(StreamingAttributor, name="tmme"):
    """Transformer multi-modal explainability, averaged over the answer's tokens."""

    contrastive = True

    last_k: int | None = hparam(
        None, check=_last_k_rule, rule="must be None (all layers) or an int >= 1"
    )
    residual_norm: bool = hparam(False, doc="Chefer's residual normalisation of R - I")
    layer_kinds: Any = hparam("all", check=is_kind_spec, rule=KIND_RULE, doc="layer kinds read")
    token_policy: str = hparam("non_punctuation", choices=POLICIES, needs=policy_needs)
    return_token_maps: bool = hparam(False, doc="keep every answer token's own map")
    return_layer_maps: bool = hparam(False, doc="keep each layer's share of the map")

    def consumer(self, trace: Trace) -> TMMEConsumer:
        return TMMEConsumer(self, trace)


class TMMEConsumer(GradientConsumer):
    """``v <- v + v @ Abar[l]`` from the top layer down, one chunk of tokens at a time."""

    wants = frozenset({HEAD_MEAN})

    def __init__(self, method: TMME, trace: Trace) -> None:
        self.method, self.trace = method, trace
        last = "all" if method.last_k is None else method.last_k
        self.layers = layers_for(trace, last, method.layer_kinds, "tmme")
        self.rows: list[Tensor] = []
        self.deltas: list[Tensor] = []

    def begin_chunk(self, tokens: list[int], positions: Tensor, n: int) -> None:
        self.positions, self.n = positions, n
        self.v: Tensor | None = None
        self.chunk_deltas: list[Tensor] = []

    def visit(self, step: LayerStep) -> None:
        head_mean = step.head_mean  # [c, n, n] Abar[l] = mean_h (A ⊙ G)^+ on the block
        assert head_mean is not None
        if self.v is None:
            c = head_mean.shape[0]
            self.v = torch.zeros(c, self.n, dtype=head_mean.dtype, device=head_mean.device)
            self.v[torch.arange(c, device=head_mean.device), step.positions] = 1.0
        v = self.v.to(head_mean.device)
        delta = torch.bmm(v[:, None, :], head_mean)[:, 0]  # [c, n] R[p, :] of prod (I + Abar)
        self.v = v + delta
        if self.method.return_layer_maps:
            self.chunk_deltas.append(delta)

    def end_chunk(self) -> None:
        assert self.v is not None
        rows = self.v
        if self.method.residual_norm:
            rows = chefer_residual_norm(rows, self.positions.to(rows.device))
        self.rows.append(pad_row(rows, self.trace.seq_len).cpu())
        if self.chunk_deltas:  # [c, K, N], input-to-output layer order
            home = rows.device
            stacked = torch.stack([d.to(home) for d in self.chunk_deltas[::-1]], dim=1)
            self.deltas.append(pad_row(stacked, self.trace.seq_len).cpu())

    def result(self) -> Explanation:
        mask = select_tokens(self.trace, self.method.token_policy)
        return average_rows(
            self.trace,
            "tmme",
            torch.cat(self.rows),  # [T, N]
            mask,
            return_token_maps=self.method.return_token_maps,
            layer_rows=torch.cat(self.deltas) if self.deltas else None,
            meta={"layers": self.layers},
        )


def chefer_residual_norm(rows: Tensor, positions: Tensor) -> Tensor:
    """Chefer's residual normalisation of rows [c, n] read at ``positions`` [c]:
    ``Rbar = R - I``, row-normalised (rows summing to <= 0 are left as they are), ``+ I``."""
    index = torch.arange(rows.shape[0], device=rows.device)
    bar = rows.clone()
    bar[index, positions] -= 1.0
    total = bar.sum(dim=-1, keepdim=True)
    bar = torch.where(total > 0, bar / total.clamp_min(torch.finfo(bar.dtype).tiny), bar)
    bar[index, positions] += 1.0
    return bar
