"""Tiny Qwen2.5-VL: Qwen2-VL's tokens and processor, windowed vision attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from . import _common
from ._common import TinySizes
from .qwen2_vl import NATIVE_SIZE, processor, text_config, token_ids, tokenizer

__all__ = ["NATIVE_SIZE", "build"]


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
    """A tiny Qwen2.5-VL; windowed vision attention except in the last block."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = {
        "depth": sizes.vision_layers,
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "out_hidden_size": sizes.text_hidden,
        "num_heads": sizes.vision_heads,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": 2,
        "window_size": 112,  # pixels, the real value: one window is a 112x112 image
        "fullatt_block_indexes": [sizes.vision_layers - 1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config(tok, sizes), vision_config=vision, **token_ids(tok)
    )
    proc = processor("qwen2_5_vl", tok, image_size, patch_size, merge_size)
    return _common.save(Qwen2_5_VLForConditionalGeneration, config, proc, out_dir, seed)
