"""Tiny SmolVLM2: Idefics3's tiles + global layout with SmolVLM's classes and prompt.

SmolVLM2-2.2B's geometry scaled down: 36 px frames of 4 px patches shuffled by 3, so 3 x 3
tokens a frame (the real 384 / 14 / 3 gives 9 x 9 and leaves 6 px of a frame unseen;
``image_size=38`` reproduces such a gap), the long side resized to ``longest_edge_tiles``
frames (4 in the real model), the real chat template. The processor is the image-only
`SmolVLMProcessor` (the real one needs torchvision and num2words).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMVisionConfig,
)
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common
from ._common import TinySizes
from .idefics3 import ROW_COL_TAGS, image_processor_kwargs, text_config, vision_kwargs

# an odd number of tiles per side, as for Idefics3 (see there)
TEST_OPTIONS = {"longest_edge_tiles": 3}
NATIVE_SIZE = 108  # 3 x 3 exact 36 px crops (the global view is a resize)
GEOMETRY_SIZE = (108, 36)  # 1 x 3 tiles + global: tiles grid 3 x 9, global 3 x 3

IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
SPECIALS = ("<|im_start|>", "<|im_end|>", *IMAGE_TOKENS, "<video>", *ROW_COL_TAGS)

# SmolVLM2-*-Instruct: "<|im_start|>User:<image>QUESTION<end_of_utterance>\nAssistant:"
CHAT_TEMPLATE = DEFAULT_CHAT_TEMPLATE


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """SmolLM2 chat tokens (the template writes ``<|im_start|>``) and the image tokens and tags."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        bos="<|im_start|>",
        eos="<end_of_utterance>",
        pad="<|im_end|>",
        extra_special=SPECIALS,
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = 36,
    patch_size: int = 4,
    scale_factor: int = 3,
    longest_edge_tiles: int = 4,
    extra_words: Any = (),
) -> Path:
    """A tiny SmolVLM: ``image_size`` px frames, ``(image_size // patch_size) // scale`` tokens a side."""
    tok = tokenizer(extra_words)
    config = SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**vision_kwargs(sizes, image_size, patch_size)),
        text_config=text_config(tok, sizes),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    image_processor = SmolVLMImageProcessorPil(
        **image_processor_kwargs(image_size, longest_edge_tiles)
    )
    side = (image_size // patch_size) // scale_factor
    proc = IMAGE_ONLY_PROCESSORS["smolvlm"](
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=side * side,
        chat_template=CHAT_TEMPLATE,
    )
    return _common.save(SmolVLMForConditionalGeneration, config, proc, out_dir, seed)
