"""Raw attention (SPEC §3): ``mean_{l,h} A[l,h][p_t, V]``, averaged over the answer; no gradients."""

from __future__ import annotations

import torch

from ..explanation import Explanation
from ..trace import Trace
from .base import Attributor, Needs, register
from .common import average_rows, check_attentions, plain, working_dtype
from .propagation import select_layers
from .tokens import select_tokens


@register("raw_attention")
class RawAttention(Attributor):
    """Attention rows at p_t averaged over heads and (selected) layers, then over tokens."""

    needs = Needs(gradients=False)

    def __init__(
        self,
        *,
        layers: str | int | float | list[int] = "all",
        token_policy: str = "non_punctuation",
        return_token_maps: bool = False,
    ) -> None:
        super().__init__(
            layers=plain(layers), token_policy=token_policy, return_token_maps=return_token_maps
        )
        self.layers, self.token_policy = plain(layers), token_policy
        self.return_token_maps = return_token_maps

    def attribute(self, trace: Trace) -> Explanation:
        """Only the rows p_t of each attention are read."""
        layers = select_layers(trace.num_layers, self.layers)
        mask = select_tokens(trace, self.token_policy)
        check_attentions(trace, layers)
        positions = trace.predicting_positions
        dtype = working_dtype(trace)
        rows = torch.zeros(trace.num_answer_tokens, trace.seq_len, dtype=dtype)  # [T, N]
        for layer in layers:
            rows += trace.attentions[layer][:, positions, :].to(dtype).mean(dim=0)  # [T, N]
        rows /= len(layers)
        return average_rows(
            trace,
            "raw_attention",
            rows,
            mask,
            return_token_maps=self.return_token_maps,
            meta={"layers": layers},
        )
