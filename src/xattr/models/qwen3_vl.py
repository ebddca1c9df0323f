"""Qwen3-VL and Qwen3-VL-MoE: dynamic resolution, 16 px patches merged 2 x 2, deepstack features.

Layout. The processor (the Qwen2-VL image processor) stretches the whole image to a size in
its pixel budget whose sides are multiples of ``patch_size * spatial_merge_size`` (32 px):
no crop, no pad. One image gives ``<|vision_start|>``, then ``(h / m) * (w / m)``
``<|image_pad|>`` tokens in raster order over the merged grid, then ``<|vision_end|>``
(``(t, h, w) = image_grid_thw``, ``m = spatial_merge_size``); there are no row separators,
and the one grid covers the whole original image. The LM attention is plain causal (no
sliding window, no bidirectional image block); image tokens get 3-D (interleaved) M-RoPE
positions, recomputed from ``mm_token_type_ids`` on every forward, which the processor
returns and the model requires (appended answer tokens take 0: text).

DeepStack. The vision tower also emits the features after some of its intermediate blocks
(``deepstack_visual_indexes``, 3 levels in the real checkpoints), each through its own
merger; the language model adds level k to the hidden states at the image positions
*after* decoder layer k (k = 0, 1, 2). So from layer 1 on, the keys and values at an image
position carry several vision depths of the same merged patch; the position still stands
for the same cell of the image. What that means for each method:

- attention maps (raw attention, rollout, TMME, GLIMPSE, Grad-CAM's attention variant): the
  recorded attention is the model's own, so attention to an image position includes what
  deepstack added there; rollout's identity (residual) term keeps the injected features on
  the position they were injected at, i.e. the same image cell, so no image mass is lost
  or moved. Nothing models the injection as a separate path: it is part of the token.
- gradients (GLIMPSE, Grad-CAM, DEX-AR, iGOS): exact, through the deepstack additions.
- DEX-AR's logit lens reads hidden states at text positions, which deepstack never touches.
- Grad-CAM's hidden variant takes the hidden state entering the last layer from
  ``output_hidden_states``, which transformers records *before* the deepstack addition; its
  gradient is the gradient of the real input, but its activation misses the added features
  whenever the last layer is one of the first ``levels + 1`` layers (tiny models only; the
  real checkpoints have 36 or more layers and 3 levels).

The pixel-mask path (iGOS, pixel-space faithfulness) is Qwen2-VL's: ``pixel_values`` are the
processed image cut into patches grouped by merge block (each ``(C, T, p, p)``).
"""

from __future__ import annotations

from transformers import Qwen3VLProcessor

from .base import FamilyCard
from .processors import _ImageOnlyQwenMixin, image_only_processor
from .qwen2_vl import Qwen2VLAdapter


@image_only_processor("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
class Qwen3VLImageOnlyProcessor(_ImageOnlyQwenMixin, Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images only (its video processor needs torchvision)."""

    real_name = "Qwen3VLProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        # the vision markers Qwen3VLProcessor.__init__ would set (used around video frames)
        for name, default in (
            ("vision_start", "<|vision_start|>"),
            ("vision_end", "<|vision_end|>"),
        ):
            token = getattr(tokenizer, f"{name}_token", None) or default
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", tokenizer.convert_tokens_to_ids(token))


class Qwen3VLAdapter(Qwen2VLAdapter, family="qwen3_vl"):
    """Qwen3-VL-*-Instruct and Qwen3-VL-*-A*B (MoE): Qwen2-VL's grid and pixel path, with
    16 px patches and deepstack (module docstring)."""

    def video_expansion(self, token: str, per_group: int, times: list[float]) -> str:
        """Each frame pair as Qwen3-VL's processor writes it: ``<t seconds>`` (the mean time of
        the pair's frames, one decimal), then ``<|vision_start|>``, its tokens, ``<|vision_end|>``."""
        start, end = self.processor.vision_start_token, self.processor.vision_end_token
        return "".join(f"<{t:.1f} seconds>{start}{token * per_group}{end}" for t in times)

    card = FamilyCard(
        visual_tokens="one grid over the resized image (16 px patches)",
        tested="token counts under the real pixel budget; deepstack",
        caveats=(
            "`mm_token_type_ids` required; deepstack features are added at the image positions "
            "after the first LM layers and are attributed to the same cells"
        ),
    )

    model_types = ("qwen3_vl", "qwen3_vl_moe")
