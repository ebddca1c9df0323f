"""Tiny Ovis2: a thumbnail then covering-grid tiles, a ViT merged 2 x 2 into soft visual tokens
over a small visual vocabulary, and a Qwen2 language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Ovis2Config,
    Ovis2ForConditionalGeneration,
    Ovis2ImageProcessorPil,
    Ovis2Processor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 64  # one tile: a square image of this size is neither tiled nor resized
# (W, H) 165 x 150: no grid under 9 tiles covers 90% of it at 64 px per tile, so a 3 x 3
# canvas (stretched to 192 x 192) after the thumbnail, 10 views; odd tile counts keep every
# thumbnail cell's centre inside one tile cell
GEOMETRY_SIZE = (165, 150)

# The real checkpoints' processor settings (thisisiron/Ovis2-*-hf): 448 px tiles, 1 to 12 of
# them chosen by the covering-area rule, CLIP mean / std, bicubic; 14 px patches merged
# 2 x 2 (hidden_stride): 16 x 16 = 256 visual tokens per view.
REAL_TILE = 448
REAL_PATCH = 14
REAL_MAX_TILES = 12
HIDDEN_STRIDE = 2
VISUAL_WORDS = 2048  # the tiny visual vocabulary (the real ones are far larger)

# The image markers at their real relative order: <IMG_ATOM> (the visual token), then the five
# visual indicator tokens, whose embeddings are the visual table's last five rows.
INDICATORS = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<IMG_ATOM>", *INDICATORS)

# The -hf conversion's Qwen template: the image placeholder <image> on its own line first.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """The Qwen chat tokens plus Ovis2's image markers (no BOS; ``<|im_end|>`` ends a turn)."""
    return _common.qwen_chat_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words
    )


def processor(
    tok: PreTrainedTokenizerFast, tile: int, tokens_per_view: int, max_tiles: int
) -> Ovis2Processor:
    """Ovis2's processor: its image processor tiles ``tile`` px views (1 to ``max_tiles``,
    covering-area rule) with a thumbnail first, ``tokens_per_view`` ``<IMG_ATOM>`` each."""
    image_processor = Ovis2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_tiles,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return Ovis2Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=tokens_per_view,
        chat_template=tok.chat_template,
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 8,
    max_tiles: int = REAL_MAX_TILES,
    visual_words: int = VISUAL_WORDS,
    extra_words: Any = (),
) -> Path:
    """A tiny Ovis2: ``image_size`` px views of ``patch_size`` px patches merged 2 x 2 into
    ``(image_size / patch_size / 2)^2`` soft visual tokens per view."""
    tok = tokenizer(extra_words)
    side = image_size // patch_size // HIDDEN_STRIDE
    vision = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_stride": HIDDEN_STRIDE,
        "vocab_size": visual_words + len(INDICATORS),
        "num_visual_indicator_tokens": len(INDICATORS),
    }
    text = {
        "model_type": "qwen2",
        **sizes.text_kwargs(len(tok)),
        "max_position_embeddings": 2048,
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    config = Ovis2Config(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<IMG_ATOM>"),
        visual_indicator_token_ids=[tok.convert_tokens_to_ids(t) for t in INDICATORS],
        vocab_size=len(tok),
        hidden_size=sizes.text_hidden,
    )
    proc = processor(tok, image_size, side * side, max_tiles)
    return _common.save(Ovis2ForConditionalGeneration, config, proc, out_dir, seed)
