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
        return type(self).processed_size is not PixelMaskMixin.processed_size

    def _no_pixel_path(self) -> str:
        family = getattr(self, "family", type(self).__name__)
        return f"the pixel-mask path (iGOS, pixel-space faithfulness) is not supported for {family}"
