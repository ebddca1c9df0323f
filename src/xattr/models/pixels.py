"""The differentiable pixel-mask path: edits over the image, blended into every view's ``pixel_values``.

A processor turns one image into one or more *views*, each a box of the original image
resampled to its own processed size: one resized image (LLaVA, Qwen), a base view and
canvas tiles (LLaVA-NeXT, OneVision), tiles and a global image (Idefics3, SmolVLM,
InternVL), pan-and-scan crops (Gemma 3), padded canvas tiles (mllama). A family describes
its views (`PixelMaskMixin.pixel_views`: each view's box on the original image and its
(h, w)) and where they sit in ``pixel_values``.

A mask is defined over a box of the original image (by default the *mask box*: the part of
the image the views see, the union of their boxes clipped to the image), at any resolution.
Each view sees the mask cropped to its box and resampled to its (h, w) (`views.sample_mask`): the
view's pixel centres are mapped onto the mask and read bilinearly (or, for per-cell masks,
nearest), after area-averaging the mask where it is finer than the view (antialias). So a
tile, the thumbnail and a crop all see the same edit, each at its own resolution. A view's
pixels outside the image (a canvas's padding) read the nearest mask value; padding is the
same in the image and the baseline, so no weight changes it. Slots of ``pixel_values`` that
hold no view (mllama's unused tiles) keep the image's values.

Blending: ``pv = w pv_image + (1 - w) pv_baseline`` with ``w`` the mask seen by each view.
The processors' resize, rescale and normalise are affine in each pixel value, so this equals
processing the blended image up to resampling (the mask meets each view after its resize
instead of before), uint8 rounding and clipping. A mask of ones gives the image's
``pixel_values`` exactly, a mask of zeros the baseline's. With one view covering the mask
box at its own resolution (the single-view families) the mask *is* that view's weight, and a
coarse mask reaches it as ``F.interpolate(..., "bilinear", align_corners=False)`` would
upsample it (the path before views): equal up to the float32 source coordinates
``F.interpolate`` computes, measured at most 2.7e-6 on a mask in [0, 1] over the
single-view families (``tests/test_pixel_views.py`` asserts 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..images import Region
from ..views import PixelView, bounding_box, sample_mask

if TYPE_CHECKING:
    from .prompting import PreparedInputs


class PixelMaskMixin:
    """Hooks a family implements to support perturbation in ``pixel_values`` space: its views
    (`pixel_views`) and, where ``pixel_values`` is not a stack of ``[C, h, w]`` frames with the
    views first, how views map to and from it."""

    # ------------------------------------------------------------ family hooks
    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """The views of the prepared image, in ``pixel_values`` order."""
        raise NotImplementedError(self._no_pixel_path())

    def views_to_pixel_values(
        self, views: Sequence[Tensor], prepared: PreparedInputs, fill: float = 1.0
    ) -> Tensor:
        """Per-view images [B, C, h, w] -> B copies of the ``pixel_values`` layout [B, *pv];
        slots that hold no view take ``fill``. Default: ``pixel_values`` is frames
        ``[..., C, h, w]`` whose first ones are the views."""
        pv = prepared.inputs["pixel_values"]
        self._check_frames(pv, prepared)
        stacked = torch.stack(list(views), dim=1)  # [B, n, C, h, w]
        b, n, c, h, w = stacked.shape
        frames = pv.numel() // (c * h * w)
        if frames > n:
            pad = stacked.new_full((b, frames - n, c, h, w), float(fill))
            stacked = torch.cat([stacked, pad], dim=1)
        return stacked.reshape(b, *pv.shape)

    def pixel_values_to_views(self, pixel_values: Tensor, prepared: PreparedInputs) -> list[Tensor]:
        """``pixel_values`` -> each view's processed (normalised) image [C, h, w]."""
        views = self._check_frames(pixel_values, prepared)
        h, w = views[0].size
        frames = pixel_values.reshape(-1, pixel_values.shape[-3], h, w)
        return [frames[i] for i in range(len(views))]

    # ------------------------------------------------------------ shared
    def views(self, prepared: PreparedInputs) -> list[PixelView]:
        """`pixel_views` of a one-image prompt (a prompt of several: ask each of its ``parts``)."""
        if getattr(prepared, "video", None) is not None and not prepared.parts:
            raise NotImplementedError(
                "the pixel-mask path (iGOS, pixel-space deletion/insertion) of this family's "
                f"video is not built yet ({getattr(self, 'family', type(self).__name__)}: "
                "images only)"
            )
        if getattr(prepared, "parts", ()):
            raise ValueError(
                f"this prompt shows {len(prepared.parts)} images: views, boxes and sizes are "
                "per image (prepared.parts[k])"
            )
        return self.pixel_views(prepared)

    @property
    def has_pixel_path(self) -> bool:
        """Whether this family describes its views (every built-in family does)."""
        return family_has_pixel_path(type(self))

    def mask_box(self, prepared: PreparedInputs) -> Region:
        """The box of the image the views see: the union of their boxes, clipped to the image."""
        return bounding_box([v.box for v in self.views(prepared)])

    def processed_size(self, prepared: PreparedInputs) -> tuple[int, int]:
        """(H, W) of the mask box at the finest view's resolution (per axis): the resolution
        of image-space masks (iGOS) and of `canvas_image`; one view's own (h, w) when it alone
        covers the mask box."""
        top, left, bottom, right = self.mask_box(prepared)
        views = self.views(prepared)
        dens = [v.density() for v in views]
        return (
            max(1, round(max(d[0] for d in dens) * (bottom - top))),
            max(1, round(max(d[1] for d in dens) * (right - left))),
        )

    def mask_to_pixel_values(
        self,
        mask: Tensor | Sequence[Tensor],
        prepared: PreparedInputs,
        *,
        box: Region | Sequence[Region] | None = None,
        mode: str = "bilinear",
    ) -> Tensor:
        """Masks [B, mh, mw] over ``box`` of the image (default `mask_box`) -> the weight each
        view sees, in the ``pixel_values`` layout [B, *pv] (`sample_mask`). A prompt of
        several images takes a list of masks and of boxes (or None), one per image, each
        reaching that image's views as it would alone (`join_pixel_values`)."""
        if prepared.parts:
            return self._several_to_pixel_values(mask, prepared, box, mode)
        box = self.mask_box(prepared) if box is None else box
        views = self.views(prepared)
        channels = int(
            self.pixel_values_to_views(prepared.inputs["pixel_values"], prepared)[0].shape[0]
        )
        seen = [
            sample_mask(mask, box, v, mode)[:, None].expand(-1, channels, -1, -1) for v in views
        ]
        return self.views_to_pixel_values(seen, prepared)

    def _several_to_pixel_values(
        self, masks: Any, prepared: PreparedInputs, boxes: Any, mode: str
    ) -> Tensor:
        """`mask_to_pixel_values` of a prompt of several images: each image's weights as alone."""
        n = len(prepared.parts)
        if not isinstance(masks, (list, tuple)) or len(masks) != n:
            raise ValueError(f"a prompt of {n} images takes a list of {n} masks, one per image")
        boxes = [None] * n if boxes is None else list(boxes)
        if len(boxes) != n:
            raise ValueError(f"a prompt of {n} images takes {n} boxes (or None), one per image")
        per = [
            self.mask_to_pixel_values(m, part, box=b, mode=mode)
            for m, part, b in zip(masks, prepared.parts, boxes, strict=True)
        ]  # each [B, *pv_k]
        return self.join_pixel_values(per, prepared)

    @staticmethod
    def pixel_key(prepared: PreparedInputs) -> str:
        """The input the pixel-mask path edits: ``pixel_values``, or a video's
        ``pixel_values_videos``."""
        return "pixel_values" if prepared.video is None else "pixel_values_videos"

    def join_pixel_values(self, per_image: Sequence[Tensor], prepared: PreparedInputs) -> Tensor:
        """Each image's ``pixel_values`` layout [B, *pv_k] -> the prompt's [B, *pv], for a
        prompt of several images. Found, not assumed: the first packing of the images'
        tensors alone (one after the other on axis 0 or on axis 1, each padded at the end of
        the later axes, as processors pad tiles and frames to the largest) that equals this
        prompt's ``pixel_values`` exactly; padded slots take weight 1 (padding is the same in
        an image and its baseline). None fits: refused by family name."""
        pv = prepared.inputs["pixel_values"]
        alone = [part.inputs["pixel_values"] for part in prepared.parts]
        for axis in (0, 1):
            if all(a.dim() == pv.dim() for a in alone) and pv.dim() > axis:
                packed = _pack(alone, pv.shape, axis, 0.0)
                if packed is not None and torch.equal(packed, pv):
                    out = _pack(list(per_image), pv.shape, axis + 1, 1.0, batch=True)
                    assert out is not None
                    return out
        raise NotImplementedError(
            f"{getattr(self, 'family', type(self).__name__)} packs the pixel_values of several "
            "images in a way xattr does not follow: its pixel-mask path (iGOS, pixel-space "
            "deletion/insertion) takes one image per prompt"
        )

    def canvas_image(self, prepared: PreparedInputs) -> Tensor:
        """The processed (normalised) image over the mask box at `processed_size`: [C, H, W].
        Each canvas pixel is read (bilinearly) from the finest view whose box holds its centre."""
        box = self.mask_box(prepared)
        height, width = self.processed_size(prepared)
        canvas_view = PixelView(box, (height, width))
        views = self.views(prepared)
        images = self.pixel_values_to_views(prepared.inputs["pixel_values"], prepared)
        order = sorted(range(len(views)), key=lambda i: math.prod(views[i].density()))
        out = None
        for i in order:
            view, image = views[i], images[i].float()
            if view.box == box and view.size == (height, width):
                read = image
            else:  # the view as a mask over its box, read at the canvas pixels
                read = sample_mask(image, view.box, canvas_view)
            if out is None:
                out = read.clone()
                continue
            top, left, bottom, right = view.box
            ys = box[0] + (torch.arange(height) + 0.5) / height * (box[2] - box[0])
            xs = box[1] + (torch.arange(width) + 0.5) / width * (box[3] - box[1])
            inside = ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None]
            out = torch.where(inside.to(out.device), read, out)
        assert out is not None
        return out

    def _check_frames(self, pixel_values: Tensor, prepared: PreparedInputs) -> list[PixelView]:
        """The views, checked to be equal-sized frames at the end of ``pixel_values``."""
        views = self.views(prepared)
        sizes = {v.size for v in views}
        if len(sizes) != 1 or tuple(pixel_values.shape[-2:]) != next(iter(sizes)):
            raise ValueError(
                f"{getattr(self, 'family', type(self).__name__)}: pixel_values "
                f"{tuple(pixel_values.shape)} is not a stack of the views' frames "
                f"{sorted(sizes)} (one image per prompt, no batch padding)"
            )
        return views

    def _no_pixel_path(self) -> str:
        family = getattr(self, "family", type(self).__name__)
        return f"the pixel-mask path (iGOS, pixel-space faithfulness) is not supported for {family}"


def _pack(
    parts: Sequence[Tensor], shape: Sequence[int], axis: int, fill: float, batch: bool = False
) -> Tensor | None:
    """``parts`` one after the other on ``axis``, each first padded with ``fill`` at the end of
    every later axis to ``shape`` (with ``batch``, a leading batch axis precedes ``shape``);
    None when they cannot make ``shape``."""
    lead = 1 if batch else 0
    padded = []
    for t in parts:
        grow = [int(shape[i - lead]) - int(t.shape[i]) for i in range(axis + 1, t.dim())]
        if any(g < 0 for g in grow):
            return None
        pads: list[int] = []
        for g in reversed(grow):
            pads += [0, g]
        padded.append(torch.nn.functional.pad(t, pads, value=fill) if any(grow) else t)
    if any(t.shape[axis + 1 :] != padded[0].shape[axis + 1 :] for t in padded):
        return None
    out = torch.cat(padded, dim=axis)
    return out if tuple(out.shape[lead:]) == tuple(shape) else None


def family_has_pixel_path(cls: type) -> bool:
    """Whether the adapter class ``cls`` describes its views (`PixelMaskMixin.pixel_views`)."""
    return getattr(cls, "pixel_views", None) is not PixelMaskMixin.pixel_views


class OneImagePixels:
    """The pixel-mask path of processors whose ``pixel_values`` is one resized (cropped or
    padded) image, [1, C, H, W] per prompt (a CLIP or SigLIP crop); mix in before `ModelAdapter`.
    The view's box is the one the processor keeps (`geometry.processor_region`)."""

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """One view: the processor's box of the image at the ``pixel_values`` size."""
        from .geometry import processor_region

        h, w = prepared.inputs["pixel_values"].shape[-2:]
        box = processor_region(prepared.image_size, self.processor.image_processor)  # type: ignore[attr-defined]
        return [PixelView(box, (int(h), int(w)))]


class ViewPerGridPixels:
    """The pixel-mask path of processors whose ``pixel_values`` is one square frame per view,
    [views, C, S, S], each view one token grid of the layout, in the grids' order (tiles and a
    thumbnail, as Aya Vision and Ovis2 emit them); mix in before `ModelAdapter`."""

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """A view per grid: the grid's box of the image at the frame size."""
        h, w = prepared.inputs["pixel_values"].shape[-2:]
        return [PixelView(g.box, (int(h), int(w)), g.name) for g in prepared.layout.grids]
