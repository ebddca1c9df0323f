"""Gemma 3 (`Gemma3ForConditionalGeneration`): 256 tokens per view, optional pan-and-scan
crops, a bidirectional image block, sliding-window layers.

Layout. Each view is stretched to the SigLIP size (896 px: no pad, no crop, aspect not kept)
and its 64 x 64 patches are avg-pooled 4 x 4 into 16 x 16 = 256 ``<image_soft_token>``
tokens in raster order, between ``<start_of_image>`` and ``<end_of_image>`` (not visual
tokens). Without pan-and-scan (the default) one view covers the whole image. With it, an
image whose aspect reaches ``pan_and_scan_min_ratio_to_activate`` is also cut into 2 to
``pan_and_scan_max_num_crops`` crops along its long side, each at least
``pan_and_scan_min_crop_size`` px (the last one clipped at the edge); the prompt then holds
the original's block and one block per crop, in that order. The processor returns neither
the crop count nor the boxes, so they are recomputed from the options of the processor call
(`pan_and_scan_boxes`). Grids: ``original`` (or ``image``) covering the whole image, then
``crop i`` covering its strip.

Attention. Image tokens attend bidirectionally within their own view's block (the mask is
built from ``token_type_ids``, which the processor returns and appended answer tokens take
as 0; without them transformers silently falls back to a causal mask). Sliding-window
layers (every layer but each 6th in the real checkpoints, window 1024) AND that pattern with
``j > i - W``: an image token still sees its block's later tokens, and answer tokens further
than W from an image see it only through the full-attention layers. The capture records
each layer's real mask, and every method sums and propagates over it (the attention
matrices are not lower-triangular inside an image block). ``final_logit_softcapping`` is
never applied by `Gemma3ForConditionalGeneration`, so the logit lens does not apply it.

Pan-and-scan is off unless the checkpoint's image processor config sets
``do_pan_and_scan`` or ``load(..., pan_and_scan=True)`` asks for it. The pixel-mask path
(iGOS, pixel-space faithfulness) sees the same views: the whole stretched image, then each
crop, each taking the mask over its own box.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import Gemma3Processor

from ..images import FULL_IMAGE, Region
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .prompting import CaptureError, PreparedInputs, image_list

PAN_AND_SCAN_OPTIONS = (
    "do_pan_and_scan",
    "pan_and_scan_min_crop_size",
    "pan_and_scan_max_num_crops",
    "pan_and_scan_min_ratio_to_activate",
)


def pan_and_scan_boxes(image_size: tuple[int, int], options: dict[str, Any]) -> list[Region]:
    """The boxes (fractions) of the crops Gemma 3's pan-and-scan cuts from a (W, H) image,
    row-major, for the processor call's ``options`` (none when it is off or does not apply)."""
    if not options["do_pan_and_scan"]:
        return []
    width, height = image_size
    min_crop = int(options["pan_and_scan_min_crop_size"])
    max_crops = int(options["pan_and_scan_max_num_crops"])
    min_ratio = float(options["pan_and_scan_min_ratio_to_activate"])
    long, short = max(width, height), min(width, height)
    if long / short < min_ratio:
        return []
    n = min(math.floor(long / short + 0.5), math.floor(long / min_crop))
    n = min(max_crops, max(2, n))
    n_w, n_h = (n, 1) if width >= height else (1, n)
    crop_w, crop_h = math.ceil(width / n_w), math.ceil(height / n_h)
    if min(crop_w, crop_h) < min_crop:
        return []
    return [
        (y / height, x / width, min(y + crop_h, height) / height, min(x + crop_w, width) / width)
        for y in range(0, crop_h * n_h, crop_h)
        for x in range(0, crop_w * n_w, crop_w)
    ]


class Gemma3Adapter(ModelAdapter, family="gemma3"):
    """gemma-3-*-it (module docstring)."""

    card = FamilyCard(
        visual_tokens="16 × 16 per view; optional pan-and-scan crops",
        tested="the recorded mask is causal ∪ image block (∩ window on sliding layers)",
        caveats=(
            "image blocks attend both ways; the answer sees the image only through the full "
            "layers' support"
        ),
    )

    pan_and_scan: bool | None = None  # None: as the image processor's config says

    @classmethod
    def load(cls, path: str | Path, *, pan_and_scan: bool | None = None, **kwargs: Any) -> Any:
        """`ModelAdapter.load`; ``pan_and_scan`` switches the crops on or off (default: the
        checkpoint's image processor config, off in Google's checkpoints)."""
        adapter = super().load(path, **kwargs)
        adapter.pan_and_scan = pan_and_scan
        return adapter

    # ------------------------------------------------------------ processing
    def image_options(self) -> dict[str, Any]:
        """The pan-and-scan options of every processor call: `Gemma3Processor`'s defaults,
        then the image processor's config where it sets them, then ``pan_and_scan``."""
        defaults = getattr(type(self.processor), "images_kwargs", Gemma3Processor.images_kwargs)
        options = {
            k: defaults.get(k, Gemma3Processor.images_kwargs[k]) for k in PAN_AND_SCAN_OPTIONS
        }
        for key in PAN_AND_SCAN_OPTIONS:
            value = getattr(self.processor.image_processor, key, None)
            if value is not None:
                options[key] = value
        if self.pan_and_scan is not None:
            options["do_pan_and_scan"] = bool(self.pan_and_scan)
        return options

    def process(self, image: Any, text: str) -> dict[str, Tensor]:
        """The processor call with explicit pan-and-scan options; the chat template already
        writes ``<bos>``, so the tokenizer adds none."""
        out = self.processor(
            images=image_list(image),
            text=[text],
            return_tensors="pt",
            add_special_tokens=False,
            **self.image_options(),
        )
        return dict(out)

    def placeholder_ids(self) -> set[int]:
        """The soft image token and ``<start_of_image>``, the placeholder the processor expands."""
        return super().placeholder_ids() | {int(self.model.config.boi_token_id)}

    # ---------------------------------------------------------------- layout
    @property
    def view_side(self) -> int:
        """Tokens per side of one view (``mm_tokens_per_image`` is a square)."""
        tokens = int(self.model.config.mm_tokens_per_image)
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise CaptureError(f"mm_tokens_per_image = {tokens} is not a square grid")
        return side

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The soft-token positions, view after view, and each view's grid: the original,
        then the pan-and-scan crops recomputed from the processor call's options."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        blocks = int((ids == int(self.model.config.boi_token_id)).sum())
        crops = pan_and_scan_boxes(image_size, self.image_options())
        side = self.view_side
        if crops:
            grids = [Grid(side, side, box=FULL_IMAGE, name="original")] + [
                Grid(side, side, box=box, name=f"crop {i + 1}") for i, box in enumerate(crops)
            ]
        else:
            grids = [Grid(side, side)]
        views = int(inputs["pixel_values"].shape[0])  # [views, C, H, W]
        if (
            blocks != len(grids)
            or views != len(grids)
            or positions.numel() != len(grids) * side * side
        ):
            raise LayoutError(
                f"the processor emitted {views} view(s), {blocks} image block(s) and "
                f"{positions.numel()} image tokens, but pan-and-scan with "
                f"{self.image_options()} gives {len(grids)} view(s) of "
                f"{side * side} tokens for a {image_size[0]}x{image_size[1]} image"
            )
        return VisualLayout(positions, grids)

    def unembed(self, hidden: Tensor) -> Tensor:
        """The LM head alone: `Gemma3ForConditionalGeneration` never softcaps its logits."""
        head = self.model.lm_head
        return head(hidden.to(head.weight.device))

    # ------------------------------------------------ pixel_values layout (mask path)
    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """The whole image, then the pan-and-scan crops (``pixel_values`` [views, C, S, S])."""
        size = tuple(int(v) for v in prepared.inputs["pixel_values"].shape[-2:])
        boxes = [FULL_IMAGE, *pan_and_scan_boxes(prepared.image_size, self.image_options())]
        names = ["original", *(f"crop {i}" for i in range(1, len(boxes)))]
        if len(boxes) == 1:
            names = ["image"]
        return [PixelView(b, size, n) for b, n in zip(boxes, names, strict=True)]  # type: ignore[arg-type]
