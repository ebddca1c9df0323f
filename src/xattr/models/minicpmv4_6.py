"""MiniCPM-V 4.6 (`MiniCPMV4_6ForConditionalGeneration`): an overview plus slices, each a
spatially merged grid, before Qwen3.5's hybrid language model.

Slicing (the image processor, openbmb/MiniCPM-V-4.6: ``scale_resolution`` S = 448, at most
``max_slice_nums`` = 9 slices, 14 px patches). The *overview* is the whole image resized
(aspect nearly kept, to about S^2 px, upscaled only when the image is not sliced) to multiples
of ``m = 56`` px (``m = patch * 4`` in the default "16x" mode, ``patch * 2`` in "4x"). An
image larger than S^2 is also cut into a ``rows x cols`` grid of *slices* (the grid whose
aspect is nearest the image's, for about ``H W / S^2`` slices): the whole image is resized
to ``rows x cols`` equal slices of about S^2 px each, again multiples of m, and cut.

Tokens. There is no cross-attention resampler: each frame (overview, slice) is a NaViT grid
of patches; after vision layer ``insert_layer_id`` a window-attention merger turns every
2 x 2 patch window into one vector (window order = raster order of the windows), and the
final merger concatenates 2 x 2 of those into one LLM token (16x; in "4x" the window merger
is skipped and a token is 2 x 2 patches). So token (i, j) of a frame is exactly the
``m x m`` px block (4 x 4 patches) at (i m, j m) of that frame, in raster order,
and its box on the original image is exact: the overview's ``r x c`` tokens tile the whole
image, and since the slices are equal parts of one uniformly resized image, their tokens
stitched together (slice row by slice row) form one ``rows*t_h x cols*t_w`` grid over the
whole image. (The tower's other layers attend over the whole frame, as every ViT does; a
token's box is where its patches are, not all it has seen.) Grids: ``overview`` and, for a
sliced image, ``slices``; an unsliced image is one grid (``image``).

Prompt. The processor replaces the image token by
``<image_id>0</image_id><image>`` + overview tokens + ``</image>``, then for each slice row
``<slice>`` + tokens + ``</slice>`` per slice, rows joined by "\\n". None of these markers,
the id digits or the row breaks is a visual token; the layout checks every run's count and
its markers against what the image processor's own sizing implies, and the frame sizes against
the ``target_sizes`` it emitted.

Layers: as `qwen3_5` (three of four layers Gated DeltaNet, recorded at their delta-rule kernel;
``trace.attentions[l]`` there is the exact implicit attention). Caveats: every region is seen
twice (overview and slice). The pixel-mask path (iGOS, processed-space deletion/insertion) cuts
an image-space mask to the overview and to each slice's box (`pixel_views`) and packs the frames
as the processor does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import MiniCPMV4_6Processor, ProcessorMixin

from ..images import FULL_IMAGE
from ..layout import Grid, LayoutError, VisualLayout
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import PreparedInputs
from .qwen3_5 import token_mixers


@image_only_processor("minicpmv4_6")
class MiniCPMV4_6ImageOnlyProcessor(ImageOnlyProcessorMixin, MiniCPMV4_6Processor):
    """`MiniCPMV4_6Processor` for images only (its video processor needs torchvision); saves
    as the real class, so the folder is an ordinary MiniCPM-V 4.6 processor folder."""

    real_name = "MiniCPMV4_6Processor"

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        # what MiniCPMV4_6Processor.__init__ sets for images, without the video processor
        self.slice_mode = image_processor.slice_mode
        self.default_use_image_id = image_processor.use_image_id
        self.image_token_divisor = 4 if image_processor.downsample_mode == "4x" else 16
        for name in (
            "image_token",
            "video_token",
            "image_token_id",
            "video_token_id",
            "image_start_token",
            "image_end_token",
            "slice_start_token",
            "slice_end_token",
            "image_id_start_token",
            "image_id_end_token",
        ):
            setattr(self, name, getattr(tokenizer, name))


@dataclass(frozen=True)
class SlicedLayout:
    """One image's frames: the overview's token grid, then ``rows x cols`` slices of
    ``slice_shape`` tokens each (rows = cols = 0: not sliced)."""

    overview: tuple[int, int]  # token rows, cols of the overview
    rows: int
    cols: int
    slice_shape: tuple[int, int]  # token rows, cols of one slice
    merge: int  # patches per token side (4 in "16x", 2 in "4x")

    @property
    def frames(self) -> int:
        return 1 + self.rows * self.cols

    def run_lengths(self) -> list[int]:
        """Image tokens per frame, in prompt order."""
        th, tw = self.slice_shape
        return [self.overview[0] * self.overview[1]] + [th * tw] * (self.rows * self.cols)

    def target_sizes(self) -> list[list[int]]:
        """Each frame's patch grid (h, w), as the image processor's ``target_sizes``."""
        m = self.merge
        th, tw = self.slice_shape
        oh, ow = self.overview
        return [[oh * m, ow * m]] + [[th * m, tw * m]] * (self.rows * self.cols)

    def stitched_order(self) -> Tensor:
        """For each cell of the stitched slice grid in raster order, its index among the
        slices' tokens in prompt order (slice by slice, raster in each): [rows t_h * cols t_w]."""
        th, tw = self.slice_shape
        rr, cc = torch.meshgrid(
            torch.arange(self.rows * th), torch.arange(self.cols * tw), indexing="ij"
        )
        frame = (rr // th) * self.cols + cc // tw
        return (frame * th * tw + (rr % th) * tw + cc % tw).reshape(-1)

    def grids(self, image: int = 0) -> list[Grid]:
        """The overview over the whole image, then the stitched slices over the whole image."""
        if self.rows == 0:
            return [Grid(*self.overview, image=image, name="image")]
        th, tw = self.slice_shape
        return [
            Grid(*self.overview, image=image, name="overview"),
            Grid(self.rows * th, self.cols * tw, image=image, name="slices"),
        ]


def sliced_layout(image_size: tuple[int, int], image_processor: Any) -> SlicedLayout:
    """The frames of a (W, H) image, from the image processor's own sizing rules
    (`get_sliced_grid`, `find_best_resize`, `get_refine_size`) and settings."""
    width, height = image_size
    ip = image_processor
    mode, patch, scale = ip.downsample_mode, int(ip.patch_size), int(ip.scale_resolution)
    merge = 2 if mode == "4x" else 4
    side = patch * merge  # px per token side
    grid = ip.get_sliced_grid((height, width), ip.max_slice_nums, scale) if ip.slice_mode else None
    oh, ow = ip.find_best_resize(
        (height, width), scale, patch, downsample_mode=mode, allow_upscale=grid is None
    )
    overview = (int(oh) // side, int(ow) // side)
    if grid is None:
        return SlicedLayout(overview, 0, 0, (0, 0), merge)
    rows, cols = (int(v) for v in grid)
    rh, rw = ip.get_refine_size(
        (height, width), grid, scale, patch, downsample_mode=mode, allow_upscale=True
    )
    return SlicedLayout(
        overview, rows, cols, (int(rh) // rows // side, int(rw) // cols // side), merge
    )


class MiniCPMV4_6Adapter(ModelAdapter, family="minicpmv4_6"):
    """MiniCPM-V 4.6: the overview grid, then the slices stitched into one grid (module
    docstring); the language model's layers as Qwen3.5's."""

    card = FamilyCard(
        visual_tokens=(
            "an overview grid + the slices stitched into one grid; a token is one 4 × 4 patch "
            "window (56 px) of its frame (spatial mergers, no resampler)"
        ),
        tested=(
            "layout vs the processor's runs, markers and `target_sizes` at the real 448 px / "
            "9-slice settings incl. extreme aspect ratios; linear layers as `qwen3_5`"
        ),
        caveats=(
            "every region is seen twice (overview and slice); markers, image-id digits and row "
            "breaks are not visual tokens; three of four LM layers are Gated DeltaNet (as "
            "`qwen3_5`); the real tokenizer's marker strings not checked offline"
        ),
    )

    def attention_modules(self) -> list[nn.Module]:
        """Each layer's token mixer, as in `qwen3_5`: ``linear_attn`` or ``self_attn``."""
        return token_mixers(self.language_model())

    def merge_inputs(self, batch: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """As the processor packs several images: every frame's patches in one sequence,
        ``pixel_values`` [1, C, p, sum L] joined on its last axis (the model reads
        ``pixel_values[:1]`` only and fills the prompts' image tokens in batch order)."""
        merged = super().merge_inputs(
            [{k: v for k, v in b.items() if k != "pixel_values"} for b in batch]
        )
        merged["pixel_values"] = torch.cat([b["pixel_values"] for b in batch], dim=-1)
        return merged

    # ------------------------------------------------ pixel_values layout (mask path)
    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """The overview (the whole image), then each slice (its equal cut of the image, row by
        row), at the sizes of ``target_sizes`` (patches) times the patch size."""
        layout = self.image_layout(prepared.image_size)
        patch = int(self.processor.image_processor.patch_size)
        sizes = [(h * patch, w * patch) for h, w in prepared.inputs["target_sizes"].tolist()]
        views = [PixelView(FULL_IMAGE, sizes[0], "overview")]
        for r in range(layout.rows):
            for c in range(layout.cols):
                box = (
                    r / layout.rows,
                    c / layout.cols,
                    (r + 1) / layout.rows,
                    (c + 1) / layout.cols,
                )
                views.append(PixelView(box, sizes[len(views)], f"slice {r},{c}"))
        return views

    def views_to_pixel_values(
        self, views: Sequence[Tensor], prepared: PreparedInputs, fill: float = 1.0
    ) -> Tensor:
        """Frames [B, C, H, W] -> [B, 1, C, p, sum L p]: each frame's patches in raster order,
        patch row a, then patch l, then patch column b (the processor's ``reshape_by_patch``),
        frames joined on the last axis."""
        p = int(self.processor.image_processor.patch_size)
        packed = []
        for frame in views:
            b, c, h, w = frame.shape
            x = frame.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 2, 4, 5)
            packed.append(x.reshape(b, c, p, -1))  # [B, C, p(a), (h/p w/p) p(b)]
        return torch.cat(packed, dim=-1)[:, None]

    def pixel_values_to_views(self, pixel_values: Tensor, prepared: PreparedInputs) -> list[Tensor]:
        """[1, C, p, sum L p] -> each frame [C, H, W] (the inverse of `views_to_pixel_values`)."""
        p = int(self.processor.image_processor.patch_size)
        out, start = [], 0
        for view in self.pixel_views(prepared):
            h, w = view.size
            width = (h // p) * (w // p) * p
            x = pixel_values[0, :, :, start : start + width]  # [C, p(a), L p(b)]
            x = x.reshape(x.shape[0], p, h // p, w // p, p).permute(0, 2, 1, 3, 4)
            out.append(x.reshape(x.shape[0], h, w))
            start += width
        return out

    def image_layout(self, image_size: tuple[int, int]) -> SlicedLayout:
        """The frames of an image of ``image_size`` = (W, H) under this processor."""
        ip = self.processor.image_processor
        model_mode = self.model.config.downsample_mode
        if ip.downsample_mode != model_mode:
            raise LayoutError(
                f"{self.family}: the image processor downsamples {ip.downsample_mode} but the "
                f"model {model_mode}; their token counts disagree"
            )
        return sliced_layout(image_size, ip)

    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The overview's run of image tokens, then the slices' runs stitched into one grid;
        every run's length and markers checked against the processor's sizing."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        layout = self.image_layout(image_size)
        runs = torch.tensor_split(positions, torch.nonzero(positions.diff() > 1).flatten() + 1)
        lengths = [int(r.numel()) for r in runs] if positions.numel() else []
        expected = layout.run_lengths()
        width, height = image_size
        if lengths != expected:
            raise LayoutError(
                f"{self.family}: expected runs of {expected} image tokens (an overview and "
                f"{layout.rows} x {layout.cols} slices for a {width}x{height} image), the prompt "
                f"holds {lengths}; one image per prompt"
            )
        sizes = inputs["target_sizes"].tolist()
        if sizes != layout.target_sizes():
            raise LayoutError(
                f"{self.family}: the processor emitted frames of {sizes} patches, not "
                f"{layout.target_sizes()} as its sizing rules imply for a {width}x{height} image"
            )
        proc = self.processor
        marks = [(proc.image_start_token, proc.image_end_token)]
        marks += [(proc.slice_start_token, proc.slice_end_token)] * (layout.frames - 1)
        got = [
            tuple(self.tokenizer.convert_ids_to_tokens([int(ids[r[0] - 1]), int(ids[r[-1] + 1])]))
            for r in runs
        ]
        if got != marks:
            raise LayoutError(
                f"{self.family}: the frames are marked {got}, not {marks} (an overview, then "
                f"{layout.rows} x {layout.cols} slices)"
            )
        if layout.rows == 0:
            return VisualLayout(positions, layout.grids())
        slices = torch.cat(runs[1:])[layout.stitched_order()]
        return VisualLayout(torch.cat([runs[0], slices]), layout.grids())
