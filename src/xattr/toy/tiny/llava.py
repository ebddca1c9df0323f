"""Tiny LLaVA-1.5: a CLIP tower, a Llama language model, resize + centre crop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 112  # the crop size: a square image of this size keeps its pixels

SPECIALS = ("<s>", "</s>", "<pad>", "<image>")

# LLaVA-1.5 ("llava-hf") style: "USER: <image>\nQUESTION ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Llama-style: ``<s>`` prepended with special tokens, ``</s>`` ends the answer."""
    return _common.llama_tokenizer(
        SPECIALS, chat_template=CHAT_TEMPLATE, extra_words=extra_words, extra_special=["<image>"]
    )


@dataclass
class Parts:
    """What a LLaVA-style tiny model is made of (ViP-LLaVA and kin reuse them)."""

    tokenizer: PreTrainedTokenizerFast
    vision: CLIPVisionConfig
    text: LlamaConfig
    processor: LlavaProcessor

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids("<image>")


def parts(
    sizes: TinySizes,
    *,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 14,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Parts:
    """A tiny CLIP tower and Llama config, the tokenizer, and a CLIP resize + centre-crop processor."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=2 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=sizes.vision_hidden,
    )
    text = LlamaConfig(
        **sizes.text_kwargs(len(tok)),
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by strategy "default"
        chat_template=tok.chat_template,
    )
    return Parts(tok, vision, text, processor)


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 14,
    vision_feature_layer: int = -2,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny LLaVA-1.5: CLIP resize (shortest edge) + centre crop to image_size^2."""
    p = parts(
        sizes,
        image_size=image_size,
        patch_size=patch_size,
        extra_words=extra_words,
        with_tokenizer=with_tokenizer,
    )
    grid = image_size // patch_size
    config = LlavaConfig(
        vision_config=p.vision,
        text_config=p.text,
        image_token_index=p.image_token_id,
        image_seq_length=grid * grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
        projector_hidden_act="gelu",
    )
    return _common.save(LlavaForConditionalGeneration, config, p.processor, out_dir, seed)
