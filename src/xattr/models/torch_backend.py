"""transformers' torchvision image-processor backend with its torchvision calls done in plain
torch, for image processors that transformers ships on that backend only (LFM2-VL).

`PlainTorchBackend` subclasses `TorchvisionBackend` and replaces the three operations such a
processor uses (bilinear resize, per-channel normalisation, grey to RGB) by the same torch
operations torchvision runs; anything else it would hand to torchvision is left alone (and
fails where torchvision is missing). Put it after the real processor class in a subclass's
bases: the real class's ``super().resize`` calls then reach it, not torchvision.
"""

from __future__ import annotations

import platform
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict

BILINEAR = (None, PILImageResampling.BILINEAR, int(PILImageResampling.BILINEAR))


def native_uint8_bilinear(device: torch.device) -> bool:
    """Whether torchvision resizes a uint8 image bilinearly in uint8 (torch's vectorised CPU
    kernel: AVX2/AVX512 or ARM CPUs) rather than in float32 and rounding back."""
    if device.type != "cpu":
        return False
    capable = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return capable or platform.machine() in ("aarch64", "arm64")


class PlainTorchBackend(TorchvisionBackend):
    """`TorchvisionBackend` whose resize, normalize and convert_to_rgb are plain torch."""

    def resize(
        self,
        image: Tensor,
        size: SizeDict,
        resample: Any = None,
        antialias: bool = True,
        **kwargs: Any,
    ) -> Tensor:
        """Bilinear resize (align_corners False, ``antialias`` as given) of [..., C, H, W] to
        ``size`` (height, width), as torchvision's resize: the image itself when the size is
        unchanged; uint8 resized natively where torchvision does so, else in float32 and
        rounded back."""
        name = type(self).__name__
        if resample not in BILINEAR:
            raise ValueError(f"{name} resizes bilinearly only, got resample={resample!r}")
        if not (size.height and size.width):
            raise ValueError(f"{name} needs a height and width to resize to, got {size}")
        channels, height, width = image.shape[-3:]
        new = (int(size.height), int(size.width))
        if new == (height, width):
            return image
        dtype = image.dtype
        native = dtype in (torch.float32, torch.float64) or (
            dtype == torch.uint8 and native_uint8_bilinear(image.device)
        )
        x = image.reshape(-1, channels, height, width)  # [B, C, H, W]
        if not native:
            x = x.to(torch.float32)
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=antialias)
        if not native:
            if not dtype.is_floating_point:
                x = x.round_()
            x = x.to(dtype)
        return x.reshape(*image.shape[:-3], channels, *new)

    def normalize(
        self, image: Tensor, mean: Any, std: Any, inplace: bool = False, **kwargs: Any
    ) -> Tensor:
        """``(image - mean) / std`` per channel (channel axis -3), as torchvision's normalize."""
        if not image.is_floating_point():
            raise TypeError(f"normalize needs a float image, got {image.dtype}")
        mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(std, dtype=image.dtype, device=image.device)
        if bool((std == 0).any()):
            raise ValueError(f"normalize got a zero std: {std.tolist()}")
        mean = mean.view(-1, 1, 1) if mean.ndim == 1 else mean
        std = std.view(-1, 1, 1) if std.ndim == 1 else std
        if inplace:
            return image.sub_(mean).div_(std)
        return (image - mean) / std

    def convert_to_rgb(self, image: Tensor, input_data_format: Any = None) -> Tensor:
        """Grey (1 channel, or none) to RGB by repetition; RGB unchanged; other channel
        counts (RGBA) refused by name."""
        if image.ndim == 2:
            image = image[None]
        if input_data_format == ChannelDimension.LAST:
            raise ValueError(f"{type(self).__name__} expects channel-first tensors here")
        if image.shape[-3] == 1:
            return image.repeat(*([1] * (image.ndim - 3)), 3, 1, 1)
        if image.shape[-3] != 3:
            raise ValueError(
                f"{type(self).__name__} converts 1 or 3 channels to RGB, got {image.shape[-3]}"
            )
        return image
