"""The differentiable pixel-mask path: blending images in the processor's ``pixel_values`` space.

The processors' resize, rescale and normalise are affine in each pixel value, so blending
two *processed* images with a mask at the processed resolution equals processing the
blended image, up to resampling (the mask is applied after the resize instead of before),
uint8 rounding and clipping. Perturbation methods (iGOS) and image-space faithfulness blend
here; a family supports it by mapping ``pixel_values`` to images and back.
"""

from __future__ import annotations

from torch import Tensor


class PixelMaskMixin:
    """Hooks a family implements to support perturbation in ``pixel_values`` space."""

    def processed_size(self, inputs: dict[str, Tensor]) -> tuple[int, int]:
        """(H, W) of the first image as the vision tower sees it, after the processor's resize."""
        raise NotImplementedError(self._no_pixel_path())

    def images_to_pixel_values(self, images: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """Processed images [B, C, H, W] -> B copies of one image's ``pixel_values`` layout [B, *pv]."""
        raise NotImplementedError(self._no_pixel_path())

    def pixel_values_to_image(self, pixel_values: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """One image's ``pixel_values`` -> the processed (normalised) image [C, H, W]."""
        raise NotImplementedError(self._no_pixel_path())

    def mask_to_pixel_values(self, mask: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """Masks [B, H, W] at the processed resolution -> the ``pixel_values`` layout [B, *pv]."""
        channels = int(self.pixel_values_to_image(inputs["pixel_values"], inputs).shape[0])
        return self.images_to_pixel_values(mask[:, None].expand(-1, channels, -1, -1), inputs)

    @property
    def has_pixel_path(self) -> bool:
        """Whether this family implements the hooks above."""
        return family_has_pixel_path(type(self))

    def _no_pixel_path(self) -> str:
        family = getattr(self, "family", type(self).__name__)
        return f"the pixel-mask path (iGOS, pixel-space faithfulness) is not supported for {family}"


def family_has_pixel_path(cls: type) -> bool:
    """Whether the adapter class ``cls`` implements `PixelMaskMixin`'s hooks."""
    return getattr(cls, "processed_size", None) is not PixelMaskMixin.processed_size


class OneImagePixels:
    """The pixel-mask path of processors whose ``pixel_values`` is the image itself,
    [1, C, H, W] per prompt (a CLIP or SigLIP crop); mix in before `ModelAdapter`."""

    def processed_size(self, inputs: dict[str, Tensor]) -> tuple[int, int]:
        """(H, W) of the processed image the vision tower sees."""
        h, w = inputs["pixel_values"].shape[-2:]
        return int(h), int(w)

    def images_to_pixel_values(self, images: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """[B, C, H, W] -> [B, 1, C, H, W] (one image's ``pixel_values`` is [1, C, H, W])."""
        return images[:, None]

    def pixel_values_to_image(self, pixel_values: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """[1, C, H, W] -> [C, H, W]."""
        return pixel_values[0]
