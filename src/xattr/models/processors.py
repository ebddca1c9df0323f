"""Processor loading that works where torchvision is missing (Qwen's video sub-processor needs it).

transformers 5.23 to 5.25 cannot construct, save or load `Qwen2VLProcessor` / `Qwen2_5_VLProcessor`
without torchvision, even for images only: the video processor is a mandatory attribute.
The image-only subclasses here drop that attribute and keep every image/text code path of
the real class. `load_processor` uses them only when torchvision is unavailable.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)
from transformers.utils import is_torchvision_available


class ImageOnlyProcessorMixin:
    """A processor class without its video sub-processor, saved under the real class's name.

    Subclasses put this first in the bases of the real processor class, set ``real_name``
    and give ``__init__`` no ``video_processor`` (calling ``ProcessorMixin.__init__`` with the
    image processor and tokenizer only), so the saved folder is an ordinary processor folder.
    """

    real_name: str = ""

    def to_dict(self) -> dict:
        """The real class's processor config."""
        out = super().to_dict()  # type: ignore[misc]
        out["processor_class"] = self.real_name
        return out

    def save_pretrained(self, save_directory, **kwargs):
        """Save like the real class: ``processor_class`` in tokenizer_config.json names it too
        (rewritten in the saved file, the on-disk format, as the tokenizer writes it)."""
        files = super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        path = Path(save_directory) / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["processor_class"] = self.real_name
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8")
        return files


class _ImageOnlyQwenMixin(ImageOnlyProcessorMixin):
    """Qwen processor without its video sub-processor (which needs torchvision).

    transformers 5.23 to 5.25 cannot construct, save or load `Qwen2VLProcessor` / `Qwen2_5_VLProcessor`
    without torchvision, even for images only: the video processor is a mandatory attribute.
    These subclasses drop that attribute, keep every image/text code path of the real class, and
    save under the real class name, so the saved folder is an ordinary Qwen processor folder.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen2VLImageOnlyProcessor(_ImageOnlyQwenMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only; loadable without torchvision."""

    real_name = "Qwen2VLProcessor"


class Qwen2_5_VLImageOnlyProcessor(_ImageOnlyQwenMixin, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images only; loadable without torchvision."""

    real_name = "Qwen2_5_VLProcessor"


# model_type -> the image-only stand-in of its processor (families register theirs with
# `image_only_processor`, next to their adapter)
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {}


def image_only_processor(*model_types: str):
    """Class decorator: use this processor class for ``model_types`` when torchvision is missing."""

    def decorator(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
        for model_type in model_types:
            IMAGE_ONLY_PROCESSORS[model_type] = cls
        return cls

    return decorator


image_only_processor("qwen2_vl")(Qwen2VLImageOnlyProcessor)
image_only_processor("qwen2_5_vl")(Qwen2_5_VLImageOnlyProcessor)


def load_processor(model_dir: str | Path) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained`, or the family's image-only class when torchvision is
    missing or the real class needs another package it lacks (SmolVLM's ``num2words``)."""
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    stand_in = IMAGE_ONLY_PROCESSORS.get(model_type)
    if stand_in is not None and not is_torchvision_available():
        return stand_in.from_pretrained(model_dir)
    try:
        return AutoProcessor.from_pretrained(model_dir)
    except ImportError:
        if stand_in is None:
            raise
        return stand_in.from_pretrained(model_dir)
