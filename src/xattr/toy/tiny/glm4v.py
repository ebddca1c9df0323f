"""Tiny GLM-4.1V: 14 px patches merged 2 x 2, GLM's chat markers and 3-D rotary positions.

The processor settings are those of zai-org/GLM-4.1V-9B-Thinking's preprocessor config
(`REAL_PROCESSOR`: patch 14, temporal patch 2, merge 2, CLIP mean and std, a pixel budget
counted over two frames) except the budget, which pins a NATIVE_SIZE^2 image to one grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessorPil,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common
from ._common import TinySizes

__all__ = ["GEOMETRY_SIZE", "NATIVE_SIZE", "REAL_PROCESSOR", "build", "tokenizer"]

NATIVE_SIZE = 112  # a square image of this size keeps its pixels: a 4 x 4 grid of merged tokens
GEOMETRY_SIZE = (168, 112)  # (W, H): kept as is by the budget, a 4 x 6 grid

# zai-org/GLM-4.1V-9B-Thinking's image processor (the budget counts 2 x H x W pixels)
REAL_PROCESSOR = {
    "size": {"shortest_edge": 12_544, "longest_edge": 9_633_792},
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

# GLM-4 chat tokens; <|endoftext|>, <|user|> and <|observation|> end a generated answer
SPECIALS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
)
STOPS = ("<|endoftext|>", "<|user|>", "<|observation|>")

# GLM-4.1V's template for one user turn of images and text (the real one also renders
# system turns, videos and assistant metadata)
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """GLM-4's chat tokens (no BOS; ``<|endoftext|>`` pads) over the task's words."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        extra_special=SPECIALS[1:],
    )


def processor(
    family: str, tok: PreTrainedTokenizerFast, image_size: int, patch_size: int, merge_size: int
) -> ProcessorMixin:
    """GLM-V processor with the real settings and a budget of image_size^2 to 2 image_size^2
    pixels per frame (GLM's budget counts both frames of a still image)."""
    frames = REAL_PROCESSOR["temporal_patch_size"]
    pixels = frames * image_size * image_size
    image_processor = Glm4vImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": 2 * pixels},
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=frames,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return IMAGE_ONLY_PROCESSORS[family](
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
    )


def vision_config(sizes: TinySizes, image_size: int, patch_size: int, merge_size: int) -> dict:
    """The tiny GLM-V vision tower; its learned position table is (image_size / patch)^2,
    interpolated to each image's grid as in the real model."""
    return {
        "depth": sizes.vision_layers,
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_heads": sizes.vision_heads,
        "out_hidden_size": sizes.text_hidden,
        "image_size": image_size,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": REAL_PROCESSOR["temporal_patch_size"],
    }


def rope_parameters(sizes: TinySizes) -> dict:
    """GLM's M-RoPE on half of each head's dimensions; the rotary frequencies split over
    (t, h, w) as near the real [8, 12, 12] of 32 as the tiny head allows."""
    rotary = sizes.head_dim // 2 // 2  # frequencies: half the head rotates, two dims each
    spatial = (rotary - rotary // 4) // 2
    return {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "mrope_section": [rotary - 2 * spatial, spatial, spatial],
    }


def text_config(tok: PreTrainedTokenizerFast, sizes: TinySizes) -> dict:
    """Keyword arguments of a tiny GLM-4.1V language model."""
    return {
        **sizes.text_kwargs(len(tok)),
        "max_position_embeddings": 2048,
        "rope_parameters": rope_parameters(sizes),
        "pad_token_id": tok.pad_token_id,
    }


def token_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    """Top-level GLM-V config ids of the image and video tokens and markers."""
    ids = tok.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image|>"),
        "video_token_id": ids("<|video|>"),
        "image_start_token_id": ids("<|begin_of_image|>"),
        "image_end_token_id": ids("<|end_of_image|>"),
        "video_start_token_id": ids("<|begin_of_video|>"),
        "video_end_token_id": ids("<|end_of_video|>"),
    }


def stop_ids(tok: PreTrainedTokenizerFast) -> list[int]:
    """The generation config's eos ids (GLM stops at the end of text or the next turn)."""
    return [tok.convert_tokens_to_ids(t) for t in STOPS]


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
    """A tiny GLM-4.1V (vision ``hidden_size`` is the ViT width, ``out_hidden_size`` the LM's)."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = vision_config(sizes, image_size, patch_size, merge_size)
    return save_glm(
        "glm4v", Glm4vConfig, Glm4vForConditionalGeneration, text_config(tok, sizes), vision,
        tok, (image_size, patch_size, merge_size), out_dir, seed,
    )  # fmt: skip


def save_glm(
    family: str,
    config_class: Any,
    model_class: Any,
    text: dict[str, Any],
    vision: dict[str, Any],
    tok: PreTrainedTokenizerFast,
    image: tuple[int, int, int],
    out_dir: Path,
    seed: int,
    adjust: Any = None,
) -> Path:
    """One GLM-V family's tiny model saved: its config from ``text`` and ``vision`` with GLM's
    token ids and stop ids, and its processor at ``image`` = (size, patch, merge)."""
    config = config_class(text_config=text, vision_config=vision, **token_ids(tok))
    config.get_text_config().eos_token_id = stop_ids(tok)  # read by _common's generation config
    proc = processor(family, tok, *image)
    return _common.save(model_class, config, proc, out_dir, seed, adjust=adjust)
