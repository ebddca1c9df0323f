"""Idefics3's own rules: tiles stitched into one grid plus the global view, against the model's
own frame order and pixel shuffle, the prompt's tags and the processor's real-geometry tiling."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import xattr
from support.families import QUESTION
from test_family_llava_next import box_means, ramp_image
from xattr.layout import LayoutError
from xattr.models.idefics3 import Idefics3Adapter
from xattr.toy.build import build_tiny_model
from xattr.toy.tiny import idefics3 as builder

# (W, H) on the tests' model (long side -> 96 px, 32 px frames): square, 1 x 3, 2 x 3 and 3 x 2
# (stretched), small images upscaled, extreme aspects (1 x 3 at most), odd sizes
SIZES = [(96, 96), (96, 32), (300, 200), (200, 300), (40, 30), (500, 20), (20, 500), (97, 61),
         (17, 9)]  # fmt: skip


def probe(adapter, image: Image.Image):
    """The LM's input embeddings [N, D] when every vision patch feature is the mean RGB of its
    pixels (dims 0..2) and the connector averages the s x s patches it merges; the model's own
    frame handling and pixel shuffle place them."""
    model = adapter.model.model
    ip = adapter.processor.image_processor
    config = adapter.model.config
    patch, scale = int(config.vision_config.patch_size), int(config.scale_factor)
    dv = int(config.vision_config.hidden_size)
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    seen = {}

    def means(_module, _args, kwargs, out):
        pix = kwargs["pixel_values"] * std + mean  # [frames, 3, M, M] in [0, 1]
        g = pix.shape[-1] // patch
        cells = pix[..., : g * patch, : g * patch].reshape(-1, 3, g, patch, g, patch)
        fake = torch.zeros_like(out.last_hidden_state)
        fake[..., :3] = cells.mean((3, 5)).permute(0, 2, 3, 1).reshape(-1, g * g, 3)
        out.last_hidden_state = fake
        return out

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"][0]

    proj = model.connector.modality_projection.proj
    saved = proj.weight.data.clone()
    selector = torch.zeros_like(proj.weight)  # [Dt, Dv s^2]: mean of the s^2 merged patches
    for sub in range(scale * scale):
        for c in range(3):
            selector[c, sub * dv + c] = 1 / scale**2
    prepared = adapter.prepare(image, QUESTION)
    hooks = [
        model.vision_model.register_forward_hook(means, with_kwargs=True),
        model.text_model.register_forward_pre_hook(grab, with_kwargs=True),
    ]
    proj.weight.data.copy_(selector)
    try:
        with torch.no_grad():
            adapter.model(**prepared.inputs)
    finally:
        proj.weight.data.copy_(saved)
        for h in hooks:
            h.remove()
    return seen["embeds"], prepared


def check_packing(adapter, width: int, height: int, atol: float, median: float) -> None:
    """Every visual token holds the mean of the image over its cell's box."""
    image = ramp_image(width, height)
    embeds, prepared = probe(adapter, image)
    layout = prepared.layout
    for grid, values in zip(layout.grids, layout.split(embeds[prepared.visual_index, :3].T)):
        got = values.permute(1, 2, 0).reshape(-1, 3).numpy()  # [cells, 3]
        err = np.abs(got - box_means(image, grid)).max(-1)
        assert np.median(err) < median and err.max() < atol, (width, height, grid.name, err.max())


@pytest.mark.parametrize("size", SIZES)
def test_layout_matches_the_model_packing(tiny_adapter, size):
    """A cell off by one is 1/6 of the ramp or more here; LANCZOS errs below 0.01."""
    check_packing(tiny_adapter("idefics3"), *size, atol=0.02, median=0.01)


def test_an_unsplit_image_is_one_grid(tmp_path):
    """A long side resized to one frame: no tiles, one ``<global-img>`` frame, one grid."""
    adapter = xattr.models.load(build_tiny_model("idefics3", tmp_path, longest_edge_tiles=1))
    layout = adapter.prepare(ramp_image(90, 60), QUESTION).layout
    assert [(g.name, g.shape, g.box) for g in layout.grids] == [
        ("image", (2, 2), (0.0, 0.0, 1.0, 1.0))
    ]
    check_packing(adapter, 90, 60, atol=0.02, median=0.01)


def test_the_stitched_grid_reads_each_tile_in_place(tiny_adapter):
    """300 x 200 -> 96 x 64 -> 2 x 3 tiles: stitched cell (R, C) is token (R % 2, C % 2) of
    tile (R // 2, C // 2), tiles in prompt order after <row_r_col_c> tags."""
    adapter = tiny_adapter("idefics3")
    prepared = adapter.prepare(ramp_image(300, 200), QUESTION)
    ids = prepared.prompt_ids
    tiles, glob = prepared.layout.grids
    assert (tiles.shape, glob.shape) == ((4, 6), (2, 2))
    tok = adapter.tokenizer
    positions = prepared.visual_index[: tiles.cells].view(4, 6)
    for r in range(2):
        for c in range(3):
            tag = tok.convert_tokens_to_ids(f"<row_{r + 1}_col_{c + 1}>")
            start = int(torch.nonzero(ids == tag)) + 1
            block = positions[2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            assert block.reshape(-1).tolist() == list(range(start, start + 4))
    start = int(torch.nonzero(ids == tok.convert_tokens_to_ids("<global-img>"))) + 1
    assert prepared.visual_index[tiles.cells :].tolist() == list(range(start, start + 4))


def real_geometry(family_processor, tile: int, patch: int, scale: int, longest: int):
    """An adapter over a stand-in model config and the real processor geometry (no weights)."""
    from transformers import Idefics3Config

    tok = builder.tokenizer()
    ip_kwargs = builder.image_processor_kwargs(tile, 1)
    ip_kwargs["size"] = {"longest_edge": longest}
    side = (tile // patch) // scale
    proc = family_processor(ip_kwargs, tok, side * side)
    config = Idefics3Config(
        vision_config={"image_size": tile, "patch_size": patch},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    adapter = Idefics3Adapter.__new__(Idefics3Adapter)  # no model: the layout needs its config
    adapter.model, adapter.processor = SimpleNamespace(config=config), proc
    return adapter


def _idefics3_processor(ip_kwargs, tok, image_seq_len):
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    ip = Idefics3ImageProcessorPil(**ip_kwargs)
    return Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=image_seq_len)


def check_real_geometry(adapter, sizes, expected) -> None:
    """The layout of the real processor's prompts: every image token in V once, grids as given."""
    for (width, height), shapes in zip(sizes, expected, strict=True):
        inputs = adapter.processor(
            images=[Image.new("RGB", (width, height))], text=["<image>"], return_tensors="pt"
        )
        layout = adapter.visual_layout(dict(inputs), (width, height))
        n_image = int((inputs["input_ids"][0] == adapter.image_token_id).sum())
        assert layout.positions.unique().numel() == n_image, (width, height)
        assert [g.shape for g in layout.grids] == shapes, (width, height)


def test_real_geometry_tiles_and_tags_match_the_processor():
    """Idefics3-8B-Llama3: 364 px frames, 14 px patches, shuffle 2 (13 x 13), long side 1456."""
    adapter = real_geometry(_idefics3_processor, 364, 14, 2, 1456)
    sizes = [(300, 200), (200, 300), (640, 480), (1456, 364), (2000, 100)]
    # 300 x 200 -> 1456 x 971 -> 1456 x 1092: 3 x 4 tiles (the notes' 13 x 169 = 2197 tokens)
    expected = [[(39, 52), (13, 13)], [(52, 39), (13, 13)], [(39, 52), (13, 13)],
                [(13, 52), (13, 13)], [(13, 52), (13, 13)]]  # fmt: skip
    check_real_geometry(adapter, sizes, expected)


def test_a_prompt_whose_frames_disagree_with_the_image_is_named(tiny_adapter):
    adapter = tiny_adapter("idefics3")
    prepared = adapter.prepare(ramp_image(300, 200), QUESTION)
    with pytest.raises(LayoutError, match="expected 10 frames"):
        adapter.visual_layout(prepared.inputs, (96, 96))  # 3 x 3 tiles, the prompt holds 2 x 3
