"""Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's image side before a hybrid linear-attention LM.

Layout. The processor is Qwen3-VL's (`qwen3_vl`): one grid of merged 16 px patches over the
whole resized image, between ``<|vision_start|>`` and ``<|vision_end|>``. There is no
deepstack.

Layers. Three of every four language layers are Gated DeltaNet (linear attention with the
delta rule, a 4-tap causal convolution before it and a gated RMSNorm after it); every fourth
is softmax attention with an output gate. The capture records a softmax layer as everywhere
else, and a linear layer at its delta-rule kernel: its queries, keys, values, decays and
write strengths, and its output ``o = A v``, from which ``trace.attentions[l]`` is the
layer's exact implicit attention (docs/math.md, "Linear-attention layers"); it has the
layer's own head count (the linear layers have more value heads than the softmax layers
have query heads). ``G = dz/dA = (dz/do) v^T`` holds on both kinds, so every gradient method
runs unchanged; what each method does with a signed, unnormalised implicit attention is in
docs/methods.md ("Layer kinds"). MoE routing needs nothing: the router is part of the MLP,
which the gradients pass through.
"""

from __future__ import annotations

from torch import nn

from .base import FamilyCard
from .qwen3_vl import Qwen3VLAdapter


class Qwen3_5Adapter(Qwen3VLAdapter, family="qwen3_5"):
    """Qwen3.5-* and Qwen3.5-*-A*B (MoE): Qwen3-VL's grid, linear and softmax layers."""

    card = FamilyCard(
        visual_tokens="as Qwen3-VL (no deepstack)",
        tested=(
            "layer kinds and head counts; the implicit attention reproduces each linear layer's "
            "output; MoE through the same adapter"
        ),
        caveats=(
            "three of four layers are Gated DeltaNet: `trace.attentions[l]` there is the exact "
            "implicit attention (signed, rows not normalised; each method's rule in "
            'docs/methods.md, "Layer kinds"), computed per layer in O(H·N³)'
        ),
    )

    model_types = ("qwen3_5", "qwen3_5_moe")

    def attention_modules(self) -> list[nn.Module]:
        """Each layer's token mixer: ``linear_attn`` (Gated DeltaNet) or ``self_attn``."""
        return token_mixers(self.language_model())


def token_mixers(language_model: nn.Module) -> list[nn.Module]:
    """Each layer's token mixer in a Qwen3.5 language model: ``linear_attn`` (Gated DeltaNet)
    or ``self_attn`` (softmax), input to output."""
    layers = language_model.layers
    return [getattr(layer, "linear_attn", None) or layer.self_attn for layer in layers]
