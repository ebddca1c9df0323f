"""The model-adapter interface: what one LVLM family must say, and how a model comes in.

An adapter answers only: where the visual tokens are and which box of the image each grid
of them covers (`visual_layout`), and, where its layout differs from the common one, how
to build the chat and where the language model lives. Prompting, capture, scoring and the
pixel-mask path are shared (`prompting`, `capture`, `scoring`, `pixels`).

A family registers by subclassing with its name; the checkpoint's ``model_type`` (the
family name unless ``model_types`` says otherwise) is how `xattr.models.load` finds it::

    class Idefics3Adapter(ModelAdapter, family="idefics3"):
        def visual_layout(self, inputs, image_size): ...
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..layout import VisualLayout
from ..registry import Registry
from .capture import CaptureMixin
from .pixels import PixelMaskMixin
from .placement import check_device, torch_dtype
from .prompting import CaptureError, PromptingMixin
from .recording import check_implementation, language_config
from .scoring import ScoringMixin

ADAPTERS: Registry[type[ModelAdapter]] = Registry("model family", "xattr.models")


@dataclass(frozen=True)
class FamilyCard:
    """What the README's family table says of a family beyond what the code derives
    (`xattr.commands.families`): its visual tokens, the rules its tests check, its caveats."""

    visual_tokens: str
    tested: str
    caveats: str = ""


class ModelAdapter(PromptingMixin, CaptureMixin, ScoringMixin, PixelMaskMixin, ABC):
    """One LVLM family's quirks behind a common `trace` / `generate` / `answer_logprobs` API."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()  # checkpoint model_types (default: the family)
    default_max_new_tokens: ClassVar[int] = 32
    card: ClassVar[FamilyCard | None] = None  # the family table's row (README)
    refused_methods: ClassVar[tuple[str, ...]] = ()  # methods not defined for this family

    def __init_subclass__(cls, *, family: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls.family = family
            if "model_types" not in cls.__dict__:
                cls.model_types = (family,)
            ADAPTERS.register(family)(cls)

    def __init__(
        self, model: nn.Module, processor: Any, *, max_new_tokens: int | None = None
    ) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens or self.default_max_new_tokens
        check_implementation(language_config(self.attention_modules()))

    # ------------------------------------------------------------ family hooks
    @abstractmethod
    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The visual tokens of the processed prompt, grid by grid, each grid's box on the
        (W, H) = ``image_size`` original image. Separator tokens are not visual tokens."""

    @classmethod
    def model_class(cls, model_type: str | None = None) -> type[nn.Module]:
        """The transformers class to load (default: the image-text-to-text class of the type)."""
        import transformers
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        )

        name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type or cls.model_types[0]]
        return getattr(transformers, name)

    def language_model(self) -> nn.Module:
        """The decoder whose layers the capture records (``model.model.language_model`` and kin)."""
        return self.model.model.get_decoder()

    def attention_modules(self) -> list[nn.Module]:
        """The language model's self-attention modules, input to output."""
        return [layer.self_attn for layer in self.language_model().layers]

    def final_norm(self) -> nn.Module:
        """The language model's final normalisation layer."""
        return self.language_model().norm

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        max_new_tokens: int | None = None,
        **model_kwargs: Any,
    ) -> ModelAdapter:
        """Load model and processor from a hub id or local directory (eager attention by
        default; ``attn_implementation="sdpa"`` or a per-sub-config dict also work).

        ``device="auto"`` shards a large model over the visible GPUs (``device_map="auto"``),
        or places it on the CPU where there is none.
        """
        from .processors import load_processor

        dtype, device = torch_dtype(dtype), check_device(device)
        model_kwargs.setdefault("attn_implementation", "eager")
        if str(device) == "auto":
            model_kwargs.setdefault("device_map", "auto")
        model_type = checkpoint_model_type(path)
        with no_loading_bar():
            model = cls.model_class(model_type).from_pretrained(
                str(path), dtype=dtype, **model_kwargs
            )
        if str(device) != "auto":
            model.to(device)
        model.eval()
        return cls(model, load_processor(str(path)), max_new_tokens=max_new_tokens)


@contextlib.contextmanager
def no_loading_bar() -> Iterator[None]:
    """transformers' per-load "Loading weights" bar off for one load (restored after)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def checkpoint_model_type(path: str | Path) -> str:
    """The ``model_type`` of a checkpoint (hub id or local directory), from its config."""
    from transformers import PretrainedConfig

    looks_local = isinstance(path, Path) or str(path).startswith((".", "/", "~"))
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model directory not found: {path}")
    config, _ = PretrainedConfig.get_config_dict(str(path))  # no class lookup: any model_type
    if "model_type" not in config:
        raise CaptureError(f"the config of {path} names no model_type")
    return str(config["model_type"])


def adapter_for(model_type: str) -> type[ModelAdapter]:
    """The registered adapter whose ``model_types`` include ``model_type``."""
    for _, cls in ADAPTERS.items():
        if model_type in cls.model_types:
            return cls
    known = ", ".join(ADAPTERS.available())
    raise CaptureError(
        f"no adapter knows checkpoints of model_type {model_type!r}; known families: {known} "
        "(pass family=... to use one of them anyway, or add an adapter)"
    )


def checked_family(family: str, model_type: str, path: str | Path) -> type[ModelAdapter]:
    """The adapter of ``family`` for a checkpoint of ``model_type``, refused where another
    family's adapter claims that type (a conf naming the wrong family)."""
    cls = ADAPTERS.get_class(family)
    if model_type in cls.model_types:
        return cls
    owner = next(
        (name for name, other in ADAPTERS.items() if model_type in other.model_types), None
    )
    if owner is not None:
        raise CaptureError(
            f"{path} is a {model_type!r} checkpoint, which the {owner!r} family loads, not "
            f"{family!r}; set family to {owner!r} (model.family={owner} in a config) or leave it "
            "out to read it from the checkpoint"
        )
    return cls
