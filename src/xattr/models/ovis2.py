"""Ovis2 (`Ovis2ForConditionalGeneration`: the thisisiron/Ovis2-*-hf conversions).

Visual tokens. A ViT (14 px patches, 448 px views in the real checkpoints) encodes each view;
its patch features are merged ``hidden_stride x hidden_stride`` (2 x 2: 16 x 16 = 256 cells
per view, raster order) and the visual tokenizer's head turns each cell into a
probability vector ``p = softmax(LayerNorm(W h))`` over the visual vocabulary (the
``vision_config.vocab_size`` words minus the 5 indicator rows). The language model's input
at the cell's ``<IMG_ATOM>`` position is the expected visual embedding ``p @ E`` (E: the
visual embedding table): a *soft* visual token, a mixture of visual words, never one word.
A visual token here is exactly one ``<IMG_ATOM>`` position; its box is its cell, the
``(patch_size * hidden_stride)``-px square of its view (28 px of 448), mapped back onto the
original image. The five indicator tokens ``<IMG_START>``, ``<IMG_GRID>``, ``<IMG_COL>``,
``<IMG_ROW>``, ``<IMG_END>`` take the table's last five rows (fixed, image-independent
embeddings): they are separators, not visual tokens.

Layout. The image processor (``crop_to_patches`` on in the checkpoints) picks a canvas of
``rows x cols`` tiles (1 to ``max_patches`` = 12) by the covering-area rule, stretches the
whole image onto it (no pad, no crop) and cuts it row-major; when there is more than one
tile it puts a thumbnail, the whole image stretched to one view, *first*. The prompt holds
``<IMG_START>``, the thumbnail's (or the one view's) 256 atoms, ``<IMG_GRID>``, then the
tiles' atoms row-major with ``<IMG_COL>`` between the tiles of a row and ``<IMG_ROW>``
between rows, then ``<IMG_END>``. The processor returns no grid, but the separators state
it, so ``rows x cols`` is read from the prompt and checked against the views it emitted.
Grids: ``thumbnail`` covering the whole image, then ``tile r,c`` covering
``(r/rows, c/cols, (r+1)/rows, (c+1)/cols)``; every region is seen twice when tiled.
transformers 5.25's covering rule scores a candidate ``(a, b)`` as a rows x b columns but
builds the canvas as a columns x b rows, so every non-square canvas is transposed against
the image (1344 x 448 px: 3 rows x 1 column, each tile a full-width band squeezed 3 x
across and stretched 3 x down, where 1 x 3 tiles would cover it unscaled); the layout
follows what the processor did.

Attention. The language model is Qwen2: plain causal, 1-D RoPE, image tokens are ordinary
positions. Caveats: no pixel-mask path (the views are separate resamplings), so no iGOS and
image-space faithfulness only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Grid, LayoutError, VisualLayout
from .base import FamilyCard, ModelAdapter
from .pixels import ViewPerGridPixels
from .prompting import CaptureError

INDICATORS = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")


class Ovis2Adapter(ViewPerGridPixels, ModelAdapter, family="ovis2"):
    """Ovis2-*-hf: the thumbnail, then tiles row-major (module docstring)."""

    card = FamilyCard(
        visual_tokens=(
            "thumbnail first, then 448 px tiles row-major (covering-area rule, 1–12); 16 × 16 "
            "soft tokens per view, each `<IMG_ATOM>` a softmax mixture of visual words over its "
            "28 px cell"
        ),
        tested=(
            "canvas read from the `<IMG_COL>`/`<IMG_ROW>` separators vs the processor's views; "
            "boxes vs its pixels; embeddings = p @ E; indicator tokens kept out of V"
        ),
        caveats=(
            "transformers 5.25 transposes non-square canvases (the layout follows it); every "
            "region is seen twice"
        ),
    )

    def placeholder_ids(self) -> set[int]:
        """``<IMG_ATOM>``, ``<image>`` (which the processor expands) and the five indicator
        tokens (the model embeds them from the visual table wherever they appear)."""
        ids = super().placeholder_ids()
        ids.update(int(i) for i in self.model.config.visual_indicator_token_ids)
        placeholder = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        if placeholder is not None and placeholder != self.tokenizer.unk_token_id:
            ids.add(int(placeholder))
        return ids

    @property
    def view_side(self) -> int:
        """Soft tokens per side of one view: ``image_size / patch_size / hidden_stride``."""
        vision = self.model.config.vision_config
        image, patch = vision.image_size, vision.patch_size
        image = image[0] if isinstance(image, (list, tuple)) else image
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        patches, stride = int(image) // int(patch), int(vision.hidden_stride)
        if patches % stride:
            raise CaptureError(
                f"{patches} x {patches} patches per view are padded to merge by {stride}: "
                "the last row and column of cells would cover padding"
            )
        return patches // stride

    def tile_canvas(self, ids: Tensor) -> tuple[int, int]:
        """(rows, cols) of the tile canvas, read from the separators between ``<IMG_GRID>``
        and ``<IMG_END>``; (1, 1) when the image is one view."""
        marker = dict(zip(INDICATORS, self.tokenizer.convert_tokens_to_ids(list(INDICATORS))))
        starts = int((ids == marker["<IMG_START>"]).sum())
        if starts != 1:
            raise CaptureError(f"the prompt holds {starts} images; ovis2 takes one per prompt")
        grid = int(torch.nonzero(ids == marker["<IMG_GRID>"])[0, 0])
        end = int(torch.nonzero(ids == marker["<IMG_END>"])[0, 0])
        tiles = ids[grid + 1 : end]
        rows = int((tiles == marker["<IMG_ROW>"]).sum()) + 1
        cols_sep = int((tiles == marker["<IMG_COL>"]).sum())
        if cols_sep % rows:
            raise LayoutError(f"{cols_sep} <IMG_COL> separators do not split {rows} equal rows")
        cols = cols_sep // rows + 1
        if rows * cols > 1 and not bool((tiles == self.image_token_id).any()):
            raise LayoutError("separators without tile tokens between <IMG_GRID> and <IMG_END>")
        return rows, cols

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The ``<IMG_ATOM>`` positions, view after view, and each view's grid: the
        thumbnail, then the tiles of the canvas the separators state."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        rows, cols = self.tile_canvas(ids)
        side = self.view_side
        if rows * cols == 1:
            grids = [Grid(side, side)]
        else:
            grids = [Grid(side, side, name="thumbnail")] + [
                Grid(
                    side,
                    side,
                    box=(r / rows, c / cols, (r + 1) / rows, (c + 1) / cols),
                    name=f"tile {r},{c}",
                )
                for r in range(rows)
                for c in range(cols)
            ]
        views = int(inputs["pixel_values"].shape[0])  # [views, C, S, S]
        expected = len(grids) * side * side
        if positions.numel() != expected or views != len(grids):
            raise LayoutError(
                f"the processor emitted {views} view(s) and {positions.numel()} image tokens, but "
                f"its separators state a {rows} x {cols} canvas, {len(grids)} view(s) of "
                f"{side} x {side} tokens ({expected})"
            )
        return VisualLayout(positions, grids)
