"""Tiny Llama 4: 64 px tiles on a padded canvas plus a global image, a vision tower whose
adapter pixel-shuffles 2 x 2, and a Llama 4 text model with its quirks switched on: chunked
local attention (chunk smaller than the tiny prompt) with RoPE and QK norm on three of four
layers, a global NoPE layer with query temperature tuning (floor scale small enough that the
scale changes inside the prompt), and MoE (top-1 router plus a shared expert) on every other
layer.

Llama 4's own tokenizer (about 200k tokens) is not published in a form the tests can fetch,
so a word-level one carries its special tokens and the chat template transformers ships
with `Llama4Processor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.llama4.processing_llama4 import chat_template as CHAT_TEMPLATE

from ...models.llama4_images import Llama4ImagesWithoutTorchvision
from . import _common
from ._common import TinySizes

NATIVE_SIZE = 64  # one tile: a square image of this size is neither tiled nor resized
# (W, H) = 192 x 128: a 2 x 3 canvas of 64 px tiles the image fills unresized, and the global
# view: each global cell holds 2 x 3 whole tile cells, so a block inside a tile cell lies inside
# one global cell (the padding tiles are tested on their own, tests/test_family_llama4.py)
GEOMETRY_SIZE = (192, 128)
PADDED_SIZE = (160, 100)  # the same canvas, the right column and bottom row on the padding
TEST_OPTIONS = {"text_layers": 4}  # three chunked RoPE layers, then one global NoPE layer
CHUNK = 16  # attention chunk: the one-tile prompt (about 35 tokens) crosses two boundaries
FLOOR_SCALE = 8  # temperature tuning's floor: the query scale steps every 8 positions
MAX_TILES = 6  # tiles of the tiny processor's canvas (the real one allows 16)
MOE_STEP = 2  # every other layer routed (Scout: every layer; Maverick: every other)
EXPERTS = 4

# The real checkpoint's processor settings (meta-llama/Llama-4-Scout-17B-16E-Instruct): 336 px
# tiles, up to 16 of them, 14 px patches, pixel shuffle ratio 0.5 (2 x 2 patches per token):
# 12 x 12 = 144 tokens per view.
REAL_TILE = 336
REAL_PATCH = 14
REAL_MAX_TILES = 16
SHUFFLE_RATIO = 0.5

BOS, EOT, PAD = "<|begin_of_text|>", "<|eot|>", "<|finetune_right_pad|>"
IMAGE_TOKENS = (
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
)
SPECIALS = (
    PAD,
    BOS,
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    EOT,
    "<|eom|>",
    "<|python_start|>",
    "<|python_end|>",
    *IMAGE_TOKENS,
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Llama 4's conventions: ``<|begin_of_text|>`` prepended with special tokens (the
    template writes it too, so the adapter tokenises without adding it), a turn ends
    ``<|eot|>``, ``<|finetune_right_pad|>`` pads."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        bos=BOS,
        prepend_bos=True,
        eos=EOT,
        pad=PAD,
        extra_special=SPECIALS[2:],
    )


def image_processor(tile: int, max_tiles: int) -> Llama4ImagesWithoutTorchvision:
    """Llama 4's image processor with ``tile`` px tiles, ``max_tiles`` of them (mean / std 0.5,
    bilinear, as the checkpoint's): the torchvision-free stand-in, which computes the real
    one's output and saves as it (`xattr.models.llama4_images`)."""
    return Llama4ImagesWithoutTorchvision(
        size={"height": tile, "width": tile}, max_patches=max_tiles
    )


def processor(
    tok: PreTrainedTokenizerFast, tile: int, patch_size: int, max_tiles: int
) -> Llama4Processor:
    """Llama 4's processor: ``(tile / patch_size)^2 / 4`` patch tokens per view."""
    return Llama4Processor(
        image_processor=image_processor(tile, max_tiles),
        tokenizer=tok,
        patch_size=patch_size,
        pixel_shuffle_ratio=SHUFFLE_RATIO,
        chat_template=tok.chat_template,
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 8,
    max_tiles: int = MAX_TILES,
    chunk_size: int = CHUNK,
    use_qk_norm: bool = True,
    temperature_tuning: bool = True,
    extra_words: Any = (),
) -> Path:
    """A tiny Llama 4: ``image_size`` px tiles of ``patch_size`` px patches, shuffled into
    ``(image_size / patch_size / 2)^2`` tokens per view; every 4th text layer global and
    position-free (NoPE), the others chunked (``chunk_size``) with RoPE."""
    tok = tokenizer(extra_words)
    text = {
        **sizes.text_kwargs(len(tok)),
        "head_dim": sizes.head_dim,
        "intermediate_size_mlp": 4 * sizes.text_hidden,  # the dense layers' MLP
        "max_position_embeddings": 2048,
        "num_local_experts": EXPERTS,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": MOE_STEP,
        "attention_chunk_size": chunk_size,
        "use_qk_norm": use_qk_norm,
        "attn_temperature_tuning": temperature_tuning,
        "floor_scale": FLOOR_SCALE,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": [tok.convert_tokens_to_ids("<|end_of_text|>"), tok.eos_token_id],
        "pad_token_id": tok.pad_token_id,
    }
    shuffled = 4 * sizes.vision_hidden  # 2 x 2 patches' features side by side
    vision = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": shuffled,  # the adapter MLP's input width (Scout: 4 x 1408)
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "pixel_shuffle_ratio": SHUFFLE_RATIO,
        "projector_input_dim": shuffled,
        "projector_output_dim": shuffled,
        "vision_output_dim": shuffled,
    }
    config = Llama4Config(
        vision_config=vision,
        text_config=text,
        boi_token_index=tok.convert_tokens_to_ids("<|image_start|>"),
        eoi_token_index=tok.convert_tokens_to_ids("<|image_end|>"),
        image_token_index=tok.convert_tokens_to_ids("<|patch|>"),
    )
    proc = processor(tok, image_size, patch_size, max_tiles)
    return _common.save(Llama4ForConditionalGeneration, config, proc, out_dir, seed)
