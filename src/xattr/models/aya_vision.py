"""Aya Vision (`AyaVisionForConditionalGeneration`: CohereLabs/aya-vision-8b and -32b).

Layout. The processor (GOT-OCR2's image processor; `AyaVisionProcessor` switches
``crop_to_patches`` on for every call, though the checkpoints' image processor config has
it off) picks the tile canvas ``cols x rows`` (1 to ``max_patches`` = 12 tiles of 364 px)
whose aspect is closest to the image's, stretches the whole image onto it (no pad, no crop)
and cuts it into tiles, row-major; when there is more than one tile it appends a
thumbnail, the whole image stretched to one tile, last. Each view goes through SigLIP
alone (26 x 26 patches of 14 px, no CLS) and the projector's 2 x 2 pixel shuffle, which
keeps raster order: 13 x 13 = 169 tokens per view. A visual token is one
``<|IMG_PATCH|>`` position; its box is the 28 x 28 px square of its view (a 2 x 2 block of
SigLIP patches) mapped back onto the original image: for tile ``r,c`` of the canvas the
fraction ``(r/rows, c/cols, (r+1)/rows, (c+1)/cols)`` of the image split 13 x 13, for the
thumbnail the whole image split 13 x 13. The prompt holds one ``<|START_OF_IMG|>``, then
per tile the text tag ``TILE_k`` (k = 1, 2, ...) and its 169 patch tokens, then the text tag
``TILE_GLOBAL`` and the thumbnail's (or, untiled, the one view's) 169, then
``<|END_OF_IMG|>``; tags and markers are text tokens, not visual tokens. The processor
returns no canvas, so the grids are recomputed from its config (`internvl.view_grids`, the
same GOT-OCR2 rule) and checked against the views and tokens it emitted. Every region is
seen twice when tiled (tile and thumbnail); `Explanation.visual_pixels` combines the views.

Attention. The language model is Cohere2 for aya-vision-8b: causal sliding-window layers
(``j > i - W``, W = 4096, with RoPE) interleaved with causal global layers (every 4th, *no*
positional encoding): Cohere2Config's defaults. Image tokens are ordinary positions. The
capture records each layer's real mask, and every method sums and propagates over it; at
N < W (13 views: about 2,200 image tokens) the windows clip nothing until the answer is long. The LM is whatever ``text_config.model_type`` names (Cohere for a
checkpoint built on Command R / Aya Expanse); a Cohere block runs attention and MLP in
parallel on the same normed input, which the methods do not need to know. Logits are the
LM head's times ``text_config.logit_scale``, and so is the logit lens (`unembed`).

Caveats. The chat template writes ``<BOS_TOKEN>``, so the prompt is tokenised without
adding it again. No pixel-mask path: a tiled image's views are two separate resamplings of
it (the canvas and the thumbnail), not one processed image, so iGOS and pixel-space
faithfulness are not supported (image-space faithfulness is). An untiled image has one view
that could take it, but a path that exists for some images only would break the metrics
that choose the pixel space by family (`DeletionInsertion`'s ``space="auto"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..layout import VisualLayout
from .base import FamilyCard, ModelAdapter
from .internvl import tiled_layout
from .pixels import ViewPerGridPixels
from .prompting import CaptureError, image_list


class AyaVisionAdapter(ViewPerGridPixels, ModelAdapter, family="aya_vision"):
    """Aya Vision: tiles row-major, then the thumbnail (module docstring)."""

    card = FamilyCard(
        visual_tokens=(
            "364 px tiles row-major (1–12) + a thumbnail when > 1 tile; 13 × 13 pixel-shuffled "
            "tokens per view"
        ),
        tested=(
            "tiling recomputed from the config vs the processor (aspects up to 50:1); boxes vs "
            "its pixels; `TILE_k` tags kept out of V; each Cohere2 layer's mask (sliding window "
            "or global) recorded; `logit_scale` in the logit lens"
        ),
        caveats=(
            "every region is seen twice; global layers have no positional encoding; -32b's "
            "language model not checked against its files"
        ),
    )

    # ------------------------------------------------------------ processing
    def process(self, image: Any, text: str) -> dict[str, Tensor]:
        """The processor call; the chat template already writes ``<BOS_TOKEN>``."""
        out = self.processor(
            images=image_list(image), text=[text], return_tensors="pt", add_special_tokens=False
        )
        return dict(out)

    def placeholder_ids(self) -> set[int]:
        """The patch token and ``<image>``, the placeholder the processor expands."""
        ids = super().placeholder_ids()
        placeholder = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        if placeholder is not None and placeholder != self.tokenizer.unk_token_id:
            ids.add(int(placeholder))
        return ids

    # ---------------------------------------------------------------- layout
    @property
    def view_side(self) -> int:
        """Tokens per side of one view: ``image_size / patch_size / downsample_factor``."""
        cfg = self.model.config
        vision = cfg.vision_config
        patches = int(vision.image_size) // int(vision.patch_size)
        factor = int(cfg.downsample_factor)
        if patches % factor:
            raise CaptureError(
                f"{patches} x {patches} patches per view do not pixel-shuffle by {factor}"
            )
        return patches // factor

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The ``<|IMG_PATCH|>`` positions, view after view, and each view's grid: the tiles
        of the canvas recomputed from the processor config, then the thumbnail."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        start = self.tokenizer.convert_tokens_to_ids(self.processor.start_of_img_token)
        blocks = int((ids == start).sum())
        if blocks > 1:
            raise CaptureError(f"the prompt holds {blocks} images; aya_vision takes one per prompt")
        return tiled_layout(
            positions, inputs, image_size, self.processor.image_processor, self.view_side
        )

    def unembed(self, hidden: Tensor) -> Tensor:
        """The LM head times ``logit_scale``, as `AyaVisionForConditionalGeneration` computes."""
        scale = float(self.model.config.get_text_config().logit_scale)
        return super().unembed(hidden) * scale
