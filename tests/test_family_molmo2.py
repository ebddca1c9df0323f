"""Molmo2's own rules: the pooling windows and crop boxes recomputed from the config against
the processor (real 378 px config, extreme aspects), each token lighting alone when its own
window is whitened (padded edge tokens, windows at a crop seam), the recorded mask (causal
OR both image tokens), the prompt's separators, and videos refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import xattr
from support.families import QUESTION, SPECS
from support.reference import single_thread  # noqa: F401 (pytest fixture)
from xattr.models import CaptureError
from xattr.models.molmo2 import (
    Molmo2TorchImageProcessor,
    crop_boxes,
    expected_pooling,
    view_grids,
)
from xattr.toy.build import build_tiny_model

SPEC = SPECS["molmo2"]
REAL = {  # Molmo2ImageProcessor's defaults (the released checkpoints)
    "size": {"height": 378, "width": 378},
    "patch_size": 14,
    "max_crops": 8,
    "overlap_margins": [4, 4],
    "pooling_size": [2, 2],
}
SIZES = [(378, 378), (640, 480), (480, 640), (1000, 120), (90, 1400), (50, 40), (1021, 1021)]

pytestmark = pytest.mark.usefixtures("single_thread")


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    width, height = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ------------------------------------------------------------------ geometry vs processor
@pytest.mark.parametrize("size", SIZES)
def test_grids_and_pooling_windows_match_the_real_config(size):
    """With the released config, ``image_grids`` is the two recomputed grids and every token
    of ``image_token_pooling`` pools exactly its own window (low-res patches, then canvas
    patches each read from the one crop whose interior holds it, -1 in padding slots)."""
    ip = Molmo2TorchImageProcessor(**REAL)
    out = ip(images=[_noise(size)], return_tensors="pt")
    low, high = view_grids(size, ip)
    assert low.shape == (14, 14)  # 27 x 27 patches padded to 28 x 28, pooled 2 x 2
    assert low.box == (0.0, 0.0, 28 / 27, 28 / 27)
    assert out["image_grids"][0].tolist() == [*low.shape, *high.shape]
    assert out["image_num_crops"].tolist() == [1 + len(crop_boxes(size, ip))]
    assert out["image_token_pooling"].tolist() == expected_pooling(size, ip)


def test_every_crop_patch_outside_the_overlaps_is_pooled_once():
    """The overlaps are dropped, not averaged: across all tokens each kept patch appears once,
    and the patches never pooled are exactly the inner margins of the crops."""
    ip = Molmo2TorchImageProcessor(**REAL)
    size = (640, 480)
    pooling = torch.tensor(expected_pooling(size, ip))
    used = pooling[pooling >= 0]
    assert used.unique().numel() == used.numel()
    boxes = crop_boxes(size, ip)
    rows = sorted({b[0] for b in boxes})
    cols = sorted({b[1] for b in boxes})
    side, margin = 27, 4
    per_crop = torch.zeros(len(boxes), side, side, dtype=torch.bool)
    for index in used.tolist():
        view, rest = divmod(index, side * side)
        if view:  # crops only (view 0 is the low-res image)
            per_crop[view - 1].view(-1)[rest] = True
    for k, (top, left, _, _) in enumerate(boxes):
        r, c = rows.index(top), cols.index(left)
        expected = torch.ones(side, side, dtype=torch.bool)
        if r > 0:
            expected[:margin] = False
        if r < len(rows) - 1:
            expected[side - margin :] = False
        if c > 0:
            expected[:, :margin] = False
        if c < len(cols) - 1:
            expected[:, side - margin :] = False
        assert torch.equal(per_crop[k], expected), k


@pytest.mark.parametrize("size", [(50, 40), (1000, 120), (90, 1400)])
def test_pixel_views_are_the_processors_crops(size):
    """View 0 is the whole image stretched to the crop size, views 1.. are the crop boxes
    of the canvas (the image stretched to it), read back from ``pixel_values``."""
    adapter_cls = xattr.models.ADAPTERS.get_class("molmo2")
    ip = Molmo2TorchImageProcessor(**REAL)
    image = _noise(size, seed=3)
    out = ip(images=[image], return_tensors="pt")
    views = adapter_cls.pixel_values_to_views(_Patch(14), out["pixel_values"], None)  # type: ignore[arg-type]
    x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()[None]
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)

    def stretched(h: int, w: int) -> torch.Tensor:
        y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return (y[0].round().clamp(0, 255) / 255 - mean) / std

    torch.testing.assert_close(views[0], stretched(378, 378), atol=1e-5, rtol=0)
    boxes = crop_boxes(size, ip)
    canvas_h = round(378 / (boxes[0][2] - boxes[0][0]))
    canvas_w = round(378 / (boxes[0][3] - boxes[0][1]))
    canvas = stretched(canvas_h, canvas_w)
    for view, (top, left, _, _) in zip(views[1:], boxes, strict=True):
        y0, x0 = round(top * canvas_h), round(left * canvas_w)
        torch.testing.assert_close(view, canvas[:, y0 : y0 + 378, x0 : x0 + 378], atol=1e-5, rtol=0)


class _Patch:
    """Stands in for an adapter where only the patch size matters."""

    def __init__(self, patch: int) -> None:
        self._patch = patch


def test_the_torch_image_processor_matches_the_torchvision_one():
    """Where torchvision exists, the stand-in gives the real processor's tensors exactly."""
    pytest.importorskip("torchvision")
    from transformers import Molmo2ImageProcessor

    for size in SIZES[:4]:
        image = _noise(size, seed=5)
        a = Molmo2ImageProcessor(**REAL)(images=[image], return_tensors="pt")
        b = Molmo2TorchImageProcessor(**REAL)(images=[image], return_tensors="pt")
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ each token's own pixels
@pytest.fixture(scope="module")
def odd_adapter(tmp_path_factory):
    """A tiny Molmo2 with 7 x 7-patch crops (odd, as the real 27 x 27): padded edge tokens."""
    out = tmp_path_factory.mktemp("molmo2_odd")
    return xattr.models.load(build_tiny_model("molmo2", out, seed=0, image_size=28))


def _visual_embeddings(adapter, image: Image.Image) -> tuple[torch.Tensor, object]:
    prepared = adapter.prepare(image, QUESTION)
    seen = {}

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()[0]

    handle = adapter.language_model().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**prepared.inputs)
    finally:
        handle.remove()
    return seen["embeds"][prepared.visual_index], prepared


@pytest.mark.parametrize("size", [(28, 28), (28, 48)])
def test_each_token_lights_alone_when_its_own_window_is_whitened(odd_adapter, size):
    """Images the size of the canvas (28 x 28: one crop; 28 x 48: two crops overlapping by 2
    patches): whitening the pixels of one cell of the high-res grid, clipped to the image
    (the padded last column holds one patch), changes that token the most, by a 1.5x margin."""
    width, height = size
    base_image = _noise(size, seed=7)
    arr = np.asarray(base_image).copy() // 6  # dark
    base, prepared = _visual_embeddings(odd_adapter, Image.fromarray(arr))
    grid = prepared.layout.grids[1]
    span = prepared.layout.slices()[1]
    assert grid.name == "high-res"
    top, left, bottom, right = grid.box
    assert bottom >= 1 and right > 1  # padded past the image on the right
    ratios = []
    for r in range(grid.rows):
        for c in range(grid.cols):
            y0 = round((top + r * (bottom - top) / grid.rows) * height)
            y1 = min(height, round((top + (r + 1) * (bottom - top) / grid.rows) * height))
            x0 = round((left + c * (right - left) / grid.cols) * width)
            x1 = min(width, round((left + (c + 1) * (right - left) / grid.cols) * width))
            lit = arr.copy()
            lit[y0:y1, x0:x1] = 255
            moved, _ = _visual_embeddings(odd_adapter, Image.fromarray(lit))
            change = (moved - base).norm(dim=-1)[span]
            top2 = change.topk(2).values
            assert int(change.argmax()) == r * grid.cols + c, (r, c)
            ratios.append(float(top2[0] / top2[1]))
    assert min(ratios) > 1.5  # measured 1.8: the ViT attends across the whole crop


def test_the_layout_refuses_a_processor_that_disagrees(tiny_adapter):
    adapter = tiny_adapter("molmo2")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    inputs = dict(prepared.inputs)
    inputs["image_token_pooling"] = inputs["image_token_pooling"].flip(0)
    with pytest.raises(xattr.layout.LayoutError, match="own window"):
        adapter.visual_layout(inputs, SPEC.geometry_size)
    with pytest.raises(xattr.layout.LayoutError, match="image_grids"):
        adapter.visual_layout(prepared.inputs, (SPEC.geometry_size[1], SPEC.geometry_size[0]))


# ------------------------------------------------------------------ prompt and mask
def test_patch_rows_are_closed_by_column_tokens_between_the_markers(tiny_adapter):
    adapter = tiny_adapter("molmo2")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    tok = adapter.tokenizer
    pieces = tok.convert_ids_to_tokens(prepared.prompt_ids.tolist())
    start = pieces.index("<low_res_im_start>")
    low, high = prepared.layout.grids
    expected = ["<low_res_im_start>"]
    for k, g in enumerate((low, high)):
        if k:
            expected.append("<im_start>")
        expected += (["<im_patch>"] * g.cols + ["<im_col>"]) * g.rows
        expected.append("<im_end>")
    assert pieces[start : start + len(expected)] == expected
    patch = tok.convert_tokens_to_ids("<im_patch>")
    assert torch.equal(prepared.visual_index, torch.nonzero(prepared.prompt_ids == patch).flatten())


def test_the_trace_records_causal_or_image_block(tiny_adapter):
    """Every token marked by ``mm_token_type_ids`` (patches and markers) sees every other one,
    later ones included; text and answer tokens are causal."""
    adapter = tiny_adapter("molmo2")
    image = SPEC.image(SPEC.geometry_size)
    answer = "red circle"
    trace = adapter.trace(image, QUESTION, answer, gradients=False)
    prepared = adapter.prepare(image, QUESTION)
    full = adapter.full_inputs(prepared, adapter.encode_answer(answer))
    types = full["mm_token_type_ids"][0].cpu()
    assert types[-2:].tolist() == [0, 0]
    marked = set(torch.nonzero(types).flatten().tolist())
    assert set(prepared.visual_index.tolist()) < marked  # separators are in the block too
    n = types.numel()
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    block = (types[:, None] == 1) & (types[None, :] == 1)
    expected = (j <= i) | block
    for layer in range(adapter.model.config.text_config.num_hidden_layers):
        assert torch.equal(trace.support(layer).cpu(), expected)
        attn = trace.attentions[layer]
        assert float(attn[:, ~expected].abs().max()) == 0.0
        assert bool((attn[:, expected] > 0).all())


def test_videos_are_refused_by_name(tiny_adapter):
    adapter = tiny_adapter("molmo2")
    image = SPEC.image()
    with pytest.raises(CaptureError, match="video"):
        adapter.prepare(image, "what happens in <|video|> here?")
    # a list is several images (tests/test_multi_image.py), a 4-d array frames
    with pytest.raises(CaptureError, match="frames"):
        adapter.prepare(np.zeros((2, 24, 24, 3), dtype=np.uint8), QUESTION)
    with pytest.raises(CaptureError, match="video"):
        adapter.prepare("clip.mp4", QUESTION)  # refused by name, before any file is read
