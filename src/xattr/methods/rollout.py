"""Attention rollout (Abnar & Zuidema 2020, SPEC §3): no gradients.

``Atil[l] = rownorm(0.5 * mean_h A[l,h] + 0.5 * I)``, ``R = Atil[L] @ ... @ Atil[1]``; a token's
map is ``R[p_t, V]``, the answer's map the mean over the selected tokens. Rows of R sum to 1.
All tokens' rows are propagated together, one layer map alive at a time.
"""

from __future__ import annotations

from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .base import Attributor, Needs, register
from .common import LayerMaps, average_rows, check_attentions, working_dtype
from .propagation import propagate_product, row_normalize_
from .tokens import select_tokens


@register("rollout")
class Rollout(Attributor):
    """Attention rollout through all layers, averaged over the answer's tokens."""

    needs = Needs(gradients=False)

    def __init__(
        self, *, token_policy: str = "non_punctuation", return_token_maps: bool = False
    ) -> None:
        super().__init__(token_policy=token_policy, return_token_maps=return_token_maps)
        self.token_policy, self.return_token_maps = token_policy, return_token_maps

    def attribute(self, trace: Trace) -> Explanation:
        """Rollout rows read at every p_t, averaged over the selected tokens."""
        layers = list(range(trace.num_layers))
        mask = select_tokens(trace, self.token_policy)
        check_attentions(trace, layers)
        positions = trace.predicting_positions.tolist()
        n = max(positions) + 1  # causal block shared by every token
        dtype = working_dtype(trace)

        def rollout_map(layer: int) -> Tensor:  # [n, n] Atil[l]
            attn = trace.attentions[layer].to(dtype)  # [H, N, N]
            heads, size = attn.shape[0], attn.shape[-1]
            half = attn.new_full((heads,), 0.5 / heads)
            # 0.5 * mean_h A as one matrix-vector pass over the contiguous layer, then the crop
            atil = (half @ attn.reshape(heads, size * size)).view(size, size)[:n, :n]
            atil.diagonal().add_(0.5)  # + 0.5 * I
            return row_normalize_(atil)

        rows = propagate_product(LayerMaps(layers, rollout_map), positions)  # [T, n]
        full = rows.new_zeros(len(positions), trace.seq_len)
        full[:, :n] = rows
        return average_rows(trace, "rollout", full, mask, return_token_maps=self.return_token_maps)
