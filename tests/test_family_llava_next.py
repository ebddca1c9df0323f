"""LLaVA-NeXT's own rules: the anyres layout against the processor's token count and the model's
own packing (stitching, unpad, newline features), on the tiny model and the real geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from support.families import QUESTION
from xattr.models.llava_next import anyres_layout
from xattr.toy.tiny import llava_next as builder

# sizes (W, H): square, landscape and portrait with unpad, the 1 x 3 canvas, extreme aspects
# (down to an anyres grid unpadded to a single row), tiny and odd sizes
SIZES = [(32, 32), (150, 50), (300, 200), (200, 300), (100, 75), (64, 32), (33, 31), (57, 203),
         (400, 60), (60, 400), (1000, 90), (274, 21), (17, 9)]  # fmt: skip
SENTINEL = -7.0


def ramp_image(width: int, height: int) -> Image.Image:
    """A smooth image (R = x, G = y, B = (x + y) / 2) whose box means resampling keeps."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    arr = np.stack(np.broadcast_arrays(x[None, :], y[:, None], (x[None, :] + y[:, None]) / 2), -1)
    return Image.fromarray(np.round(arr * 255).astype(np.uint8))


def box_means(image: Image.Image, grid, n: int = 16) -> np.ndarray:
    """Mean RGB in [0, 1] of the image over every cell of ``grid`` (black outside): [cells, 3]."""
    arr = np.asarray(image, dtype=np.float64) / 255
    height, width = arr.shape[:2]
    top, left, bottom, right = grid.box
    out = []
    for r in range(grid.rows):
        for c in range(grid.cols):
            ys = top + (r + (np.arange(n) + 0.5) / n) * (bottom - top) / grid.rows
            xs = left + (c + (np.arange(n) + 0.5) / n) * (right - left) / grid.cols
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            inside = (yy >= 0) & (yy < 1) & (xx >= 0) & (xx < 1)
            rows = np.clip((yy * height).astype(int), 0, height - 1)
            cols = np.clip((xx * width).astype(int), 0, width - 1)
            out.append((arr[rows, cols] * inside[..., None]).mean(axis=(0, 1)))
    return np.stack(out)


def probe(adapter, image: Image.Image):
    """The LM's input embeddings [N, D] when every patch feature is the mean RGB of its
    pixels (dims 0..2) and the newline feature is a sentinel; the model's own code packs them."""
    model = adapter.model.model
    ip = adapter.processor.image_processor
    patch = int(adapter.model.config.vision_config.patch_size)
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    seen = {}

    def views(_module, args, kwargs):
        seen["pixels"] = (args[0] if args else kwargs["pixel_values"]) * std + mean

    def means(_module, _args, out):
        pix = seen["pixels"]  # [n_views, 3, T, T] in [0, 1]
        g = pix.shape[-1] // patch
        cells = pix[..., : g * patch, : g * patch].reshape(-1, 3, g, patch, g, patch)
        fake = torch.zeros_like(out)
        fake[..., :3] = cells.mean((3, 5)).permute(0, 2, 3, 1).reshape(-1, g * g, 3)
        return fake

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"][0]

    prepared = adapter.prepare(image, QUESTION)
    hooks = [
        model.vision_tower.register_forward_pre_hook(views, with_kwargs=True),
        model.multi_modal_projector.register_forward_hook(means),
        model.language_model.register_forward_pre_hook(grab, with_kwargs=True),
    ]
    saved = model.image_newline.data.clone()
    model.image_newline.data.fill_(SENTINEL)
    try:
        with torch.no_grad():
            adapter.model(**prepared.inputs)
    finally:
        model.image_newline.data.copy_(saved)
        for h in hooks:
            h.remove()
    return seen["embeds"], prepared


def check_packing(adapter, width: int, height: int, atol: float, median: float) -> None:
    """Every visual token holds the mean of the image over its cell's box (largest error per
    grid below ``atol``, median below ``median``); newline features sit exactly at the
    image-token positions the layout leaves out."""
    image = ramp_image(width, height)
    embeds, prepared = probe(adapter, image)
    ids = prepared.prompt_ids
    image_positions = torch.nonzero(ids == adapter.image_token_id).flatten()
    is_newline = (embeds[:, :3] == SENTINEL).all(-1)
    visual = set(prepared.visual_index.tolist())
    assert visual | set(torch.nonzero(is_newline).flatten().tolist()) == set(
        image_positions.tolist()
    )
    assert not is_newline[prepared.visual_index].any()
    layout = prepared.layout
    for grid, values in zip(layout.grids, layout.split(embeds[prepared.visual_index, :3].T)):
        got = values.permute(1, 2, 0).reshape(-1, 3).numpy()  # [cells, 3]
        err = np.abs(got - box_means(image, grid)).max(-1)
        assert np.median(err) < median and err.max() < atol, (width, height, grid.name)


@pytest.mark.parametrize("size", SIZES)
def test_layout_matches_the_model_packing(tiny_adapter, size):
    """A cell off by one is 1/12 of the ramp or more here; resampling errs below 0.01."""
    check_packing(tiny_adapter("llava_next"), *size, atol=0.02, median=0.01)


def test_grids_of_a_landscape_image(tiny_adapter):
    """300 x 200 on 32 px tiles: 2 x 2 tile canvas, 64 x 43 resized, rows 1..7 of 8 kept."""
    layout = tiny_adapter("llava_next").prepare(ramp_image(300, 200), QUESTION).layout
    base, tiles = layout.grids
    assert (base.shape, base.box) == ((4, 4), (0.0, 0.0, 1.0, 1.0))
    assert tiles.shape == (6, 8)
    np.testing.assert_allclose(tiles.box, (-2 / 43, 0, 46 / 43, 1))  # cells 8 px, pad 10 px
    assert layout.positions.numel() == 16 + 48  # 70 image tokens less 6 newlines


def test_real_geometry_token_counts_match_the_processor():
    """llava-v1.6's 336 / 14 tiles and pinpoints: the layout's count is the processor's."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=pinpoints,
    )
    tok = builder.tokenizer()
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    image_id = tok.convert_tokens_to_ids("<image>")
    for width, height in [(300, 200), (200, 300), (640, 480), (1000, 90), (337, 1500), (50, 50)]:
        out = proc(images=[Image.new("RGB", (width, height))], text=["<image>"])
        count = out["input_ids"][0].count(image_id)
        layout = anyres_layout((height, width), tile=336, patch=14, pinpoints=pinpoints)
        assert layout.num_tokens == count, (width, height)
    # the notes' numbers: 300 x 200 -> 576 + 24 x (36 + 1); 200 x 300 -> 576 + 24 x (16 + 1)
    assert anyres_layout((200, 300), tile=336, patch=14, pinpoints=pinpoints).num_tokens == 1464
    assert anyres_layout((300, 200), tile=336, patch=14, pinpoints=pinpoints).num_tokens == 984
