"""Ovis2's own rules: the canvas the prompt's separators state against the views the
real-settings processor emits (448 px views, 256 soft tokens each; extreme aspect ratios and
transformers' transposed canvases included), tile and thumbnail boxes against its pixels,
each visual token's embedding as a probability mixture of visual words, the indicator
tokens kept out of V, faithfulness in image space, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from support.families import (
    QUESTION,
    SPECS,
    check_one_view_raster_order,
    explain_quietly,
)
from xattr.layout import LayoutError
from xattr.metrics.faithfulness import DeletionInsertion
from xattr.models import CaptureError
from xattr.models.ovis2 import INDICATORS, Ovis2Adapter
from xattr.toy.tiny import ovis2 as builder

SPEC = SPECS["ovis2"]
REAL_SIDE = 16  # 448 px views, 14 px patches, hidden_stride 2


@pytest.fixture
def real_adapter(tiny_adapter, monkeypatch):
    """The tiny adapter with the checkpoints' processor settings and view size."""
    adapter = tiny_adapter("ovis2")
    tokens = REAL_SIDE**2
    real = builder.processor(adapter.tokenizer, builder.REAL_TILE, tokens, builder.REAL_MAX_TILES)
    monkeypatch.setattr(adapter, "processor", real)
    monkeypatch.setattr(Ovis2Adapter, "view_side", property(lambda self: REAL_SIDE))
    return adapter


def _inputs(adapter, image) -> dict:
    return adapter.process(image, adapter.prompt_text(QUESTION))


@pytest.mark.parametrize(
    ("size", "canvas"),
    [
        ((448, 448), (1, 1)),  # (rows, cols) of tiles; one view, no thumbnail
        ((20, 20), (1, 1)),
        ((896, 896), (2, 2)),
        ((640, 480), (2, 2)),
        # transformers 5.25 transposes every non-square covering grid (module docstring)
        ((600, 400), (2, 1)),
        ((1344, 448), (3, 1)),
        ((448, 1344), (1, 3)),
        ((5000, 100), (11, 1)),  # 11 bands cover 97% at full resolution: the fewest over 90%
        ((100, 5000), (1, 11)),
    ],
)
def test_the_canvas_the_separators_state_is_what_the_processor_emits(real_adapter, size, canvas):
    inputs = _inputs(real_adapter, SPEC.image(size))
    layout = real_adapter.visual_layout(inputs, size)
    rows, cols = canvas
    tiled = rows * cols > 1
    tiles = [
        (f"tile {r},{c}", (r / rows, c / cols, (r + 1) / rows, (c + 1) / cols))
        for r in range(rows)
        for c in range(cols)
    ]
    whole = (0.0, 0.0, 1.0, 1.0)
    expected = [("thumbnail", whole), *tiles] if tiled else [("image", whole)]
    assert [(g.name, g.box) for g in layout.grids] == expected
    assert inputs["pixel_values"].shape[0] == len(layout.grids) == (rows * cols + 1 if tiled else 1)
    ids = inputs["input_ids"][0]
    marker = dict(zip(INDICATORS, real_adapter.tokenizer.convert_tokens_to_ids(list(INDICATORS))))
    assert int((ids == marker["<IMG_ROW>"]).sum()) == rows - 1
    assert int((ids == marker["<IMG_COL>"]).sum()) == rows * (cols - 1)
    atoms = torch.nonzero(ids == real_adapter.image_token_id).flatten()
    assert torch.equal(atoms, layout.positions) and atoms.numel() == len(layout.grids) * 256
    start, grid = (int(torch.nonzero(ids == marker[m])[0, 0]) for m in INDICATORS[:2])
    assert torch.equal(atoms[:256], torch.arange(start + 1, grid))  # the first view, then the grid


def test_thumbnail_and_tile_boxes_hold_the_pixels_the_processor_emits(real_adapter):
    """A white block on a 600 x 400 image (a transposed 2 x 1 canvas): in every view the
    brightness of each token's 28 x 28 px square follows the overlap of its box with the block."""
    width, height = 600, 400
    top, left, bottom, right = 60, 380, 150, 520  # pixels
    image = SPEC.image((width, height), block=(top, left, bottom, right))
    inputs = _inputs(real_adapter, image)
    grids = real_adapter.visual_layout(inputs, (width, height)).grids
    pv = inputs["pixel_values"]  # [3, 3, 448, 448]
    assert [g.name for g in grids] == ["thumbnail", "tile 0,0", "tile 1,0"] and pv.shape[0] == 3
    mean = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
    std = torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    n, px = REAL_SIDE, builder.REAL_PATCH * builder.HIDDEN_STRIDE
    block = (top / height, left / width, bottom / height, right / width)
    bright, overlap = [], []
    for view, grid in zip(pv, grids, strict=True):
        cells = (view * std + mean).mean(0).reshape(n, px, n, px).mean((1, 3))  # [16, 16]
        t0, l0, b0, r0 = grid.box
        h, w = (b0 - t0) / n, (r0 - l0) / n
        ov = torch.zeros(n, n)
        for r in range(n):
            for c in range(n):
                y0, x0 = t0 + r * h, l0 + c * w
                dy = max(0.0, min(y0 + h, block[2]) - max(y0, block[0]))
                dx = max(0.0, min(x0 + w, block[3]) - max(x0, block[1]))
                ov[r, c] = dy * dx / (h * w)
        if ov.max() > 0:  # the brightest square is one the block covers most
            assert ov.flatten()[cells.argmax()] == ov.max(), grid.name
        bright.append(cells.flatten())
        overlap.append(ov.flatten())
    corr = np.corrcoef(torch.cat(bright).numpy(), torch.cat(overlap).numpy())[0, 1]
    assert corr > 0.99


def test_a_visual_token_is_a_probability_mixture_of_visual_words(tiny_adapter):
    """At each <IMG_ATOM> the language model gets p @ E (p: the cell's softmax over the visual
    words, E: the visual table); the indicator tokens get E's last five rows, image-free."""
    adapter = tiny_adapter("ovis2")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    seen = {}
    hook = adapter.language_model().register_forward_pre_hook(
        lambda _m, _a, kw: seen.update(embeds=kw["inputs_embeds"].detach()[0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            adapter.model(**prepared.inputs)
            probs = adapter.model.model.vision_tower(prepared.inputs["pixel_values"]).pooler_output
    finally:
        hook.remove()
    table = adapter.model.model.visual_embeddings_table.weight  # [words + 5, D]
    words = probs.shape[-1]
    assert words == builder.VISUAL_WORDS and table.shape[0] == words + len(INDICATORS)
    probs = probs.reshape(-1, words)  # [|V|, words], view after view
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]))
    assert float(probs.max()) < 0.5  # soft: no cell is one visual word
    expected = probs @ table[:words]
    torch.testing.assert_close(seen["embeds"][prepared.visual_index], expected)
    ids = prepared.prompt_ids
    for k, token_id in enumerate(adapter.model.config.visual_indicator_token_ids):
        rows = seen["embeds"][ids == token_id]
        assert rows.shape[0] >= 1 and torch.equal(rows, table[words + k].expand_as(rows))
        assert int(token_id) not in set(ids[prepared.visual_index].tolist())


def test_the_tiny_prompt_holds_the_thumbnail_then_nine_tiles(tiny_adapter):
    adapter = tiny_adapter("ovis2")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    names = [g.name for g in prepared.layout.grids]
    assert names == ["thumbnail"] + [f"tile {r},{c}" for r in range(3) for c in range(3)]
    assert prepared.grids == [(4, 4)] * 10
    assert int(prepared.prompt_index[0]) > int(prepared.visual_index[-1])


def test_the_merged_tokens_are_in_raster_order_over_a_view(tiny_adapter):
    """After the 2 x 2 hidden-stride merge, token (r, c) of a view holds that view's (r, c) square:
    whitening exactly one token's square changes that token, and it alone by a clear margin."""
    check_one_view_raster_order(tiny_adapter("ovis2"), SPEC)


def test_views_the_separators_do_not_state_are_refused(tiny_adapter):
    adapter = tiny_adapter("ovis2")
    image = SPEC.image(SPEC.geometry_size)
    inputs = _inputs(adapter, image)
    inputs["pixel_values"] = inputs["pixel_values"][:5]
    with pytest.raises(LayoutError, match="emitted 5 view.*3 x 3 canvas, 10 view"):
        adapter.visual_layout(inputs, image.size)


def test_faithfulness_blends_every_view_in_pixel_values_space(tiny_adapter):
    """Thumbnail and tiles are views of one image (`ViewPerGridPixels`): deletion / insertion
    blend each view's pixel_values with the same image-space mask. (The random tiny model's
    answer barely depends on the image, so the curves are normalised without a minimum span.)"""
    adapter = tiny_adapter("ovis2")
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    expl = explain_quietly(adapter, image, ["raw_attention"], "red circle")["raw_attention"]
    metric = DeletionInsertion(
        fractions=[0.0, 0.5, 1.0], curves=["deletion", "insertion"], min_span=0.0
    )
    prepared = adapter.prepare(image, QUESTION)
    assert metric._processed_space(adapter) and len(adapter.pixel_views(prepared)) > 1
    out = metric(adapter, image, QUESTION, trace, expl)
    assert out["faithfulness_passes"] == metric.forward_passes() == 4
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("marker", ["<image>", "<IMG_ATOM>", "<IMG_START>", "<IMG_ROW>"])
def test_a_question_holding_an_image_marker_is_named(tiny_adapter, marker):
    adapter = tiny_adapter("ovis2")
    with pytest.raises(CaptureError, match="stand for an image"):
        adapter.prepare(SPEC.image(), f"{marker} {QUESTION}")


def test_an_answer_holding_an_indicator_token_is_refused(tiny_adapter):
    adapter = tiny_adapter("ovis2")
    ids = torch.tensor(adapter.tokenizer.convert_tokens_to_ids(["red", "<IMG_COL>"]))
    with pytest.raises(CaptureError, match="IMG_COL"):
        adapter.check_answer_ids(ids)
