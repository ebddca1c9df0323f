"""Idefics3 (`Idefics3ForConditionalGeneration`): rows x cols tiles plus a global image, pixel-shuffled.

Layout of one image (HuggingFaceM4/Idefics3-8B-Llama3). The processor resizes the image to
``size["longest_edge"]`` on its long side (up or down, aspect kept), then *stretches* it to
multiples of the tile ``M = max_image_size["longest_edge"]`` (so the aspect is distorted by up
to one tile) and cuts it into ``rows x cols`` exact M x M crops, row-major, followed by the
global image (the whole stretched image squashed to M x M). An image no larger than one tile
is one M x M frame. Every frame gives ``(M // p)^2`` patches, pixel-shuffled by
``scale_factor`` s into ``t x t`` tokens (``t = (M // p) // s``), row-major, token (i, j) being
the s x s patch block at (i s, j s). In the prompt each frame is
``<fake_token_around_image><row_r_col_c>`` (``<global-img>`` for the global one) followed by
its ``t^2`` ``<image>`` ids, rows end in "\\n" and one more ``<fake_token_around_image>`` closes
the image; none of these separators is a visual token.

Grids: ``tiles``, the tiles' tokens stitched into one ``(rows t) x (cols t)`` grid over the
whole image (the tiles are adjacent crops of one uniformly stretched image, so it is a single
spatially consistent grid), then ``global`` (t x t over the whole image). An unsplit image is
one grid (``image``). Only ``(M // p) p`` px of a frame are seen (0 px lost for 364 / 14,
6 px for SmolVLM2's 384 / 14): each grid's box ends at its last seen pixel, and the stitched
grid's cells are uniform over it (exact up to the seams' gaps, at most half a gap per tile).

Caveats: the tiles and the global view overlap everywhere, so relevance on "the image" is split
between a fine and a coarse view (`Explanation.visual_pixels` adds them per unit area; map
metrics on ``visual`` see the tiles). The prompt's tag tokens and the "\\n" row ends sit
between the visual tokens and take attention that no image region gets. The stretch means a
cell of the stitched grid is not square on the original image. The LM (Llama, at
``model.model.text_model``) is full causal. The pixel-mask path's views are the tiles (each
its box of the stretched image) and the global frame (`TiledLayout.views`); the model drops
frames that are exactly 0 everywhere as batch padding, which a blend never makes unless the
image and the baseline both are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..images import FULL_IMAGE, Region
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .prompting import PreparedInputs


@dataclass(frozen=True)
class TiledLayout:
    """One image's frames: ``rows x cols`` tiles of ``side x side`` tokens, then the global one."""

    rows: int  # 0 when the image is not split (one frame)
    cols: int
    side: int  # t: tokens per frame side after the pixel shuffle
    seen: float  # fraction of a frame's side that the patch conv sees

    @property
    def frames(self) -> int:
        return self.rows * self.cols + 1

    @property
    def tiles_box(self) -> Region:
        """The stitched tiles on the image: from the first tile's corner to the last seen pixel."""
        return (
            0.0,
            0.0,
            (self.rows - 1 + self.seen) / self.rows,
            (self.cols - 1 + self.seen) / self.cols,
        )

    def stitched_order(self) -> Tensor:
        """For each cell of the stitched tile grid in raster order, its index among the image's
        tile tokens in prompt order (frame by frame, raster in each): [rows t * cols t]."""
        t = self.side
        rr, cc = torch.meshgrid(
            torch.arange(self.rows * t), torch.arange(self.cols * t), indexing="ij"
        )
        frame = (rr // t) * self.cols + cc // t
        return (frame * t * t + (rr % t) * t + cc % t).reshape(-1)

    def tags(self, global_tag: str = "<global-img>") -> list[str]:
        """The tag token in front of each frame's run, in prompt order."""
        tiles = [f"<row_{r + 1}_col_{c + 1}>" for r in range(self.rows) for c in range(self.cols)]
        return [*tiles, global_tag]

    def views(self, frame: int) -> list[PixelView]:
        """The frames in ``pixel_values`` order: the tiles of the stretched image row-major,
        then the global one (or the one unsplit frame), each ``frame`` px square."""
        size = (frame, frame)
        if self.rows == 0:
            return [PixelView(FULL_IMAGE, size)]
        tiles = [
            PixelView(
                (r / self.rows, c / self.cols, (r + 1) / self.rows, (c + 1) / self.cols),
                size,
                f"tile {r},{c}",
            )
            for r in range(self.rows)
            for c in range(self.cols)
        ]
        return [*tiles, PixelView(FULL_IMAGE, size, "global")]

    def grids(self, image: int = 0) -> list[Grid]:
        seen_box = (0.0, 0.0, self.seen, self.seen)
        if self.rows == 0:
            return [Grid(self.side, self.side, image=image, box=seen_box, name="image")]
        return [
            Grid(self.rows * self.side, self.cols * self.side, image, self.tiles_box, "tiles"),
            Grid(self.side, self.side, image=image, box=seen_box, name="global"),
        ]


class Idefics3Adapter(ModelAdapter, family="idefics3"):
    """Idefics3-*: tiles stitched into one grid, then the global image."""

    card = FamilyCard(
        visual_tokens="stitched tiles + a global image",
        tested="layout vs the `<row_r_col_c>` tags",
        caveats="cells are not square (the image is stretched to whole tiles)",
    )

    @property
    def global_tag(self) -> str:
        """The tag in front of the global frame (Idefics3: ``global_image_tag``, SmolVLM:
        ``global_image_token`` of the processor)."""
        proc = self.processor
        return getattr(proc, "global_image_tag", None) or getattr(
            proc, "global_image_token", "<global-img>"
        )

    def frame_geometry(self) -> tuple[int, int, int]:
        """(M, patch, scale): the frame side, the patch size and the pixel-shuffle factor."""
        config = self.model.config
        tile = int(config.vision_config.image_size)
        ip = self.processor.image_processor
        frame = int(ip.max_image_size["longest_edge"])
        if frame != tile:
            raise LayoutError(
                f"{self.family}: the image processor cuts {frame} px frames but the vision tower "
                f"takes {tile} px; the token boxes assume they agree"
            )
        return tile, int(config.vision_config.patch_size), int(config.scale_factor)

    def image_layout(self, image_size: tuple[int, int]) -> TiledLayout:
        """The frames of an image of ``image_size`` = (W, H), from the image processor's own
        count (`get_number_of_image_patches`: the resize and stretch of its preprocessing)."""
        tile, patch, scale = self.frame_geometry()
        width, height = image_size
        _, rows, cols = self.processor.image_processor.get_number_of_image_patches(height, width)
        seen = (tile // patch) * patch / tile
        return TiledLayout(int(rows), int(cols), (tile // patch) // scale, seen)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """Every frame's run of ``<image>`` ids (tags and fake tokens between them), the tiles'
        runs stitched into one grid, then the global run."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        layout = self.image_layout(image_size)
        runs = torch.tensor_split(positions, torch.nonzero(positions.diff() > 1).flatten() + 1)
        lengths = [int(r.numel()) for r in runs]
        per_frame = layout.side * layout.side
        if positions.numel() == 0 or lengths != [per_frame] * layout.frames:
            raise LayoutError(
                f"{self.family}: expected {layout.frames} frames of {per_frame} image tokens "
                f"({layout.rows} x {layout.cols} tiles + global for a {image_size[0]}x"
                f"{image_size[1]} image), the prompt holds runs of {lengths}; one image per prompt"
            )
        tags = self.tokenizer.convert_ids_to_tokens([int(ids[r[0] - 1]) for r in runs])
        expected = layout.tags(self.global_tag)
        if tags != expected:
            raise LayoutError(
                f"{self.family}: the frames are tagged {tags}, not {expected} as the image "
                f"processor's {layout.rows} x {layout.cols} tiles + global for this image imply"
            )
        if layout.rows == 0:
            return VisualLayout(positions, layout.grids())
        tiles = torch.cat(runs[:-1])[layout.stitched_order()]
        return VisualLayout(torch.cat([tiles, runs[-1]]), layout.grids())

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """The tiles, then the global frame (``pixel_values`` [1, frames, C, M, M])."""
        return self.image_layout(prepared.image_size).views(self.frame_geometry()[0])
