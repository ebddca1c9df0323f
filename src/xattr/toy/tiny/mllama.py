"""Tiny Llama 3.2 Vision (mllama): the image reaches the text only through cross-attention
layers over the tiles' patch tokens (a class token first in each tile); up to four tiles
of a canvas the image is resized into (aspect ratio kept) and padded at the bottom / right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 32  # one tile: a square image of this size keeps its pixels
GEOMETRY_SIZE = (94, 32)  # (W, H): a 1 x 3 canvas of 32 px tiles, its last 2 px padding
TEST_OPTIONS = {"text_layers": 5}  # cross-attention at layers 1 and 3; the last is self-attention

SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|image|>",
    "<|python_tag|>",
)

# meta-llama/Llama-3.2-11B-Vision-Instruct's template for one user turn with an image (no
# default system prompt when the turn has an image): <|image|> where the image goes.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|image|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Llama 3's chat tokens (``<|begin_of_text|>`` written by the template, ``<|eot_id|>``
    ends a turn) and the image token."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        extra_special=SPECIALS[3:],
    )


def cross_layers(text_layers: int) -> list[int]:
    """Every other layer from the second: at least one, and the last is self-attention when
    there are five or more (as in the real checkpoints, whose last layer is self-attention)."""
    return [layer for layer in range(text_layers) if layer % 2 == 1] or [0]


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 8,
    max_tiles: int = 4,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny mllama: ``image_size`` px tiles of ``patch_size`` px patches (plus a class token
    each), up to ``max_tiles`` tiles, cross-attention at `cross_layers`."""
    tok = with_tokenizer or tokenizer(extra_words)
    ids = tok.convert_tokens_to_ids
    vision = {
        "hidden_size": sizes.vision_hidden,
        "attention_heads": sizes.vision_heads,
        "num_hidden_layers": sizes.vision_layers,
        "num_global_layers": 1,
        "intermediate_size": 2 * sizes.vision_hidden,
        "intermediate_layers_indices": [0],
        "vision_output_dim": 2 * sizes.vision_hidden,  # the last state and one intermediate
        "image_size": image_size,
        "patch_size": patch_size,
        "max_num_tiles": max_tiles,
    }
    text = {
        **sizes.text_kwargs(len(tok)),
        "cross_attention_layers": cross_layers(sizes.text_layers),
        "max_position_embeddings": 2048,
        "bos_token_id": ids("<|begin_of_text|>"),
        "eos_token_id": [ids("<|end_of_text|>"), ids("<|eot_id|>")],
        "pad_token_id": tok.pad_token_id,
    }
    config = MllamaConfig(
        vision_config=vision, text_config=text, image_token_index=ids("<|image|>")
    )
    image_processor = MllamaImageProcessorPil(
        size={"height": image_size, "width": image_size},
        max_image_tiles=max_tiles,
        image_mean=[0.48145466, 0.4578275, 0.40821073],  # the real checkpoints' (CLIP's)
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    proc = MllamaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE
    )
    return _common.save(
        MllamaForConditionalGeneration, config, proc, out_dir, seed, adjust=_open_gates
    )


def _open_gates(model: PreTrainedModel) -> None:
    """transformers initialises the tanh gates of every cross-attention layer at 0, which
    shuts the image out of a random model; a trained one has them open (tanh(1) ≈ 0.76)."""
    for name, parameter in model.named_parameters():
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            parameter.fill_(1.0)
