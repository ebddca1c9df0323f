"""The pixel-mask path over views (`xattr.views`, `models.pixels`): what every view of every
family sees of a mask drawn over the image, checked against the real processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support.families import FAMILIES, QUESTION, SPECS
from xattr.images import FULL_IMAGE, blend_images, blur_image
from xattr.views import PixelView, sample_mask


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prepared(adapter, family: str, size=None):
    image = SPECS[family].image(size or SPECS[family].geometry_size, seed=2)
    blurred = blur_image(image)
    return image, blurred, adapter.prepare(image, QUESTION), adapter.prepare(blurred, QUESTION)


def _blend(adapter, prepared, baseline, mask, **kwargs) -> torch.Tensor:
    """``w pv + (1 - w) pv_base`` for masks [B, h, w]: [B, *pv]."""
    weight = adapter.mask_to_pixel_values(mask, prepared, **kwargs)
    pv, pv_base = prepared.inputs["pixel_values"], baseline.inputs["pixel_values"]
    return weight * pv + (1 - weight) * pv_base


def _centres(view: PixelView, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image-pixel coordinates (y, x) of the view's pixel centres."""
    width, height = image_size
    top, left, bottom, right = view.box
    h, w = view.size
    ys = (top + (np.arange(h) + 0.5) / h * (bottom - top)) * height
    xs = (left + (np.arange(w) + 0.5) / w * (right - left)) * width
    return ys, xs


# ------------------------------------------------------------------ the views' boxes
@pytest.mark.parametrize("family", FAMILIES)
def test_a_box_mask_blends_like_processing_the_blended_image(tiny_adapter, family):
    """A hard-edged box deleted from the image: every view's blended pixels equal the
    processor's output on the blended image wherever the processor's resampling filter
    does not reach across the box's edge. A wrong view box or view order puts the blurred
    (or the sharp) pixels in the wrong place and fails."""
    adapter = tiny_adapter(family)
    image, blurred, prepared, baseline = _prepared(adapter, family)
    width, height = image.size
    b_top, b_left, b_bottom, b_right = height // 4, width // 3, 3 * height // 4, 2 * width // 3
    keep = np.ones((height, width), dtype=np.float32)
    keep[b_top:b_bottom, b_left:b_right] = 0
    expected = adapter.prepare(blend_images(image, blurred, keep), QUESTION).inputs["pixel_values"]
    got = _blend(
        adapter, prepared, baseline, torch.from_numpy(keep)[None], box=FULL_IMAGE, mode="nearest"
    )
    views = adapter.pixel_views(prepared)
    got_views = adapter.pixel_values_to_views(got[0], prepared)
    want_views = adapter.pixel_values_to_views(expected, prepared)
    inside_checked = 0
    for view, a, b in zip(views, got_views, want_views, strict=True):
        ys, xs = _centres(view, image.size)
        scale = max(ys[-1] - ys[0], xs[-1] - xs[0]) / max(view.size)  # image px per view px
        margin = 4 * max(1.0, scale) + 2  # the widest filter's support (Lanczos: 3 px a side)
        out_y = np.maximum(np.maximum(b_top - ys, ys - b_bottom), 0)[:, None]
        out_x = np.maximum(np.maximum(b_left - xs, xs - b_right), 0)[None, :]
        in_y = np.minimum(ys - b_top, b_bottom - ys)[:, None]
        in_x = np.minimum(xs - b_left, b_right - xs)[None, :]
        far_out = np.maximum(out_y, out_x) > margin
        far_in = np.minimum(in_y, in_x) > margin
        far = torch.from_numpy(far_out | far_in)
        assert far.any(), f"{view.name}: no pixel far from the box's edges"
        torch.testing.assert_close(a[:, far], b[:, far], atol=1e-5, rtol=0, msg=view.name)
        inside_checked += int(far_in.sum())
    assert inside_checked > 0, "no view pixel checked inside the deleted box"


# ----------------------------------------------------------------------- properties
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_ones_give_the_image_and_zeros_the_baseline_exactly(tiny_adapter, family, mode):
    adapter = tiny_adapter(family)
    _, _, prepared, baseline = _prepared(adapter, family)
    masks = torch.stack([torch.ones(7, 5), torch.zeros(7, 5)])
    blended = _blend(adapter, prepared, baseline, masks, mode=mode)
    assert torch.equal(blended[0], prepared.inputs["pixel_values"])
    assert torch.equal(blended[1], baseline.inputs["pixel_values"])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_mask_on_one_box_changes_only_the_views_over_it(tiny_adapter, family):
    """Zero on a box B (the first view that is not the whole image: a tile or a crop; the
    left half for one view), one elsewhere: each view's pixels whose centres fall inside B
    take the baseline, every other pixel keeps the image, so views away from B do not change
    (a tile beside it) and views over it do (the thumbnail, the global image)."""
    adapter = tiny_adapter(family)
    _, _, prepared, baseline = _prepared(adapter, family)
    views = adapter.pixel_views(prepared)
    parts = [v for v in views if v.box != FULL_IMAGE]
    top, left, bottom, right = parts[0].box if parts else (0.0, 0.0, 1.0, 0.5)
    top, left, bottom, right = max(top, 0.0), max(left, 0.0), min(bottom, 1.0), min(right, 1.0)
    # a 3 x 3 mask whose middle cell is exactly B (nearest: a pixel takes the cell of its centre)
    box = (2 * top - bottom, 2 * left - right, 2 * bottom - top, 2 * right - left)
    mask = torch.ones(1, 3, 3)
    mask[0, 1, 1] = 0
    weight = adapter.mask_to_pixel_values(mask, prepared, box=box, mode="nearest")[0]
    blended = _blend(adapter, prepared, baseline, mask, box=box, mode="nearest")[0]
    pv = adapter.pixel_values_to_views(prepared.inputs["pixel_values"], prepared)
    changed = []
    for view, w, b, p in zip(
        views, adapter.pixel_values_to_views(weight, prepared),
        adapter.pixel_values_to_views(blended, prepared), pv, strict=True,
    ):  # fmt: skip
        ys, xs = _centres(view, (1, 1))  # fractions of the image
        rows = int(((ys > top) & (ys < bottom)).sum())
        cols = int(((xs > left) & (xs < right)).sum())
        assert int((w[0] == 0).sum()) == rows * cols, view.name
        assert int((w[0] == 1).sum()) == w[0].numel() - rows * cols, view.name
        changed.append(not torch.equal(b, p))
    assert changed[views.index(parts[0]) if parts else 0]
    if len(views) > 1:  # whole-image views change too, and some tile or crop does not
        assert all(c for v, c in zip(views, changed, strict=True) if v.box == FULL_IMAGE)
        assert not all(changed)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_reaches_the_mask_through_every_view(tiny_adapter, family):
    adapter = tiny_adapter(family)
    _, _, prepared, _ = _prepared(adapter, family)
    mask = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    weight = adapter.mask_to_pixel_values(mask, prepared)[0]
    for view, seen in zip(
        adapter.pixel_views(prepared), adapter.pixel_values_to_views(weight, prepared), strict=True
    ):
        (grad,) = torch.autograd.grad(seen.sum(), mask, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, view.name


@pytest.mark.parametrize("family", FAMILIES)
def test_one_view_over_the_mask_box_agrees_with_the_single_view_path(tiny_adapter, family):
    """Where one view covers the mask box (the families the old path served), a mask at its
    processed resolution is its weight exactly, and a coarse mask is the old path's bilinear
    upsampling (``F.interpolate``, align_corners=False) up to float rounding: measured at
    most 2.7e-6 over these families and mask shapes (F.interpolate's source coordinates are
    float32, ours float64), asserted 1e-5."""
    adapter = tiny_adapter(family)
    _, _, prepared, _ = _prepared(adapter, family)
    if len(adapter.pixel_views(prepared)) > 1:
        _, _, prepared, _ = _prepared(adapter, family, SPECS[family].native_size)
    views = adapter.pixel_views(prepared)
    if len(views) > 1:
        pytest.skip(f"{family} has {len(views)} views even at its native size")
    height, width = adapter.processed_size(prepared)
    assert (height, width) == views[0].size and adapter.mask_box(prepared) == views[0].box
    fine = torch.rand(2, height, width, generator=torch.Generator().manual_seed(1))
    (seen,) = adapter.pixel_values_to_views(
        adapter.mask_to_pixel_values(fine, prepared)[1], prepared
    )
    assert torch.equal(seen, fine[1].expand_as(seen))
    for shape in [(7, 5), (32, 32), (3, 17)]:
        coarse = torch.rand(2, *shape, generator=torch.Generator().manual_seed(2))
        old = F.interpolate(coarse[:, None], (height, width), mode="bilinear", align_corners=False)
        (seen,) = adapter.pixel_values_to_views(
            adapter.mask_to_pixel_values(coarse, prepared)[1], prepared
        )
        assert float((seen[0] - old[1, 0]).abs().max()) <= 1e-5, shape
    canvas = adapter.canvas_image(prepared)
    (view,) = adapter.pixel_values_to_views(prepared.inputs["pixel_values"], prepared)
    assert torch.equal(canvas, view.float())


def test_sample_mask_reads_a_crop_at_the_view_resolution():
    """Hand-computed: a 4-cell ramp over the image; a view of its right half at 2 px reads
    the cells' centres 2 and 3 (nearest) and, bilinearly, the ramp at 0.625 and 0.875."""
    mask = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])  # [1, 1, 4] over the whole image
    view = PixelView((0.0, 0.5, 1.0, 1.0), (1, 2))
    assert sample_mask(mask, FULL_IMAGE, view, "nearest").tolist() == [[[2.0, 3.0]]]
    # centres at x = 0.625, 0.875 of the image = mask px 2.5, 3.5 -> values 2.0, 3.0 (bilinear
    # between pixel centres k + 0.5, clamped at the last one)
    assert sample_mask(mask, FULL_IMAGE, view).tolist() == [[[2.0, 3.0]]]
    half = PixelView((0.0, 0.25, 1.0, 0.75), (1, 4))  # centres at 1.25, 1.75, 2.25, 2.75 px
    torch.testing.assert_close(
        sample_mask(mask, FULL_IMAGE, half), torch.tensor([[[0.75, 1.25, 1.75, 2.25]]])
    )
    coarse = PixelView(FULL_IMAGE, (1, 2))  # 2 mask px per view px: area-averaged first
    torch.testing.assert_close(sample_mask(mask, FULL_IMAGE, coarse), torch.tensor([[[0.5, 2.5]]]))


def test_bad_masks_and_families_without_views_are_named():
    from xattr.models.pixels import PixelMaskMixin

    view = PixelView(FULL_IMAGE, (2, 2))
    with pytest.raises(ValueError, match="unknown mask mode 'cubic'"):
        sample_mask(torch.ones(1, 2, 2), FULL_IMAGE, view, "cubic")
    with pytest.raises(ValueError, match=r"masks must be \[B, h, w\], got shape \(2, 2\)"):
        sample_mask(torch.ones(2, 2), FULL_IMAGE, view)

    class Bare(PixelMaskMixin):
        family = "bare"

    assert not Bare().has_pixel_path
    with pytest.raises(NotImplementedError, match="not supported for bare"):
        Bare().processed_size(None)


@pytest.mark.parametrize("family", ["internvl", "idefics3", "mllama"])
def test_the_canvas_image_is_the_tiles_stitched(tiny_adapter, family):
    """iGOS's image over the mask box (`canvas_image`, for its edge weights): where tiles
    partition the image at one resolution it is the tiles put side by side (mllama: cut at
    the image's edge, before the canvas padding), whatever coarser view covers them too."""
    adapter = tiny_adapter(family)
    _, _, prepared, _ = _prepared(adapter, family)
    views = adapter.pixel_views(prepared)
    images = adapter.pixel_values_to_views(prepared.inputs["pixel_values"], prepared)
    tiles = [(v, i) for v, i in zip(views, images, strict=True) if v.name.startswith("tile")]
    rows = 1 + max(int(v.name.split()[1].split(",")[0]) for v, _ in tiles)
    cols = len(tiles) // rows
    stitched = torch.cat(
        [torch.cat([i for _, i in tiles[r * cols : (r + 1) * cols]], dim=-1) for r in range(rows)],
        dim=-2,
    )  # [C, rows h, cols w]
    height, width = adapter.processed_size(prepared)
    assert len(tiles) > 1 and height <= stitched.shape[-2] and width <= stitched.shape[-1]
    assert torch.equal(adapter.canvas_image(prepared), stitched[:, :height, :width].float())
