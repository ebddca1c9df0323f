"""Tiny LFM2-VL: a SigLIP2 NaFlex tower, a 2 x 2 pixel-unshuffle projector, tiles plus a
thumbnail for large images, and an LFM2 language model mixing gated short-convolution layers
with GQA softmax-attention layers (the first and last layers are convolutions, as in
LiquidAI/LFM2-VL-1.6B).

The processor is saved from `Lfm2VlImageOnlyProcessor` with `Lfm2VlTorchImageProcessor` (the
real image processor needs torchvision), under the real class names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration, PreTrainedTokenizerFast

from xattr.models.lfm2_vl import Lfm2VlImageOnlyProcessor, Lfm2VlTorchImageProcessor

from . import _common
from ._common import TinySizes

# The tiny geometry: 8 px patches, 64 px tiles, 2 x 2 unshuffle: a tile is 4 x 4 tokens, a
# one-view image holds 4 to 48 tokens, and one over twice the 48 tokens' pixels is tiled.
# LFM2-VL-1.6B: 16 px patches, 512 px tiles (16 x 16 tokens), 64 to 256 tokens per view.
NATIVE_SIZE = 64  # 4 x 4 tokens: within the one-view budget, neither tiled nor resized
# (W, H) 3:1: a 3 x 1 canvas of tiles (4 x 12 tokens) and a thumbnail resized to 192 x 64 px,
# the same 4 x 12 tokens, so every thumbnail cell is exactly one canvas cell (no near-ties
# between the tile cells a thumbnail block covers in the shared geometry test)
GEOMETRY_SIZE = (300, 100)
PATCH = 8
TILE = 64
DOWNSAMPLE = 2
MIN_IMAGE_TOKENS = 4
MAX_IMAGE_TOKENS = 48
MIN_TILES, MAX_TILES = 2, 10  # the checkpoints' values
MEAN = STD = (0.5, 0.5, 0.5)

# conv first and last, two attention layers between (LFM2-1.2B: attention at 2, 5, 8, 10,
# 12, 14 of 16 layers)
LAYER_TYPES = ("conv", "full_attention", "conv", "full_attention", "conv")

TILE_TAGS = tuple(
    f"<|img_row_{r}_col_{c}|>"
    for r in range(1, MAX_TILES + 1)
    for c in range(1, MAX_TILES + 1)
    if r * c <= MAX_TILES
)
SPECIALS = (
    "<|pad|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<|image_start|>",
    "<|image_end|>",
    "<|img_thumbnail|>",
    *TILE_TAGS,
)

# The checkpoints' ChatML template: <|startoftext|>, then each turn
# <|im_start|>role\n ... <|im_end|>\n with images as <image> where they stand in the content.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """LFM2's conventions: ``<|startoftext|>`` written by the template (not added again),
    ``<|im_end|>`` ends a turn, ``<|pad|>`` pads; the image markers and tile tags are special."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        bos="<|startoftext|>",
        eos="<|im_end|>",
        pad="<|pad|>",
        extra_special=SPECIALS[2:],
    )


def image_processor(
    patch_size: int = PATCH, tile: int = TILE, use_thumbnail: bool = True
) -> Lfm2VlTorchImageProcessor:
    """The LFM2-VL image processor (its torch stand-in) at the tiny geometry."""
    return Lfm2VlTorchImageProcessor(
        encoder_patch_size=patch_size,
        tile_size=tile,
        downsample_factor=DOWNSAMPLE,
        min_image_tokens=MIN_IMAGE_TOKENS,
        max_image_tokens=MAX_IMAGE_TOKENS,
        min_tiles=MIN_TILES,
        max_tiles=MAX_TILES,
        use_thumbnail=use_thumbnail,
        do_image_splitting=True,
        image_mean=list(MEAN),
        image_std=list(STD),
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = TILE,
    patch_size: int = PATCH,
    use_thumbnail: bool = True,
    layer_types: tuple[str, ...] = LAYER_TYPES,
    extra_words: Any = (),
) -> Path:
    """A tiny LFM2-VL: ``image_size`` px tiles of ``patch_size`` px patches, unshuffled 2 x 2;
    the language model's layers are ``layer_types`` (``conv`` or ``full_attention``)."""
    tok = tokenizer(extra_words)
    proc = Lfm2VlImageOnlyProcessor(
        image_processor=image_processor(patch_size, image_size, use_thumbnail),
        tokenizer=tok,
        chat_template=tok.chat_template,
    )
    text: dict[str, Any] = {
        "model_type": "lfm2",
        **sizes.text_kwargs(len(tok)),
        "num_hidden_layers": len(layer_types),
        "layer_types": list(layer_types),
        "block_auto_adjust_ff_dim": False,  # the MLP width is intermediate_size as given
        "conv_L_cache": 3,
        "conv_bias": False,
        "max_position_embeddings": 2048,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "model_type": "siglip2_vision_model",
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "patch_size": patch_size,
        "num_patches": (image_size // patch_size) ** 2,  # the learned position grid
        "vision_use_head": False,
    }
    config = Lfm2VlConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_size=2 * sizes.text_hidden,
        downsample_factor=DOWNSAMPLE,
    )
    return _common.save(Lfm2VlForConditionalGeneration, config, proc, out_dir, seed)
