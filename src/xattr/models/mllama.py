"""Llama 3.2 Vision (`MllamaForConditionalGeneration`): the image reaches the text only
through cross-attention layers.

Layout (meta-llama/Llama-3.2-11B-Vision-Instruct). The processor picks a canvas of
``rows x cols`` tiles of ``T x T`` px (at most ``max_image_tiles``, 4, tiles; the arrangement
that needs the least up-scaling, else the least down-scaling, then the smallest area),
resizes the image into it keeping the aspect ratio (each side at least ``T``) and pads the
bottom and right; the tiles are cut row-major from the padded canvas. Each tile becomes a
class token followed by ``(T / p)^2`` patch tokens in raster order; the vision output holds
``max_image_tiles`` tiles (unused ones masked out of the cross-attention) and reaches the
language model as the keys and values of its cross-attention layers (every fifth layer in
the real checkpoints), never as tokens of the sequence. The prompt holds one ``<|image|>``
token where the image goes; text from it on may attend to the image.

Trace. The image tokens become a prefix of the traced sequence (`models.cross`): positions
``0 .. max_tiles (1 + (T/p)^2) - 1``, tile by tile. V is the patch tokens of the tiles in use,
stitched into one ``rows (T/p) x cols (T/p)`` grid over the canvas (its box reaches past the
image into the padding by what was padded); class tokens and unused tiles are not in V.
Self-attention layers fill the text block, cross-attention layers the text-to-image block
(kind ``cross``), so every attention method runs unchanged: what reaches the image does so
at the cross layers, and the self-attention layers move relevance between text positions
before and after. The tanh gates and the MLP after each cross-attention are outside A; the
gradients pass through them.

Not defined here: DEX-AR and Grad-CAM's hidden-state variant (they read the language model's
hidden states, which hold text positions only). The pixel-mask path (iGOS, pixel-space
faithfulness) takes the used tiles as its views, each its box of the padded canvas; the
unused tile slots keep their zeros. Grad-CAM reads the last cross-attention layer, the last
that sees the image. Text before ``<|image|>`` cannot see the image, but transformers gives
those rows a uniform (unmasked) cross-attention whose MLP output it then zeroes; the
recorded support is what the model computed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers.models.mllama.image_processing_pil_mllama import (
    get_image_size_fit_to_canvas,
    get_optimal_tiled_canvas,
)

from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .prompting import PreparedInputs


class MllamaAdapter(ModelAdapter, family="mllama"):
    """Llama 3.2 Vision (11B, 90B): tiles of patch tokens reached by cross-attention."""

    card = FamilyCard(
        visual_tokens=(
            "the used tiles' patch tokens, stitched into one grid over the padded canvas; the "
            "image tokens are a prefix of the traced sequence, reached by cross-attention layers"
            " only"
        ),
        tested=(
            "canvas and padding vs the processor's pixels; each layer's block and gradients vs "
            "the model's own"
        ),
        caveats=(
            "DEX-AR and Grad-CAM's hidden variant refused (hidden states hold text only); "
            "Grad-CAM reads the last cross layer; a trace is `N_v + N_t` wide (4 tiles: ≈ 6,400 "
            "image tokens)"
        ),
    )
    refused_methods = ("dexar",)  # it reads hidden states, which hold text positions only

    per_token_fill: ClassVar[dict[str, int]] = {"attention_mask": 1}  # and see `full_inputs`
    max_images: ClassVar[int | None] = 1  # the image is a cross-attention prefix, not prompt tokens

    def attention_modules(self) -> list[nn.Module]:
        """Each layer's attention: ``cross_attn`` on cross-attention layers, else ``self_attn``."""
        layers = self.language_model().layers
        return [getattr(layer, "cross_attn", None) or layer.self_attn for layer in layers]

    @property
    def tile_tokens(self) -> tuple[int, int]:
        """(tokens per tile side, tokens per tile with its class token)."""
        vision = self.model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return side, side * side + 1

    def canvas(self, image_size: tuple[int, int]) -> tuple[int, int, float, float]:
        """(rows, cols) of tiles for a (W, H) image, and the canvas's height and width as
        fractions of the resized image (> 1 where the canvas is padded)."""
        processor = self.processor.image_processor
        tile = int(processor.size["height"])
        width, height = image_size
        canvas_h, canvas_w = get_optimal_tiled_canvas(
            height, width, processor.max_image_tiles, tile
        )
        new_h, new_w = get_image_size_fit_to_canvas(height, width, canvas_h, canvas_w, tile)
        rows, cols = int(canvas_h) // tile, int(canvas_w) // tile
        return rows, cols, float(canvas_h / new_h), float(canvas_w / new_w)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The tiles' patch tokens in the visual prefix, stitched into one grid (module docstring)."""
        images = int((inputs["input_ids"][0] == self.image_token_id).sum())
        if images != 1:
            raise LayoutError(f"the prompt holds {images} <|image|> tokens; mllama takes one")
        rows, cols, tall, wide = self.canvas(image_size)
        used = int(inputs["aspect_ratio_mask"][0, 0].sum())
        if used != rows * cols:
            raise LayoutError(
                f"the processor used {used} tiles, but its config tiles a "
                f"{image_size[0]}x{image_size[1]} image into {rows} x {cols}"
            )
        side, per_tile = self.tile_tokens
        rr, cc = torch.meshgrid(torch.arange(rows * side), torch.arange(cols * side), indexing="ij")
        tile = (rr // side) * cols + cc // side
        positions = tile * per_tile + 1 + (rr % side) * side + cc % side  # after each class token
        grid = Grid(rows * side, cols * side, box=(0.0, 0.0, tall, wide), name="tiles")
        return VisualLayout(positions.reshape(-1), [grid])

    def visual_prefix(self, prepared: PreparedInputs) -> int:
        """Every tile slot's tokens, used or not: ``max_image_tiles (1 + (T/p)^2)``."""
        return int(prepared.inputs["pixel_values"].shape[2]) * self.tile_tokens[1]

    def prepare(self, image, question: str) -> PreparedInputs:  # type: ignore[no-untyped-def]
        """The processor's inputs, with the question's positions moved past the visual prefix."""
        prepared = super().prepare(image, question)
        prepared.prompt_index = prepared.prompt_index + self.visual_prefix(prepared)
        return prepared

    def full_inputs(self, prepared: PreparedInputs, answer_ids: Tensor) -> dict[str, Tensor]:
        """The prompt's inputs and the answer; answer tokens may attend to the image as the
        prompt's last token does (the cross-attention mask's last row, repeated)."""
        inputs = super().full_inputs(prepared, answer_ids)
        mask = prepared.inputs["cross_attention_mask"]  # [1, n, images, tiles]
        tail = mask[:, -1:].expand(-1, answer_ids.numel(), -1, -1)
        inputs["cross_attention_mask"] = torch.cat([mask, tail], dim=1).to(self.device)
        return inputs

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """The canvas tiles row-major (``pixel_values`` [1, 1, max_tiles, C, T, T], the unused
        slots after them); the canvas is the resized image padded at the bottom and right."""
        rows, cols, tall, wide = self.canvas(prepared.image_size)  # type: ignore[arg-type]
        size = tuple(int(v) for v in prepared.inputs["pixel_values"].shape[-2:])
        return [
            PixelView(
                (r * tall / rows, c * wide / cols, (r + 1) * tall / rows, (c + 1) * wide / cols),
                size,  # type: ignore[arg-type]
                f"tile {r},{c}",
            )
            for r in range(rows)
            for c in range(cols)
        ]
