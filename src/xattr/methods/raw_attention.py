"""Raw attention: ``mean_{l,h} A[l,h][p_t, V]``, averaged over the answer; no gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .base import Attributor, hparam
from .kinds import KIND_RULE, as_weights, is_kind_spec, layers_for
from .numerics import check_attentions, working_dtype
from .packaging import average_rows
from .propagation import is_layer_subset
from .tokens import POLICIES, policy_needs, select_tokens


def _heads_rule(heads: object) -> bool:
    return heads == "all" or (
        isinstance(heads, list)
        and all(isinstance(h, int) and not isinstance(h, bool) for h in heads)
    )


class RawAttention(Attributor, name="raw_attention"):
    """Attention rows at p_t averaged over (selected) heads and layers, then over tokens."""

    layers: Any = hparam("all", check=is_layer_subset)
    heads: Any = hparam("all", check=_heads_rule, rule="must be all or a list of head indices")
    token_policy: str = hparam("non_punctuation", choices=POLICIES, needs=policy_needs)
    layer_kinds: Any = hparam("all", check=is_kind_spec, rule=KIND_RULE)
    return_token_maps: bool = hparam(False, doc="keep every answer token's own map")
    return_layer_maps: bool = hparam(False, doc="keep each layer's share of the map")

    def attribute(self, trace: Trace) -> Explanation:
        """Only the rows p_t of each attention are read."""
        layers = layers_for(trace, self.layers, self.layer_kinds, "raw_attention")
        fewest = min(trace.layer_heads(layer) for layer in layers)
        heads = list(range(fewest)) if self.heads == "all" else list(self.heads)
        bad = [h for h in heads if not -fewest <= h < fewest]
        if bad or not heads:
            raise ValueError(f"raw_attention: heads {self.heads} out of range for {fewest} heads")
        mask = select_tokens(trace, self.token_policy)
        check_attentions(trace, layers)
        dtype = working_dtype(trace)
        home = trace.device
        index: dict[torch.device, Tensor] = {}  # p_t, once per device
        per_layer = []  # each layer's mean over heads of A[l,h][p_t, :]: [T, N]
        for layer in layers:
            attn = trace.attentions[layer]
            heads_here = heads if self.heads != "all" else list(range(trace.layer_heads(layer)))
            head_index = torch.tensor(heads_here, device=attn.device)
            if attn.device not in index:
                index[attn.device] = trace.predicting_positions.to(attn.device)
            rows_index = index[attn.device]
            rows = attn.index_select(0, head_index)[:, rows_index, :].to(dtype)  # [H', T, N]
            assert trace.layer_kinds is not None
            rows = as_weights(rows, trace.layer_kinds[layer])  # rows p_t: |A| shares if linear
            per_layer.append(rows.mean(dim=0).to(home))  # [T, N]
        stacked = torch.stack(per_layer, dim=1).cpu() / len(layers)  # [T, K, N] layer shares
        return average_rows(
            trace,
            "raw_attention",
            stacked.sum(dim=1),  # [T, N]
            mask,
            return_token_maps=self.return_token_maps,
            layer_rows=stacked if self.return_layer_maps else None,
            meta={"layers": layers, "heads": heads},
        )
