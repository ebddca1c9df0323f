"""Llama 4 (`Llama4ForConditionalGeneration`: meta-llama/Llama-4-Scout-17B-16E-Instruct, Maverick).

Layout. The image processor (`llama4_images`: 336 px tiles, up to 16) picks a canvas of
``rows x cols`` tiles, resizes the image into it with its aspect kept (no upscaling beyond
one tile's size unless it is smaller), pads the canvas with black on the right and bottom,
and cuts it into tiles, row-major; when there is more than one tile it appends a global
view, the whole image stretched to one tile. Each view goes through the vision encoder
alone (24 x 24 patches of 14 px; its CLS feature is dropped) and the vision adapter's 2 x 2
pixel shuffle, which keeps raster order: 12 x 12 = 144 ``<|patch|>`` tokens per view. The
prompt holds ``<|image_start|>``, then per tile row its tiles' patch runs separated by
``<|tile_x_separator|>`` and closed by ``<|tile_y_separator|>``, then ``<|image|>`` and the
global view's run (untiled: ``<|image|>`` and the one view's run), then ``<|image_end|>``;
separators and markers are text tokens, not visual tokens. A tile's box is its square of the
canvas mapped back onto the original image, so the right and bottom tiles reach into the
padding (fractions above 1); the global view covers the whole image. The processor returns
neither the canvas (its ``aspect_ratios`` are dropped) nor the resized size, so the grids
are recomputed from its config (`llama4_images.tiling`) and checked against the views, the
tokens and the canvas its separators spell.

Attention. Three of every four language-model layers attend within fixed chunks of the
sequence (``attention_chunk_size``, 8192 in Scout): a token sees the earlier tokens of its own
chunk only, with RoPE and (where ``use_qk_norm``) a weightless RMS norm of queries and keys
after it. Every fourth layer is global and position-free (NoPE: causal, no RoPE, no QK norm)
and, with ``attn_temperature_tuning``, scales each query by
``1 + attn_scale * log(1 + floor((pos + 1) / floor_scale))``. The capture records each layer's
real mask (chunked or causal) and the queries as the layer passed them to attention (after
RoPE, norm and temperature), so every method sums and propagates over the support the model
used. At `Llama4TextConfig`'s defaults (chunk 8192, ``floor_scale`` 8192: Scout's, as far
as its config is known here; not checked against its files offline) a prompt of 16 tiles and the global view
(2,448 image tokens) lies in the first chunk and below the first temperature step, so both
quirks act only on longer sequences; the tiny test model shrinks both to exercise them.
Feed-forward blocks are dense or MoE (a top-1 sigmoid router plus a shared expert); the
capture does not touch them, and gradients flow through the router's chosen expert as in
autograd.

Prompting. The chat template writes ``<|begin_of_text|>``, so the prompt is tokenised without
adding it again. The language model is ``model.language_model`` (no ``model.model``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, Llama4Processor
from transformers.utils import cached_file

from ..images import FULL_IMAGE
from ..layout import Grid, LayoutError, VisualLayout
from .base import FamilyCard, ModelAdapter
from .llama4_images import Llama4ImagesWithoutTorchvision, Tiling, tiling
from .pixels import ViewPerGridPixels
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import CaptureError, image_list


@image_only_processor("llama4")
class Llama4ProcessorWithoutTorchvision(ImageOnlyProcessorMixin, Llama4Processor):
    """`Llama4Processor` around the torchvision-free image processor
    (`Llama4ImagesWithoutTorchvision`); saves as the real class."""

    real_name = "Llama4Processor"

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Llama4ProcessorWithoutTorchvision:
        """The processor of a checkpoint (folder or hub id), its image processor built from the
        saved config: nested in ``processor_config.json`` (as transformers 5 saves it) or in
        ``preprocessor_config.json`` (as the hub checkpoints ship it)."""
        config = _read_json(path, "processor_config.json") or {}
        images = config.pop("image_processor", None) or _read_json(path, "preprocessor_config.json")
        if images is None:
            raise CaptureError(f"{path} holds no Llama 4 image processor config")
        known = set(Llama4ImagesWithoutTorchvision.valid_kwargs.__annotations__)
        images = {k: v for k, v in images.items() if k in known}
        return cls(
            image_processor=Llama4ImagesWithoutTorchvision(**images),
            tokenizer=AutoTokenizer.from_pretrained(str(path)),
            chat_template=_chat_template(path),
            **{k: v for k, v in config.items() if k in PROCESSOR_OPTIONS},
        )


PROCESSOR_OPTIONS = (  # `Llama4Processor.__init__`'s own options
    "patch_size",
    "pixel_shuffle_ratio",
    "fake_image_token",
    "image_token",
    "start_of_image_token",
    "end_of_image_token",
    "patch_token",
    "tile_x_separator_token",
    "tile_y_separator_token",
)


def _read_json(path: str | Path, name: str) -> dict[str, Any] | None:
    """A JSON file of a checkpoint (folder or hub id), or None where it has none."""
    found = cached_file(str(path), name, _raise_exceptions_for_missing_entries=False)
    return None if found is None else json.loads(Path(found).read_text(encoding="utf-8"))


def _chat_template(path: str | Path) -> str | None:
    """The checkpoint's chat template: ``chat_template.jinja`` or ``chat_template.json``."""
    found = cached_file(
        str(path), "chat_template.jinja", _raise_exceptions_for_missing_entries=False
    )
    if found is not None:
        return Path(found).read_text(encoding="utf-8")
    data = _read_json(path, "chat_template.json")
    return None if data is None else data.get("chat_template")


class Llama4Adapter(ViewPerGridPixels, ModelAdapter, family="llama4"):
    """Llama 4: tiles row-major on a padded canvas, then the global view (module docstring)."""

    card = FamilyCard(
        visual_tokens=(
            "336 px tiles row-major on an aspect-kept, padded canvas (1–16) + a global view when "
            "> 1 tile; 12 × 12 pixel-shuffled tokens per view"
        ),
        tested=(
            "canvas recomputed from the config vs the processor (aspects up to 50:1); its "
            "torchvision-free image processor bit-exact against the real one (live where "
            "torchvision loads, recorded digests elsewhere); separators kept "
            "out of V; each layer's real mask (chunked or causal) recorded; NoPE layers' "
            "temperature-tuned and RoPE layers' QK-normed queries recorded as used; MoE routing "
            "unchanged by the capture, gradients equal autograd"
        ),
        caveats=(
            "every region is seen twice when tiled; chunked layers hide earlier chunks (the "
            "answer sees the image only through the global layers once it is a chunk away); "
            "the real image processor needs torchvision; without it the stand-in runs (exact on "
            "the images compared, not proven for all); real tokenizer untested (none published)"
        ),
    )

    # ------------------------------------------------------------ processing
    def process(self, image: Any, text: str) -> dict[str, Tensor]:
        """The processor call; the chat template already writes ``<|begin_of_text|>``. The
        processor normalises in bfloat16 and the vision tower does not cast its input, so
        ``pixel_values`` take the tower's dtype (exact: every bfloat16 value in [-1, 1] is a
        float16 and a float32 value)."""
        out = dict(
            self.processor(
                images=image_list(image), text=[text], return_tensors="pt", add_special_tokens=False
            )
        )
        weight = self.model.vision_model.patch_embedding.linear.weight
        out["pixel_values"] = out["pixel_values"].to(weight.dtype)
        return out

    def placeholder_ids(self) -> set[int]:
        """The patch token and ``<|image|>``, the placeholder the processor expands."""
        ids = super().placeholder_ids()
        placeholder = self.tokenizer.convert_tokens_to_ids(self.processor.fake_image_token)
        if placeholder is not None and placeholder != self.tokenizer.unk_token_id:
            ids.add(int(placeholder))
        return ids

    # ------------------------------------------------------------ the model's parts
    def language_model(self) -> nn.Module:
        """`Llama4TextModel` (``model.language_model.model``)."""
        return self.model.language_model.model

    def unembed(self, hidden: Tensor) -> Tensor:
        """The language model's head (``model.language_model.lm_head``)."""
        head = self.model.language_model.lm_head
        return head(hidden.to(head.weight.device))

    # ---------------------------------------------------------------- layout
    @property
    def view_side(self) -> int:
        """Tokens per side of one view: ``image_size / patch_size * pixel_shuffle_ratio``."""
        vision = self.model.config.vision_config
        patches = int(vision.image_size) // int(vision.patch_size)
        ratio = float(vision.pixel_shuffle_ratio)
        side = patches * ratio
        if side != int(side):
            raise CaptureError(f"{patches} x {patches} patches per view do not shuffle by {ratio}")
        return int(side)

    def tiling(self, image_size: tuple[int, int]) -> Tiling:
        """The canvas the image processor picks for a (W, H) image (from its config)."""
        images = self.processor.image_processor
        size = images.size
        tile = int(size["height"] if isinstance(size, dict) else size.height)
        width, height = image_size
        return tiling(
            height, width, tile, int(images.max_patches), bool(images.resize_to_max_canvas)
        )

    def emitted_canvas(self, ids: Tensor) -> tuple[int, int]:
        """(rows, cols) of the canvas the prompt's separators spell: a y separator closes
        each tile row, x separators sit between a row's tiles; none: one tile."""
        tok = self.tokenizer
        rows = int((ids == tok.convert_tokens_to_ids(self.processor.tile_global_token)).sum())
        between = int((ids == tok.convert_tokens_to_ids(self.processor.tile_token)).sum())
        if rows == 0:
            return (1, 1) if between == 0 else (0, between + 1)
        return (rows, between // rows + 1)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The ``<|patch|>`` positions, view after view, and each view's grid: the canvas
        tiles recomputed from the processor config, then the global view."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        blocks = int((ids == int(self.model.config.boi_token_id)).sum())
        if blocks > 1:
            raise CaptureError(f"the prompt holds {blocks} images; llama4 takes one per prompt")
        plan, side = self.tiling(image_size), self.view_side
        if plan.tiles > 1:
            grids = [
                Grid(side, side, box=plan.tile_box(r, c), name=f"tile {r},{c}")
                for r in range(plan.rows)
                for c in range(plan.cols)
            ] + [Grid(side, side, box=FULL_IMAGE, name="global")]
        else:
            grids = [Grid(side, side, box=plan.tile_box(0, 0))]
        views = int(inputs["pixel_values"].shape[0])  # [views, C, S, S]
        canvas = self.emitted_canvas(ids)
        expected = len(grids) * side * side
        if positions.numel() != expected or views != len(grids) or canvas != (plan.rows, plan.cols):
            raise LayoutError(
                f"the processor emitted {views} view(s), a {canvas[0]} x {canvas[1]} canvas "
                f"(by its separators) and {positions.numel()} image tokens, but its config "
                f"tiles a {image_size[0]}x{image_size[1]} image onto {plan.rows} x {plan.cols} "
                f"tiles: {len(grids)} view(s) of {side} x {side} tokens ({expected})"
            )
        return VisualLayout(positions, grids)
