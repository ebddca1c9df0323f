"""InternVL's own rules: the tiling recomputed from the processor config against what the
processor emits (real 448 px tiles), tile and thumbnail boxes against the pixels the
processor emits, the prompt's single image block, and a Qwen2 language model too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers import GotOcr2ImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import xattr
from support.families import QUESTION, SPECS, assert_same_maps, explain_quietly
from xattr.layout import LayoutError
from xattr.models import internvl
from xattr.models.internvl import view_grids
from xattr.models.processors import IMAGE_ONLY_PROCESSORS
from xattr.toy.build import build_tiny_model
from xattr.toy.tiny import internvl as builder

SPEC = SPECS["internvl"]
METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]
REAL_SIDE = 16  # 448 px views, 14 px patches, pixel shuffle 0.5


def _real_processor(adapter):
    """The processor of the InternVL3 / 3.5 -HF checkpoints (448 px tiles, 1..12 of them,
    256 tokens per view) around the tiny tokenizer."""
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448},
        min_patches=1,
        max_patches=12,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
    return IMAGE_ONLY_PROCESSORS["internvl"](
        image_processor=image_processor,
        tokenizer=adapter.tokenizer,
        image_seq_length=REAL_SIDE**2,
        chat_template=builder.CHAT_TEMPLATE,
    )


@pytest.fixture(scope="module")
def real_processor(tiny_adapter):
    return _real_processor(tiny_adapter("internvl"))


@pytest.mark.parametrize(
    ("size", "canvas"),
    [
        ((300, 200), (2, 3)),  # (rows, cols) of tiles; a thumbnail follows
        ((200, 300), (3, 2)),
        ((448, 448), (1, 1)),  # one view, no thumbnail
        ((1000, 300), (1, 3)),
        ((640, 480), (3, 4)),
        ((896, 896), (2, 2)),
        ((2000, 300), (1, 7)),
    ],
)
def test_the_recomputed_tiling_is_what_the_processor_emits(real_processor, size, canvas):
    image = SPEC.image(size)
    grids = view_grids(size, real_processor.image_processor, REAL_SIDE)
    rows, cols = canvas
    tiles = [g for g in grids if g.name.startswith("tile")]
    assert len(tiles) == (rows * cols if rows * cols > 1 else 0)
    assert [g.name for g in grids][-1] == ("thumbnail" if rows * cols > 1 else "image")
    # what the processor emits: one pixel_values view per grid, one <IMG_CONTEXT> per cell,
    # the whole run between one <img> and one </img>
    out = real_processor(images=[image], text=["<IMG_CONTEXT>\n" + QUESTION], return_tensors="pt")
    views = rows * cols + 1 if rows * cols > 1 else 1  # the tiles and a thumbnail, or one view
    assert out["pixel_values"].shape[0] == len(grids) == views
    ids = out["input_ids"][0]
    context = torch.nonzero(ids == real_processor.image_token_id).flatten()
    assert context.numel() == sum(g.cells for g in grids) == len(grids) * REAL_SIDE**2
    assert torch.equal(context, torch.arange(int(context[0]), int(context[0]) + context.numel()))
    assert int(ids[context[0] - 1]) == real_processor.start_image_token_id
    assert int(ids[context[-1] + 1]) == real_processor.end_image_token_id


def test_tile_and_thumbnail_boxes_hold_the_pixels_the_processor_emits(real_processor):
    """A white block on a 300 x 200 image: in every view (6 tiles, the thumbnail) the
    brightness of each token's 28 x 28 px cell follows the overlap of its box with the block."""
    width, height = 300, 200
    top, left, bottom, right = 40, 200, 90, 260  # pixels
    image = SPEC.image((width, height), block=(top, left, bottom, right))
    pv = real_processor(images=[image], text=["<IMG_CONTEXT>\n" + QUESTION], return_tensors="pt")[
        "pixel_values"
    ]  # [7, 3, 448, 448]
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    grids = view_grids((width, height), real_processor.image_processor, REAL_SIDE)
    assert len(grids) == pv.shape[0] == 7
    bright, overlap = [], []
    block = (top / height, left / width, bottom / height, right / width)
    for view, grid in zip(pv, grids, strict=True):
        cells = (view * std + mean).mean(0).reshape(16, 28, 16, 28).mean((1, 3))  # [16, 16]
        t0, l0, b0, r0 = grid.box
        h, w = (b0 - t0) / 16, (r0 - l0) / 16
        ov = torch.zeros(16, 16)
        for r in range(16):
            for c in range(16):
                y0, x0 = t0 + r * h, l0 + c * w
                dy = max(0.0, min(y0 + h, block[2]) - max(y0, block[0]))
                dx = max(0.0, min(x0 + w, block[3]) - max(x0, block[1]))
                ov[r, c] = dy * dx / (h * w)
        if ov.max() > 0:  # the brightest cell is one the block covers most
            assert ov.flatten()[cells.argmax()] == ov.max(), grid.name
        bright.append(cells.flatten())
        overlap.append(ov.flatten())
    corr = np.corrcoef(torch.cat(bright).numpy(), torch.cat(overlap).numpy())[0, 1]
    assert corr > 0.99


def test_the_views_form_one_block_between_img_markers(tiny_adapter):
    adapter = tiny_adapter("internvl")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    names = [g.name for g in prepared.layout.grids]
    assert names == [f"tile {r},{c}" for r in range(3) for c in range(3)] + ["thumbnail"]
    ids, pos = prepared.prompt_ids, prepared.visual_index
    assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + 10 * 16))
    assert int(ids[pos[0] - 1]) == adapter.processor.start_image_token_id
    assert int(ids[pos[-1] + 1]) == adapter.processor.end_image_token_id


def test_a_tiling_rule_the_processor_does_not_follow_is_refused_by_name(tiny_adapter, monkeypatch):
    """If a transformers release changed the canvas rule the adapter recomputes, prepare
    refuses the image, naming the family, the version and both counts; no map is made."""
    adapter = tiny_adapter("internvl")
    image = SPEC.image(SPEC.geometry_size)
    monkeypatch.setattr(internvl, "get_optimal_tiled_canvas", lambda *args: (2, 2))
    with pytest.raises(LayoutError) as caught:
        adapter.prepare(image, QUESTION)
    message = str(caught.value)
    assert "internvl adapter" in message and f"transformers {transformers.__version__}" in message
    assert "emitted 10 view(s) and 160 image tokens" in message and "into 5 view(s)" in message
    with pytest.raises(LayoutError, match="emitted 10 view"):
        xattr.explain(adapter, image, QUESTION, answer="red circle", method="raw_attention")


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_internvl_qwen2")
    return build_tiny_model("internvl", out, text_model_type="qwen2")


def test_a_qwen2_language_model_runs_every_method_and_sdpa_agrees(qwen2_dir):
    eager = xattr.models.load(qwen2_dir)
    sdpa = xattr.models.load(qwen2_dir, attn_implementation="sdpa")
    assert type(eager.language_model()).__name__ == "Qwen2Model"
    image = SPEC.image(SPEC.geometry_size)
    a = explain_quietly(eager, image, METHODS, "red circle")
    assert all([m.shape for m in x.visual_maps] == [(4, 4)] * 10 for x in a.values())
    assert_same_maps(explain_quietly(sdpa, image, METHODS, "red circle"), a)
