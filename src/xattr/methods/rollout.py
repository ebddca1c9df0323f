"""Attention rollout (Abnar & Zuidema 2020): no gradients.

``Atil[l] = rownorm(0.5 * mean_h A[l,h] + 0.5 * I)``, ``R = Atil[L] @ ... @ Atil[1]`` (a
linear layer's A read as ``rownorm(|A|)``, `methods.kinds`; a layer ``layer_kinds`` leaves
out is the identity); a token's
map is ``R[p_t, V]``, the answer's map the mean over the selected tokens. Rows of R sum to 1.
All tokens' rows are propagated together, one layer map alive at a time.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .base import Attributor, hparam
from .kinds import KIND_RULE, as_weights, is_kind_spec, layers_for
from .numerics import check_attentions, working_dtype
from .packaging import average_rows, pad_row
from .propagation import LayerMaps, propagate_product, row_normalize_
from .tokens import POLICIES, policy_needs, select_tokens


class Rollout(Attributor, name="rollout"):
    """Attention rollout through all layers, averaged over the answer's tokens."""

    token_policy: str = hparam("non_punctuation", choices=POLICIES, needs=policy_needs)
    layer_kinds: Any = hparam("all", check=is_kind_spec, rule=KIND_RULE, doc="others: identity")
    return_token_maps: bool = hparam(False, doc="keep every answer token's own map")

    def attribute(self, trace: Trace) -> Explanation:
        """Rollout rows read at every p_t, averaged over the selected tokens."""
        layers = layers_for(trace, "all", self.layer_kinds, "rollout")
        mask = select_tokens(trace, self.token_policy)
        check_attentions(trace, layers)
        positions = trace.predicting_positions.tolist()
        n = max(positions) + 1  # causal block shared by every token
        dtype = working_dtype(trace)

        def rollout_map(layer: int) -> Tensor:  # [n, n] Atil[l]
            attn = trace.attentions[layer][:, :n, :n].to(dtype)  # [H, n, n]
            assert trace.layer_kinds is not None
            atil = as_weights(attn, trace.layer_kinds[layer]).mean(dim=0)  # mean_h A
            atil.mul_(0.5).diagonal().add_(0.5)  # 0.5 * mean_h A + 0.5 * I
            return row_normalize_(atil)

        rows = propagate_product(LayerMaps(layers, rollout_map), positions)  # [T, n]
        full = pad_row(rows.cpu(), trace.seq_len)
        return average_rows(trace, "rollout", full, mask, return_token_maps=self.return_token_maps)
