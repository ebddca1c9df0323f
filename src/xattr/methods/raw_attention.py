"""Raw attention: ``mean_{l,h} A[l,h][p_t, V]``, averaged over the answer; no gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .base import Attributor, hparam
from .numerics import check_attentions, working_dtype
from .packaging import average_rows
from .propagation import is_layer_subset, select_layers
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
    return_token_maps: bool = hparam(False, doc="keep every answer token's own map")
    return_layer_maps: bool = hparam(False, doc="keep each layer's share of the map")

    def attribute(self, trace: Trace) -> Explanation:
        """Only the rows p_t of each attention are read."""
        layers = select_layers(trace.num_layers, self.layers)
        heads = list(range(trace.num_heads)) if self.heads == "all" else list(self.heads)
        bad = [h for h in heads if not -trace.num_heads <= h < trace.num_heads]
        if bad or not heads:
            raise ValueError(
                f"raw_attention: heads {self.heads} out of range for {trace.num_heads} heads"
            )
        mask = select_tokens(trace, self.token_policy)
        check_attentions(trace, layers)
        dtype = working_dtype(trace)
        home = trace.device
        index: dict[torch.device, tuple[Tensor, Tensor]] = {}  # heads and p_t, once per device
        per_layer = []  # each layer's mean over heads of A[l,h][p_t, :]: [T, N]
        for layer in layers:
            attn = trace.attentions[layer]
            if attn.device not in index:
                index[attn.device] = (
                    torch.tensor(heads, device=attn.device),
                    trace.predicting_positions.to(attn.device),
                )
            head_index, rows_index = index[attn.device]
            rows = attn.index_select(0, head_index)[:, rows_index, :].to(dtype)  # [H', T, N]
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
