"""Tiny InternVL (HF-native): square tiles row-major plus a thumbnail, pixel shuffle 0.5, a
Qwen3 (InternVL3.5) or Qwen2 (InternVL2.5 / 3) language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 64  # one tile: a square image of this size is neither tiled nor resized
# (W, H) with W / H = 1.1 and room for 9 tiles: a 3 x 3 canvas (stretched to 192 x 192) and a
# thumbnail, 10 views; odd tile counts keep every thumbnail cell's centre inside one tile cell
GEOMETRY_SIZE = (165, 150)

SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
)

# the tokens InternVLProcessor looks up on the tokenizer by name
NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# The HF conversion's InternVL template: no default system prompt; the image placeholder is
# the context token itself, expanded to <img> + <IMG_CONTEXT> x (256 per view) + </img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """The Qwen chat tokens plus InternVL's image markers (no BOS; ``<|im_end|>`` ends a turn)."""
    return _common.qwen_chat_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words, named=NAMED
    )


def processor(
    tok: PreTrainedTokenizerFast, tile: int, tokens_per_tile: int, max_tiles: int
) -> ProcessorMixin:
    """InternVL processor: the GOT-OCR2 image processor (bicubic, ImageNet mean / std, 1 to
    ``max_tiles`` tiles of ``tile`` px), as in the real checkpoints with a smaller tile."""
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        min_patches=1,
        max_patches=max_tiles,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
    return IMAGE_ONLY_PROCESSORS["internvl"](
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=tokens_per_tile,
        chat_template=tok.chat_template,
    )


def text_config(tok: PreTrainedTokenizerFast, sizes: TinySizes, model_type: str) -> dict:
    """Keyword arguments of the tiny language model (``qwen3``: q/k-norm; ``qwen2``: q/k/v bias)."""
    return {
        "model_type": model_type,
        **sizes.text_kwargs(len(tok)),
        "head_dim": sizes.head_dim,
        "max_position_embeddings": 2048,
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 8,
    max_tiles: int = 12,
    text_model_type: str = "qwen3",
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny InternVL: ``image_size`` px tiles of ``patch_size`` px patches, pixel-shuffled
    2 x 2 into ``(image_size / patch_size / 2)^2`` tokens per view."""
    tok = with_tokenizer or tokenizer(extra_words)
    side = image_size // patch_size // 2  # tokens per view side after the pixel shuffle
    vision = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    config = InternVLConfig(
        vision_config=vision,
        text_config=text_config(tok, sizes, text_model_type),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=side * side,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    proc = processor(tok, image_size, side * side, max_tiles)
    return _common.save(InternVLForConditionalGeneration, config, proc, out_dir, seed)
