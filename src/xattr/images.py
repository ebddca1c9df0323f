"""Loading and perturbing input images, with errors that name the bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

ImageLike = Image.Image | str | Path | np.ndarray
# What one prompt is shown: one image, several in the order the prompt shows them, or a
# `xattr.Video`
PromptImages = ImageLike | list[ImageLike] | tuple[ImageLike, ...] | Any

# A box of an image as (top, left, bottom, right) fractions of its height and width, e.g.
# the part a processor's centre crop keeps; values beyond [0, 1] mean padding around it.
Region = tuple[float, float, float, float]
FULL_IMAGE: Region = (0.0, 0.0, 1.0, 1.0)


class ImageError(ValueError):
    """An image that is missing, unreadable or empty."""


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image, a path or an HxWx3 uint8 array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                image = img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ImageError(f"cannot read image {path}: {err}") from err
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ImageError(f"image array must be HxWx3, got shape {image.shape}")
        image = Image.fromarray(image.astype(np.uint8))
    elif not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image, a path or an array, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image has no pixels ({image.width}x{image.height})")
    return image.convert("RGB")


def load_images(images: PromptImages) -> list[Image.Image]:
    """The RGB images of one prompt: one image, or a list or tuple of them (in prompt order)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("an empty list of images: a prompt needs at least one")
        return [load_image(image) for image in images]
    return [load_image(images)]


def prompt_images(images: list[Image.Image]) -> Image.Image | list[Image.Image]:
    """One prompt's images as `load_images` reads them back: one image alone, several as a list."""
    return images[0] if len(images) == 1 else list(images)


def blur_image(image: Image.Image, radius: float | None = None) -> Image.Image:
    """A strongly blurred copy (the perturbation baseline); radius defaults to 1/10 of the short side."""
    r = max(image.width, image.height) / 10 if radius is None else radius
    return image.filter(ImageFilter.GaussianBlur(radius=r))


def blur_images(images: PromptImages, radius: float | None = None) -> Any:
    """Every image of one prompt blurred (`blur_image`), in the same shape as given (a video:
    every frame)."""
    if hasattr(images, "blurred"):  # a Video
        return images.blurred(radius)
    return prompt_images([blur_image(image, radius) for image in load_images(images)])


def blend_images(image: Image.Image, baseline: Image.Image, keep: np.ndarray) -> Image.Image:
    """``keep * image + (1 - keep) * baseline`` for a [H, W] mask in [0, 1] at pixel size."""
    a = np.asarray(image, dtype=np.float32)
    b = np.asarray(baseline, dtype=np.float32)
    m = keep.astype(np.float32)[..., None]
    return Image.fromarray((m * a + (1 - m) * b).round().clip(0, 255).astype(np.uint8))
