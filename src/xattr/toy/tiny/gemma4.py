"""Tiny Gemma 4: the real variable-resolution processor (16 px patches in the checkpoints, 4 px
here; 3 x 3 pooling; a soft-token budget from the processor's allowed set), a vision tower of
Gemma 4's own blocks, and a language model with every per-layer difference the checkpoints
have: sliding and full layers with different head sizes and key/value head counts, keys
reused as values on full layers (``attention_k_eq_v``), key/value sharing in the last layers,
per-layer input embeddings, bidirectional image blocks on sliding layers, and a softcapped
logit head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessorPil,
    PreTrainedTokenizerFast,
)

from xattr.models.processors import IMAGE_ONLY_PROCESSORS

from . import _common
from ._common import TinySizes

PATCH_SIZE = 4
POOLING = 3  # the checkpoints' pooling_kernel_size
SOFT_TOKENS = 70  # the smallest budget Gemma4ImageProcessor accepts (70, 140, 280, 560, 1120)
# A square image of this size keeps its pixels: with 70 x 9 = 630 patches of 4 px the largest
# multiple of 3 * 4 px that fits is 96 px (8 x 8 = 64 soft tokens)
NATIVE_SIZE = 96
# (W, H) resized to 144 x 60 (12 x 5 soft tokens): the height shrinks to a whole pooled cell
GEOMETRY_SIZE = (144, 64)
# sliding layers then full ones; the last two reuse the keys and values of the first two
LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention", "full_attention")
KV_SHARED_LAYERS = 2

AUDIO = {  # a tiny conformer audio tower (never run: xattr takes no audio)
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "output_proj_dims": 32,
    "subsampling_conv_channels": [8, 4],
}

SPECIALS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<|turn>",
    "<turn|>",
    "<|image>",
    "<image|>",
    "<|image|>",
    "<|audio>",
    "<audio|>",
    "<|audio|>",
    "<|video|>",
    "<|channel>",
    "<channel|>",
    "<|think|>",
)

# the tokens Gemma4Processor looks up on the tokenizer by name (google/gemma-4-*-it's
# tokenizer_config.json names the same strings)
NAMED = {
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
}

# Gemma 4 "it", reduced to one image and text: <bos> first, turns between <|turn> and <turn|>,
# the assistant's role rendered "model", the image placeholder <|image|> (the processor expands
# it to <|image> + soft tokens + <image|>), and, thinking being off by default, an empty
# thought channel opening the model's turn. The official template also renders system turns
# and tools, which a single visual question does not use.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<|turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n"
    "{% if not enable_thinking | default(false) %}<|channel>thought\n<channel|>{% endif %}"
    "{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Gemma 4's chat and modality tokens (``<bos>`` written by the template; ``<turn|>`` ends a turn)."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=("model", "thought", *extra_words),  # role and channel names
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        extra_special=SPECIALS[3:],
        named=NAMED,
    )


def image_processor(
    patch_size: int = PATCH_SIZE, soft_tokens: int = SOFT_TOKENS, pooling: int = POOLING
) -> Gemma4ImageProcessorPil:
    """Gemma 4's image processor: aspect-preserving resize to whole pooled cells within the
    soft-token budget, pixels in [0, 1] (the model rescales them to [-1, 1])."""
    return Gemma4ImageProcessorPil(
        patch_size=patch_size, max_soft_tokens=soft_tokens, pooling_kernel_size=pooling
    )


def processor(tok: PreTrainedTokenizerFast, images: Gemma4ImageProcessorPil) -> Any:
    """Gemma4Processor without its video and audio sub-processors (`xattr.models.gemma4`)."""
    return IMAGE_ONLY_PROCESSORS["gemma4"](
        image_processor=images,
        tokenizer=tok,
        chat_template=tok.chat_template,
        image_seq_length=int(images.max_soft_tokens),
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = PATCH_SIZE,
    sliding_window: int = 8,
    bidirectional: str | None = "vision",
    audio: bool = False,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny Gemma 4 (module docstring); ``bidirectional`` is the text config's
    ``use_bidirectional_attention`` ("vision" or None); ``audio`` adds a tiny audio tower
    (E2B and E4B have one, eager attention only). ``image_size`` is fixed by the
    soft-token budget and is accepted for the common builder signature only."""
    if image_size != NATIVE_SIZE:
        raise ValueError(f"the tiny Gemma 4 keeps {NATIVE_SIZE} px images, not {image_size}")
    tok = with_tokenizer or tokenizer(extra_words)
    ids = tok.convert_tokens_to_ids
    head_dim = sizes.head_dim
    text = {
        **sizes.text_kwargs(len(tok)),
        "num_hidden_layers": len(LAYER_TYPES),
        "layer_types": list(LAYER_TYPES),
        "head_dim": head_dim,
        "global_head_dim": 2 * head_dim,  # full layers: wider heads (512 vs 256 in the checkpoints)
        "attention_k_eq_v": True,
        "num_global_key_value_heads": 1,
        "num_kv_shared_layers": KV_SHARED_LAYERS,
        "hidden_size_per_layer_input": 8,
        "vocab_size_per_layer_input": len(tok),
        "sliding_window": sliding_window,
        "use_bidirectional_attention": bidirectional,
        "final_logit_softcapping": 30.0,
        "max_position_embeddings": 2048,
        "bos_token_id": ids("<bos>"),
        "eos_token_id": [ids("<eos>"), ids("<turn|>")],
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "num_key_value_heads": sizes.vision_heads,
        "head_dim": sizes.vision_hidden // sizes.vision_heads,
        "patch_size": patch_size,
        "pooling_kernel_size": POOLING,
        "position_embedding_size": 256,  # > the longest side in patches (210 at the 1:70 limit)
        "standardize": True,
    }
    config = Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=AUDIO if audio else None,
        boi_token_id=ids("<|image>"),
        eoi_token_id=ids("<image|>"),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        boa_token_id=ids("<|audio>"),
        eoa_token_index=ids("<audio|>"),
        audio_token_id=ids("<|audio|>"),
    )
    proc = processor(tok, image_processor(patch_size))

    modality = [ids(t) for t in SPECIALS if t.strip("<|>") in ("image", "audio", "video")]

    def adjust(model: Gemma4ForConditionalGeneration) -> None:
        # transformers sets every position embedding to one: positions would be invisible
        table = model.model.vision_tower.patch_embedder.position_embedding_table
        table.normal_(0.0, 0.5)
        # a random model would generate image, audio and video tokens, which a trained one
        # never writes: their (tied) embedding rows are shrunk so their logits stay near 0
        model.model.language_model.embed_tokens.weight[modality] *= 0.01

    return _common.save(Gemma4ForConditionalGeneration, config, proc, out_dir, seed, adjust)
