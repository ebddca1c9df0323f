"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): a base view plus anyres tiles stitched into one grid.

Layout of one image (llava-v1.6-*-hf). The processor makes ``pixel_values[0]`` = [1 + n, 3, T, T]:
view 0 is the whole image squashed to T x T (the *base* view); views 1..n are the T x T tiles,
row-major, of a canvas of the best-fitting ``image_grid_pinpoints`` resolution, on which the
image is resized with its aspect kept and centred on black padding. The tower turns every view
into ``g x g`` patch features (``g = image_size // patch_size``, CLS dropped by the "default"
strategy). The model stitches the tiles' features into one ``(th g) x (tw g)`` grid, cuts the
rows (or columns) that lie on the padding (``unpad_image``, in whole cells), and appends the
learned ``image_newline`` feature to every row. In the prompt this is one run of ``<image>``
ids: ``g^2`` base tokens, then per kept row its cells and one newline. The newline positions
hold ``<image>`` ids too but are no visual token (they carry one learned vector, the same for
every image); they stay out of V.

Grids: ``base`` (g x g over the whole image) and ``tiles`` (the unpadded stitched grid over the
part of the canvas it keeps; its box can reach a little past the image, because the unpad
works in whole cells). Both views see every part of the image, so a region of the image has
tokens in both, and `Explanation.visual_pixels` adds their per-area relevance.

Caveats: the two grids overlap, so a method's mass on "the image" is split between two views
of different resolution; map metrics on ``visual`` alone see the base grid only. The newline
features take attention (and attention-based relevance) that belongs to no image region;
methods that normalise over V ignore it. Very elongated images can unpad to zero rows (then
only the base grid is left). The LM is causal (Mistral: a sliding window only if the
checkpoint's ``text_config.sliding_window`` is set; the recorded mask is what every method
uses). Pixel-mask path (iGOS, pixel-space faithfulness): the views are the base (the whole
image) and the canvas tiles (`anyres_views`), each tile's box reaching into the canvas
padding where it lies; a mask over the image reaches both at their own resolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..images import FULL_IMAGE, Region
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .prompting import PreparedInputs


@dataclass(frozen=True)
class AnyresLayout:
    """The token layout of one image: a ``side x side`` base grid, then ``rows x cols`` tile
    cells each row followed by one newline feature (the model's ``pack_image_features``)."""

    side: int  # g: base grid side, patch features per tile side
    rows: int  # the unpadded (and, for OneVision, downsampled) stitched grid
    cols: int
    base_box: Region  # the base view on the original image
    tiles_box: Region  # the stitched grid's kept cells on the original image

    @property
    def num_tokens(self) -> int:
        """``<image>`` ids in the prompt for this image (base + cells + newlines)."""
        return self.side * self.side + self.rows * (self.cols + 1)

    def visual_offsets(self) -> Tensor:
        """Offsets of the visual tokens in the image's run: base raster, then tile raster: [|V|]."""
        base = torch.arange(self.side * self.side)
        r, c = torch.meshgrid(torch.arange(self.rows), torch.arange(self.cols), indexing="ij")
        tiles = self.side * self.side + r * (self.cols + 1) + c  # skip each row's newline
        return torch.cat([base, tiles.reshape(-1)])

    def newline_offsets(self) -> Tensor:
        """Offsets of the ``image_newline`` features in the image's run: [rows]."""
        return self.side * self.side + torch.arange(self.rows) * (self.cols + 1) + self.cols

    def grids(self, image: int = 0) -> list[Grid]:
        out = [Grid(self.side, self.side, image=image, box=self.base_box, name="base")]
        if self.rows and self.cols:
            out.append(Grid(self.rows, self.cols, image=image, box=self.tiles_box, name="tiles"))
        return out


def anyres_canvas(
    image_hw: tuple[int, int], pinpoints: list[list[int]]
) -> tuple[int, int, int, int, int, int]:
    """(canvas H, W, resized image H, W, pad top, left) of the processor's anyres canvas for
    an image of original ``(H, W)``: best resolution, aspect-kept resize with ceil
    (``get_patch_output_size``), centred pad."""
    from transformers.image_processing_utils import select_best_resolution

    height, width = (int(v) for v in image_hw)
    best_h, best_w = select_best_resolution((height, width), pinpoints)
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
    return best_h, best_w, new_h, new_w, (best_h - new_h) // 2, (best_w - new_w) // 2


def anyres_views(
    image_hw: tuple[int, int], *, tile: int, pinpoints: list[list[int]]
) -> list[PixelView]:
    """The ``pixel_values`` views of one image: the base (whole image squashed to one tile),
    then the canvas tiles row-major, each box reaching into the canvas padding where it lies."""
    best_h, best_w, new_h, new_w, pad_top, pad_left = anyres_canvas(image_hw, pinpoints)
    views = [PixelView(FULL_IMAGE, (tile, tile), "base")]
    for r in range(best_h // tile):
        for c in range(best_w // tile):
            box = (
                (r * tile - pad_top) / new_h,
                (c * tile - pad_left) / new_w,
                ((r + 1) * tile - pad_top) / new_h,
                ((c + 1) * tile - pad_left) / new_w,
            )
            views.append(PixelView(box, (tile, tile), f"tile {r},{c}"))
    return views


def anyres_layout(
    image_hw: tuple[int, int],
    *,
    tile: int,
    patch: int,
    pinpoints: list[list[int]],
    max_num_patches: int | None = None,
) -> AnyresLayout:
    """The layout of an image of original ``(H, W)`` = ``image_sizes[i]``.

    Follows the image processor (best resolution, aspect-kept resize with ceil, centred pad)
    and the model (stitching, ``unpad_image``; with ``max_num_patches``, OneVision's bilinear
    downsampling of grids above ``anyres_max_N``). Only ``g * patch`` px of a tile are seen
    (the conv floors), so a cell of stitched index ``t`` covers canvas pixels
    ``[(t // g) T + (t % g) p, + p)``; the grid's box runs from its first cell to its last.
    """
    height, width = (int(v) for v in image_hw)
    g = tile // patch
    seen = g * patch / tile
    base_box = (0.0, 0.0, seen, seen)
    best_h, best_w, new_h, new_w, pad_top, pad_left = anyres_canvas(image_hw, pinpoints)
    # the model's stitched grid and unpad_image (same float expressions, int() truncates)
    full_h, full_w = (best_h // tile) * g, (best_w // tile) * g
    r0, r1, c0, c1 = 0, full_h, 0, full_w
    if width / height > full_w / full_h:
        kept = int(round(height * (full_w / width), 7))
        r0 = (full_h - kept) // 2
        r1 = full_h - r0
    else:
        kept = int(round(width * (full_h / height), 7))
        c0 = (full_w - kept) // 2
        c1 = full_w - c0
    rows, cols = r1 - r0, c1 - c0
    if max_num_patches is not None and rows * cols > 0:
        ratio = math.sqrt(rows * cols / (max_num_patches * g * g))
        if ratio > 1.1:  # interpolate(..., [int(h // ratio), int(w // ratio)], bilinear)
            rows, cols = int(rows // ratio), int(cols // ratio)
    if rows <= 0 or cols <= 0:
        return AnyresLayout(g, 0, 0, base_box, base_box)

    def start(t: int) -> int:  # canvas pixel where stitched cell t starts
        return (t // g) * tile + (t % g) * patch

    top, bottom = start(r0), start(r1 - 1) + patch
    left, right = start(c0), start(c1 - 1) + patch
    tiles_box = (
        (top - pad_top) / new_h,
        (left - pad_left) / new_w,
        (bottom - pad_top) / new_h,
        (right - pad_left) / new_w,
    )
    return AnyresLayout(g, rows, cols, base_box, tiles_box)


class LlavaNextAdapter(ModelAdapter, family="llava_next"):
    """llava-v1.6-*-hf (LLaVA-NeXT): base view + unpadded anyres tiles, newline features per row."""

    card = FamilyCard(
        visual_tokens="base grid + the unpadded anyres tile grid",
        tested="token counts and newline positions vs the processor and the model's own packing",
        caveats="one newline feature per row is not a visual token",
    )

    def max_num_patches(self) -> int | None:
        """N of ``anyres_max_N`` when the family downsamples large stitched grids."""
        return None

    def image_layout(self, image_hw: tuple[int, int]) -> AnyresLayout:
        """The layout of one image of original ``(H, W)``, from the model's own config."""
        config = self.model.config
        vision = config.vision_config
        self._check_views()
        return anyres_layout(
            image_hw,
            tile=int(vision.image_size),
            patch=int(vision.patch_size),
            pinpoints=[list(p) for p in config.image_grid_pinpoints],
            max_num_patches=self.max_num_patches(),
        )

    def _check_views(self) -> None:
        """The base view and the tiles reach the tower unchanged only if the processor's resize
        and crop are the tile size (true of the released checkpoints); else the boxes are wrong."""
        ip = self.processor.image_processor
        tile = int(self.model.config.vision_config.image_size)
        sizes = [_get(ip.size, k) for k in ("shortest_edge", "height", "width")]
        if getattr(ip, "do_center_crop", False) and ip.crop_size is not None:
            sizes += [_get(ip.crop_size, k) for k in ("height", "width")]
        if any(s is not None and int(s) != tile for s in sizes):
            raise LayoutError(
                f"{self.family}: the image processor resizes views to {ip.size} "
                f"(crop {getattr(ip, 'crop_size', None)}) but the vision tower takes {tile} px "
                "tiles; the token boxes assume they agree"
            )

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """Base then tile cells of every image, newline features left out; boxes from
        ``image_sizes`` (the original (H, W) the processor recorded)."""
        positions = torch.nonzero(inputs["input_ids"][0] == self.image_token_id).flatten()
        self._check_single_views(inputs)
        layouts = [self.image_layout(tuple(hw)) for hw in inputs["image_sizes"].tolist()]
        expected = sum(layout.num_tokens for layout in layouts)
        if expected != positions.numel():
            raise LayoutError(
                f"{self.family}: the prompt holds {positions.numel()} image tokens but the "
                f"layout of images {inputs['image_sizes'].tolist()} (H, W) implies {expected}"
            )
        visual, grids, start = [], [], 0
        for i, layout in enumerate(layouts):
            visual.append(positions[start : start + layout.num_tokens][layout.visual_offsets()])
            grids += layout.grids(image=i)
            start += layout.num_tokens
        return VisualLayout(torch.cat(visual), grids)

    def _check_single_views(self, inputs: dict[str, Tensor]) -> None:
        """Hook: OneVision lays out prompts of several images differently (no anyres)."""

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """The base view, then the canvas tiles (``pixel_values`` [1, 1 + n, C, T, T])."""
        self._check_single_views(prepared.inputs)
        self._check_views()
        width, height = prepared.image_size
        return anyres_views(
            (height, width),
            tile=int(self.model.config.vision_config.image_size),
            pinpoints=[list(p) for p in self.model.config.image_grid_pinpoints],
        )


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)
