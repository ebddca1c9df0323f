"""Qwen2-VL and Qwen2.5-VL: dynamic resolution, visual tokens merged m x m (SPEC §1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ADAPTERS, ModelAdapter


@ADAPTERS.register("qwen2_vl")
class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL-*-Instruct.

    The image processor emits patches grouped by merge block, so after the merger the
    image's tokens run in raster order over a grid of
    ``(h / m, w / m)`` with ``(t, h, w) = image_grid_thw`` and ``m = spatial_merge_size``.
    """

    family = "qwen2_vl"

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def visual_layout(self, inputs: dict[str, Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Image-token positions (already raster order per image) and each image's merged grid."""
        positions = torch.nonzero(inputs["input_ids"][0] == self.image_token_id).flatten()
        m = self.merge_size
        grids = [
            (int(h) // m, int(w) // m)
            for t, h, w in inputs["image_grid_thw"].tolist()
            for _ in range(t)
        ]
        cells = sum(h * w for h, w in grids)
        if cells != positions.numel():
            raise ValueError(
                f"image_grid_thw gives {cells} merged cells but the prompt holds {positions.numel()} image tokens"
            )
        return positions, grids

    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.model.model.language_model.layers]


@ADAPTERS.register("qwen2_5_vl")
class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL-*-Instruct: same token layout as Qwen2-VL, windowed vision attention."""

    family = "qwen2_5_vl"

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
