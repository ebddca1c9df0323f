"""InternVL (HF-native `InternVLForConditionalGeneration`: InternVL2.5, 3 and 3.5 "-HF" checkpoints).

Layout. The processor (GOT-OCR2's image processor, ``crop_to_patches`` forced on by
`InternVLProcessor`) picks the tile canvas ``cols x rows`` (1 to ``max_patches`` tiles) whose
aspect is closest to the image's, stretches the whole image onto it (no pad, no crop) and
cuts it into square tiles, row-major; when there is more than one tile it appends a
thumbnail, the whole image stretched to one tile, last. Each view goes through the ViT
alone (CLS dropped) and a 2 x 2 pixel shuffle (``downsample_ratio`` 0.5), so a 448 px view
gives 16 x 16 = 256 tokens in raster order. The prompt holds ``<img>``, then one
contiguous run of ``<IMG_CONTEXT>`` for all views (no separators between tiles, no
thumbnail marker), then ``</img>``; the processor returns neither ``num_patches`` nor the
canvas, so the grids are recomputed from its config (`tiling`) and checked against the
token count. Grids: ``tile r,c`` covering ``(r/rows, c/cols, (r+1)/rows, (c+1)/cols)`` of
the image, then ``thumbnail`` covering all of it: every region is seen twice, at two
resolutions, and `Explanation.visual_pixels` combines the views.

Caveats. The LM attention is plain causal (Qwen2 / Qwen3: 1-D RoPE, image tokens are
ordinary positions). The LM is whatever ``text_config.model_type`` names: Qwen2 (2.5 / 3),
Qwen3 (3.5), Llama (InternLM2-based conversions); GPT-OSS (InternVL3.5-GPT-OSS) uses
attention sinks, which the capture refuses with a CaptureError. The pixel-mask path (iGOS,
pixel-space faithfulness) sees the same views: each tile and the thumbnail takes the mask
over its own box, at its own resolution.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor
from transformers import InternVLProcessor, ProcessorMixin
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from ..layout import Grid, LayoutError, VisualLayout
from ..video import Video
from .base import FamilyCard, ModelAdapter
from .pixels import ViewPerGridPixels
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import CaptureError, PreparedInputs
from .video_prompt import frame_groups, tokenized, video_prepared, video_text


@image_only_processor("internvl")
class InternVLImageOnlyProcessor(ImageOnlyProcessorMixin, InternVLProcessor):
    """`InternVLProcessor` for images only (its video processor needs torchvision); saves as
    the real class, so the folder is an ordinary InternVL processor folder."""

    real_name = "InternVLProcessor"

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        # what InternVLProcessor.__init__ sets, without the video processor
        self.image_seq_length = image_seq_length
        self.start_image_token = tokenizer.start_image_token
        self.end_image_token = tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token = tokenizer.context_image_token
        self.image_token_id = tokenizer.context_image_token_id
        self.video_token = tokenizer.video_token
        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
        )


def tiling(image_size: tuple[int, int], image_processor: Any) -> tuple[int, int]:
    """(cols, rows) of the tile canvas GOT-OCR2's processor picks for a (W, H) image
    (``crop_to_patches`` on, as `InternVLProcessor` forces it); (1, 1) means no tiling."""
    width, height = image_size
    size = image_processor.size
    max_tiles = int(image_processor.max_patches)
    if max_tiles <= 1:
        return 1, 1  # the processor resizes the image to one view
    cols, rows = get_optimal_tiled_canvas(
        (height, width),
        (int(size["height"]), int(size["width"])),
        int(image_processor.min_patches),
        max_tiles,
    )
    return int(cols), int(rows)


def tiled_layout(
    positions: Tensor,
    inputs: dict[str, Tensor],
    image_size: tuple[int, int],
    image_processor: Any,
    side: int,
) -> VisualLayout:
    """The image tokens at ``positions`` over `view_grids`, checked against the views and
    tokens the processor emitted (``pixel_values`` [views, C, S, S])."""
    grids = view_grids(image_size, image_processor, side)
    expected = len(grids) * side * side
    views = int(inputs["pixel_values"].shape[0])
    if positions.numel() != expected or views != len(grids):
        raise LayoutError(
            f"the processor emitted {views} view(s) and {positions.numel()} image tokens, but "
            f"its config tiles a {image_size[0]}x{image_size[1]} image into {len(grids)} "
            f"view(s) of {side} x {side} tokens ({expected})"
        )
    return VisualLayout(positions, grids)


def view_grids(image_size: tuple[int, int], image_processor: Any, side: int) -> list[Grid]:
    """The grids of a (W, H) image, ``side x side`` tokens per view: the tiles row-major, then
    the thumbnail (whole image) when there is more than one tile."""
    cols, rows = tiling(image_size, image_processor)
    if cols * rows == 1:
        return [Grid(side, side)]
    tiles = [
        Grid(
            side,
            side,
            box=(r / rows, c / cols, (r + 1) / rows, (c + 1) / cols),
            name=f"tile {r},{c}",
        )
        for r in range(rows)
        for c in range(cols)
    ]
    return [*tiles, Grid(side, side, name="thumbnail")]


class InternVLAdapter(ViewPerGridPixels, ModelAdapter, family="internvl"):
    """InternVL*-HF: tiles row-major, then the thumbnail (module docstring)."""

    card = FamilyCard(
        visual_tokens="tiles row-major + a thumbnail when > 1 tile",
        tested="tiling recomputed from the config vs the processor's count",
        caveats=(
            "every region is seen twice (tile and thumbnail); checkpoints with attention sinks "
            "are refused"
        ),
    )

    @property
    def view_side(self) -> int:
        """Tokens per side of one view: ``image_size / patch_size * downsample_ratio``."""
        cfg = self.model.config
        image, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
        image = image[0] if isinstance(image, (list, tuple)) else image
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        return round(int(image) // int(patch) * float(cfg.downsample_ratio))

    def prepare_video(self, video: Video, question: str) -> PreparedInputs:
        """A video: each frame one untiled view (resized to the tile size, as InternVL's video
        processor resizes frames), tagged ``Frame{i}: <img>...</img>`` one line per frame as its
        processor writes them; one grid per frame."""
        frames = video.frames()
        ip = self.processor.image_processor
        pixel_values = torch.cat(
            [
                ip(images=[f], crop_to_patches=False, return_tensors="pt")["pixel_values"]
                for f in frames
            ]
        )  # [F, C, S, S]
        proc = self.processor
        tokens = proc.image_token * proc.image_seq_length
        expansion = "\n".join(
            f"Frame{i + 1}: {proc.start_image_token}{tokens}{proc.end_image_token}"
            for i in range(len(frames))
        )
        text = video_text(self, question, proc.video_token, expansion)
        inputs = {**tokenized(self, text), "pixel_values": pixel_values}
        side = self.view_side
        grids = frame_groups(side, side, len(frames), 1, len(frames))
        return video_prepared(self, inputs, self.image_token_id, grids, question, text, video)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The ``<IMG_CONTEXT>`` positions, view after view, and each view's grid: the tiles of
        the canvas recomputed from the processor config, then the thumbnail."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        starts = int((ids == self.processor.start_image_token_id).sum())
        if starts > 1:
            raise CaptureError(f"the prompt holds {starts} images; internvl takes one per prompt")
        return tiled_layout(
            positions, inputs, image_size, self.processor.image_processor, self.view_side
        )
