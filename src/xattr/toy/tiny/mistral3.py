"""Tiny Mistral 3: a Pixtral tower merged 2 x 2, a Mistral language model, [IMG_BREAK] rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralImageProcessorPil,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from xattr.models.mistral3 import pixtral_processor_class

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 112  # a multiple of 28 within longest_edge: kept as is (4 x 4 merged tokens)
# shrunk to fit 224 px, sides rounded up to 28: (W, H) 300 x 200 -> 224 x 149 -> 224 x 168
# px -> 6 rows of 8 merged tokens, each row ended by [IMG_BREAK] (the last by [IMG_END])
GEOMETRY_SIZE = (300, 200)

# The real control tokens up to [/SYSTEM_PROMPT], at their real ids once <unk> is 0
# ([IMG] = 10, Mistral3Config's default image_token_index).
SPECIALS = (
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
)
SYSTEM_PROMPT = "you are a helpful assistant."

# Mistral-Small-3.1 style (shortened default system prompt):
# "<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST][IMG]QUESTION[/INST]", the answer ends in </s>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '" + SYSTEM_PROMPT + "' %}{% set turns = messages %}{% endif %}"
    "{{ '[SYSTEM_PROMPT]' + system + '[/SYSTEM_PROMPT]' }}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}{{ '[INST]' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'text' %}{{ block['text'] }}"
    "{% elif block['type'] in ['image', 'image_url'] %}{{ '[IMG]' }}{% endif %}"
    "{% endfor %}{% endif %}{{ '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}"
    "{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Llama-style like the real one: ``<s>`` prepended with special tokens (the processor is
    told not to add it to a rendered prompt that has it), ``</s>`` ends the answer."""
    return _common.llama_tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        extra_special=[t for t in SPECIALS if t.startswith("[")],
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    longest_edge: int = 224,
    patch_size: int = 14,
    merge_size: int = 2,
    sliding_window: int | None = None,
    extra_words: Any = (),
) -> Path:
    """A tiny Mistral 3: Pixtral fit-to-``longest_edge`` resize, 2 x 2 patch merger, causal LM
    (Mistral-Small-3.1 has no sliding window; ``sliding_window`` adds one)."""
    tok = tokenizer(extra_words)
    vision = PixtralVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=2 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=longest_edge,
        patch_size=patch_size,
        hidden_act="gelu",
    )
    text = MistralConfig(
        **sizes.text_kwargs(len(tok)),
        head_dim=sizes.head_dim,
        max_position_embeddings=2048,
        sliding_window=sliding_window,  # MistralConfig's own default is 4096
        rope_parameters={"rope_type": "default", "rope_theta": 1e9},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    config = Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=merge_size,
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        multimodal_projector_bias=False,
        tie_word_embeddings=False,  # Mistral3Config's default would tie lm_head to the embeddings
    )
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": longest_edge},
        patch_size={"height": patch_size, "width": patch_size},  # the processor passes p * merge
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    proc = pixtral_processor_class()(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        spatial_merge_size=merge_size,
        chat_template=CHAT_TEMPLATE,
    )
    return _common.save(Mistral3ForConditionalGeneration, config, proc, out_dir, seed)
