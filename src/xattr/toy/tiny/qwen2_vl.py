"""Tiny Qwen2-VL: merged 14 px patches, the image pinned to one grid by the pixel budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 112  # a square image of this size keeps its pixels (no resize)

SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """The Qwen chat tokens (no BOS; ``<|im_end|>`` ends a turn) over the task's words."""
    return _common.qwen_chat_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words
    )


def processor(
    family: str, tok: PreTrainedTokenizerFast, image_size: int, patch_size: int, merge_size: int
) -> ProcessorMixin:
    """Qwen2(.5)-VL processor whose pixel budget pins an image_size^2 image to one small grid."""
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},  # = min_pixels, max_pixels
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return IMAGE_ONLY_PROCESSORS[family](
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
    )


def text_config(tok: PreTrainedTokenizerFast, sizes: TinySizes) -> dict:
    """Keyword arguments of a tiny Qwen2-style language model with M-RoPE."""
    half = sizes.head_dim // 2  # M-RoPE splits the head_dim/2 rotary frequencies into (t, h, w)
    spatial = (half - half // 4) // 2  # the real 1:1.5:1.5 split, [16, 24, 24] for head_dim 128
    return {
        **sizes.text_kwargs(len(tok)),
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [half - 2 * spatial, spatial, spatial],
        },
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.pad_token_id,
    }


def token_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    """Top-level Qwen config ids of the vision placeholder tokens."""
    ids = tok.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


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
    """A tiny Qwen2-VL (vision ``embed_dim`` is the ViT width, ``hidden_size`` the LM width)."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = {
        "depth": sizes.vision_layers,
        "embed_dim": sizes.vision_hidden,
        "hidden_size": sizes.text_hidden,
        "mlp_ratio": 2,
        "num_heads": sizes.vision_heads,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text_config(tok, sizes), vision_config=vision, **token_ids(tok)
    )
    proc = processor("qwen2_vl", tok, image_size, patch_size, merge_size)
    return _common.save(Qwen2VLForConditionalGeneration, config, proc, out_dir, seed)
