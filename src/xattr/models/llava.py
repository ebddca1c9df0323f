"""LLaVA-1.5 (`LlavaForConditionalGeneration`): a CLIP grid of patches, projected one to one."""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Grid, LayoutError, VisualLayout
from .base import FamilyCard, ModelAdapter
from .geometry import processor_region
from .pixels import OneImagePixels


class LlavaAdapter(OneImagePixels, ModelAdapter, family="llava"):
    """LLaVA-1.5-*-hf.

    The vision tower sees a square ``image_size`` crop cut into ``patch_size`` patches,
    a ``(S/p, S/p)`` grid in raster order. With ``vision_feature_select_strategy ==
    "full"`` the CLS token comes first; it is on no grid cell, so it is kept out of V.
    """

    card = FamilyCard(
        visual_tokens="one CLIP grid over the centre crop",
        tested="crop box vs the processor's pixels",
        caveats="pixels outside the crop get the map's minimum",
    )

    @property
    def grid_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """Patch-token positions per image in raster order, CLS (strategy "full") left out;
        the grid covers the centre square the CLIP processor keeps (resize, centre crop)."""
        positions = torch.nonzero(inputs["input_ids"][0] == self.image_token_id).flatten()
        side = self.grid_side
        with_cls = self.model.config.vision_feature_select_strategy == "full"
        per_image = side * side + int(with_cls)
        if positions.numel() % per_image:
            raise LayoutError(
                f"{positions.numel()} image tokens is not a multiple of the {per_image} per image "
                f"implied by a {side}x{side} patch grid"
            )
        blocks = positions.view(-1, per_image)
        if with_cls:
            blocks = blocks[:, 1:]
        box = processor_region(image_size, self.processor.image_processor)
        grids = [Grid(side, side, image=i, box=box) for i in range(blocks.shape[0])]
        return VisualLayout(blocks.flatten(), grids)
