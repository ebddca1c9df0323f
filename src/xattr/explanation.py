"""The result of one attribution: visual map, prompt saliency, token relevance, provenance."""

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


@dataclass
class Explanation:
    """What a method says the model looked at for one answer."""

    method: str
    visual: Tensor  # [h, w] map on the first image's token grid
    answer_tokens: list[str]
    token_relevance: Tensor  # [T] per-answer-token score (method-specific meaning)
    prompt_tokens: list[str] = field(default_factory=list)
    prompt_relevance: Tensor | None = None  # [|P|]
    token_maps: Tensor | None = None  # [T, h, w] per-token visual maps, when asked for
    token_mask: Tensor | None = None  # [T] bool: tokens that entered the aggregate
    hparams: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.visual.shape)  # type: ignore[return-value]

    @property
    def image_region(self) -> Region:
        """``(top, left, bottom, right)`` fractions of the image the grid covers (the model's view)."""
        region = self.meta.get("image_region")
        if region is None:
            return FULL_IMAGE
        top, left, bottom, right = (float(x) for x in region)
        return (top, left, bottom, right)

    def visual_pixels(self, size: tuple[int, int]) -> Tensor:
        """The visual map on the image's ``size`` = (height, width) pixels, bilinearly.

        The grid is placed on the part of the image the model saw (`image_region`, e.g.
        LLaVA's centre crop); pixels the model never saw get the map's minimum.
        """
        v = self.visual.detach().float()[None, None]  # [1, 1, h, w]
        height, width = int(size[0]), int(size[1])
        top, left, bottom, right = region = self.image_region
        if region == FULL_IMAGE:
            return F.interpolate(v, size=(height, width), mode="bilinear", align_corners=False)[
                0, 0
            ]
        # pixel centres in grid_sample's [-1, 1] coordinates of the region (align_corners=False)
        ys = ((torch.arange(height) + 0.5) / height - top) / (bottom - top) * 2 - 1  # [H]
        xs = ((torch.arange(width) + 0.5) / width - left) / (right - left) * 2 - 1  # [W]
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]  # [1, H, W, 2] as (x, y)
        out = F.grid_sample(v, grid, mode="bilinear", padding_mode="border", align_corners=False)
        outside = (gy.abs() > 1) | (gx.abs() > 1)
        return out[0, 0].masked_fill(outside, float(v.min()))

    def overlay(self, image: Image.Image, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
        """The image with the min-max normalised map drawn over it as a heatmap."""
        from matplotlib import colormaps

        rgb = image.convert("RGB")
        heat = self.visual_pixels((rgb.height, rgb.width)).numpy()
        span = heat.max() - heat.min()
        heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        colored = colormaps[cmap](heat)[..., :3]  # [H, W, 3] in [0, 1]
        base = np.asarray(rgb, dtype=np.float32) / 255.0
        mixed = (1 - alpha) * base + alpha * colored
        return Image.fromarray((mixed * 255).clip(0, 255).astype(np.uint8))

    # -------------------------------------------------------------- persistence
    _TENSORS = ("visual", "token_relevance", "prompt_relevance", "token_maps", "token_mask")

    def save(self, directory: str | Path) -> Path:
        """Write tensors (safetensors) and metadata (JSON) into ``directory``."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: getattr(self, k).detach().cpu().contiguous()
            for k in self._TENSORS
            if getattr(self, k) is not None
        }
        save_file(tensors, str(out / "tensors.safetensors"))
        info = {
            "method": self.method,
            "answer_tokens": self.answer_tokens,
            "prompt_tokens": self.prompt_tokens,
            "hparams": _jsonable(self.hparams),
            "timings": self.timings,
            "meta": _jsonable(self.meta),
        }
        (out / "explanation.json").write_text(json.dumps(info, indent=2))
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
        tensors = load_file(str(src / "tensors.safetensors"))
        return cls(**info, **{k: tensors.get(k) for k in cls._TENSORS})


def _jsonable(value: Any) -> Any:
    """Tensors and tuples to lists so metadata survives JSON."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def stack_or_none(maps: list[Tensor]) -> Tensor | None:
    """Stack per-token maps, or None when there are none."""
    return torch.stack(maps) if maps else None
