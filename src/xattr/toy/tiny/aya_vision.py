"""Tiny Aya Vision: GOT-OCR2 tiles plus a thumbnail, a SigLIP tower pixel-shuffled 2 x 2, and
a Cohere2 language model with one sliding-window layer (RoPE) and one global layer (no RoPE)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    GotOcr2ImageProcessorPil,
    PreTrainedTokenizerFast,
)

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 64  # one tile: a square image of this size is neither tiled nor resized
# (W, H) with W / H = 1.1 and room for 9 tiles: a 3 x 3 canvas (stretched to 192 x 192) and a
# thumbnail, 10 views; odd tile counts keep every thumbnail cell's centre inside one tile cell
GEOMETRY_SIZE = (165, 150)
SLIDING_WINDOW = 8  # under one view's 16 tokens, so the sliding layer's mask clips the image

# The real checkpoints' processor settings (CohereLabs/aya-vision-8b and -32b): 364 px tiles,
# 1 to 12 of them, mean / std 0.5, bicubic; the processor's "patch" is 28 px (14 px SigLIP
# patches merged 2 x 2 by the projector's pixel shuffle): 13 x 13 = 169 tokens per view.
REAL_TILE = 364
REAL_PATCH = 14
REAL_MAX_TILES = 12
DOWNSAMPLE = 2
MEAN = STD = (0.5, 0.5, 0.5)
ALIGNMENT_RATIO = 7  # aya-vision-8b: alignment_intermediate_size 28672 = 7 x its text width 4096

SPECIALS = (
    "<PAD>",
    "<BOS_TOKEN>",
    "<|END_OF_TURN_TOKEN|>",
    "<|START_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
    "<image>",
    "<|START_OF_IMG|>",
    "<|END_OF_IMG|>",
    "<|IMG_PATCH|>",
    "<|IMG_LINE_BREAK|>",
)
# the tile tags the processor writes as plain text ("TILE_1" ... "TILE_GLOBAL")
TILE_WORDS = ("tile", "global", "_")
SYSTEM_PROMPT = "you are a helpful assistant."

# The checkpoints' template, with a shortened system preamble: <BOS_TOKEN>, a system turn, the
# user turn with every image first (the placeholder <image>) then the text, and the answer
# after <|START_RESPONSE|>; an assistant turn ends <|END_RESPONSE|><|END_OF_TURN_TOKEN|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
    + SYSTEM_PROMPT
    + "<|END_OF_TURN_TOKEN|>"
    "{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ message['role'] | replace('user', '<|USER_TOKEN|>')"
    " | replace('assistant', '<|CHATBOT_TOKEN|><|START_RESPONSE|>')"
    " | replace('system', '<|SYSTEM_TOKEN|>') }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image>"
    "{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ item['text'] }}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}<|END_RESPONSE|>{% endif %}<|END_OF_TURN_TOKEN|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Cohere's conventions: ``<BOS_TOKEN>`` prepended with special tokens (the template also
    writes it, so the adapter tokenises the prompt without adding it), ``<PAD>`` pads, a turn
    ends ``<|END_OF_TURN_TOKEN|>``."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=(*TILE_WORDS, *extra_words),
        bos="<BOS_TOKEN>",
        prepend_bos=True,
        eos="<|END_OF_TURN_TOKEN|>",
        pad="<PAD>",
        extra_special=SPECIALS[3:],
    )


def image_processor(tile: int, max_tiles: int) -> GotOcr2ImageProcessorPil:
    """The checkpoints' GOT-OCR2 image processor with ``tile`` px tiles; ``crop_to_patches``
    is off in their config, as there: `AyaVisionProcessor` switches it on per call."""
    return GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=False,
        min_patches=1,
        max_patches=max_tiles,
        image_mean=list(MEAN),
        image_std=list(STD),
    )


def processor(
    tok: PreTrainedTokenizerFast, tile: int, patch_size: int, max_tiles: int
) -> AyaVisionProcessor:
    """Aya Vision's processor: ``(tile / (patch_size * DOWNSAMPLE))^2`` tokens per view, its
    ``patch_size`` written merged as in the checkpoints' processor config (downsample 1)."""
    return AyaVisionProcessor(
        image_processor=image_processor(tile, max_tiles),
        tokenizer=tok,
        patch_size=patch_size * DOWNSAMPLE,
        img_size=tile,
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
    sliding_window: int = SLIDING_WINDOW,
    text_model_type: str = "cohere2",
    extra_words: Any = (),
) -> Path:
    """A tiny Aya Vision: ``image_size`` px tiles of ``patch_size`` px patches, pixel-shuffled
    2 x 2 into ``(image_size / patch_size / 2)^2`` tokens per view. A ``cohere2`` language
    model alternates sliding-window (``sliding_window``) and global layers, the last one
    global; ``cohere`` (Command R's) is causal everywhere."""
    tok = tokenizer(extra_words)
    text: dict[str, Any] = {
        "model_type": text_model_type,
        **sizes.text_kwargs(len(tok)),
        "max_position_embeddings": 2048,
        "logit_scale": 0.25,  # aya-vision-8b's (Cohere2Config's default is 0.0625)
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": [
            tok.convert_tokens_to_ids("<|END_RESPONSE|>"),
            tok.convert_tokens_to_ids("<|END_OF_TURN_TOKEN|>"),
        ],
        "pad_token_id": tok.pad_token_id,
    }
    if text_model_type == "cohere2":
        text["sliding_window"] = sliding_window
        text["layer_types"] = [
            "full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
            for i in range(sizes.text_layers)
        ]
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
    config = AyaVisionConfig(
        vision_config=vision,
        text_config=text,
        downsample_factor=DOWNSAMPLE,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        # the SwiGLU projector's width: 7 x the text width, as aya-vision-8b's 28672 / 4096
        alignment_intermediate_size=ALIGNMENT_RATIO * sizes.text_hidden,
    )
    proc = processor(tok, image_size, patch_size, max_tiles)
    return _common.save(AyaVisionForConditionalGeneration, config, proc, out_dir, seed)
