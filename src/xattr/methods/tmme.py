"""TMME (Chefer et al. 2021, SPEC §3): gradient-weighted attention propagated additively.

Per answer token t and layer l: ``Abar[l] = mean_h (A[l,h] ⊙ G_t[l,h])^+``; from ``R = I``,
``R <- R + Abar[l] @ R`` through all layers (or only the last ``last_k``); the token's map is
``R[p_t, V]``; the answer's map is the mean over the selected tokens. ``Abar`` equals
GLIMPSE's head mean of ``A ⊙ G^+`` (A >= 0), so the two share one pass over each gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .base import Attributor, Needs, register
from .common import GradientAttention, average_rows, check_attentions, pad_row
from .propagation import propagate_residual, select_layers
from .tokens import select_tokens


@register("tmme")
class TMME(Attributor):
    """Transformer multi-modal explainability, averaged over the answer's tokens."""

    needs = Needs(gradients=True)

    def __init__(
        self,
        *,
        last_k: int | None = None,
        residual_norm: bool = False,
        token_policy: str = "non_punctuation",
        return_token_maps: bool = False,
    ) -> None:
        if last_k is not None and (isinstance(last_k, bool) or int(last_k) < 1):
            raise ValueError(f"last_k must be None (all layers) or an int >= 1, got {last_k!r}")
        super().__init__(
            last_k=last_k,
            residual_norm=residual_norm,
            token_policy=token_policy,
            return_token_maps=return_token_maps,
        )
        self.last_k = None if last_k is None else int(last_k)
        self.residual_norm, self.token_policy = residual_norm, token_policy
        self.return_token_maps = return_token_maps

    def attribute(self, trace: Trace) -> Explanation:
        """Per-token TMME rows read at p_t, averaged over the selected tokens."""
        layers = select_layers(trace.num_layers, "all" if self.last_k is None else self.last_k)
        mask = select_tokens(trace, self.token_policy)
        check_attentions(trace, layers)
        attention = GradientAttention(trace)
        rows = []
        for t in range(trace.num_answer_tokens):
            p = int(trace.predicting_positions[t])
            # Abar[l] = mean_h (A ⊙ G)^+ on the causal block [:p+1, :p+1].
            maps = [attention.layer(t, layer).head_mean for layer in layers]
            row = propagate_residual(maps, p)  # R[p, :] of prod_l (I + Abar[l])
            if self.residual_norm:
                row = chefer_residual_norm(row, p)
            rows.append(pad_row(row, trace.seq_len))
        return average_rows(
            trace,
            "tmme",
            torch.stack(rows),  # [T, N]
            mask,
            return_token_maps=self.return_token_maps,
            meta={"layers": layers},
        )


def chefer_residual_norm(row: Tensor, position: int) -> Tensor:
    """Chefer's residual normalisation of row ``position``: ``Rbar = R - I``, row-normalised, ``+ I``."""
    bar = row.clone()
    bar[position] -= 1.0
    total = bar.sum()
    if total > 0:
        bar = bar / total
    bar[position] += 1.0
    return bar
