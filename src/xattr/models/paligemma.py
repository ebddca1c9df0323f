"""PaliGemma 2 (`PaliGemmaForConditionalGeneration`): one SigLIP grid, a prefix-LM Gemma 2.

Layout. The SigLIP processor stretches the whole image to ``S x S`` (aspect ratio not
kept, no pad, no crop), and the prompt starts with ``(S / patch)^2`` ``<image>`` tokens,
one per patch in raster order (448 px / 14 -> 32 x 32 = 1024 for paligemma2-*-448, 256
at 224), then ``<bos>``, the text prefix and ``"\\n"``. One grid per image, covering all of
it. There is no chat template: mix checkpoints take task prefixes, here ``"answer en "``
in front of the question.

Attention. A prefix-LM: the processor marks the prompt ``token_type_ids = 0`` and the
model lets all of it (image, ``<bos>``, question, ``"\\n"``) attend bidirectionally; answer
tokens get ``token_type_ids = 1`` (`per_token_fill`) and are causal. So image tokens see
the question and each other in both directions: methods read this from the support the
capture records for every layer (the real mask), never from ``tril``. Gemma 2 alternates
sliding-window (4096) and full layers; the prefix block stays whole in both.

Caveats. Gemma 2 caps attention logits (``50 tanh(s / 50)`` before the mask) and final
logits (``30 tanh(l / 30)``): the captured weights are the capped ones, ``z_t`` is the
capped logit (its gradient shrinks as it nears the cap), and the logit lens
(`readout` / `unembed`) applies the final cap too. transformers runs Gemma 2 with eager
attention only (no SDPA), so every layer's weights are materialised. The processor's
``labels`` are dropped (their length would not match an appended answer).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..layout import Grid, LayoutError, VisualLayout
from .base import FamilyCard, ModelAdapter
from .geometry import processor_region
from .pixels import OneImagePixels
from .prompting import PER_TOKEN_FILL


class PaliGemmaAdapter(OneImagePixels, ModelAdapter, family="paligemma"):
    """PaliGemma / PaliGemma 2 (``google/paligemma2-*``)."""

    card = FamilyCard(
        visual_tokens="one grid over the stretched image",
        tested="prefix-LM support recorded; softcaps in the capture and the logit lens",
        caveats="eager only (Gemma 2's softcapping); answers take `token_type_ids = 1`",
    )

    # answer tokens belong to the causal suffix (0 would put them in the bidirectional prefix)
    per_token_fill: ClassVar[dict[str, int]] = {**PER_TOKEN_FILL, "token_type_ids": 1}
    task_prefix: ClassVar[str] = "answer en "
    max_images: ClassVar[int | None] = 1  # one `<image>` prefix per prompt

    def prompt_text(self, question: str, images: int = 1, videos: int = 0) -> str:
        """``<image>`` and the task prefix; the processor adds ``<bos>`` and the final ``"\\n"``."""
        return self.processor.image_token + self.task_prefix + question

    def process(self, image: Any, text: str) -> dict[str, Tensor]:
        """The processor's tensors without ``labels`` (built for the prompt's length only)."""
        inputs = dict(self.processor(images=[image], text=[text], return_tensors="pt"))
        inputs.pop("labels", None)
        return inputs

    @property
    def grid_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """``<image>`` positions, ``side^2`` per image in raster order; each grid covers the
        box the processor keeps (the whole image: SigLIP resizes without cropping)."""
        positions = torch.nonzero(inputs["input_ids"][0] == self.image_token_id).flatten()
        side = self.grid_side
        if positions.numel() == 0 or positions.numel() % (side * side):
            raise LayoutError(
                f"{positions.numel()} <image> tokens is not a multiple of the {side * side} "
                f"per image of a {side}x{side} SigLIP grid"
            )
        box = processor_region(image_size, self.processor.image_processor)
        n_images = positions.numel() // (side * side)
        return VisualLayout(
            positions, [Grid(side, side, image=i, box=box) for i in range(n_images)]
        )
