"""The result of one attribution: visual maps, prompt saliency, token relevance, provenance.

A prompt may show several images: each grid names its image, every ``*_pixels`` call takes
``image=k``, and `image_shares` says how the relevance splits between them. A model may see
one image through several token grids (a base view and tiles, tiles and a thumbnail). An explanation keeps one map per grid (`visual_maps`; `visual` is the first)
and composes them on the image's pixels with one rule (`compose`): each grid's map is
upsampled (bilinear) onto the box of the image it covers and scaled by
``(cell area of the image's first grid) / (cell area of this grid)``, so that every grid
contributes relevance *per unit of image area*; the contributions of grids that overlap
(a tile and the thumbnail over the same region) add up. Pixels no grid covers (outside a
centre crop) get the smallest value of any (scaled) grid map. With one grid over the whole
image this is the plain upsampled map. The pixels may also be spread over a box of the image
(``box``): the same rule read at those pixels' centres (a grid on exactly that box: its plain
upsampled map).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .images import FULL_IMAGE, Region
from .layout import Grid
from .targets import Span


@dataclass
class Explanation:
    """What a method says the model looked at for one answer."""

    method: str
    visual: Tensor  # [h, w] map on the first token grid
    answer_tokens: list[str]  # each token's display text: "".join(answer_tokens) is the answer
    token_relevance: Tensor  # [T] per-answer-token score (method-specific meaning)
    prompt_tokens: list[str] = field(default_factory=list)  # the question's tokens' texts
    prompt_relevance: Tensor | None = None  # [|P|]
    token_maps: Tensor | None = None  # [T, h, w] per-token maps on the first grid, when asked for
    token_mask: Tensor | None = None  # [T] bool: tokens that entered the aggregate
    hparams: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    grids: list[Grid] = field(default_factory=list)  # every token grid (default: one, whole image)
    more_maps: list[Tensor] = field(default_factory=list)  # the maps of grids 2..k
    more_token_maps: list[Tensor] | None = None  # [T, h_g, w_g] of grids 2..k
    layer_maps: Tensor | None = None  # [K, h, w] each layer's share of the map, when asked for
    more_layer_maps: list[Tensor] | None = None  # [K, h_g, w_g] of grids 2..k
    # the same tokens as the tokenizer stores them ("Ġred", "▁red", byte pieces)
    answer_pieces: list[str] = field(default_factory=list)
    prompt_pieces: list[str] = field(default_factory=list)
    # the parts of the answer explained (`xattr.targets`): the target's, or each sentence's
    spans: list[Span] = field(default_factory=list)
    # [T] log p(y_t | image) − log p(y_t | image blurred): how much each token owes the image
    visual_dependence: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.grids:
            region = self.meta.get("image_region")
            box = FULL_IMAGE if region is None else tuple(float(x) for x in region)
            self.grids = [Grid(*self.visual.shape, box=box)]  # type: ignore[arg-type]
        if len(self.grids) != 1 + len(self.more_maps):
            raise ValueError(f"{len(self.grids)} grids but {1 + len(self.more_maps)} maps")

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.visual.shape)  # type: ignore[return-value]

    @property
    def visual_maps(self) -> list[Tensor]:
        """One [h, w] map per token grid."""
        return [self.visual, *self.more_maps]

    @property
    def num_images(self) -> int:
        """How many images the prompt showed (each grid names its image)."""
        return 1 + max(g.image for g in self.grids)

    @property
    def image_shares(self) -> Tensor:
        """[num_images] each image's share of the map's positive relevance, summing to 1: the
        positive values of its grids' maps (every token of every view of it) over those of
        all grids. "Which image did the model use" in one attribute; NaN where the map has
        no positive value."""
        mass = torch.zeros(self.num_images, dtype=torch.float64)
        for values, g in zip(self.visual_maps, self.grids, strict=True):
            mass[g.image] += values.detach().double().clamp(min=0).sum().cpu()
        total = mass.sum()
        return (mass / total if total > 0 else torch.full_like(mass, float("nan"))).float()

    @property
    def num_frames(self) -> int:
        """A video's frame count (0 when the prompt shows images)."""
        return max((g.frames[1] for g in self.grids if g.frames is not None), default=0)

    def frame_group(self, frame: int) -> int:
        """The input (``image`` index of the grids) that shows video frame ``frame``."""
        for g in self.grids:
            if g.frames is not None and g.frames[0] <= frame < g.frames[1]:
                return g.image
        raise IndexError(f"frame {frame} is not in this explanation's {self.num_frames} frames")

    def frame_pixels(self, size: tuple[int, int], frame: int) -> Tensor:
        """Frame ``frame``'s map on (height, width) pixels: the map of the frame group that
        shows it (Qwen reads two frames as one input, so both frames of a pair share a map)."""
        return self.visual_pixels(size, image=self.frame_group(frame))

    def shown(self) -> tuple[int, Tensor]:
        """What a viewer shows: how many pictures (the images, or a video's frames) and each
        one's share of the relevance (`image_shares` or `frame_shares`)."""
        if self.num_frames:
            return self.num_frames, self.frame_shares
        return self.num_images, self.image_shares

    def input_of(self, picture: int) -> int:
        """The input (grids' ``image`` index) that shows picture ``picture`` of `shown`."""
        return self.frame_group(picture) if self.num_frames else picture

    @property
    def frame_shares(self) -> Tensor:
        """[num_frames] each frame's share of the relevance: its group's share (`image_shares`)
        split evenly over the frames of the group; sums to 1 (NaN as `image_shares`)."""
        shares = self.image_shares
        out = torch.zeros(self.num_frames)
        for g in self.grids:
            if g.frames is not None:
                first, end = g.frames
                out[first:end] = shares[g.image] / (end - first)
        return out

    @property
    def image_region(self) -> Region:
        """``(top, left, bottom, right)`` fractions of the image the first grid covers."""
        return self.grids[0].box

    # ------------------------------------------------------------------ pixels
    def visual_pixels(
        self, size: tuple[int, int], image: int = 0, box: Region = FULL_IMAGE
    ) -> Tensor:
        """The visual map on image ``image``'s ``size`` = (height, width) pixels spread over
        ``box`` of it (default the whole image) (`compose`)."""
        return compose(self.visual_maps, self.grids, size, image, box)

    def token_pixels(self, t: int, size: tuple[int, int], image: int = 0) -> Tensor:
        """Answer token ``t``'s own map on the image's pixels (needs ``return_token_maps``)."""
        if self.token_maps is None:
            raise ValueError(
                f"{self.method}: no per-token maps; explain with return_token_maps=True"
            )
        maps = [self.token_maps[t], *(m[t] for m in self.more_token_maps or [])]
        return compose(maps, self.grids, size, image)

    def span_pixels(self, k: int, size: tuple[int, int], image: int = 0) -> Tensor:
        """Span ``k``'s own map (``spans[k]``) on the image's pixels."""
        return compose(self.spans[k].visual_maps, self.grids, size, image)

    def layer_pixels(self, k: int, size: tuple[int, int], image: int = 0) -> Tensor:
        """Layer ``k``'s share of the map (``meta["layers"][k]``) on the image's pixels."""
        if self.layer_maps is None:
            raise ValueError(f"{self.method}: no layer maps; explain with return_layer_maps=True")
        maps = [self.layer_maps[k], *(m[k] for m in self.more_layer_maps or [])]
        return compose(maps, self.grids, size, image)

    def overlay(
        self, image: Image.Image, alpha: float = 0.5, cmap: str = "jet", index: int = 0
    ) -> Image.Image:
        """Image ``index`` of the prompt (the PIL ``image``; a video: frame ``index``) with the
        min-max normalised map drawn over it as a heatmap."""
        rgb = image.convert("RGB")
        size = (rgb.height, rgb.width)
        heat = (
            self.frame_pixels(size, frame=index)
            if self.num_frames
            else self.visual_pixels(size, image=index)
        ).numpy()
        return heat_overlay(rgb, heat, alpha, cmap)

    # -------------------------------------------------------------- persistence
    _TENSORS = ("visual", "token_relevance", "prompt_relevance", "token_maps", "token_mask",
                "layer_maps", "visual_dependence")  # fmt: skip
    _LISTS = ("more_maps", "more_token_maps", "more_layer_maps")

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor by a flat name (lists as ``name.i``), on the CPU and contiguous."""
        out = {k: getattr(self, k) for k in self._TENSORS if getattr(self, k) is not None}
        for name in self._LISTS:
            for i, t in enumerate(getattr(self, name) or []):
                out[f"{name}.{i}"] = t
        for i, span in enumerate(self.spans):
            for g, t in enumerate(span.visual_maps):
                out[f"span_maps.{i}.{g}"] = t
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def info(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-able values."""
        return {
            "method": self.method,
            "answer_tokens": self.answer_tokens,
            "prompt_tokens": self.prompt_tokens,
            "answer_pieces": self.answer_pieces,
            "prompt_pieces": self.prompt_pieces,
            "hparams": jsonable(self.hparams),
            "timings": self.timings,
            "meta": jsonable(self.meta),
            "grids": [g.to_dict() for g in self.grids],
            "spans": [s.to_dict() for s in self.spans],
        }

    @classmethod
    def from_parts(cls, info: dict[str, Any], tensors: dict[str, Tensor]) -> Explanation:
        """Rebuild from `info` and `tensors` (the inverse of both)."""
        info = dict(info)
        info["grids"] = [Grid.from_dict(g) for g in info.get("grids", [])]
        info["spans"] = [
            Span.from_dict(s, [tensors[f"span_maps.{i}.{g}"] for g in range(len(info["grids"]))
                               if f"span_maps.{i}.{g}" in tensors])
            for i, s in enumerate(info.get("spans", []))
        ]  # fmt: skip
        lists: dict[str, list[Tensor] | None] = {}
        for name in cls._LISTS:
            keys = sorted((k for k in tensors if k.startswith(f"{name}.")), key=_index)
            lists[name] = [tensors[k] for k in keys] if keys else None
        lists["more_maps"] = lists["more_maps"] or []
        if tensors.get("token_maps") is not None and lists["more_token_maps"] is None:
            lists["more_token_maps"] = []
        if tensors.get("layer_maps") is not None and lists["more_layer_maps"] is None:
            lists["more_layer_maps"] = []
        return cls(**info, **{k: tensors.get(k) for k in cls._TENSORS}, **lists)

    def save(self, directory: str | Path) -> Path:
        """Write tensors (safetensors) and metadata (JSON) into ``directory`` (no pickle)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors(), str(out / "tensors.safetensors"))
        (out / "explanation.json").write_text(json.dumps(self.info(), indent=2))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Explanation:
        """Read an explanation written by `save`."""
        from safetensors.torch import load_file

        src = Path(directory)
        info_path = src / "explanation.json"
        if not info_path.exists():
            raise FileNotFoundError(f"no saved explanation in {src} (missing {info_path.name})")
        info = json.loads(info_path.read_text())
        return cls.from_parts(info, load_file(str(src / "tensors.safetensors")))


def compose(
    maps: list[Tensor],
    grids: list[Grid],
    size: tuple[int, int],
    image: int = 0,
    box: Region = FULL_IMAGE,
) -> Tensor:
    """Per-grid maps composed on image ``image``'s pixels by the rule in the module docstring;
    the ``size`` = (height, width) pixels cover ``box`` of the image."""
    height, width = int(size[0]), int(size[1])
    box = tuple(float(x) for x in box)  # type: ignore[assignment]
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"box must be (top, left, bottom, right) with positive extent, got {box}")
    mine = [(m, g) for m, g in zip(maps, grids, strict=True) if g.image == image]
    if not mine:
        raise ValueError(f"no token grid covers image {image}")
    if len(mine) == 1 and mine[0][1].box == box:  # the common case, exactly bilinear
        v = mine[0][0].detach().float()[None, None]
        return F.interpolate(v, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    reference = mine[0][1].cell_area
    # float64 inside: a cell centre that falls on a finer grid's cell centre reads that
    # cell's value to float32 precision (equal cells stay tied), then float32 out
    total = torch.zeros(height, width, dtype=torch.float64)
    covered = torch.zeros(height, width, dtype=torch.bool)
    lowest = float("inf")
    for values, g in mine:
        scale = reference / g.cell_area
        placed, inside = _place(values.detach().double(), g.box, height, width, box)
        total += placed * scale
        covered |= inside
        lowest = min(lowest, float(values.min()) * scale)
    return total.masked_fill(~covered, lowest).float()


def _place(
    values: Tensor, box: Region, height: int, width: int, view: Region = FULL_IMAGE
) -> tuple[Tensor, Tensor]:
    """A [h, w] map bilinearly placed on ``box`` of the image, read at the centres of
    (height, width) pixels spread over ``view`` of it; zero outside ``box``."""
    top, left, bottom, right = box
    v_top, v_left, v_bottom, v_right = view
    # pixel centres as fractions of the image, then in grid_sample's [-1, 1] coordinates of
    # the box (align_corners=False)
    rows = torch.arange(height, dtype=values.dtype)
    cols = torch.arange(width, dtype=values.dtype)
    ys = v_top + (rows + 0.5) / height * (v_bottom - v_top)  # [H]
    xs = v_left + (cols + 0.5) / width * (v_right - v_left)  # [W]
    ys = (ys - top) / (bottom - top) * 2 - 1
    xs = (xs - left) / (right - left) * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]  # [1, H, W, 2] as (x, y)
    out = F.grid_sample(
        values[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0]
    inside = (gy.abs() <= 1) & (gx.abs() <= 1)
    return out * inside, inside


def heat_overlay(
    rgb: Image.Image, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """``rgb`` with the min-max normalised ``heat`` [H, W] drawn over it."""
    from matplotlib import colormaps

    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colored = colormaps[cmap](heat)[..., :3]  # [H, W, 3] in [0, 1]
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    mixed = (1 - alpha) * base + alpha * colored
    return Image.fromarray((mixed * 255).clip(0, 255).astype(np.uint8))


def jsonable(value: Any) -> Any:
    """Tensors and tuples to lists so metadata survives JSON."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Grid):
        return value.to_dict()
    return value


def _index(key: str) -> int:
    return int(key.rsplit(".", 1)[1])
