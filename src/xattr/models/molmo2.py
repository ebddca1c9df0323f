"""Molmo2 (`Molmo2ForConditionalGeneration`, allenai/Molmo2-*): overlapping crops plus a
low-resolution global view, 2 x 2 windows of patches attention-pooled into one token each,
one bidirectional block over every image token.

Views. The image processor stretches the image (aspect not kept, bilinear without
antialias) to the ``crop`` px square (378 in the real checkpoints): the *low-res* view.
It also picks a tiling ``th x tw`` (1 to ``max_crops`` crops) and stretches the image to a
canvas of ``t * window + margins`` px per axis (the margins ``overlap_margins`` patches on
each side, [4, 4]; ``window = crop - margins``: 19 patches of 14 px), then cuts ``crop`` px squares every
``window`` px: neighbouring crops overlap by the two margins. ``pixel_values`` holds the
low-res view then the crops row-major, each as ``crop/patch`` squared patches of
``patch * patch * 3`` values ([views, P, p*p*3], a patch flattened (row, col, channel)).

Tokens. The ViT runs on each view alone; a patch's feature is its hidden states at the ViT
layers ``vision_feature_layer`` concatenated. Overlaps are resolved before pooling: of each
crop only its interior is kept (its inner margins dropped; an edge crop also keeps the
margin on the canvas border), so every canvas patch is read from exactly one crop and the
kept patches tile the canvas without gap or overlap (``image_token_pooling``). The canvas
patch grid (``t * window/patch + 2 * margin`` per axis) is padded to a multiple of the
pooling size (padding split ``pad // 2`` before, the rest after: with 2 x 2 pooling one
padding row/column at the bottom/right when the count is odd) and cut into 2 x 2 windows;
one token is the attention pooling (query = the mean of the window's real patches,
padding masked) of one window, projected by the MLP. So a high-res token covers its window
of canvas patches, i.e. that box of the image (the canvas is the image stretched); a window
may straddle two crops' kept parts. The low-res view's 27 x 27 patches are pooled the same
way (14 x 14 tokens, the last row/column one patch high/wide). A grid is therefore the
padded window grid over a box that reaches past the image by the padding, and each cell
clipped to the image is exactly its token's patches (of the stretched image: the bilinear
resize reads about one source pixel past a cell's edge).

Prompt. The processor expands ``<|image|>`` into ``<low_res_im_start>`` (low-res rows of
``<im_patch>`` each closed by ``<im_col>``) ``<im_end>`` ``<im_start>`` (high-res rows,
each closed by ``<im_col>``) ``<im_end>`` (the ``<im_col>`` tokens as the processor's
``image_use_col_tokens`` / ``use_single_crop_col_tokens`` say; the layout reads only the
``<im_patch>`` positions). Only ``<im_patch>`` tokens are visual tokens
(their embedding *plus* the pooled feature); the start/end/column tokens are separators.
Grids: ``low-res`` then ``high-res``.

Attention. The processor's ``mm_token_type_ids`` mark every image token (patches and the
start/end/column tokens) 1; the LM mask is causal OR "both tokens are image tokens", so the
whole image block attends both ways (answer tokens appended take 0: causal). The capture
records that mask. Videos (``<|video|>`` and the frame tokens) are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import Molmo2Processor, ProcessorMixin
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.models.molmo2.image_processing_molmo2 import (
    Molmo2ImageProcessor,
    compute_crop_geometry,
)

from ..images import FULL_IMAGE, Region
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import CaptureError, PreparedInputs

VIDEO_TOKENS = ("<|video|>", "<frame_start>", "<frame_end>")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class Molmo2TorchImageProcessor(Molmo2ImageProcessor):
    """`Molmo2ImageProcessor` with its three torchvision calls done in plain torch (the same
    operations: bilinear resize without antialias, per-channel normalisation, grey to RGB),
    so it runs where torchvision is missing; every tiling and pooling step is the real one."""

    def resize(
        self,
        image: Tensor,
        size: SizeDict,
        resample: Any = None,
        antialias: bool = True,
        **kwargs: Any,
    ) -> Tensor:
        """Bilinear (align_corners False) resize to ``size`` (height, width), as tvF.resize."""
        if resample not in (None, PILImageResampling.BILINEAR, int(PILImageResampling.BILINEAR)):
            raise ValueError(f"Molmo2TorchImageProcessor resizes bilinearly only, got {resample!r}")
        if antialias:
            raise ValueError("Molmo2TorchImageProcessor resizes without antialias only")
        if not (size.height and size.width):
            raise ValueError(f"Molmo2TorchImageProcessor needs a height and width, got {size}")
        if not image.is_floating_point():
            raise ValueError("Molmo2TorchImageProcessor resizes float images only")
        batched = image if image.dim() == 4 else image[None]
        out = F.interpolate(
            batched, size=(size.height, size.width), mode="bilinear", align_corners=False
        )
        return out if image.dim() == 4 else out[0]

    def normalize(self, image: Tensor, mean: Any, std: Any, inplace: bool = False, **kwargs: Any):
        """``(image - mean) / std`` per channel (channel axis -3), as tvF.normalize."""
        mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        return (image - mean) / std

    def convert_to_rgb(self, image: Tensor, input_data_format: Any = None) -> Tensor:
        """Grey (1 channel) to RGB by repetition; RGB unchanged; RGBA refused."""
        if image.ndim == 2:
            image = image[None]
        if input_data_format == ChannelDimension.LAST:
            raise ValueError("Molmo2TorchImageProcessor expects channel-first tensors here")
        if image.shape[-3] == 1:
            return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
        if image.shape[-3] != 3:
            raise ValueError(f"expected 1 or 3 channels, got {image.shape[-3]}")
        return image

    def to_dict(self) -> dict:
        """Saved as the real class."""
        out = super().to_dict()
        out["image_processor_type"] = "Molmo2ImageProcessor"
        return out


@image_only_processor("molmo2")
class Molmo2ImageOnlyProcessor(ImageOnlyProcessorMixin, Molmo2Processor):
    """`Molmo2Processor` for images only (its video processor and the real image processor
    need torchvision), with `Molmo2TorchImageProcessor`; saves as the real class."""

    real_name = "Molmo2Processor"

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs,
    ) -> None:
        if image_processor is not None and not isinstance(image_processor, Molmo2ImageProcessor):
            raise TypeError(f"expected a Molmo2ImageProcessor, got {type(image_processor)}")
        if image_processor is not None and type(image_processor) is not Molmo2TorchImageProcessor:
            image_processor = Molmo2TorchImageProcessor(**image_processor.to_dict())
        # what Molmo2Processor.__init__ sets, without the video processor
        self.image_use_col_tokens = kwargs.pop("image_use_col_tokens", True)
        self.use_single_crop_col_tokens = kwargs.pop("use_single_crop_col_tokens", None)
        self.use_single_crop_start_token = kwargs.pop("use_single_crop_start_token", True)
        self.video_use_col_tokens = kwargs.pop("video_use_col_tokens", False)
        self.use_frame_special_tokens = kwargs.pop("use_frame_special_tokens", True)
        self.image_token = getattr(tokenizer, "image_token", "<|image|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.image_token_ids = tokenizer.convert_tokens_to_ids(
            [
                "<im_patch>",
                "<im_col>",
                "<im_start>",
                "<low_res_im_start>",
                "<frame_start>",
                "<im_end>",
                "<frame_end>",
                "<im_low>",
            ]
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, path: Any, **kwargs: Any) -> Molmo2ImageOnlyProcessor:
        """The tokenizer, the image processor (as `Molmo2TorchImageProcessor`) and the
        processor options of a saved Molmo2 processor folder."""
        from transformers import AutoTokenizer

        options = {}
        config = Path(path) / "processor_config.json"
        if config.exists():
            saved = json.loads(config.read_text(encoding="utf-8"))
            options = {k: saved[k] for k in PROCESSOR_OPTIONS if k in saved}
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        image_processor = Molmo2TorchImageProcessor.from_pretrained(path, **kwargs)
        return cls(image_processor, tok, chat_template=tok.chat_template, **options)


PROCESSOR_OPTIONS = (
    "image_use_col_tokens",
    "use_single_crop_col_tokens",
    "use_single_crop_start_token",
    "video_use_col_tokens",
    "use_frame_special_tokens",
)


def pooled_grid(patches: tuple[int, int], pooling: tuple[int, int], name: str) -> Grid:
    """The token grid of a ``patches`` (rows, cols) patch grid over the whole image pooled in
    ``pooling`` windows: the padded window grid, its box reaching past the image by the
    padding (split ``pad // 2`` before, the rest after, as ``arange_for_pooling``)."""
    box, shape = [], []
    for n, k in zip(patches, pooling, strict=True):
        cells = math.ceil(n / k)
        before = (cells * k - n) // 2
        box.append((-before / n, (cells * k - before) / n))
        shape.append(cells)
    (top, bottom), (left, right) = box
    return Grid(shape[0], shape[1], box=(top, left, bottom, right), name=name)


def crop_boxes(image_size: tuple[int, int], ip: Any) -> list[Region]:
    """The boxes (fractions of the image) of the overlapping crops, row-major, for a (W, H)
    image: ``crop`` px squares every ``window`` px of the canvas the image is stretched to."""
    width, height = image_size
    crop, patch = int(ip.size["height"]), int(ip.patch_size)
    th, tw, canvas_h, canvas_w = compute_crop_geometry(
        height, width, int(ip.max_crops), list(ip.overlap_margins), crop, patch
    )
    window = (crop // patch - sum(ip.overlap_margins)) * patch
    return [
        (r * window / canvas_h, c * window / canvas_w,
         (r * window + crop) / canvas_h, (c * window + crop) / canvas_w)
        for r in range(th)
        for c in range(tw)
    ]  # fmt: skip


def view_grids(image_size: tuple[int, int], ip: Any) -> list[Grid]:
    """The low-res then the high-res token grid of a (W, H) image, from the processor config."""
    width, height = image_size
    crop, patch = int(ip.size["height"]), int(ip.patch_size)
    _, _, canvas_h, canvas_w = compute_crop_geometry(
        height, width, int(ip.max_crops), list(ip.overlap_margins), crop, patch
    )
    pooling = (int(ip.pooling_size[0]), int(ip.pooling_size[1]))
    return [
        pooled_grid((crop // patch, crop // patch), pooling, "low-res"),
        pooled_grid((canvas_h // patch, canvas_w // patch), pooling, "high-res"),
    ]


class Molmo2Adapter(ModelAdapter, family="molmo2"):
    """allenai/Molmo2-*: a low-res view and overlapping crops pooled 2 x 2 (module docstring)."""

    card = FamilyCard(
        visual_tokens=(
            "low-res view (14 × 14) + high-res canvas of overlapping crops (overlaps dropped), "
            "2 × 2 patches attention-pooled per token"
        ),
        tested=(
            "grids and pooling windows vs image_grids / image_token_pooling (real config); "
            "each token lights alone on its own window; recorded mask is causal ∪ image block"
        ),
        caveats=(
            "all image tokens (separators too) attend both ways; edge tokens cover one padded "
            "patch row/column; videos refused; without torchvision a torch stand-in resizes"
        ),
    )

    # ------------------------------------------------------------ processing
    def prepare(self, image: Any, question: str) -> PreparedInputs:
        """`PromptingMixin.prepare`, after refusing video inputs (frames or video tokens); a
        list is several images."""
        is_frames = (isinstance(image, (np.ndarray, Tensor)) and image.ndim == 4) or (
            isinstance(image, (str, Path)) and Path(image).suffix.lower() in VIDEO_SUFFIXES
        )
        named = [t for t in VIDEO_TOKENS if t in str(question)]
        if is_frames or named:
            what = f"the question contains {named}" if named else "a video (frames)"
            raise CaptureError(
                f"{what}: Molmo2's video input is out of scope for xattr, which explains one "
                "image and a text question"
            )
        return super().prepare(image, question)

    def placeholder_ids(self) -> set[int]:
        """``<|image|>``, ``<|video|>`` and every image/frame marker token: never text."""
        tok = self.tokenizer
        ids = set(super().placeholder_ids())
        ids.update(int(i) for i in self.processor.image_token_ids if i is not None)
        for token in (self.processor.image_token, self.processor.video_token):
            token_id = tok.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tok.unk_token_id:
                ids.add(int(token_id))
        return ids

    # ---------------------------------------------------------------- layout
    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The ``<im_patch>`` positions (low-res, then high-res, raster order) and the two
        grids recomputed from the processor config, checked against ``image_grids`` and the
        pooling windows of ``image_token_pooling``."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        image_grids = inputs["image_grids"]  # [images, 4]: low h, low w, high h, high w
        if image_grids.shape[0] != 1:
            raise CaptureError(f"the prompt holds {image_grids.shape[0]} images; molmo2 takes one")
        ip = self.processor.image_processor
        grids = view_grids(image_size, ip)
        emitted = [int(v) for v in image_grids[0]]
        expected = [g for grid in grids for g in grid.shape]
        if emitted != expected or positions.numel() != sum(g.cells for g in grids):
            raise LayoutError(
                f"the processor emitted image_grids {emitted} and {positions.numel()} patch "
                f"tokens, but its config gives grids {expected} for a "
                f"{image_size[0]}x{image_size[1]} image"
            )
        if inputs["image_token_pooling"].tolist() != expected_pooling(image_size, ip):
            raise LayoutError(
                "image_token_pooling does not pool each token's own window of canvas patches "
                "(overlaps resolved to the crop whose interior holds the patch)"
            )
        return VisualLayout(positions, grids)

    # ------------------------------------------------ pixel_values layout (mask path)
    @property
    def _patch(self) -> int:
        return int(self.processor.image_processor.patch_size)

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """The low-res view (the whole image), then the crops row-major, ``crop`` px squares."""
        ip = self.processor.image_processor
        crop = int(ip.size["height"])
        boxes = crop_boxes(prepared.image_size, ip)  # type: ignore[arg-type]
        names = [f"crop {i + 1}" for i in range(len(boxes))]
        return [
            PixelView(FULL_IMAGE, (crop, crop), "low-res"),
            *(PixelView(b, (crop, crop), n) for b, n in zip(boxes, names, strict=True)),
        ]

    def views_to_pixel_values(
        self, views: Sequence[Tensor], prepared: PreparedInputs, fill: float = 1.0
    ) -> Tensor:
        """Views [B, C, S, S] -> [B, views, P, p*p*C], each patch flattened (row, col, C)."""
        p = self._patch
        x = torch.stack(list(views), dim=1)  # [B, n, C, S, S]
        b, n, c, s, _ = x.shape
        x = x.reshape(b, n, c, s // p, p, s // p, p).permute(0, 1, 3, 5, 4, 6, 2)
        return x.reshape(b, n, (s // p) ** 2, p * p * c)

    def pixel_values_to_views(self, pixel_values: Tensor, prepared: PreparedInputs) -> list[Tensor]:
        """``pixel_values`` [views, P, p*p*C] -> each view [C, S, S]."""
        p = self._patch
        n, patches, dim = pixel_values.shape
        side, c = math.isqrt(patches), dim // (p * p)
        x = pixel_values.reshape(n, side, side, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return list(x.reshape(n, c, side * p, side * p))


def window_patches(grid: Grid, patches: tuple[int, int], pooling: tuple[int, int]) -> list[list]:
    """Each token's window of a ``patches`` (rows, cols) patch grid, raster order: the
    (row, col) of its patches, None for padding slots (`pooled_grid`'s padding)."""
    (n_rows, n_cols), (ph, pw) = patches, pooling
    pad_r, pad_c = (grid.rows * ph - n_rows) // 2, (grid.cols * pw - n_cols) // 2
    out = []
    for tr in range(grid.rows):
        for tc in range(grid.cols):
            cell = []
            for dr in range(ph):
                for dc in range(pw):
                    r, c = tr * ph + dr - pad_r, tc * pw + dc - pad_c
                    cell.append((r, c) if 0 <= r < n_rows and 0 <= c < n_cols else None)
            out.append(cell)
    return out


def expected_pooling(image_size: tuple[int, int], ip: Any) -> list[list[int]]:
    """``image_token_pooling`` recomputed independently: for each token (low-res, then
    high-res) the flat ``pixel_values`` patch index of each slot of its window (-1: padding).
    A canvas patch is read from the crop whose kept interior holds it: crop ``t`` keeps canvas
    rows from ``t * window + margin`` (0 for the first) to the next crop's start."""
    width, height = image_size
    crop, patch = int(ip.size["height"]), int(ip.patch_size)
    side = crop // patch  # patches per crop side
    margin = int(ip.overlap_margins[0])
    window = side - sum(int(m) for m in ip.overlap_margins)
    th, tw, canvas_h, canvas_w = compute_crop_geometry(
        height, width, int(ip.max_crops), list(ip.overlap_margins), crop, patch
    )
    pooling = (int(ip.pooling_size[0]), int(ip.pooling_size[1]))
    low, high = view_grids(image_size, ip)

    def canvas_index(r: int, c: int) -> int:
        tr = min(max(0, (r - margin) // window), th - 1)
        tc = min(max(0, (c - margin) // window), tw - 1)
        view = 1 + tr * tw + tc  # view 0 is the low-res image
        return (view * side + r - tr * window) * side + c - tc * window

    out = [
        [-1 if rc is None else rc[0] * side + rc[1] for rc in cell]
        for cell in window_patches(low, (side, side), pooling)
    ]
    out += [
        [-1 if rc is None else canvas_index(*rc) for rc in cell]
        for cell in window_patches(high, (canvas_h // patch, canvas_w // patch), pooling)
    ]
    return out
