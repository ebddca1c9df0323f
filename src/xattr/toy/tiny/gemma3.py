"""Tiny Gemma 3: a SigLIP tower avg-pooled to 4 x 4 tokens per view, optional pan-and-scan
crops, one sliding-window and one full-attention layer, a bidirectional image block."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    PreTrainedTokenizerFast,
)

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 64  # the view size: a square image of this size keeps its pixels
# (W, H) with W / H = 3: with pan-and-scan, the original and three 80 x 80 crops (each
# stretched to 64 x 64); an odd crop count keeps every original cell's centre inside one
# crop cell
GEOMETRY_SIZE = (240, 80)
TEST_OPTIONS = {"pan_and_scan": True}  # the tests' model crops non-square images

SPECIALS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)

# the tokens Gemma3Processor looks up on the tokenizer by name
NAMED = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}

# words of the text the processor writes around pan-and-scan crops ("Here is the original
# image ... and here are some crops to help you see better")
PAN_AND_SCAN_WORDS = ("here", "original", "some", "crops", "help", "better")

# Gemma 3 "it": <bos> first, a system message folded into the first user turn, the
# assistant's role rendered "model", text trimmed, the image placeholder <start_of_image>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = (messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text']) + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ first_user_prefix if loop.first else '' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Gemma's chat tokens (``<bos>`` written by the template; ``<end_of_turn>`` ends a turn)."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=(*PAN_AND_SCAN_WORDS, *extra_words),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        extra_special=SPECIALS[3:],
        named=NAMED,
    )


def processor(
    tok: PreTrainedTokenizerFast, image_size: int, tokens: int, pan_and_scan: bool
) -> Gemma3Processor:
    """Gemma 3's processor: each view stretched to image_size^2 (bilinear, mean = std = 0.5);
    with ``pan_and_scan`` the image processor's config asks for crops of at least half a view."""
    crops = (
        {
            "do_pan_and_scan": True,
            "pan_and_scan_min_crop_size": image_size // 2,  # real: 256 for 896 px views
            "pan_and_scan_max_num_crops": 4,
            "pan_and_scan_min_ratio_to_activate": 1.2,
        }
        if pan_and_scan
        else {}
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        **crops,
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=tok.chat_template,
        image_seq_length=tokens,
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 8,
    tokens_per_side: int = 4,
    sliding_window: int = 8,
    pan_and_scan: bool = False,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny Gemma 3: ``(image_size / patch_size)^2`` SigLIP patches avg-pooled to
    ``tokens_per_side^2`` tokens per view; the first text layer slides over
    ``sliding_window`` tokens (fewer than a view's), the last attends fully."""
    tok = with_tokenizer or tokenizer(extra_words)
    ids = tok.convert_tokens_to_ids
    layer_types = ["sliding_attention"] * (sizes.text_layers - 1) + ["full_attention"]
    text = {
        **sizes.text_kwargs(len(tok)),
        "head_dim": sizes.head_dim,
        "query_pre_attn_scalar": sizes.head_dim,
        "sliding_window": sliding_window,
        "layer_types": layer_types,
        "max_position_embeddings": 2048,
        "bos_token_id": ids("<bos>"),
        "eos_token_id": [ids("<eos>"), ids("<end_of_turn>")],
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
    }
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=tokens_per_side**2,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    proc = processor(tok, image_size, tokens_per_side**2, pan_and_scan)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers zero-initialises it: every image would vanish
        std = 0.02 * math.sqrt(sizes.text_hidden / sizes.vision_hidden)  # ~ scaled text embeddings
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, std)
    model.generation_config = _common.generation_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir
