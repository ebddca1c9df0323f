"""Tiny GLM-4.5V: GLM-4.1V's tiny vision side and processor before a mixture-of-experts
language model (a dense first layer, then a sigmoid top-k router over routed experts plus
a shared expert, as GLM-4.5-Air's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from . import glm4v
from ._common import TinySizes
from .glm4v import GEOMETRY_SIZE, NATIVE_SIZE, tokenizer

__all__ = ["GEOMETRY_SIZE", "NATIVE_SIZE", "build", "moe_text_config", "tokenizer"]


def moe_text_config(tok: PreTrainedTokenizerFast, sizes: TinySizes) -> dict:
    """GLM-4.1V's tiny text model with GLM-4.5V's experts: layer 0 dense, every later layer
    routes each token to 2 of 4 experts (sigmoid scores, weights normalised) + 1 shared."""
    return {
        **glm4v.text_config(tok, sizes),
        "head_dim": sizes.head_dim,
        "attention_bias": True,
        "moe_intermediate_size": sizes.text_hidden,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "routed_scaling_factor": 1.0,
        "norm_topk_prob": True,
    }


def spread_router_bias(model: PreTrainedModel) -> None:
    """Random score-correction biases (zero at initialisation), so that the experts a token is
    routed to (chosen on score + bias) differ from those its weights alone would pick."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        bias = getattr(module, "e_score_correction_bias", None)
        if bias is not None:
            bias.copy_(0.1 * torch.randn(bias.shape, generator=generator))


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 14,
    merge_size: int = 2,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny GLM-4.5V (`moe_text_config`)."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = glm4v.vision_config(sizes, image_size, patch_size, merge_size)
    return glm4v.save_glm(
        "glm4v_moe", Glm4vMoeConfig, Glm4vMoeForConditionalGeneration, moe_text_config(tok, sizes),
        vision, tok, (image_size, patch_size, merge_size), out_dir, seed, spread_router_bias,
    )  # fmt: skip
