"""Tiny Molmo2: 24 px crops of 4 px patches (6 x 6 per crop; 28 px gives 7 x 7, odd as the
real 27 x 27), overlap margins of 1 patch, up to 8 crops, 2 x 2 attention pooling, a Qwen3-style LM with
the real Molmo2 text model (per-head q/k norm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

from xattr.models.molmo2 import Molmo2ImageOnlyProcessor, Molmo2TorchImageProcessor

from . import _common
from ._common import TinySizes

NATIVE_SIZE = 24  # one crop: a square image of this size is one crop, neither tiled nor resized
# (W, H) = 80 x 26 -> a 1 x 4 tiling: 4 crops overlapping by 2 patches on a 72 x 24 px canvas
# (18 x 6 patches, 9 x 3 tokens) and the 3 x 3 low-res view: each low-res token's box holds
# exactly 3 high-res ones, so a block inside one cell lies mostly inside one cell of the other
# grid. The odd 7-patch crops of the real layout (27 patches: a padded last row/column)
# are the family test's (`image_size=28`).
GEOMETRY_SIZE = (80, 26)
TEST_OPTIONS: dict[str, Any] = {}
NO_SDPA = None

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Molmo2's image and video tokens live in an extra vocabulary after the base one (ids from
# ``vocab_size`` on, ``additional_vocab_size`` of them): embedded, but outside the LM head,
# so the model never writes them. The order follows the real config's ids (<im_start> =
# vocab_size, <im_end> +1, <im_patch> +2, <low_res_im_start> +4, <frame_start> +7,
# <frame_end> +8); the others fill the gaps.
EXTRA_VOCAB = (
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<|image|>",
    "<im_low>",
    "<frame_start>",
    "<frame_end>",
    "<|video|>",
)
NAMED = {"image_token": "<|image|>", "video_token": "<|video|>"}

# Qwen-style turns with the image placeholder in front of the user's text (the processor
# prepends the bos / eos token itself when the prompt does not start with it).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|video|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer(extra_words: Any = ()) -> PreTrainedTokenizerFast:
    """Qwen chat tokens plus Molmo2's image, video and marker tokens; ``<|endoftext|>`` is
    the bos the processor puts in front of every prompt (the tokenizer adds none)."""
    return _common.tokenizer(
        SPECIALS,
        chat_template=CHAT_TEMPLATE,
        extra_words=extra_words,
        bos="<|endoftext|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra_special=SPECIALS[1:],
        named=NAMED,
        tail=EXTRA_VOCAB,
    )


def build(
    out_dir: Path,
    sizes: TinySizes,
    *,
    seed: int = 0,
    image_size: int = NATIVE_SIZE,
    patch_size: int = 4,
    max_crops: int = 8,
    extra_words: Any = (),
    with_tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A tiny Molmo2: ``image_size`` px crops of ``patch_size`` px patches."""
    tok = with_tokenizer or tokenizer(extra_words)
    vision = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "num_key_value_heads": sizes.vision_heads,
        "head_dim": sizes.vision_hidden // sizes.vision_heads,
        "image_size": [image_size, image_size],
        "patch_size": patch_size,
    }
    adapter = {
        "vision_feature_layer": [-1, 0],
        "hidden_size": sizes.vision_hidden,
        "num_attention_heads": sizes.vision_heads,
        "num_key_value_heads": sizes.vision_heads,
        "head_dim": sizes.vision_hidden // sizes.vision_heads,
        "intermediate_size": 2 * sizes.text_hidden,
        "text_hidden_size": sizes.text_hidden,
    }
    text = {
        **sizes.text_kwargs(len(tok) - len(EXTRA_VOCAB)),
        "head_dim": sizes.head_dim,
        "additional_vocab_size": len(EXTRA_VOCAB),
        "max_position_embeddings": 2048,
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    ids = tok.convert_tokens_to_ids
    config = Molmo2Config(
        vision_config=vision,
        adapter_config=adapter,
        text_config=text,
        image_start_token_id=ids("<im_start>"),
        low_res_image_start_token_id=ids("<low_res_im_start>"),
        image_end_token_id=ids("<im_end>"),
        image_patch_id=ids("<im_patch>"),
        frame_start_token_id=ids("<frame_start>"),
        frame_end_token_id=ids("<frame_end>"),
    )
    image_processor = Molmo2TorchImageProcessor(
        size={"height": image_size, "width": image_size},
        patch_size=patch_size,
        max_crops=max_crops,
        overlap_margins=[1, 1],
        pooling_size=[2, 2],
        image_mean=IMAGENET_STANDARD_MEAN,
        image_std=IMAGENET_STANDARD_STD,
    )
    proc = Molmo2ImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
    )
    return _common.save(
        Molmo2ForConditionalGeneration, config, proc, out_dir, seed, adjust=_visible_image
    )


def _visible_image(model: PreTrainedModel) -> None:
    """transformers draws every weight with std 0.02, so the pooled image features (a gated
    MLP: quadratic in its input) come out near 1e-9 and a random model cannot see the image;
    the ViT and adapter weights get std 1/sqrt(fan_in) (features of order one), the adapter's
    output projection a tenth of that (features near the token embeddings' scale)."""
    towers = (model.model.vision_tower, model.model.multi_modal_projector)
    for module in (m for tower in towers for m in tower.modules()):
        if isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, module.in_features**-0.5)
    model.model.multi_modal_projector.image_projector.down_proj.weight.mul_(0.1)
