"""Llama 4's image tiling, and a stand-in for its image processor where torchvision is missing.

transformers 5.25 ships `Llama4ImageProcessor` with a torchvision backend only (its module
imports torchvision at the top), so neither the processor nor its helpers load without it.
The rule it applies, read from ``models/llama4/image_processing_llama4.py``:

- Canvases: every ``h x w`` tiles with ``h w <= max_patches``, as (h S, w S) pixels.
- Best fit: for each canvas the largest scale that keeps the image's aspect inside it
  (``min(h S / H, w S / W)``); the smallest scale >= 1 if there is one, else the largest;
  among canvases with that scale the smallest area (the first one, in the processor's order).
- The image is resized with its aspect kept (bilinear, antialiased) into
  ``min(max(H, S), canvas_h) x min(max(W, S), canvas_w)`` (never upscaled beyond one tile's
  size unless smaller than a tile), padded with black on the right and bottom to the
  canvas, rescaled and normalised in bfloat16, and cut into tiles, row-major.
- More than one tile: a global view, the whole image stretched to S x S, is appended.

`tiling` computes it (used by the adapter's layout and checked against what the processor
emits), and `Llama4ImagesWithoutTorchvision` applies it with torch alone; tests compare it
with the real processor where torchvision loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ImagesKwargs

REAL_CLASS = "Llama4ImageProcessor"


@dataclass(frozen=True)
class Tiling:
    """Where an image goes on Llama 4's canvas: ``rows x cols`` tiles of ``tile`` px, the
    image resized (aspect kept) to ``resized`` = (h, w) in its top-left corner."""

    rows: int
    cols: int
    tile: int
    resized: tuple[int, int]

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    @property
    def views(self) -> int:
        """Frames in ``pixel_values``: the tiles, plus the global view when tiled."""
        return self.tiles + 1 if self.tiles > 1 else 1

    def tile_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Tile ``(row, col)``'s box on the original image (fractions; > 1 on the padding)."""
        h, w = self.resized
        s = self.tile
        return (row * s / h, col * s / w, (row + 1) * s / h, (col + 1) * s / w)


def canvases(max_tiles: int, tile: int) -> torch.Tensor:
    """Every canvas (height, width) in pixels, in the processor's order: [n, 2]."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for count in range(max_tiles, 0, -1):
        for rows in sorted(d for d in range(1, count + 1) if count % d == 0):
            by_ratio.setdefault(rows / (count // rows), []).append((rows, count // rows))
    return torch.tensor([(r * tile, c * tile) for group in by_ratio.values() for r, c in group])


def tiling(
    height: int, width: int, tile: int, max_tiles: int, resize_to_max_canvas: bool = False
) -> Tiling:
    """The canvas and resized size Llama 4's image processor picks for an H x W image."""
    options = canvases(max_tiles, tile)
    scales = torch.minimum(options[:, 0] / height, options[:, 1] / width)  # float32, as there
    up = scales[scales >= 1]
    if len(up):
        chosen = up.max() if resize_to_max_canvas else up.min()
    else:
        chosen = scales[scales < 1].max()
    fits = options[scales == chosen]
    canvas = fits[torch.argmin(fits[:, 0] * fits[:, 1])]
    canvas_h, canvas_w = int(canvas[0]), int(canvas[1])
    if resize_to_max_canvas:
        target_h, target_w = canvas_h, canvas_w
    else:  # upscale to at most one tile's size
        target_h, target_w = min(max(height, tile), canvas_h), min(max(width, tile), canvas_w)
    if target_w / width < target_h / height:
        new_h, new_w = min(int(np.floor(height * (target_w / width))), target_h), target_w
    else:
        new_h, new_w = target_h, min(int(np.floor(width * (target_h / height))), target_w)
    return Tiling(canvas_h // tile, canvas_w // tile, tile, (max(new_h, 1), max(new_w, 1)))


class Llama4ImagesKwargs(ImagesKwargs, total=False):
    """`Llama4ImageProcessor`'s own options."""

    max_patches: int
    resize_to_max_canvas: bool


class Llama4ImagesWithoutTorchvision(PilBackend):
    """`Llama4ImageProcessor`'s output computed with torch alone (the rule in the module
    docstring); saved under the real class's name, so the folder loads the real one where
    torchvision is installed."""

    resample = 2  # bilinear
    image_mean: ClassVar[list[float]] = [0.5, 0.5, 0.5]
    image_std: ClassVar[list[float]] = [0.5, 0.5, 0.5]
    size: ClassVar[dict[str, int]] = {"height": 336, "width": 336}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    max_patches = 16
    resize_to_max_canvas = False
    valid_kwargs = Llama4ImagesKwargs
    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["image_processor_type"] = REAL_CLASS
        return out

    def _resize(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """uint8 [C, H, W] -> uint8 [C, h, w], bilinear with antialias (torchvision's path)."""
        out = F.interpolate(
            image[None], size=size, mode="bilinear", antialias=True, align_corners=False
        )
        return out[0]

    def _normalise(self, image: torch.Tensor, scale: float, mean: Any, std: Any) -> torch.Tensor:
        """Rescale and normalise in bfloat16, as `Llama4ImageProcessor` does."""
        image = image.to(torch.bfloat16) * scale
        mean_t = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
        return (image - mean_t) / std_t

    def _preprocess(
        self,
        images: list[np.ndarray],
        size: Any,
        rescale_factor: float,
        image_mean: Any,
        image_std: Any,
        max_patches: int,
        resize_to_max_canvas: bool,
        return_tensors: Any = None,
        do_resize: bool = True,
        do_rescale: bool = True,
        do_normalize: bool = True,
        **kwargs: Any,
    ) -> BatchFeature:
        if not (do_resize and do_rescale and do_normalize):
            raise ValueError(
                "the torchvision-free Llama 4 image processor always resizes, rescales and "
                "normalises (as the checkpoints' config does)"
            )
        tile = int(size.height)
        if int(size.width) != tile:
            raise ValueError(f"Llama 4 tiles are square; got size {size}")
        frames, ratios = [], []
        for array in images:
            image = torch.from_numpy(np.ascontiguousarray(array))  # uint8 [C, H, W]
            plan = tiling(image.shape[1], image.shape[2], tile, max_patches, resize_to_max_canvas)
            resized = self._resize(image, plan.resized)
            canvas = torch.zeros(
                image.shape[0], plan.rows * tile, plan.cols * tile, dtype=resized.dtype
            )
            canvas[:, : plan.resized[0], : plan.resized[1]] = resized
            canvas = self._normalise(canvas, rescale_factor, image_mean, image_std)
            tiles = canvas.view(-1, plan.rows, tile, plan.cols, tile).permute(1, 3, 0, 2, 4)
            views = list(tiles.reshape(plan.tiles, -1, tile, tile))  # row-major
            if plan.tiles > 1:
                whole = self._resize(image, (tile, tile))
                views.append(self._normalise(whole, rescale_factor, image_mean, image_std))
            frames.extend(views)
            ratios.append([plan.rows, plan.cols])
        data = {"pixel_values": torch.stack(frames), "aspect_ratios": torch.tensor(ratios)}
        return BatchFeature(data=data, tensor_type=return_tensors)
