"""Gemma 4 (`Gemma4ForConditionalGeneration`): one variable-resolution grid per image, sliding
and full layers that differ in head size and key/value heads, image blocks seen both ways on
the sliding layers only.

Layout. The image processor resizes the image, keeping its aspect ratio, to the largest
``H x W`` whose sides are whole multiples of ``pooling_kernel_size * patch_size`` (48 px in
the checkpoints) and whose patches fit the budget ``max_soft_tokens * pooling_kernel_size^2``
(280 soft tokens by default; 70, 140, 560 or 1120 with ``load(..., max_soft_tokens=N)``). A side that would round to zero becomes one
cell, the other then ``floor(long / short)`` cells up to the budget (1 x 280 at the limit). The
vision tower pools the patches ``k x k`` into ``(H / 48) x (W / 48)`` soft tokens in raster
order, written as ``<|image|>`` between ``<|image>`` and ``<image|>`` (not visual tokens).
The grid covers the whole image: rounding a side down stretches the image slightly, nothing
is cropped or padded. The grid is read from ``image_position_ids`` (each patch's (x, y); -1
pads the patch list to the budget), the positions the vision tower itself pools by.

Attention. ``use_bidirectional_attention="vision"`` (set by the larger checkpoints) lets an
image's soft tokens attend to each other both ways on the sliding layers only: their mask is
``(causal OR same image block) AND j > i - W``; the full layers stay causal (unlike Gemma 3,
whose full layers see the block both ways too). The block comes from ``mm_token_type_ids``,
which the processor returns and appended answer tokens take as 0. Without the setting every
layer is causal, sliding layers windowed. The capture records each layer's real mask, and
every method sums and propagates over it. Full layers have wider heads (``global_head_dim``)
and, with ``attention_k_eq_v``, fewer key/value heads whose keys double as values; the last
``num_kv_shared_layers`` layers reuse an earlier layer's keys and values. All layers have the
same number of query heads, so a trace's ``layer_heads`` is uniform. Attention is unscaled
(``scaling = 1``, queries and keys are RMS-normed) and not softcapped; the logit head is
(``final_logit_softcapping``, 30 in the checkpoints), so the logit lens caps too.
``use_bidirectional_attention="all"`` (a non-causal encoder) is refused.

Audio and video inputs are out of scope: a question holding an audio or video token is
refused. E2B and E4B carry an audio tower that transformers runs eager only; asked for SDPA,
the adapter gives it to the text and vision models and keeps the audio tower eager. The pixel-mask path (iGOS, pixel-space faithfulness) maps the processed image to
the processor's patch list and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Gemma4Processor, ProcessorMixin
from transformers.models.gemma4.image_processing_pil_gemma4 import (
    _SUPPORTED_SOFT_TOKENS as SOFT_TOKEN_BUDGETS,
)

from ..images import FULL_IMAGE
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import CaptureError, PreparedInputs, image_list


@image_only_processor("gemma4")
class Gemma4ImageOnlyProcessor(ImageOnlyProcessorMixin, Gemma4Processor):
    """`Gemma4Processor` without its video processor (needs torchvision) and audio feature
    extractor; every image/text code path is the real class's."""

    real_name = "Gemma4Processor"

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        chat_template: str | None = None,
        image_seq_length: int = 280,
        audio_seq_length: int = 750,
        audio_ms_per_token: int = 40,
        **kwargs: Any,
    ) -> None:
        self.image_seq_length = image_seq_length
        self.image_token_id = tokenizer.image_token_id
        self.boi_token, self.eoi_token = tokenizer.boi_token, tokenizer.eoi_token
        self.image_token = tokenizer.image_token
        self.video_token = "<|video|>"
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.audio_seq_length, self.audio_ms_per_token = audio_seq_length, audio_ms_per_token
        self.audio_token_id = getattr(tokenizer, "audio_token_id", None)
        self.audio_token = getattr(tokenizer, "audio_token", None)
        self.boa_token = getattr(tokenizer, "boa_token", None)
        self.eoa_token = getattr(tokenizer, "eoa_token", None)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def has_audio_tower(path: str | Path) -> bool:
    """Whether a checkpoint's config (hub id or directory) declares an audio tower."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(str(path))
    return config.get("audio_config") is not None


class Gemma4Adapter(ModelAdapter, family="gemma4"):
    """gemma-4-*-it (module docstring)."""

    card = FamilyCard(
        visual_tokens=(
            "one grid over the aspect-kept resize: (H/48) × (W/48) soft tokens ≤ 280 "
            "(`max_soft_tokens` 70–1120)"
        ),
        tested=(
            "grid vs the processor at the real and tiny settings (up to 1:1000); per-layer masks: "
            "image block both ways on sliding layers only, full layers causal; per-layer head "
            "sizes, shared keys/values; softcapped logit lens"
        ),
        caveats=(
            "image blocks are bidirectional on sliding layers only; audio/video inputs refused; "
            "E2B/E4B audio tower stays eager under SDPA; real tokenizer untested (none published)"
        ),
    )

    max_soft_tokens: int | None = None  # None: the image processor's budget (280 in Google's)

    def __init__(self, model: nn.Module, processor: Any, **kwargs: Any) -> None:
        if getattr(model.config, "vision_config", None) is None:
            raise CaptureError("this Gemma 4 checkpoint has no vision tower: nothing to explain")
        text = model.config.get_text_config()
        if getattr(text, "use_bidirectional_attention", None) == "all":
            raise CaptureError(
                "use_bidirectional_attention='all' makes every token see the answer after it; "
                "xattr explains causal decoders only"
            )
        super().__init__(model, processor, **kwargs)

    @classmethod
    def load(cls, path: str | Path, *, max_soft_tokens: int | None = None, **kwargs: Any) -> Any:
        """`ModelAdapter.load`; ``max_soft_tokens`` sets the image token budget of every
        processor call (one of 70, 140, 280, 560, 1120; default: the image processor's).
        One attention implementation other than eager is given to the text and vision models
        only where the checkpoint has an audio tower (E2B, E4B), which transformers runs
        eager only (asking it for SDPA fails to load)."""
        if max_soft_tokens is not None and max_soft_tokens not in SOFT_TOKEN_BUDGETS:
            raise CaptureError(
                f"max_soft_tokens={max_soft_tokens}: Gemma 4's processor takes one of "
                f"{SOFT_TOKEN_BUDGETS}"
            )
        impl = kwargs.get("attn_implementation")
        if isinstance(impl, str) and impl != "eager" and has_audio_tower(path):
            kwargs["attn_implementation"] = {
                "text_config": impl,
                "vision_config": impl,
                "audio_config": "eager",
            }
        adapter = super().load(path, **kwargs)
        adapter.max_soft_tokens = max_soft_tokens
        return adapter

    # ------------------------------------------------------------ processing
    def process(self, image: Any, text: str) -> dict[str, Tensor]:
        """The processor call with the soft-token budget (`load`); the chat template already
        writes ``<bos>``."""
        budget = {} if self.max_soft_tokens is None else {"max_soft_tokens": self.max_soft_tokens}
        out = self.processor(
            images=image_list(image),
            text=[text],
            return_tensors="pt",
            add_special_tokens=False,
            **budget,
        )
        return dict(out)

    def _token_ids(self, *keys: str) -> set[int]:
        cfg = self.model.config
        return {int(v) for k in keys if isinstance(v := getattr(cfg, k, None), int)}

    def placeholder_ids(self) -> set[int]:
        """The image, video and audio tokens and their begin/end markers: never text."""
        return super().placeholder_ids() | self._token_ids(
            "boi_token_id", "eoi_token_id", "audio_token_id", "boa_token_id", "eoa_token_index"
        )

    def prepare(self, image: Any, question: str) -> PreparedInputs:
        """`PromptingMixin.prepare`, after refusing audio and video tokens in the question."""
        ids = sorted(
            self._token_ids("audio_token_id", "boa_token_id", "eoa_token_index", "video_token_id")
        )
        named = [t for t in self.tokenizer.convert_ids_to_tokens(ids) if t in str(question)]
        if named:
            raise CaptureError(
                f"the question contains {named}: Gemma 4's audio and video inputs are out of "
                "scope for xattr, which explains one image and a text question"
            )
        return super().prepare(image, question)

    # ---------------------------------------------------------------- layout
    @property
    def pooling(self) -> int:
        return int(self.model.config.vision_config.pooling_kernel_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    def patch_grid(self, inputs: dict[str, Tensor]) -> tuple[int, int]:
        """(rows, cols) of the first image's patches, from ``image_position_ids`` [1, P, 2]."""
        positions = inputs["image_position_ids"][0]  # [P, 2] (x, y); -1 pads
        real = positions[(positions >= 0).all(dim=-1)]
        if real.numel() == 0:
            raise LayoutError("image_position_ids holds no patch")
        return int(real[:, 1].max()) + 1, int(real[:, 0].max()) + 1

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The soft tokens, one raster grid of ``patches / k`` over the whole image."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        if int(inputs["image_position_ids"].shape[0]) != 1:
            raise LayoutError(f"{inputs['image_position_ids'].shape[0]} images, expected one")
        rows, cols = self.patch_grid(inputs)
        k = self.pooling
        if rows % k or cols % k:
            raise LayoutError(f"a {rows} x {cols} patch grid does not pool {k} x {k}")
        grid = Grid(rows // k, cols // k)
        boi = torch.nonzero(ids == int(self.model.config.boi_token_id)).flatten()
        eoi = torch.nonzero(ids == int(self.model.config.eoi_token_id)).flatten()
        block = torch.arange(int(boi[0]) + 1, int(eoi[0])) if len(boi) == len(eoi) == 1 else None
        if block is None or not torch.equal(block, positions) or positions.numel() != grid.cells:
            raise LayoutError(
                f"the prompt holds {positions.numel()} image tokens in {len(boi)} block(s), but "
                f"image_position_ids gives a {rows} x {cols} patch grid, {grid.rows} x "
                f"{grid.cols} soft tokens after {k} x {k} pooling, in one block"
            )
        return VisualLayout(positions, [grid])

    # ------------------------------------------------ pixel_values layout (mask path)
    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """One view: the whole image, resized to the patch grid times the patch size."""
        rows, cols = self.patch_grid(prepared.inputs)
        return [PixelView(FULL_IMAGE, (rows * self.patch_size, cols * self.patch_size))]

    def views_to_pixel_values(
        self, views: Sequence[Tensor], prepared: PreparedInputs, fill: float = 1.0
    ) -> Tensor:
        """The one view [B, C, H, W] -> [B, 1, P, p*p*C]: raster patches, each flattened (row,
        col, channel) as the processor writes them; the budget's padding patches take ``fill``."""
        (images,) = views
        b, c, h, w = images.shape
        p = self.patch_size
        budget = int(prepared.inputs["pixel_values"].shape[-2])
        x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)  # [B, n, p*p*C]
        pad = x.new_full((b, budget - x.shape[1], x.shape[2]), float(fill))
        return torch.cat([x, pad], dim=1)[:, None]

    def pixel_values_to_views(self, pixel_values: Tensor, prepared: PreparedInputs) -> list[Tensor]:
        """[1, P, p*p*C] -> the view [C, H, W] (the padding patches dropped)."""
        ((h, w),) = [v.size for v in self.pixel_views(prepared)]
        p = self.patch_size
        n = (h // p) * (w // p)
        x = pixel_values[0, :n].reshape(h // p, w // p, p, p, -1)  # [h/p, w/p, p, p, C]
        return [x.permute(4, 0, 2, 1, 3).reshape(-1, h, w)]
