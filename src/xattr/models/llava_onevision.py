"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): LLaVA-NeXT's layout, downsampled above anyres_max_N.

Layout of one image (llava-onevision-qwen2-*-ov-hf): as LLaVA-NeXT (`llava_next`), a ``g x g``
base grid of the whole image squashed to one tile, then the stitched tile grid unpadded to the
image's aspect, each row followed by the ``image_newline`` feature (an ``<image>`` id that is no
visual token). SigLIP has no CLS ("full" strategy), and 384 / 14 leaves the last 6 px of every
tile unseen (``g = 27``), so the base grid covers 378 / 384 of the image and the stitched grid
has a 6 px gap at each tile seam. Above ``anyres_max_9`` (``h w > 9 g^2`` cells by more than
1.1^2) the model resizes the unpadded grid bilinearly (no antialias) to
``(int(h // r), int(w // r))`` with ``r = sqrt(h w / (9 g^2))`` before adding the newlines.

Grids: ``base`` and ``tiles`` (the unpadded, possibly downsampled grid; its cells are uniform
over the box from its first to its last stitched cell, which is exact up to the tile seams'
gaps, at most half a gap per tile). Caveats, besides LLaVA-NeXT's (two overlapping views,
newline features outside V): a downsampled cell is a bilinear mix of the ~2 x 2 stitched
features nearest its centre, not an average over its box, so relevance near sharp edges can
sit half a cell off; prompts with several images (``batch_num_images > 1``) use another
layout (one padded-square view per image) and are refused. The LM (Qwen2) is full causal
(``use_sliding_window`` is off in the released checkpoints; the recorded mask is used either way).
The pixel-mask path's views are LLaVA-NeXT's (the base, then the canvas tiles).
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torch import Tensor
from transformers import LlavaOnevisionProcessor, ProcessorMixin

from ..layout import Grid, LayoutError
from ..video import Video
from .base import FamilyCard
from .llava_next import LlavaNextAdapter
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import PreparedInputs
from .video_prompt import frame_groups, tokenized, video_prepared, video_text


@image_only_processor("llava_onevision")
class LlavaOnevisionImageOnlyProcessor(ImageOnlyProcessorMixin, LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` for images only; loadable without torchvision (which its
    video processor needs). Every image/text code path is the real class's."""

    real_name = "LlavaOnevisionProcessor"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.video_token = getattr(tokenizer, "video_token", None) or video_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.vision_aspect_ratio = vision_aspect_ratio
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class LlavaOnevisionAdapter(LlavaNextAdapter, family="llava_onevision"):
    """llava-onevision-*-hf: LLaVA-NeXT's base + tiles layout with anyres_max_N downsampling."""

    card = FamilyCard(
        visual_tokens="as LLaVA-NeXT, downsampled above `anyres_max_9`",
        tested="as LLaVA-NeXT, downsampling",
        caveats="a downsampled cell mixes ~2×2 neighbours; a few pixels per tile are unseen",
    )

    def block_in_several(
        self, part: PreparedInputs, visual_ids: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Grid, ...]]:
        """With several images in a prompt the processor pads each image to a square (centred,
        its mean colour) and the model reads that one view, no tiles: one grid of the base
        view's shape over the padded square, its tokens then one newline feature."""
        base = part.layout.grids[0]
        width, height = part.image_size  # type: ignore[misc]
        side = max(width, height)
        if width > height:  # rows [-start, side - start) of the image
            start = (side - height) // 2
            box = (-start / height, 0.0, (side - start) / height, 1.0)
        else:
            start = (side - width) // 2
            box = (0.0, -start / width, 1.0, (side - start) / width)
        grid = Grid(base.rows, base.cols, box=box, name="padded view")
        return torch.arange(base.cells + 1), torch.arange(base.cells), (grid,)

    def prepare_video(self, video: Video, question: str) -> PreparedInputs:
        """A video: each frame resized to the tower's square (as the video processor resizes,
        bicubic) and normalised by the image processor; the model pools each frame's token
        grid 2 x 2 (bilinear) to ``ceil(side / 2)`` per side and ends the video with one
        newline feature. One grid per frame over the whole frame."""
        frames = video.frames()
        vision = self.model.config.vision_config
        size = int(vision.image_size)
        pooled = math.ceil(size // int(vision.patch_size) / 2)
        ip = self.processor.image_processor
        views = [
            ip(images=[f.resize((size, size), Image.Resampling.BICUBIC)], return_tensors="pt")
            for f in frames
        ]
        pixel_values = torch.stack([v["pixel_values"][0, 0] for v in views])[
            None
        ]  # [1, F, C, S, S]
        token = self.processor.video_token
        text = video_text(self, question, token, token * (len(frames) * pooled * pooled + 1))
        inputs = {**tokenized(self, text), "pixel_values_videos": pixel_values}
        grids = frame_groups(pooled, pooled, len(frames), 1, len(frames))
        video_id = int(self.model.config.video_token_index)
        prepared = video_prepared(self, inputs, video_id, grids, question, text, video, skip_last=1)
        return prepared

    def max_num_patches(self) -> int | None:
        """N of the config's ``vision_aspect_ratio`` = "anyres_max_N"."""
        ratio = str(self.model.config.vision_aspect_ratio)
        if not ratio.startswith("anyres_max_"):
            raise LayoutError(f"{self.family}: unknown vision_aspect_ratio {ratio!r}")
        return int(ratio.removeprefix("anyres_max_"))

    def _check_single_views(self, inputs: dict[str, Tensor]) -> None:
        counts = inputs.get("batch_num_images")
        if counts is not None and int(counts.max()) > 1:
            raise LayoutError(
                f"{self.family}: a prompt with {int(counts.max())} images gets one padded square "
                "view per image instead of base + tiles; explain one image per prompt"
            )
