"""Tiny LLaVA-NeXT: a CLIP tower over a base view plus anyres tiles, a Mistral language model.

The geometry is llava-v1.6-mistral-7b-hf's scaled down: 32 px tiles of 8 px patches (4 x 4
tokens per tile; the real 336 / 14 gives 24 x 24), the real grid pinpoints scaled by 32 / 336,
the real chat template and a word-level tokenizer with its special tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 32  # one tile: the base view and the (unpadded) tiles keep its pixels
# 3:1 lands on the 1 x 3 tile canvas exactly: base 4 x 4, tiles 4 x 12, four newline features;
# every base cell is three tile cells wide, so a block in one cell never straddles another
GEOMETRY_SIZE = (150, 50)

# llava-v1.6's [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] in tiles
PINPOINT_TILES = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))

# "[INST]" is text to the real (Mistral) tokenizer; here it is its pieces
SPECIALS = ("<s>", "</s>", "<pad>", "<image>", "[", "]", "/", "inst")

# llava-hf/llava-v1.6-mistral-7b-hf's chat_template.json
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Mistral-style: ``<s>`` prepended with special tokens, ``</s>`` ends the answer."""
    return _common.llama_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words, extra_special=["<image>"]
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 8,
    pinpoint_tiles: Any = PINPOINT_TILES,
    extra_words: Any = (),
) -> Path:
    """A tiny LLaVA-NeXT: ``image_size`` px tiles (the base view is one more), CLS dropped."""
    tok = tokenizer(extra_words)
    pinpoints = [[image_size * h, image_size * w] for h, w in pinpoint_tiles]
    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=2 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=sizes.vision_hidden,
    )
    text = MistralConfig(
        **sizes.text_kwargs(len(tok)),
        max_position_embeddings=4096,
        sliding_window=None,  # Mistral-7B-Instruct-v0.2, llava-v1.6-mistral's base: full causal
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    grid = image_size // patch_size
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,  # the model's copy: must equal the processor's
        image_seq_length=grid * grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_pad=True,
    )
    proc = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by strategy "default"
        chat_template=CHAT_TEMPLATE,
    )
    return _common.save(LlavaNextForConditionalGeneration, config, proc, out_dir, seed)
