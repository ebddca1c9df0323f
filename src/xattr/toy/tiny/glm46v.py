"""Tiny GLM-4.6V: GLM-4.1V's tiny vision side and processor in `Glm46VForConditionalGeneration`,
whose text model is a sub-config of its own: GLM-4.1V's dense one (GLM-4.6V-Flash) or, with
``moe=True``, GLM-4.5V's mixture of experts (GLM-4.6V)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Glm46VConfig, Glm46VForConditionalGeneration, PreTrainedTokenizerFast

from . import glm4v
from ._common import TinySizes
from .glm4v import GEOMETRY_SIZE, NATIVE_SIZE, tokenizer
from .glm4v_moe import moe_text_config, spread_router_bias

__all__ = ["GEOMETRY_SIZE", "NATIVE_SIZE", "build", "tokenizer"]


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 14,
    merge_size: int = 2,
    moe: bool = False,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny GLM-4.6V-Flash (``moe=True``: GLM-4.6V, the text model GLM-4.5V's)."""
    tok = with_tokenizer or tokenizer(extra_words)
    text = (
        {"model_type": "glm4v_moe_text", **moe_text_config(tok, sizes)}
        if moe
        else {"model_type": "glm4v_text", **glm4v.text_config(tok, sizes)}
    )
    vision_type = "glm4v_moe_vision" if moe else "glm4v_vision"
    vision = {
        "model_type": vision_type,
        **glm4v.vision_config(sizes, image_size, patch_size, merge_size),
    }
    return glm4v.save_glm(
        "glm46v", Glm46VConfig, Glm46VForConditionalGeneration, text, vision, tok,
        (image_size, patch_size, merge_size), out_dir, seed, spread_router_bias if moe else None,
    )  # fmt: skip
