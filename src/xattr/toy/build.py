"""Build tiny random vision-language models of the real transformers classes, fully offline.

Each family gets a word-level tokenizer (built with `tokenizers`), a real image processor, a
real processor with a chat template, and a randomly initialised model; everything is written
with `save_pretrained` so that `<ModelClass>.from_pretrained(dir, attn_implementation="eager")`
and `AutoProcessor.from_pretrained(dir)` load it back. Without torchvision, transformers 5.23
cannot build any Qwen2(.5)-VL processor (its video processor needs torchvision), so Qwen
folders are written and read through image-only subclasses of the real processor classes:
use `load_processor` / `load_tiny_model`, which fall back to them only when needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from xattr.models.processors import IMAGE_ONLY_PROCESSORS, load_processor

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava")

MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "llava": LlavaForConditionalGeneration,
}

UNK = "<unk>"
QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIALS = ("<s>", "</s>", "<pad>", "<image>")

# Words of a synthetic-shapes VQA task plus the role names the chat templates render.
_WORD_LINES = (
    "user assistant system you are helpful",
    "what which where who how many much is are was does do did can there any the a an this that",
    "these those it its of in on at to and or not no yes true false with without by for from into",
    "image picture photo scene shown see visible located position place object objects thing",
    "things color colour colors shape shapes size kind type answer question word single",
    "one two three four five six seven eight nine ten zero none number count total only more",
    "most fewer less least than same different other another both all each every either neither",
    "as be has have contain contains left right top bottom above below upper lower middle center",
    "centre corner corners side sides next near far between beside behind front back inside",
    "outside over under up down closest nearest farthest furthest first second third last half",
    "quadrant row column diagonal horizontal vertical big large small tiny bigger larger smaller",
    "biggest largest smallest tall short wide narrow",
    "red green blue yellow orange purple pink black white gray grey brown cyan magenta",
    "circle circles square squares triangle triangles rectangle rectangles star stars ellipse",
    "oval diamond hexagon pentagon cross dot dots background foreground filled outline empty",
)
WORDS = tuple(word for line in _WORD_LINES for word in line.split())
PUNCTUATION = list(".,?!:;'\"-()")
DIGITS = list("0123456789")

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-1.5 ("llava-hf") style: "USER: <image>\nQUESTION ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
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


@dataclass(frozen=True)
class TinySizes:
    """Layer counts and widths of a tiny model."""

    text_layers: int = 2
    text_hidden: int = 64
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_layers: int = 2
    vision_hidden: int = 32
    vision_heads: int = 4


def _check_family(family: str) -> None:
    """Raise for an unknown family name."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def _specials(family: str) -> tuple[str, ...]:
    """Special tokens of a family's chat template, `<unk>` first."""
    return (UNK, *(LLAVA_SPECIALS if family == "llava" else QWEN_SPECIALS))


def _vocab(specials: Iterable[str], extra_words: Iterable[str]) -> dict[str, int]:
    """Token -> id: specials, then words, punctuation and single digits, deduplicated."""
    tokens = [*specials, *WORDS, *(w.lower() for w in extra_words), *PUNCTUATION, *DIGITS]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def _word_level(vocab: dict[str, int]) -> Tokenizer:
    """Lower-casing word-level tokenizer: words, single punctuation marks and single digits."""
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()  # offsets still index the original text
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    return tok


def build_tokenizer(
    family: str = "qwen2_vl", extra_words: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A small fast word-level tokenizer with the family's special tokens and chat template."""
    _check_family(family)
    vocab = _vocab(_specials(family), extra_words)
    backend = _word_level(vocab)
    if family == "llava":
        # LLaVA-1.5 (Llama) prepends <s> when add_special_tokens=True.
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token=UNK,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            extra_special_tokens=["<image>"],
            padding_side="left",
        )
        tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token=UNK,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens=list(QWEN_SPECIALS[1:]),
            padding_side="left",
        )
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _qwen_processor(
    family: str,
    tokenizer: PreTrainedTokenizerFast,
    image_size: int,
    patch_size: int,
    merge_size: int,
) -> ProcessorMixin:
    """Qwen2(.5)-VL processor whose pixel budget pins an image_size^2 image to one small grid."""
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},  # = min_pixels, max_pixels
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    cls = IMAGE_ONLY_PROCESSORS[family]
    return cls(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )


def _llava_processor(
    tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int
) -> LlavaProcessor:
    """LLaVA-1.5 processor: CLIP resize (shortest edge) + centre crop to image_size^2."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by strategy "default"
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _qwen_text_config(tokenizer: PreTrainedTokenizerFast, sizes: TinySizes) -> dict:
    """Keyword arguments of a tiny Qwen2-style language model."""
    head_dim = sizes.text_hidden // sizes.text_heads
    half = head_dim // 2  # M-RoPE splits the head_dim/2 rotary frequencies into (t, h, w)
    spatial = (half - half // 4) // 2  # the real 1:1.5:1.5 split, [16, 24, 24] for head_dim 128
    mrope_section = [half - 2 * spatial, spatial, spatial]
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": sizes.text_hidden,
        "intermediate_size": 2 * sizes.text_hidden,
        "num_hidden_layers": sizes.text_layers,
        "num_attention_heads": sizes.text_heads,
        "num_key_value_heads": sizes.text_kv_heads,
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section,
        },
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }


def _qwen_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Top-level Qwen config ids of the vision placeholder tokens."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen2_vl_config(
    tokenizer: PreTrainedTokenizerFast, sizes: TinySizes, patch_size: int, merge_size: int
) -> Qwen2VLConfig:
    """Tiny Qwen2-VL config (vision `embed_dim` is the ViT width, `hidden_size` the LM width)."""
    vision = {
        "depth": sizes.vision_layers,
        "embed_dim": sizes.vision_hidden,
        "hidden_size": sizes.text_hidden,
        "mlp_ratio": 2,
        "num_heads": sizes.vision_heads,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer, sizes),
        vision_config=vision,
        **_qwen_token_ids(tokenizer),
    )


def _qwen2_5_vl_config(
    tokenizer: PreTrainedTokenizerFast,
    sizes: TinySizes,
    patch_size: int,
    merge_size: int,
) -> Qwen2_5_VLConfig:
    """Tiny Qwen2.5-VL config; windowed vision attention except in the last block."""
    vision = {
        "depth": sizes.vision_layers,
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "out_hidden_size": sizes.text_hidden,
        "num_heads": sizes.vision_heads,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": 2,
        "window_size": 112,  # pixels, the real value: one window is a 112x112 image
        "fullatt_block_indexes": [sizes.vision_layers - 1],
    }
    return Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer, sizes),
        vision_config=vision,
        **_qwen_token_ids(tokenizer),
    )


def _llava_config(
    tokenizer: PreTrainedTokenizerFast,
    sizes: TinySizes,
    patch_size: int,
    image_size: int,
    vision_feature_layer: int,
) -> LlavaConfig:
    """Tiny LLaVA-1.5 config: CLIP vision tower + Llama language model."""
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
        vocab_size=len(tokenizer),
        hidden_size=sizes.text_hidden,
        intermediate_size=2 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    grid = image_size // patch_size
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=grid * grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
        projector_hidden_act="gelu",
    )


def _generation_config(config: PreTrainedConfig) -> GenerationConfig:
    """Greedy generation that stops at the text model's eos token."""
    text = config.text_config
    return GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 112,
    text_layers: int = 2,
    text_hidden: int = 64,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    vision_layers: int = 2,
    vision_hidden: int = 32,
    vision_heads: int = 4,
    patch_size: int = 14,
    merge_size: int = 2,
    vision_feature_layer: int = -2,
    extra_words: Iterable[str] = (),
) -> Path:
    """Build a random tiny model of the real class for `family` in {"qwen2_vl", "qwen2_5_vl", "llava"}, save model+processor+tokenizer to out_dir, return out_dir."""
    _check_family(family)
    out_dir = Path(out_dir)
    sizes = TinySizes(
        text_layers=text_layers,
        text_hidden=text_hidden,
        text_heads=text_heads,
        text_kv_heads=text_kv_heads,
        vision_layers=vision_layers,
        vision_hidden=vision_hidden,
        vision_heads=vision_heads,
    )
    tokenizer = build_tokenizer(family, extra_words)
    if family == "llava":
        processor = _llava_processor(tokenizer, image_size, patch_size)
        config = _llava_config(tokenizer, sizes, patch_size, image_size, vision_feature_layer)
    else:
        processor = _qwen_processor(family, tokenizer, image_size, patch_size, merge_size)
        if family == "qwen2_vl":
            config = _qwen2_vl_config(tokenizer, sizes, patch_size, merge_size)
        else:
            config = _qwen2_5_vl_config(tokenizer, sizes, patch_size, merge_size)

    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config).eval()
    model.generation_config = _generation_config(config)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_tiny_model(model_dir: str | Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a saved tiny model (eager attention, eval mode) and its processor."""
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    model = MODEL_CLASSES[model_type].from_pretrained(model_dir, attn_implementation="eager")
    return model.eval(), load_processor(model_dir)
