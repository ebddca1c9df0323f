"""Tiny Idefics3: tiles plus a global image through a pixel-shuffle connector, a Llama language model.

Idefics3-8B-Llama3's geometry scaled down: 32 px frames of 8 px patches shuffled by 2, so 2 x 2
tokens per frame (the real 364 / 14 / 2 gives 13 x 13), the long side resized to
``longest_edge_tiles`` frames (4 in the real model), LANCZOS, 0.5 mean / std, the real chat
template and the 6 x 6 ``<row_r_col_c>`` tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import PILImageResampling

from . import _common
from ._common import TinySizes

# The tests' model resizes the long side to 3 frames, not 4: with an odd number of tiles per
# side the global view's cell centres fall inside tile cells, never on their borders, so a
# block drawn in a global cell lights one tile cell
TEST_OPTIONS = {"longest_edge_tiles": 3}
NATIVE_SIZE = 96  # 3 x 3 exact 32 px crops (the global view is a resize)
GEOMETRY_SIZE = (96, 32)  # 1 x 3 tiles + global: tiles grid 2 x 6, global 2 x 2

ROW_COL_TAGS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<pad>", *IMAGE_TOKENS, *ROW_COL_TAGS)

# HuggingFaceM4/Idefics3-8B-Llama3's chat template:
# "<|begin_of_text|>User:<image>QUESTION<end_of_utterance>\nAssistant:"
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Llama 3 chat tokens (the template writes the BOS) and Idefics3's image tokens and tags."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<pad>",
        extra_special=SPECIALS[3:],
    )


def text_config(tok: PreTrainedTokenizerFast, sizes: TinySizes) -> LlamaConfig:
    """A tiny Llama (Idefics3's and SmolVLM's language model)."""
    return LlamaConfig(
        **sizes.text_kwargs(len(tok)),
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def vision_kwargs(sizes: TinySizes, image_size: int, patch_size: int) -> dict[str, Any]:
    return {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }


def image_processor_kwargs(image_size: int, longest_edge_tiles: int) -> dict[str, Any]:
    """Idefics3 / SmolVLM image processor options: resize, split into frames, normalise."""
    return {
        "size": {"longest_edge": longest_edge_tiles * image_size},
        "max_image_size": {"longest_edge": image_size},
        "resample": PILImageResampling.LANCZOS,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_image_splitting": True,
        "do_pad": True,
    }


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    scale_factor: int = 2,
    longest_edge_tiles: int = 4,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny Idefics3: ``image_size`` px frames, ``(image_size // patch_size) // scale`` tokens a side."""
    tok = with_tokenizer or tokenizer(extra_words)
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**vision_kwargs(sizes, image_size, patch_size)),
        text_config=text_config(tok, sizes),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    image_processor = Idefics3ImageProcessorPil(
        **image_processor_kwargs(image_size, longest_edge_tiles)
    )
    side = (image_size // patch_size) // scale_factor
    proc = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=side * side,
        chat_template=tok.chat_template,
    )
    return _common.save(Idefics3ForConditionalGeneration, config, proc, out_dir, seed)
