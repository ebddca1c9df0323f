"""MiniCPM-V 4.6's own rules: the overview + stitched-slices layout against what the real
processor (448 px slices, at most 9) emits at many sizes, extreme aspect ratios included; the
slice boxes against the pixels it emits; every cell lights its own token in the tiny model;
Qwen3.5's linear layers recorded with an implicit attention that reproduces them; batched
scoring (faithfulness) equal to one image at a time; the "4x" mode; mismatches named."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

import xattr
from support.families import QUESTION, SPECS, assert_same_maps, explain_quietly
from xattr.layout import LayoutError
from xattr.metrics.faithfulness import DeletionInsertion
from xattr.models import minicpmv4_6
from xattr.toy.build import build_tiny_model
from xattr.toy.tiny import minicpmv4_6 as builder

FAMILY = "minicpmv4_6"
SPEC = SPECS[FAMILY]
METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]
REAL_TOKEN_PX = 56  # 14 px patches, 4 x 4 per token ("16x")


@pytest.fixture(scope="module")
def real(tiny_adapter):
    """The tiny adapter with the real checkpoint's processor settings (448 px slices, at most
    9, 14 px patches, 16x) around its tokenizer; the layout needs no other model part."""
    adapter = copy.copy(tiny_adapter(FAMILY))
    adapter.processor = builder.processor(adapter.tokenizer)
    return adapter


@pytest.mark.parametrize(
    ("size", "shapes"),
    [
        ((448, 448), [(8, 8)]),  # not sliced: 448 / 56 = 8 tokens a side
        # by hand: 3.3 : 1 -> 1 x 3 slices of 448 x 448 px; overview 840 x 224 px
        ((1000, 300), [(4, 15), (8, 24)]),
        ((300, 1000), [(15, 4), (24, 8)]),
    ],
)
def test_hand_computed_layouts(real, size, shapes):
    assert real.prepare(SPEC.image(size), QUESTION).grids == shapes


@pytest.mark.parametrize(
    "size",
    [
        (640, 480),
        (1344, 1344),
        (2000, 100),
        (100, 2000),
        (4000, 60),
        (60, 4000),
        (700, 20),
        (20, 700),
        (449, 449),
        (57, 57),
        (1600, 900),
    ],
)
def test_the_layout_is_what_the_processor_emits_at_the_real_settings(real, size):
    """prepare checks every run's length and markers and the frames' target_sizes against
    the processor's sizing (it raises otherwise); here, independently: the visual tokens are
    exactly the prompt's image tokens, once each, and the frames in pixel_values are the grids'."""
    prepared = real.prepare(SPEC.image(size), QUESTION)
    ids = prepared.prompt_ids
    image_pos = torch.nonzero(ids == real.image_token_id).flatten()
    assert sorted(prepared.visual_index.tolist()) == image_pos.tolist()
    layout = minicpmv4_6.sliced_layout(size, real.processor.image_processor)
    frames = prepared.inputs["target_sizes"]  # [F, 2] patches
    assert frames.shape[0] == layout.frames
    patches = int(frames.prod(-1).sum())
    assert prepared.inputs["pixel_values"].shape == (1, 3, 14, 14 * patches)
    assert sum(g.cells for g in prepared.layout.grids) == int(frames.prod(-1).sum()) // 16
    if layout.rows:
        assert [g.name for g in prepared.layout.grids] == ["overview", "slices"]
        rows, cols = layout.rows, layout.cols
        assert rows * cols <= 9
        tokens = real.tokenizer.convert_ids_to_tokens(ids.tolist())
        assert tokens.count("<slice>") == tokens.count("</slice>") == rows * cols
        assert tokens.count("<image>") == tokens.count("</image>") == 1
        # the image-id tag opens the block: <image_id> 0 </image_id> <image>
        start = tokens.index("<image_id>")
        assert tokens[start : start + 4] == ["<image_id>", "0", "</image_id>", "<image>"]
    else:
        assert [g.name for g in prepared.layout.grids] == ["image"]


def _frames(pixel_values: torch.Tensor, target_sizes: torch.Tensor) -> list[torch.Tensor]:
    """Unpack the NaViT sequence [1, C, p, L p] into frames [C, h p, w p] (raster patches)."""
    pv, p = pixel_values[0], pixel_values.shape[2]
    out, start = [], 0
    for h, w in target_sizes.tolist():
        chunk = pv[:, :, start * p : (start + h * w) * p]  # [C, p, h w p]
        chunk = chunk.reshape(3, p, h, w, p).permute(0, 2, 1, 3, 4)  # [C, h, p, w, p]
        out.append(chunk.reshape(3, h * p, w * p))
        start += h * w
    return out


def test_the_grid_boxes_hold_the_pixels_the_processor_emits(real):
    """A white block on a 1000 x 300 image: in the overview and in the stitched slices, the
    brightness of each token's 56 x 56 px cell follows the overlap of its box with the block."""
    width, height = 1000, 300
    top, left, bottom, right = 60, 380, 200, 560  # pixels
    image = SPEC.image((width, height), block=(top, left, bottom, right))
    prepared = real.prepare(image, QUESTION)
    frames = _frames(prepared.inputs["pixel_values"], prepared.inputs["target_sizes"])
    mean = torch.tensor(IMAGENET_STANDARD_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STANDARD_STD)[:, None, None]

    def cells(frame: torch.Tensor) -> torch.Tensor:  # [rows, cols] mean brightness per token
        gray = (frame * std + mean).mean(0)
        h, w = gray.shape[0] // REAL_TOKEN_PX, gray.shape[1] // REAL_TOKEN_PX
        return gray.reshape(h, REAL_TOKEN_PX, w, REAL_TOKEN_PX).mean((1, 3))

    overview, slices = frames[0], frames[1:]
    layout = minicpmv4_6.sliced_layout((width, height), real.processor.image_processor)
    assert (layout.rows, layout.cols) == (1, 3)
    bright = [cells(overview), torch.cat([cells(s) for s in slices], dim=1)]  # one slice row
    block = (top / height, left / width, bottom / height, right / width)
    for grid, b in zip(prepared.layout.grids, bright, strict=True):
        assert b.shape == grid.shape
        t0, l0, b0, r0 = grid.box
        h, w = (b0 - t0) / grid.rows, (r0 - l0) / grid.cols
        ov = torch.zeros(grid.shape, dtype=torch.float64)
        for r in range(grid.rows):
            for c in range(grid.cols):
                dy = max(0.0, min(t0 + (r + 1) * h, block[2]) - max(t0 + r * h, block[0]))
                dx = max(0.0, min(l0 + (c + 1) * w, block[3]) - max(l0 + c * w, block[1]))
                ov[r, c] = dy * dx / (h * w)
        corr = np.corrcoef(b.flatten().double().numpy(), ov.flatten().numpy())[0, 1]
        assert corr > 0.99, grid.name
        assert ((ov == 1) <= (b > 0.9)).all() and ((ov == 0) <= (b < 0.3)).all(), grid.name


def _visual_embeddings(adapter, image) -> tuple[torch.Tensor, object]:
    """The LM's input embeddings at the visual positions, in layout order: [|V|, D]."""
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


def test_every_cell_of_both_grids_lights_its_own_token(tiny_adapter):
    """A white block inside any one cell (overview or stitched slices) of a 336 x 224 image
    changes that cell's token the most among its grid's tokens (the mergers' 2 x 2 windows,
    the slice order and the stitching, end to end through the tiny model)."""
    adapter = tiny_adapter(FAMILY)
    width, height = 336, 224
    base, prepared = _visual_embeddings(adapter, SPEC.image((width, height)))
    grids = prepared.layout.grids
    assert [g.shape for g in grids] == [(3, 5), (5, 6)]  # 1 x 2 slices of 5 x 3 tokens
    for grid, span in zip(grids, prepared.layout.slices(), strict=True):
        for r in range(grid.rows):
            for c in range(grid.cols):
                box = (
                    round((r + 0.15) / grid.rows * height),
                    round((c + 0.15) / grid.cols * width),
                    round((r + 0.85) / grid.rows * height),
                    round((c + 0.85) / grid.cols * width),
                )
                moved, _ = _visual_embeddings(adapter, SPEC.image((width, height), block=box))
                change = (moved - base).norm(dim=-1)[span]
                assert int(change.argmax()) == r * grid.cols + c, (grid.name, r, c)


def test_linear_layers_are_recorded_and_their_implicit_attention_reproduces_them(tiny_adapter):
    """Three Gated DeltaNet layers, then a softmax layer; o = A v on each linear layer (the
    recorded kernel output, the model's own chunked computation)."""
    adapter = tiny_adapter(FAMILY)
    trace = adapter.trace(SPEC.image(SPEC.geometry_size), QUESTION, answer="red circle")
    assert trace.layer_kinds == ["linear", "linear", "linear", "softmax"]
    config = adapter.model.config.get_text_config()
    heads = [config.linear_num_value_heads] * 3 + [config.num_attention_heads]
    assert [trace.layer_heads(layer) for layer in range(4)] == heads
    graph = trace.graph
    for layer in range(3):
        a = trace.attentions[layer].double()  # [H, N, N]
        assert torch.count_nonzero(a.triu(1)) == 0
        v = graph["values"][layer][0].double()  # [H, N, d]
        out = graph["outputs"][layer][0].detach().double().transpose(0, 1)  # [H, N, d]
        assert (torch.matmul(a, v) - out).abs().max() <= 1e-5 * out.abs().max()


def test_batched_scoring_packs_the_frames_as_the_processor_does(tiny_adapter):
    """The model reads one packed patch sequence: a batch of prompts scores like one at a
    time, so faithfulness curves do not depend on their batch size."""
    adapter = tiny_adapter(FAMILY)
    images = [SPEC.image(SPEC.geometry_size, seed=s) for s in range(3)]
    answer = adapter.encode_answer("red circle")
    batched = adapter.answer_logprobs(images, QUESTION, answer, batch_size=3)
    single = torch.cat([adapter.answer_logprobs([im], QUESTION, answer) for im in images])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert not torch.equal(batched[0], batched[1])  # the images are told apart
    image = images[0]
    expl = explain_quietly(adapter, image, ["raw_attention"], "red circle")["raw_attention"]
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    answer_ids = trace.input_ids[trace.answer_positions]
    curves = [
        DeletionInsertion(fractions=[0.0, 0.5, 1.0], batch_size=b, curves=["deletion"])
        .curves_for(adapter, image, QUESTION, answer_ids, expl.visual)
        .scores["deletion"]
        for b in (1, 4)
    ]
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4, atol=1e-5)
    assert np.isfinite(curves[0]).all()


@pytest.fixture(scope="module")
def four_x_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_minicpmv4_6_4x")
    return build_tiny_model(FAMILY, out, text_layers=4, downsample_mode="4x")


def test_the_4x_mode_keeps_one_token_per_2x2_patches(four_x_dir):
    eager = xattr.models.load(four_x_dir)
    image = SPEC.image(SPEC.geometry_size)
    prepared = eager.prepare(image, QUESTION)
    # by hand: sides now round to 28 px; the 690 x 514 overview becomes 252 x 196 px (9 x 7
    # tokens), each of the 3 x 3 slices (230 x 171 px upscaled) 252 x 196 px as well
    assert prepared.grids == [(7, 9), (21, 27)]
    maps = explain_quietly(eager, image, METHODS, "red circle")
    assert all([m.shape for m in x.visual_maps] == prepared.grids for x in maps.values())
    assert all(torch.isfinite(x.visual).all() for x in maps.values())
    sdpa = xattr.models.load(four_x_dir, attn_implementation="sdpa")
    assert_same_maps(explain_quietly(sdpa, image, METHODS, "red circle"), maps)


def test_a_processor_and_model_that_downsample_differently_are_named(tiny_adapter):
    adapter = copy.copy(tiny_adapter(FAMILY))
    adapter.processor = builder.processor(adapter.tokenizer, downsample_mode="4x")
    with pytest.raises(LayoutError, match="downsamples 4x but the model 16x"):
        adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)


def test_a_slicing_rule_the_processor_does_not_follow_is_refused_by_name(tiny_adapter, monkeypatch):
    """If a transformers release sliced otherwise than the rule the adapter reads, prepare
    refuses the image, naming the family, the version and both counts; no map is made."""
    adapter = tiny_adapter(FAMILY)
    image = SPEC.image(SPEC.geometry_size)
    real_layout = minicpmv4_6.sliced_layout

    def one_slice_fewer(size, ip):
        out = real_layout(size, ip)
        return minicpmv4_6.SlicedLayout(out.overview, out.rows, out.cols - 1, out.slice_shape, 4)

    monkeypatch.setattr(minicpmv4_6, "sliced_layout", one_slice_fewer)
    with pytest.raises(LayoutError) as caught:
        adapter.prepare(image, QUESTION)
    message = str(caught.value)
    assert (
        "minicpmv4_6 adapter" in message and f"transformers {transformers.__version__}" in message
    )
    assert "expected runs of [15, 15, 15, 15, 15, 15, 15]" in message and "3 x 2 slices" in message
    with pytest.raises(LayoutError, match="3 x 2 slices"):
        xattr.explain(adapter, image, QUESTION, answer="red circle", method="raw_attention")


def test_the_tiny_folder_is_an_ordinary_minicpm_v_4_6_folder(tiny_model_dir, tiny_adapter):
    """Saved under the real processor class; the real settings but for the slice side."""
    import json

    folder = tiny_model_dir(FAMILY)
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["processor_class"] == "MiniCPMV4_6Processor"
    assert json.loads((folder / "config.json").read_text())["model_type"] == FAMILY
    ip = tiny_adapter(FAMILY).processor.image_processor
    settings = {key: getattr(ip, key) for key in builder.REAL_PROCESSOR}
    assert settings == {**builder.REAL_PROCESSOR, "scale_resolution": builder.TINY_SCALE}
