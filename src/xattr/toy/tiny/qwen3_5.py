"""Tiny Qwen3.5 (or Qwen3.5-MoE): Qwen3-VL's vision side (no deepstack) before a hybrid
language model whose layers are mostly Gated DeltaNet (linear attention), with a gated
softmax attention layer every ``full_attention_interval`` layers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
)

from . import _common, qwen3_vl
from ._common import TinySizes
from .qwen2_vl import CHAT_TEMPLATE, SPECIALS, token_ids

__all__ = ["GEOMETRY_SIZE", "NATIVE_SIZE", "build", "tokenizer"]

NATIVE_SIZE = qwen3_vl.NATIVE_SIZE  # the processor is Qwen3-VL's
GEOMETRY_SIZE = qwen3_vl.GEOMETRY_SIZE
TEST_OPTIONS = {"text_layers": 4}  # three linear layers, then one softmax layer


@dataclass(frozen=True)
class HeadShape:
    """Head dims and linear head counts set apart from the width; None: today's tiny rule
    (head dim = width / heads, ``text_heads // 2`` key and ``2 * text_heads`` value heads)."""

    head_dim: int | None = None  # softmax layers
    linear_key_heads: int | None = None
    linear_value_heads: int | None = None
    linear_head_dim: int | None = None  # key and value head dim of the linear layers


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Qwen's chat tokens over a small byte-level BPE: transformers loads a Qwen3.5 checkpoint's
    tokenizer as `Qwen3_5Tokenizer`, which rebuilds a BPE from the saved vocabulary and merges
    (a word-level table would encode nothing). The template is Qwen3-VL's (no thinking)."""
    return _common.qwen_chat_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words, bpe=True
    )


def text_config(
    tok: PreTrainedTokenizerFast,
    sizes: TinySizes,
    moe: bool,
    interval: int,
    shape: HeadShape | None = None,
) -> dict:
    """Qwen3-VL's tiny language model with Qwen3.5's linear layers: more value heads than the
    softmax layers have query heads (the real 32 vs 16), and a 4-tap convolution. ``shape``
    sets head dims and linear head counts apart from the width (`HeadShape`)."""
    shape = shape or HeadShape()
    out = qwen3_vl.text_config(tok, sizes, moe=False)
    out["rope_parameters"]["partial_rotary_factor"] = 0.25  # as the real checkpoints
    out.pop("mrope_section", None)
    if shape.head_dim is not None:  # rotary over a quarter of it, split (t, h, w) as the real
        out["head_dim"] = shape.head_dim
        half = shape.head_dim // 8  # rotary frequencies
        width = half // 3
        height = (half - width) // 2
        out["rope_parameters"]["mrope_section"] = [half - height - width, height, width]
    out.update(
        layer_types=[
            "full_attention" if (i + 1) % interval == 0 else "linear_attention"
            for i in range(sizes.text_layers)
        ],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=shape.linear_head_dim or sizes.head_dim,
        linear_value_head_dim=shape.linear_head_dim or sizes.head_dim,
        linear_num_key_heads=shape.linear_key_heads or sizes.text_heads // 2,
        linear_num_value_heads=shape.linear_value_heads or 2 * sizes.text_heads,
    )
    if moe:  # every layer sparse, 4 experts of which 2 per token, and a shared expert
        out.update(
            moe_intermediate_size=sizes.text_hidden,
            shared_expert_intermediate_size=sizes.text_hidden,
            num_experts=4,
            num_experts_per_tok=2,
        )
    return out


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 16,
    merge_size: int = 2,
    full_attention_interval: int = 4,
    moe: bool = False,
    head_dim: int | None = None,
    linear_key_heads: int | None = None,
    linear_value_heads: int | None = None,
    linear_head_dim: int | None = None,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny Qwen3.5 (``moe=True``: Qwen3.5-MoE). ``head_dim`` (softmax layers),
    ``linear_key_heads``, ``linear_value_heads`` and ``linear_head_dim`` (the linear layers'
    key and value head dim) give the real attention shape at a narrow width (Qwen3.5: 256,
    16, 32, 128); left out, they follow the width as the other tiny models' heads do."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = qwen3_vl.vision_config(sizes, image_size, patch_size, merge_size)
    config_class, model_class = (
        (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration)
        if moe
        else (Qwen3_5Config, Qwen3_5ForConditionalGeneration)
    )
    shape = HeadShape(head_dim, linear_key_heads, linear_value_heads, linear_head_dim)
    text = text_config(tok, sizes, moe, full_attention_interval, shape)
    config = config_class(text_config=text, vision_config=vision, **token_ids(tok))
    proc = qwen3_vl.processor(tok, image_size, patch_size, merge_size)
    return _common.save(model_class, config, proc, out_dir, seed, adjust=_slow_decay)


def _slow_decay(model: PreTrainedModel) -> None:
    """Decay rates of a trained model: transformers draws ``exp(A_log)`` from [0.01, 16],
    which with ``dt_bias = 1`` forgets ~e^-10 per token at the top of the range, so a random
    layer would attend to its own token only; [0.01, 0.2] keeps tens of tokens in reach."""
    for module in model.modules():
        if hasattr(module, "A_log") and hasattr(module, "dt_bias"):
            module.A_log.copy_(torch.empty_like(module.A_log).uniform_(0.01, 0.2).log())
