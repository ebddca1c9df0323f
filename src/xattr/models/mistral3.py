"""Mistral 3 (`Mistral3ForConditionalGeneration`): a Pixtral grid merged 2 x 2, rows ended by breaks.

Layout. The Pixtral processor shrinks the image to fit ``longest_edge`` (1540 px for
Mistral-Small-3.1; smaller images are not enlarged), rounds each side up to a multiple of
``patch_size * spatial_merge_size`` (14 * 2 = 28) and stretches the whole image to that
size (no crop; padding only to batch images of different sizes). ``image_sizes`` holds the
(H, W) after that resize; the merged grid is ``(H / 28, W / 28)``. The prompt holds, per
image, ``rows x ([IMG] * cols + [IMG_BREAK])`` with the last break replaced by
``[IMG_END]``: only the ``[IMG]`` tokens carry image features and are visual tokens, in
raster order; ``[IMG_BREAK]`` / ``[IMG_END]`` are text-embedded separators (no grid cell).

Attention. Plain causal over the whole sequence (image tokens included; Mistral-Small-3.1
has no sliding window, a checkpoint that has one gets it in the recorded support). Pixtral's
block-diagonal attention lives in the vision tower, which the capture does not record.

Caveats. ``image_sizes`` is a required forward input (it is repeated per copy for batched
scoring). Up to 55 x 55 = 3025 visual tokens at 1540 px: eager keeps every layer's
``[H, N, N]`` weights, so load large images with ``attn_implementation="sdpa"`` (the capture
recomputes one layer at a time). Without torchvision transformers cannot import
`PixtralProcessor` (a helper module imports torchvision for a function it also has in a
PIL version); `pixtral_processor_class` imports the real class without it. The chat
template renders ``<s>`` itself, so the prompt is tokenised without adding special tokens
again (no double ``<s>``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import torch
from torch import Tensor
from transformers import ProcessorMixin

from ..images import FULL_IMAGE
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .processors import image_only_processor
from .prompting import PreparedInputs

_PROCESSING = "transformers.models.pixtral.processing_pixtral"
_TORCHVISION_HELPER = "transformers.models.pixtral.image_processing_pixtral"


def pixtral_processor_class() -> type[ProcessorMixin]:
    """transformers' own `PixtralProcessor`, importable without torchvision.

    Its module imports ``get_resize_output_image_size`` from the torchvision image
    processor's module; the PIL module defines the same function. Where that import fails,
    a stand-in module holding the PIL function is put in its place for the import only.
    """
    if _PROCESSING in sys.modules:
        return sys.modules[_PROCESSING].PixtralProcessor
    try:
        return importlib.import_module(_PROCESSING).PixtralProcessor
    except ImportError:
        pass
    from transformers.models.pixtral import image_processing_pil_pixtral

    stand_in = types.ModuleType(_TORCHVISION_HELPER)
    stand_in.__dict__.update(
        get_resize_output_image_size=image_processing_pil_pixtral.get_resize_output_image_size
    )
    sys.modules[_TORCHVISION_HELPER] = stand_in
    try:
        return importlib.import_module(_PROCESSING).PixtralProcessor
    finally:
        del sys.modules[_TORCHVISION_HELPER]


image_only_processor("mistral3")(pixtral_processor_class())


class Mistral3Adapter(ModelAdapter, family="mistral3"):
    """Mistral-Small-3.1 / 3.2 (``mistralai/Mistral-Small-3.*-24B-Instruct-*``)."""

    card = FamilyCard(
        visual_tokens="the `[IMG]` grid (`image_sizes / 28`)",
        tested="grid vs the processor; `[IMG_BREAK]`/`[IMG_END]` kept out of V",
        caveats="`image_sizes` required; SDPA advised for 3,000 image tokens",
    )

    @property
    def cell(self) -> int:
        """Pixels per merged token side: ``patch_size * spatial_merge_size``."""
        return int(self.model.config.vision_config.patch_size) * int(
            self.model.config.spatial_merge_size
        )

    def process(self, image: Any, text: str) -> dict[str, Tensor]:
        """The processor's tensors; a prompt that starts with ``<s>`` gets no second one."""
        bos = self.tokenizer.bos_token
        options = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
        return dict(self.processor(images=[image], text=[text], return_tensors="pt", **options))

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """``[IMG]`` positions in raster order, grid ``image_sizes // 28`` per image over the
        whole image; checks that every row but the last ends in ``[IMG_BREAK]`` and the last
        in ``[IMG_END]``."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        grids = [
            Grid(int(h) // self.cell, int(w) // self.cell, image=i)
            for i, (h, w) in enumerate(inputs["image_sizes"].tolist())
        ]
        if sum(g.cells for g in grids) != positions.numel():
            raise LayoutError(
                f"image_sizes {inputs['image_sizes'].tolist()} give {sum(g.cells for g in grids)} "
                f"merged cells but the prompt holds {positions.numel()} [IMG] tokens"
            )
        breaks = self.tokenizer.convert_tokens_to_ids(
            [self.processor.image_break_token, self.processor.image_end_token]
        )
        start = 0
        for grid in grids:
            rows = positions[start : start + grid.cells].view(grid.rows, grid.cols)  # [rows, cols]
            after = ids[rows[:, -1] + 1].tolist()  # the token ending each row
            if (
                after != [breaks[0]] * (grid.rows - 1) + [breaks[1]]
                or ((rows[:, 1:] - rows[:, :-1]) != 1).any()
            ):
                raise LayoutError(
                    f"the [IMG] tokens of image {grid.image} do not form {grid.rows} rows of "
                    f"{grid.cols} ended by [IMG_BREAK] / [IMG_END]"
                )
            start += grid.cells
        return VisualLayout(positions, grids)

    # ------------------------------------------------ pixel_values layout (mask path)
    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """One view: the whole image resized to ``image_sizes[0]`` (``pixel_values`` [1, C, H, W])."""
        h, w = prepared.inputs["image_sizes"][0].tolist()
        return [PixelView(FULL_IMAGE, (int(h), int(w)))]
