"""GLM-4.1V (and the GLM-4.5V / GLM-4.6V adapters built on it): dynamic resolution, 14 px
patches merged 2 x 2, 3-D rotary positions.

Layout. The image processor stretches the whole image to sides that are multiples of
``patch_size * merge_size`` (28 px) within a pixel budget (no crop, no pad). Unlike
Qwen2-VL's, GLM's budget counts ``temporal_patch_size * H * W`` (a still image is two
frames), and a side shorter than 28 px is first scaled up to 28 px. One image gives
``<|begin_of_image|>``, then ``(h / m) * (w / m)`` ``<|image|>`` tokens in raster order over
the merged grid, then ``<|end_of_image|>`` (``(t, h, w) = image_grid_thw``,
``m = spatial_merge_size``); the patches come grouped by merge block, as Qwen2-VL's, so
the token layout and the pixel-mask path are Qwen2-VL's. Video frames use the same
``<|image|>`` token, told apart only by ``<|begin_of_video|>`` around them; a prompt here
holds one image and no video, and `visual_layout` checks the one bracketed run.

Positions. Image tokens get 3-D rotary positions (t, row, col) offset by the position of
the first image token, and the text after the image resumes at that offset plus
``max(rows, cols)``, not at the next index. The model recomputes them from
``mm_token_type_ids`` (which the processor returns; appended answer tokens take 0, text) on
every forward from ``input_ids`` without a cache. The ``rope_deltas`` it keeps from the last
generation serve only cached decoding and forwards from ``inputs_embeds``, neither of which a
capture makes, so a capture after a generation (of another image) sees its own positions.
Only half of each head's dimensions rotate (``partial_rotary_factor`` 0.5); the capture
records the attention the model computes, so that is transparent to every method.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import Glm4vProcessor, ProcessorMixin

from ..layout import LayoutError, VisualLayout
from .base import FamilyCard
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import PromptingMixin
from .qwen2_vl import Qwen2VLAdapter


class ImageOnlyGlmMixin(ImageOnlyProcessorMixin):
    """A GLM-V processor without its video sub-processor (which needs torchvision): the
    token attributes the real ``__init__`` sets, then the image processor and tokenizer."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        # the video markers create_mm_token_type_ids reads (tokens inside them are video)
        self.video_start_id = tokenizer.convert_tokens_to_ids("<|begin_of_video|>")
        self.video_end_id = tokenizer.convert_tokens_to_ids("<|end_of_video|>")


@image_only_processor("glm4v", "glm4v_moe")
class Glm4vImageOnlyProcessor(ImageOnlyGlmMixin, Glm4vProcessor):
    """`Glm4vProcessor` for images only (GLM-4.1V and GLM-4.5V)."""

    real_name = "Glm4vProcessor"


class Glm4vAdapter(Qwen2VLAdapter, family="glm4v"):
    """GLM-4.1V-9B-Thinking / -Base: Qwen2-VL's grid and pixel path inside GLM's image
    markers, with GLM's 3-D positions (module docstring)."""

    prepare_video = PromptingMixin.prepare_video  # GLM's video prompts: not built yet

    card = FamilyCard(
        visual_tokens=(
            "one grid (`image_grid_thw / merge`, 14 px patches) over the resized image, between "
            "`<|begin_of_image|>` and `<|end_of_image|>`"
        ),
        tested=(
            "token counts under the real pixel budget incl. extreme aspect ratios; the model's "
            "3-D positions over the grid; stale `rope_deltas` after generation"
        ),
        caveats=(
            "`mm_token_type_ids` required; the budget counts 2·H·W and a side under 28 px is "
            "scaled up first; aspect ratios of 200 and more refused; thinking answers: `final` "
            "is the text inside `<answer>…</answer>`"
        ),
    )

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """Qwen2-VL's grid, checked to be one run of image tokens between GLM's
        ``<|begin_of_image|>`` and ``<|end_of_image|>``."""
        layout = super().visual_layout(inputs, image_size)
        ids, positions = inputs["input_ids"][0], layout.positions
        config = self.model.config
        first, last = int(positions[0]), int(positions[-1])
        if not torch.equal(positions, torch.arange(first, last + 1)):
            raise LayoutError("the image tokens are not one contiguous run")
        if first == 0 or last + 1 >= ids.numel():
            raise LayoutError("the image tokens are not enclosed by image markers")
        before, after = int(ids[first - 1]), int(ids[last + 1])
        if (before, after) != (config.image_start_token_id, config.image_end_token_id):
            raise LayoutError(
                f"the image tokens are enclosed by ids ({before}, {after}), not by "
                f"<|begin_of_image|> and <|end_of_image|> ({config.image_start_token_id}, "
                f"{config.image_end_token_id})"
            )
        return layout
