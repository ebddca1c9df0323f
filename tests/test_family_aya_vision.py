"""Aya Vision's own rules: the tiling recomputed from the processor config against what the
real-settings processor emits (364 px tiles, 169 tokens per view, extreme aspect ratios
included), tile and thumbnail boxes against its pixels, the tile tags between the views,
each Cohere2 layer's real mask (sliding window or global) in the trace, the logit scale in
the logit lens, faithfulness in image space, a Cohere (Command R) language model, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers

import xattr
from support.families import (
    QUESTION,
    SPECS,
    assert_same_maps,
    check_one_view_raster_order,
    explain_quietly,
)
from xattr.layout import LayoutError
from xattr.metrics.faithfulness import DeletionInsertion
from xattr.models import CaptureError, internvl
from xattr.models.internvl import view_grids
from xattr.toy.build import build_tiny_model
from xattr.toy.tiny import aya_vision as builder

SPEC = SPECS["aya_vision"]
METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]
REAL_SIDE = 13  # 364 px views, 14 px SigLIP patches, pixel shuffle 2 x 2


@pytest.fixture(scope="module")
def real_processor(tiny_adapter):
    """The checkpoints' processor settings around the tiny tokenizer."""
    tok = tiny_adapter("aya_vision").tokenizer
    return builder.processor(tok, builder.REAL_TILE, builder.REAL_PATCH, builder.REAL_MAX_TILES)


def _prompt(processor, image):
    """The processor's output for one image and the question, as the adapter calls it."""
    return processor(images=[image], text=["<image>" + QUESTION], return_tensors="pt")


def _runs(ids: torch.Tensor, token_id: int) -> list[torch.Tensor]:
    """The maximal runs of consecutive positions holding ``token_id``."""
    positions = torch.nonzero(ids == token_id).flatten()
    breaks = torch.nonzero(positions.diff() != 1).flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


def _text(tok, ids: torch.Tensor) -> str:
    """The decoded text of ``ids`` without white space (word-level pieces joined)."""
    return "".join(tok.decode(ids.tolist()).split())


@pytest.mark.parametrize(
    ("size", "canvas"),
    [
        ((364, 364), (1, 1)),  # (rows, cols) of tiles; one view, no thumbnail
        ((20, 20), (1, 1)),  # a tiny image is enlarged to one view
        ((300, 200), (2, 3)),
        ((200, 300), (3, 2)),
        ((728, 728), (2, 2)),  # 4 tiles cover twice the image's area: no 3 x 3
        ((640, 480), (3, 4)),
        ((1000, 300), (1, 3)),
        ((2000, 300), (1, 7)),
        ((5000, 100), (1, 12)),  # aspect 50: capped at 12 tiles in one row
        ((100, 5000), (12, 1)),
        ((50, 30), (2, 3)),  # small but wide: 6 tiles of upsampled pixels
    ],
)
def test_the_recomputed_tiling_is_what_the_processor_emits(real_processor, size, canvas):
    image = SPEC.image(size)
    rows, cols = canvas
    grids = view_grids(size, real_processor.image_processor, REAL_SIDE)
    tiled = rows * cols > 1
    names = [f"tile {r},{c}" for r in range(rows) for c in range(cols)] if tiled else []
    assert [g.name for g in grids] == [*names, "thumbnail" if tiled else "image"]
    boxes = [
        (r / rows, c / cols, (r + 1) / rows, (c + 1) / cols)
        for r in range(rows)
        for c in range(cols)
    ]
    assert [g.box for g in grids] == ([*boxes, (0.0, 0.0, 1.0, 1.0)] if tiled else boxes)
    out = _prompt(real_processor, image)
    assert out["pixel_values"].shape[0] == len(grids) == (rows * cols + 1 if tiled else 1)
    ids, tok = out["input_ids"][0], real_processor.tokenizer
    runs = _runs(ids, real_processor.image_token_id)  # one run of 169 patch tokens per view
    assert [len(r) for r in runs] == [REAL_SIDE**2] * len(grids)
    # between the runs, only the text tags: TILE_1 .. TILE_n, then TILE_GLOBAL before the last
    start = tok.convert_tokens_to_ids(real_processor.start_of_img_token)
    end = tok.convert_tokens_to_ids(real_processor.end_of_img_token)
    bounds = [int(torch.nonzero(ids == start)[0, 0])] + [int(r[-1]) for r in runs]
    tags = [_text(tok, ids[a + 1 : int(r[0])]) for a, r in zip(bounds[:-1], runs, strict=True)]
    assert tags == [f"tile_{k}" for k in range(1, len(grids))] + ["tile_global"]
    assert int(ids[int(runs[-1][-1]) + 1]) == end


def test_tile_and_thumbnail_boxes_hold_the_pixels_the_processor_emits(real_processor):
    """A white block on a 300 x 200 image: in every view (6 tiles, the thumbnail) the
    brightness of each token's 28 x 28 px square follows the overlap of its box with the block."""
    width, height = 300, 200
    top, left, bottom, right = 40, 200, 90, 260  # pixels
    image = SPEC.image((width, height), block=(top, left, bottom, right))
    pv = _prompt(real_processor, image)["pixel_values"]  # [7, 3, 364, 364]
    grids = view_grids((width, height), real_processor.image_processor, REAL_SIDE)
    assert len(grids) == pv.shape[0] == 7
    n, px = REAL_SIDE, builder.REAL_PATCH * builder.DOWNSAMPLE
    block = (top / height, left / width, bottom / height, right / width)
    bright, overlap = [], []
    for view, grid in zip(pv, grids, strict=True):
        cells = (view * 0.5 + 0.5).mean(0).reshape(n, px, n, px).mean((1, 3))  # [13, 13]
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


def test_the_layout_is_the_patch_tokens_of_one_image_block(tiny_adapter):
    """The tiny model's prompt: one <BOS_TOKEN> (the template's), one image block of 10 views
    of 16 patch tokens (3 x 3 tiles, then the thumbnail), the question after it."""
    adapter = tiny_adapter("aya_vision")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    ids, tok = prepared.prompt_ids, adapter.tokenizer
    assert int((ids == tok.bos_token_id).sum()) == 1 and int(ids[0]) == tok.bos_token_id
    names = [g.name for g in prepared.layout.grids]
    assert names == [f"tile {r},{c}" for r in range(3) for c in range(3)] + ["thumbnail"]
    assert prepared.grids == [(4, 4)] * 10
    runs = _runs(ids, adapter.image_token_id)
    assert torch.equal(torch.cat(runs), prepared.visual_index) and len(runs) == 10
    assert all(len(r) == 16 for r in runs)
    assert int(prepared.prompt_index[0]) > int(prepared.visual_index[-1])


def test_a_tiling_rule_the_processor_does_not_follow_is_refused_by_name(tiny_adapter, monkeypatch):
    """If a transformers release changed the canvas rule the adapter recomputes, prepare
    refuses the image, naming the family, the version and both counts; no map is made."""
    adapter = tiny_adapter("aya_vision")
    image = SPEC.image(SPEC.geometry_size)
    monkeypatch.setattr(internvl, "get_optimal_tiled_canvas", lambda *args: (2, 2))
    with pytest.raises(LayoutError) as caught:
        adapter.prepare(image, QUESTION)
    message = str(caught.value)
    assert "aya_vision adapter" in message and f"transformers {transformers.__version__}" in message
    assert "emitted 10 view(s) and 160 image tokens" in message and "into 5 view(s)" in message


# --------------------------------------------------------------- the recorded support
def test_the_trace_records_each_layers_real_mask(tiny_adapter):
    """Layer 0 slides (window 8, under a view's 16 tokens), layer 1 is global: causal, and
    nothing else. The answer sees no image token through the sliding layer."""
    adapter = tiny_adapter("aya_vision")
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    text = adapter.model.config.text_config
    assert text.layer_types == ["sliding_attention", "full_attention"]
    assert text.sliding_window == builder.SLIDING_WINDOW
    n = trace.attentions[0].shape[-1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    expected = {
        "sliding_attention": (j <= i) & (j > i - builder.SLIDING_WINDOW),
        "full_attention": j <= i,
    }
    for layer, kind in enumerate(text.layer_types):
        support = trace.support(layer)
        assert support is not None and torch.equal(support.cpu(), expected[kind]), kind
        attn = trace.attentions[layer]  # [H, N, N]: zero exactly off the support
        assert float(attn[:, ~expected[kind]].abs().max()) == 0.0
        assert bool((attn[:, expected[kind]] > 0).all())
    rows, visual = trace.answer_positions - 1, trace.visual_index
    assert float(trace.attentions[0][:, rows][:, :, visual].max()) == 0.0
    assert float(trace.attentions[1][:, rows][:, :, visual].min()) > 0.0


def test_the_logit_lens_applies_the_logit_scale(tiny_adapter):
    """`AyaVisionForConditionalGeneration` multiplies the LM head by logit_scale (0.25 here):
    the lens on the last hidden state reproduces the model's logits."""
    adapter = tiny_adapter("aya_vision")
    prepared = adapter.prepare(SPEC.image(), QUESTION)
    with torch.no_grad():
        out = adapter.model(**prepared.inputs, output_hidden_states=True)
        lens = adapter.unembed(out.hidden_states[-1])
        head = adapter.model.lm_head(out.hidden_states[-1])
    assert adapter.model.config.text_config.logit_scale == 0.25
    torch.testing.assert_close(lens, out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head * 0.25, out.logits, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ faithfulness, pixel path
def test_faithfulness_blends_every_view_in_pixel_values_space(tiny_adapter):
    """Tiles and thumbnail are views of one image (`ViewPerGridPixels`): deletion / insertion
    blend each view's pixel_values with the same image-space mask."""
    adapter = tiny_adapter("aya_vision")
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


def test_the_merged_tokens_are_in_raster_order_over_a_view(tiny_adapter):
    """After the projector's 2 x 2 pixel shuffle, token (r, c) of a view holds that view's (r, c) square:
    whitening exactly one token's square changes that token, and it alone by a clear margin."""
    check_one_view_raster_order(tiny_adapter("aya_vision"), SPEC)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("marker", ["<image>", "<|IMG_PATCH|>"])
def test_a_question_holding_an_image_placeholder_is_named(tiny_adapter, marker):
    adapter = tiny_adapter("aya_vision")
    with pytest.raises(CaptureError, match="stand for an image"):
        adapter.prepare(SPEC.image(), f"{marker} {QUESTION}")


def test_a_second_image_block_is_refused(tiny_adapter):
    adapter = tiny_adapter("aya_vision")
    with pytest.raises(CaptureError, match="holds 2 images; aya_vision takes one"):
        adapter.prepare(SPEC.image(), f"<|START_OF_IMG|> {QUESTION}")


# -------------------------------------------------- a Cohere (Command R) language model
@pytest.fixture(scope="module")
def cohere_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_aya_vision_cohere")
    return build_tiny_model("aya_vision", out, text_model_type="cohere")


def test_a_cohere_language_model_runs_every_method_causally_and_sdpa_agrees(cohere_dir):
    eager = xattr.models.load(cohere_dir)
    sdpa = xattr.models.load(cohere_dir, attn_implementation="sdpa")
    assert type(eager.language_model()).__name__ == "CohereModel"
    image = SPEC.image(SPEC.geometry_size)
    trace = eager.trace(image, QUESTION, "red circle", gradients=False)
    n = trace.attentions[0].shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for layer in range(trace.num_layers):
        support = trace.support(layer)
        assert support is None or torch.equal(support.cpu(), causal)
    a = explain_quietly(eager, image, METHODS, "red circle")
    assert all([m.shape for m in x.visual_maps] == [(4, 4)] * 10 for x in a.values())
    assert_same_maps(explain_quietly(sdpa, image, METHODS, "red circle"), a)
