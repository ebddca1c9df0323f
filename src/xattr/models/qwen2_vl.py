"""Qwen2-VL and Qwen2.5-VL: dynamic resolution, visual tokens merged m x m (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..images import FULL_IMAGE
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .prompting import PreparedInputs
from .qwen_video import QwenVideoMixin


class Qwen2VLAdapter(QwenVideoMixin, ModelAdapter, family="qwen2_vl"):
    """Qwen2-VL-*-Instruct.

    The image processor emits patches grouped by merge block, so after the merger the
    image's tokens run in raster order over a grid of
    ``(h / m, w / m)`` with ``(t, h, w) = image_grid_thw`` and ``m = spatial_merge_size``.
    """

    card = FamilyCard(
        visual_tokens="one grid (`image_grid_thw / merge`) over the resized image",
        tested="geometry, iGOS pixel path",
    )

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """Image-token positions (raster order per image) and each image's merged grid; the
        processor resizes the whole image (no crop), so each grid covers all of its image."""
        positions = torch.nonzero(inputs["input_ids"][0] == self.image_token_id).flatten()
        m = self.merge_size
        grids = [
            Grid(int(h) // m, int(w) // m, image=i)
            for i, (t, h, w) in enumerate(inputs["image_grid_thw"].tolist())
            for _ in range(t)
        ]
        cells = sum(g.cells for g in grids)
        if cells != positions.numel():
            raise LayoutError(
                f"image_grid_thw gives {cells} merged cells but the prompt holds {positions.numel()} image tokens"
            )
        return VisualLayout(positions, grids)

    # ------------------------------------------------ pixel_values layout (mask path)
    @property
    def _patch_dims(self) -> tuple[int, int]:
        vision = self.model.config.vision_config
        return int(vision.patch_size), int(vision.temporal_patch_size)

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """One view: the whole image resized to patch_size * (grid_h, grid_w) of ``image_grid_thw``."""
        _, gh, gw = (int(v) for v in prepared.inputs["image_grid_thw"][0])
        p, _ = self._patch_dims
        return [PixelView(FULL_IMAGE, (gh * p, gw * p))]

    def views_to_pixel_values(
        self, views: Sequence[Tensor], prepared: PreparedInputs, fill: float = 1.0
    ) -> Tensor:
        """The one view [B, C, H, W] -> [B, n, C*T*p*p] in the processor's patch order."""
        # patches grouped by merge block (h/m, w/m, m, m); each patch flattened as (C, T, p, p)
        # with the frame repeated over the temporal axis T
        (images,) = views
        b, c, h, w = images.shape
        p, tp = self._patch_dims
        m = self.merge_size
        x = images.reshape(b, c, h // (p * m), m, p, w // (p * m), m, p)
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # [B, h/pm, w/pm, m, m, C, p, p]
        x = x.unsqueeze(6).expand(*x.shape[:6], tp, p, p)  # [B, .., C, T, p, p]
        return x.reshape(b, (h // p) * (w // p), c * tp * p * p)

    def pixel_values_to_views(self, pixel_values: Tensor, prepared: PreparedInputs) -> list[Tensor]:
        """The image's patches [n, C*T*p*p] back to [C, H, W] (first temporal slice)."""
        (view,) = self.pixel_views(prepared)
        h, w = view.size
        p, tp = self._patch_dims
        m = self.merge_size
        n = (h // p) * (w // p)
        x = pixel_values[:n].reshape(h // (p * m), w // (p * m), m, m, -1, tp, p, p)
        x = x[:, :, :, :, :, 0]  # [h/pm, w/pm, m, m, C, p, p]
        x = x.permute(4, 0, 2, 5, 1, 3, 6)  # [C, h/pm, m, p, w/pm, m, p]
        return [x.reshape(x.shape[0], h, w)]


class Qwen25VLAdapter(Qwen2VLAdapter, family="qwen2_5_vl"):
    """Qwen2.5-VL-*-Instruct: same token layout as Qwen2-VL, windowed vision attention."""

    card = FamilyCard(
        visual_tokens="as Qwen2-VL",
        tested="as Qwen2-VL",
    )
    timed_video = True  # second_per_grid_ts: frame pairs placed in time
