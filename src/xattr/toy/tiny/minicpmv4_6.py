"""Tiny MiniCPM-V 4.6: a SigLIP-style NaViT tower with the window-attention merger after its
first layer, the 2 x 2 MLP merger, and Qwen3.5's hybrid language model (three Gated DeltaNet
layers, then one softmax layer); the real slicing processor with a smaller slice side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    MiniCPMV4_6Config,
    MiniCPMV4_6ForConditionalGeneration,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)
from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import (
    MiniCPMV4_6ImageProcessorPil,
)

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common, qwen3_5
from ._common import TinySizes

__all__ = ["GEOMETRY_SIZE", "NATIVE_SIZE", "REAL_PROCESSOR", "build", "processor", "tokenizer"]

# openbmb/MiniCPM-V-4.6's image processor: 448 px slices of 14 px patches, at most 9 slices
# plus the overview, 16x downsampling (one token per 4 x 4 patches), an image-id tag.
REAL_PROCESSOR = {
    "scale_resolution": 448,
    "max_slice_nums": 9,
    "patch_size": 14,
    "downsample_mode": "16x",
    "slice_mode": True,
    "use_image_id": True,
}
TINY_SCALE = 224  # the tiny model's slice side: 4 x 4 tokens per 224 px square
NATIVE_SIZE = TINY_SCALE  # a square of this size is one unsliced, unresized overview
# (W, H) ~ 4 : 3: an overview of 3 x 5 tokens and 3 x 3 slices of 3 x 5 tokens (stitched
# 9 x 15), sized so that no tested cell's centre lies near a cell edge of the other grid
GEOMETRY_SIZE = (690, 514)
TEST_OPTIONS = {"text_layers": 4}  # three linear layers, then one softmax layer

SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "</image>",
    "<slice>",
    "</slice>",
    "<image_id>",
    "</image_id>",
)

# the tokens MiniCPMV4_6Processor looks up on the tokenizer by name
NAMED = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "image_start_token": "<image>",
    "image_end_token": "</image>",
    "slice_start_token": "<slice>",
    "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>",
    "image_id_end_token": "</image_id>",
}

# Qwen's chat markup; the image is the image token alone, which the processor expands into
# <image_id>0</image_id><image>(overview)</image> and the rows of <slice>(slice)</slice>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|image_pad|>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Qwen's chat tokens plus MiniCPM-V's image, slice and image-id markers."""
    return _common.qwen_chat_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words, named=NAMED
    )


def processor(tok: PreTrainedTokenizerFast, **settings: Any) -> ProcessorMixin:
    """The image-only MiniCPM-V 4.6 processor around ``tok``: the real settings
    (`REAL_PROCESSOR`) with ``settings`` replacing some (the tiny model's slice side)."""
    image_processor = MiniCPMV4_6ImageProcessorPil(**{**REAL_PROCESSOR, **settings})
    return IMAGE_ONLY_PROCESSORS["minicpmv4_6"](
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = TINY_SCALE,
    patch_size: int = 14,
    max_slice_nums: int = 9,
    downsample_mode: str = "16x",
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny MiniCPM-V 4.6 whose processor cuts ``image_size`` px slices (the real: 448)
    of ``patch_size`` px patches; the window merger follows vision layer 0."""
    tok = with_tokenizer or tokenizer(extra_words)
    text = qwen3_5.text_config(tok, sizes, moe=False, interval=4)
    text["model_type"] = "qwen3_5_text"
    vision = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": image_size,  # the position table's side, interpolated to each frame
        "patch_size": patch_size,
    }
    config = MiniCPMV4_6Config(
        text_config=text,
        vision_config=vision,
        insert_layer_id=0,
        image_size=image_size,
        image_token_id=tok.convert_tokens_to_ids(NAMED["image_token"]),
        video_token_id=tok.convert_tokens_to_ids(NAMED["video_token"]),
        downsample_mode=downsample_mode,
        tie_word_embeddings=True,  # as the real checkpoint
    )
    proc = processor(
        tok,
        scale_resolution=image_size,
        patch_size=patch_size,
        max_slice_nums=max_slice_nums,
        downsample_mode=downsample_mode,
    )
    return _common.save(
        MiniCPMV4_6ForConditionalGeneration, config, proc, out_dir, seed, adjust=qwen3_5._slow_decay
    )
