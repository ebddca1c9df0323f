"""Tiny PaliGemma 2: a SigLIP tower, a Gemma 2 language model, one stretched square image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from transformers import (
    Gemma2Config,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)
from transformers.image_utils import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    PILImageResampling,
)

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 112  # the SigLIP input size: a square image of this size keeps its pixels

# Gemma 2 (the language model) has no SDPA path in transformers.
NO_SDPA = (
    "Gemma 2 caps its attention logits (attn_logit_softcapping), which SDPA cannot compute; "
    "transformers refuses attn_implementation='sdpa' for it"
)

# Gemma's first ids, then the image placeholder (the real vocabulary puts it at 257152).
SPECIALS = ("<pad>", "<eos>", "<bos>", "<image>")
# PaliGemma 2 mix prompts are task prefixes: "answer en ...", "caption en", "detect ...".
TASK_WORDS = ("en", "caption", "detect", "segment", "ocr")

# A stand-in: PaliGemma is no chat model and its checkpoints need no chat template (the
# adapter writes the prompt itself, `PaliGemmaAdapter.prompt_text`). This one renders a user
# turn to the text layout the processor takes: the image placeholders first, then the text.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% endif %}{% endif %}{% endfor %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Gemma-style: ``<bos>`` added by the processor (not the tokenizer), ``<eos>`` ends the
    answer, ``"\\n"`` a token of its own (it ends the prefix)."""
    tok = _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=(*TASK_WORDS, *extra_words),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        named={"image_token": "<image>"},  # the processor reads tokenizer.image_token(_id)
    )
    tok.add_tokens([AddedToken("\n", normalized=False)])
    return tok


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 14,
    query_pre_attn_scalar: int | None = None,
    attn_logit_softcapping: float | None = 50.0,
    final_logit_softcapping: float | None = 30.0,
    sliding_window: int = 4096,
    extra_words: Any = (),
) -> Path:
    """A tiny PaliGemma 2: SigLIP resize to image_size^2 (aspect not kept), (S/p)^2 tokens.

    Gemma 2 as in the 2B: alternating sliding / full layers, attention and final logit
    softcapping (the real 50 / 30 by default), scaling ``query_pre_attn_scalar ** -0.5``
    (default the head dim, as in the 3B and 10B; the 28B differs).
    """
    tok = tokenizer(extra_words)
    grid = image_size // patch_size
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_seq_length=grid * grid,  # the processor writes this many <image> tokens
        resample=PILImageResampling.BICUBIC,
        image_mean=IMAGENET_STANDARD_MEAN,
        image_std=IMAGENET_STANDARD_STD,
        rescale_factor=1 / 255,
    )
    # the processor adds the 1024 <locXXXX> and 128 <segXXX> tokens to the tokenizer
    proc = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    vision = SiglipVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=2 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )
    text = Gemma2Config(
        **sizes.text_kwargs(len(tok)),
        head_dim=sizes.head_dim,
        query_pre_attn_scalar=query_pre_attn_scalar or sizes.head_dim,
        sliding_window=sliding_window,
        attn_logit_softcapping=attn_logit_softcapping,
        final_logit_softcapping=final_logit_softcapping,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=proc.image_token_id,
        projection_dim=sizes.text_hidden,
        hidden_size=sizes.text_hidden,
        vocab_size=len(tok),
    )
    return _common.save(PaliGemmaForConditionalGeneration, config, proc, out_dir, seed)
