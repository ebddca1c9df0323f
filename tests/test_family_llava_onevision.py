"""LLaVA-OneVision's own rules: LLaVA-NeXT's layout plus anyres_max_9 downsampling and the
unseen strip of every tile, against the model's own packing and the processor's counts."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import xattr
from test_family_llava_next import check_packing
from xattr.layout import LayoutError
from xattr.models.llava_next import anyres_layout
from xattr.toy.build import build_tiny_model
from xattr.toy.tiny import llava_onevision as builder

# (W, H): one tile, the 1 x 3 canvas, downsampled landscape / portrait grids (300 x 200: 16 x 24
# stitched cells -> 9 x 14), unpadded and downsampled at once, extreme and odd aspects
SIZES = [(32, 32), (96, 32), (300, 200), (200, 300), (150, 50), (400, 100), (97, 61), (61, 97),
         (33, 250), (500, 40), (17, 9)]  # fmt: skip


@pytest.fixture(scope="module")
def seams_adapter(tmp_path_factory):
    """OneVision on 36 px tiles of 8 px patches: the last 4 px of every tile unseen, like the
    real 384 / 14 (6 px), so the stitched grid has gaps at the tile seams."""
    out = build_tiny_model("llava_onevision", tmp_path_factory.mktemp("ov36"), image_size=36)
    return xattr.models.load(out)


@pytest.mark.parametrize("size", SIZES)
def test_layout_matches_the_model_packing(tiny_adapter, size):
    """Bilinear downsampling of a linear ramp keeps the box means: as exact as LLaVA-NeXT."""
    check_packing(tiny_adapter("llava_onevision"), *size, atol=0.02, median=0.01)


@pytest.mark.parametrize("size", SIZES)
def test_layout_with_unseen_tile_strips_matches_the_model_packing(seams_adapter, size):
    """Uniform cells over the box from the first to the last seen cell drift by up to half a
    seam (2 px of an 8 px cell here, like 3 of 14 px in the real model): errors up to 0.035."""
    check_packing(seams_adapter, *size, atol=0.05, median=0.025)


def test_downsampled_grid_of_a_landscape_image(tiny_adapter):
    """300 x 200: 4 x 6 tiles, 16 x 24 stitched cells, ratio sqrt(384 / 144) -> 9 x 14."""
    adapter = tiny_adapter("llava_onevision")
    prepared = adapter.prepare(Image.new("RGB", (300, 200)), "what color is the circle?")
    base, tiles = prepared.layout.grids
    assert (base.shape, tiles.shape, tiles.box) == ((4, 4), (9, 14), (0.0, 0.0, 1.0, 1.0))
    n_image = int((prepared.prompt_ids == adapter.image_token_id).sum())
    assert n_image == 16 + 9 * 15 and prepared.layout.positions.numel() == 16 + 9 * 14


def test_real_geometry_token_counts_match_the_processor():
    """llava-onevision's 384 / 14 tiles, 6 x 6 pinpoints, anyres_max_9: counts agree."""
    from transformers import LlavaOnevisionImageProcessorPil

    from xattr.models.processors import IMAGE_ONLY_PROCESSORS

    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    ip = LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_grid_pinpoints=pinpoints, do_pad=True
    )
    tok = builder.tokenizer()
    proc = IMAGE_ONLY_PROCESSORS["llava_onevision"](
        image_processor=ip,
        tokenizer=tok,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
    )
    image_id = tok.convert_tokens_to_ids("<image>")
    for width, height in [(300, 200), (200, 300), (640, 480), (1920, 1080), (90, 1000), (50, 50)]:
        out = proc(images=[Image.new("RGB", (width, height))], text=["<image>"])
        count = out["input_ids"][0].count(image_id)
        layout = anyres_layout(
            (height, width), tile=384, patch=14, pinpoints=pinpoints, max_num_patches=9
        )
        assert layout.num_tokens == count, (width, height)
    # the notes' numbers: 300 x 200 -> 729 + 19 x 28; 1920 x 1080 -> 60 x 108 after downsampling
    small = anyres_layout((200, 300), tile=384, patch=14, pinpoints=pinpoints, max_num_patches=9)
    large = anyres_layout((1080, 1920), tile=384, patch=14, pinpoints=pinpoints, max_num_patches=9)
    assert (small.num_tokens, (small.rows, small.cols)) == (1261, (19, 27))
    assert (large.rows, large.cols) == (60, 108)
    assert small.base_box == (0.0, 0.0, 378 / 384, 378 / 384)  # 6 px of the tile unseen


def test_a_prompt_with_several_images_is_refused(tiny_adapter):
    adapter = tiny_adapter("llava_onevision")
    inputs = {
        "input_ids": torch.full((1, 34), adapter.image_token_id),
        "image_sizes": torch.tensor([[32, 32], [32, 32]]),
        "batch_num_images": torch.tensor([2]),
    }
    with pytest.raises(LayoutError, match="2 images"):
        adapter.visual_layout(inputs, (32, 32))
