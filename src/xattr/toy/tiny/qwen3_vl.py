"""Tiny Qwen3-VL (or Qwen3-VL-MoE): merged 16 px patches, deepstack features, interleaved M-RoPE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.image_utils import PILImageResampling

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common, qwen2_vl
from ._common import TinySizes
from .qwen2_vl import token_ids, tokenizer

__all__ = ["GEOMETRY_SIZE", "NATIVE_SIZE", "build", "tokenizer"]

NATIVE_SIZE = 128  # a square image of this size keeps its pixels: a 4 x 4 grid of merged tokens
GEOMETRY_SIZE = (300, 200)  # (W, H): stretched by the pixel budget to 192 x 128, a 4 x 6 grid


def processor(
    tok: PreTrainedTokenizerFast, image_size: int, patch_size: int, merge_size: int
) -> ProcessorMixin:
    """Qwen3-VL processor (the Qwen2-VL image processor, as in the real checkpoints: mean =
    std = 0.5, bicubic) with a pixel budget from image_size^2 to 2 image_size^2."""
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": 2 * pixels},  # = min_pixels, max_pixels
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
        resample=PILImageResampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return IMAGE_ONLY_PROCESSORS["qwen3_vl"](
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
    )


def vision_config(sizes: TinySizes, image_size: int, patch_size: int, merge_size: int) -> dict:
    """The tiny vision tower (Qwen3-VL's, and Qwen3.5's) for ``image_size`` px images."""
    grid = image_size // patch_size
    return {
        "depth": sizes.vision_layers,
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_heads": sizes.vision_heads,
        "out_hidden_size": sizes.text_hidden,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": 2,
        "num_position_embeddings": grid * grid,  # a square table, interpolated to each grid
    }


def text_config(tok: PreTrainedTokenizerFast, sizes: TinySizes, moe: bool) -> dict:
    """Qwen2-VL's tiny language model with Qwen3-VL's interleaved M-RoPE (+ experts)."""
    out = qwen2_vl.text_config(tok, sizes)
    half = sizes.head_dim // 2  # rotary frequencies, split (t, h, w) as the real [24, 20, 20]
    spatial = half * 5 // 16
    out["head_dim"] = sizes.head_dim
    out["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [half - 2 * spatial, spatial, spatial],
        "mrope_interleaved": True,
    }
    if moe:  # every layer sparse, 4 experts of which 2 per token
        out.update(
            moe_intermediate_size=sizes.text_hidden,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
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
    moe: bool = False,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny Qwen3-VL (``moe=True``: Qwen3-VL-MoE); the features after the first vision
    block are the one deepstack level, added to the image positions after LM layer 0."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = {
        **vision_config(sizes, image_size, patch_size, merge_size),
        "deepstack_visual_indexes": [0],
    }
    config_class, model_class = (
        (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration)
        if moe
        else (Qwen3VLConfig, Qwen3VLForConditionalGeneration)
    )
    config = config_class(
        text_config=text_config(tok, sizes, moe), vision_config=vision, **token_ids(tok)
    )
    proc = processor(tok, image_size, patch_size, merge_size)
    return _common.save(model_class, config, proc, out_dir, seed)
