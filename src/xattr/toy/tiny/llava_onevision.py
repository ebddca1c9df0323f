"""Tiny LLaVA-OneVision: a SigLIP tower over a base view plus anyres tiles, a Qwen2 language model.

llava-onevision-qwen2-7b-ov-hf's geometry scaled down: 32 px tiles of 8 px patches, 4 x 4
tokens per tile (the real 384 / 14 gives 27 x 27 and leaves the last 6 px of every tile unseen;
``image_size=36`` reproduces such a gap), the real 6 x 6 tile pinpoints, ``anyres_max_9``,
SigLIP's 0.5 mean / std, the real chat template. The processor is the image-only `LlavaOnevisionProcessor` (its video
processor needs torchvision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.image_utils import PILImageResampling

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 32  # one tile: the base view and the tile keep its pixels
GEOMETRY_SIZE = (96, 32)  # the 1 x 3 tile canvas: base 4 x 4, tiles 4 x 12, four newlines

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

# llava-hf/llava-onevision-qwen2-*-ov-hf's chat template
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Qwen2 chat tokens (no BOS; ``<|im_end|>`` ends a turn) plus ``<image>`` / ``<video>``."""
    return _common.qwen_chat_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 8,
    max_tiles: int = 6,
    vision_aspect_ratio: str = "anyres_max_9",
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny LLaVA-OneVision: ``image_size`` px tiles, pinpoints up to max_tiles x max_tiles."""
    tok = with_tokenizer or tokenizer(extra_words)
    tiles = range(1, max_tiles + 1)
    pinpoints = [[image_size * i, image_size * j] for i in tiles for j in tiles]
    vision = SiglipVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=2 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )
    text = Qwen2Config(
        **sizes.text_kwargs(len(tok)),
        max_position_embeddings=4096,
        bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,  # the model's copy: must equal the processor's
        vision_feature_select_strategy="full",  # SigLIP has no CLS
        vision_feature_layer=-1,
        vision_aspect_ratio=vision_aspect_ratio,
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        resample=PILImageResampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )
    grid = image_size // patch_size
    proc = IMAGE_ONLY_PROCESSORS["llava_onevision"](
        image_processor=image_processor,
        tokenizer=tok,
        num_image_tokens=grid * grid,  # per tile; the processor takes its square root
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
        chat_template=tok.chat_template,
    )
    return _common.save(LlavaOnevisionForConditionalGeneration, config, proc, out_dir, seed)
