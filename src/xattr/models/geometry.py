"""Which part of the original image a processor's output (and so the token grid) covers.

A processor may pad, resize and centre-crop before the vision tower sees the image. The
token grid then covers a box of the original image, not necessarily all of it: LLaVA's
CLIP processor keeps the central square of a non-square image. The box is given as
fractions of the original image, ``(top, left, bottom, right)``; ``(0, 0, 1, 1)`` is the
whole image, values beyond [0, 1] mean padding around it.
"""

from __future__ import annotations

from typing import Any

from ..images import FULL_IMAGE, Region

__all__ = ["FULL_IMAGE", "Region", "processor_region", "resized_size"]


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def resized_size(height: int, width: int, size: Any) -> tuple[int, int]:
    """(H, W) after a CLIP-style resize: ``shortest_edge`` keeps the aspect, else fixed H x W."""
    short_edge = _get(size, "shortest_edge")
    if short_edge is not None:
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = int(short_edge), int(int(short_edge) * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    return int(_get(size, "height")), int(_get(size, "width"))


def processor_region(image_size: tuple[int, int], image_processor: Any) -> Region:
    """The box of an image of ``image_size`` = (W, H) that a pad/resize/centre-crop processor keeps.

    Follows the CLIP image processor: optional pad to a centred square (``do_pad``), resize
    (``size``), centre crop (``crop_size``, offset ``(resized - crop) // 2``).
    """
    width, height = image_size
    # the canvas (the padded image) in original-pixel coordinates
    top, left, canvas_h, canvas_w = 0.0, 0.0, float(height), float(width)
    if _get(image_processor, "do_pad", False):
        side = max(height, width)
        top, left = -float((side - height) // 2), -float((side - width) // 2)
        canvas_h = canvas_w = float(side)
    if not _get(image_processor, "do_center_crop", False):
        return (top / height, left / width, (top + canvas_h) / height, (left + canvas_w) / width)
    if _get(image_processor, "do_resize", True):
        res_h, res_w = resized_size(int(canvas_h), int(canvas_w), _get(image_processor, "size"))
    else:
        res_h, res_w = int(canvas_h), int(canvas_w)
    crop = _get(image_processor, "crop_size")
    crop_h, crop_w = int(_get(crop, "height")), int(_get(crop, "width"))
    off_h, off_w = (res_h - crop_h) // 2, (res_w - crop_w) // 2  # negative: padded around
    y0 = top + off_h / res_h * canvas_h
    x0 = left + off_w / res_w * canvas_w
    y1 = y0 + crop_h / res_h * canvas_h
    x1 = x0 + crop_w / res_w * canvas_w
    return (y0 / height, x0 / width, y1 / height, x1 / width)
