"""Build tiny random vision-language models of the real transformers classes, fully offline.

`build_tiny_model(family, out_dir)` writes a model of the family's real class with a tiny
config, its real processor built in code and a word-level tokenizer (`xattr.toy.tiny`), all
with ``save_pretrained``, so `xattr.models.load(out_dir)` loads it like a downloaded
checkpoint. Without torchvision transformers cannot build some processors (a video
sub-processor needs it); those are written and read through image-only subclasses of the
real classes (`xattr.models.processors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from xattr.models.processors import load_processor

from .tiny import builder, families
from .tiny._common import WORDS, TinySizes

__all__ = [
    "WORDS",
    "TinySizes",
    "build_tiny_model",
    "build_tokenizer",
    "families",
    "load_tiny_model",
]


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    text_layers: int = 2,
    text_hidden: int = 64,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    vision_layers: int = 2,
    vision_hidden: int = 32,
    vision_heads: int = 4,
    **options: Any,
) -> Path:
    """Build a random tiny model of ``family``'s real class and save model, processor and
    tokenizer to ``out_dir``. ``options`` are the family builder's own (``image_size``,
    ``patch_size``, ``extra_words``, ...)."""
    sizes = TinySizes(
        text_layers=text_layers,
        text_hidden=text_hidden,
        text_heads=text_heads,
        text_kv_heads=text_kv_heads,
        vision_layers=vision_layers,
        vision_hidden=vision_hidden,
        vision_heads=vision_heads,
    )
    return builder(family).build(Path(out_dir), sizes, seed=seed, **options)


def build_tokenizer(family: str, extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """The tiny word-level tokenizer of ``family`` (its special tokens and chat template)."""
    return builder(family).tokenizer(extra_words)


def load_tiny_model(model_dir: str | Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a saved tiny model (eager attention, eval mode) and its processor."""
    from xattr.models.base import adapter_for

    model_type = AutoConfig.from_pretrained(model_dir).model_type
    cls = adapter_for(model_type).model_class(model_type)
    model = cls.from_pretrained(model_dir, attn_implementation="eager")
    return model.eval(), load_processor(model_dir)
