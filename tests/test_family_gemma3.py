"""Gemma 3's own rules: pan-and-scan crop boxes against the processor's views, the
bidirectional image blocks and sliding windows recorded as each layer's support, every
method honouring such a support on a hand-built trace, and the one-view pixel path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Gemma3ImageProcessorPil

import xattr
from support.families import QUESTION, SPECS
from support.reference import (
    glimpse_reference,
    gradcam_reference,
    layout,
    per_token_rows_to_maps,
    raw_attention_reference,
    rollout_reference,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
    tmme_reference,
)
from xattr import methods
from xattr.layout import LayoutError
from xattr.models import CaptureError
from xattr.models.gemma3 import pan_and_scan_boxes

SPEC = SPECS["gemma3"]
REAL_OPTIONS = {  # Gemma3Processor's defaults with pan-and-scan switched on
    "do_pan_and_scan": True,
    "pan_and_scan_min_crop_size": 256,
    "pan_and_scan_max_num_crops": 4,
    "pan_and_scan_min_ratio_to_activate": 1.2,
}


pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from support.reference


# ------------------------------------------------------------------ pan-and-scan geometry
@pytest.mark.parametrize(
    ("size", "n_crops"),
    [
        ((300, 200), 0),  # crops of 150 px would be under the 256 px minimum
        ((600, 200), 0),  # 300 x 200 crops: too short
        ((256, 256), 0),  # square: below the 1.2 aspect that activates it
        ((1000, 400), 3),  # 334 px crops, the last one clipped to 332
        ((400, 1000), 3),  # portrait: crops stacked top to bottom
        ((2000, 300), 4),  # capped at 4 crops
    ],
)
def test_crop_boxes_are_the_views_the_processor_emits(size, n_crops):
    """With the real options and 896 px views, view v of ``pixel_values`` is the box's crop of
    the original, stretched to the view size on its own: the boxes are the processor's."""
    image = SPEC.image(size, seed=1)
    boxes = pan_and_scan_boxes(size, REAL_OPTIONS)
    assert len(boxes) == n_crops
    processor = Gemma3ImageProcessorPil(
        size={"height": 896, "width": 896}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    views = processor(images=[image], return_tensors="pt", **REAL_OPTIONS)
    assert views["pixel_values"].shape[0] == 1 + n_crops
    assert views["num_crops"].tolist() == [n_crops]
    width, height = size
    union = np.zeros((height, width), dtype=int)
    for view, (top, left, bottom, right) in zip(views["pixel_values"][1:], boxes, strict=True):
        px = (
            round(left * width),
            round(top * height),
            round(right * width),
            round(bottom * height),
        )
        alone = processor(images=[image.crop(px)], return_tensors="pt", do_pan_and_scan=False)
        torch.testing.assert_close(view, alone["pixel_values"][0], rtol=0, atol=1e-6)
        union[px[1] : px[3], px[0] : px[2]] += 1
    if boxes:  # the crops tile the image exactly once
        assert (union == 1).all()


def test_the_layout_follows_the_pan_and_scan_switch(tiny_adapter, monkeypatch):
    adapter = tiny_adapter("gemma3")
    image = SPEC.image(SPEC.geometry_size)
    cropped = adapter.prepare(image, QUESTION)
    assert [g.name for g in cropped.layout.grids] == ["original", "crop 1", "crop 2", "crop 3"]
    assert [g.box for g in cropped.layout.grids[1:]] == [
        (0.0, i / 3, 1.0, (i + 1) / 3) for i in range(3)
    ]
    views = adapter.pixel_views(cropped)  # the pixel-mask path sees the same views
    assert [(v.name, v.box) for v in views] == [(g.name, g.box) for g in cropped.layout.grids]
    monkeypatch.setattr(adapter, "pan_and_scan", False)
    whole = adapter.prepare(image, QUESTION)
    assert [(g.name, g.box) for g in whole.layout.grids] == [("image", (0.0, 0.0, 1.0, 1.0))]
    assert adapter.processed_size(whole) == (SPEC.native_size, SPEC.native_size)
    with pytest.raises(LayoutError, match="emitted 4 view.*pan-and-scan"):  # other options
        adapter.visual_layout(cropped.inputs, image.size)


def test_each_view_is_one_block_between_its_markers(tiny_adapter):
    adapter = tiny_adapter("gemma3")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    ids, config = prepared.prompt_ids, adapter.model.config
    boi = torch.nonzero(ids == config.boi_token_id).flatten()
    eoi = torch.nonzero(ids == config.eoi_token_id).flatten()
    for span, start, end in zip(prepared.layout.slices(), boi, eoi, strict=True):
        assert torch.equal(prepared.visual_index[span], torch.arange(int(start) + 1, int(end)))
    types = prepared.inputs["token_type_ids"][0]
    assert torch.equal(torch.nonzero(types).flatten(), prepared.visual_index)
    full = adapter.full_inputs(prepared, adapter.encode_answer("red circle"))
    assert full["token_type_ids"][0, -2:].tolist() == [0, 0]  # answer tokens are text


# --------------------------------------------------------------- the recorded support
def _gemma_support(block: torch.Tensor, window: int | None) -> torch.Tensor:
    """OR(causal, same image block), AND j > i - window for a sliding layer: bool [N, N]."""
    n = block.numel()
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    same = (block[:, None] == block[None, :]) & (block[:, None] >= 0)
    support = (j <= i) | same
    return support if window is None else support & (j > i - window)


def test_the_trace_records_each_layers_real_mask(tiny_adapter):
    """Layer 0 slides (window 8, under a view's 16 tokens), layer 1 is full; both let an image
    token see its whole block, later tokens included, and nothing else ahead."""
    adapter = tiny_adapter("gemma3")
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    prepared = adapter.prepare(image, QUESTION)
    types = adapter.full_inputs(prepared, adapter.encode_answer("red circle"))["token_type_ids"][0]
    block = torch.full_like(types, -1)
    for k, span in enumerate(prepared.layout.slices()):
        block[prepared.visual_index[span]] = k
    text = adapter.model.config.text_config
    assert text.layer_types == ["sliding_attention", "full_attention"]
    for layer, kind in enumerate(text.layer_types):
        window = text.sliding_window if kind == "sliding_attention" else None
        expected = _gemma_support(block.cpu(), window)
        assert torch.equal(trace.support(layer).cpu(), expected), kind
        attn = trace.attentions[layer]  # [H, N, N]: zero exactly off the support
        assert float(attn[:, ~expected].abs().max()) == 0.0
        assert bool((attn[:, expected] > 0).all())
    first = prepared.layout.slices()[0]
    view = prepared.visual_index[first]
    assert float(trace.attentions[1][:, view[0], view[-1]].min()) > 0  # sees its block's end
    assert float(trace.attentions[0][:, view[-1], view[0]].max()) == 0  # beyond the window


@pytest.mark.parametrize("seed", [0, 1])
def test_every_method_sums_and_propagates_over_a_bidirectional_windowed_support(seed):
    """A hand-built trace with Gemma 3's support (an image block seen both ways; layer 0 also
    windowed): every method equals its reference over that support, not the causal one."""
    L, H, N, T, grid, window = 2, 2, 22, 3, (2, 4), 5
    g = torch.Generator().manual_seed(seed)
    lay = layout(N, T, grid)
    block = torch.full((N,), -1)
    block[lay["visual_index"]] = 0
    supports = [_gemma_support(block, window), _gemma_support(block, None)]
    scores = torch.randn(L, H, N, N, generator=g, dtype=torch.float64) * 2.0
    attn = torch.stack(
        [
            torch.softmax(scores[k].masked_fill(~supports[k], float("-inf")), dim=-1)
            for k in range(L)
        ]
    )
    grads = torch.randn(T, L, H, N, N, generator=g, dtype=torch.float64) + 0.3
    for t, s in enumerate(lay["answer_positions"]):
        grads[t, :, :, s:, :] = 0.0  # rows past p_t = s_t - 1
    confidences = (0.2 + 0.8 * torch.rand(T, generator=g, dtype=torch.float64)).tolist()
    trace = xattr.Trace.from_tensors(
        list(attn), grads, confidences=confidences, support=supports, **lay
    )
    positions = lay["answer_positions"]
    kw = {"visual_index": lay["visual_index"], "prompt_index": lay["prompt_index"]}
    expl = methods.get("glimpse", token_policy="all").explain(trace)
    ref = glimpse_reference(
        attn, grads, answer_positions=positions, confidences=confidences, supports=supports, **kw
    )
    causal = glimpse_reference(
        attn, grads, answer_positions=positions, confidences=confidences, **kw
    )
    torch.testing.assert_close(expl.visual.flatten().double(), ref["visual"], rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(expl.token_relevance.double(), ref["rho"], rtol=1e-5, atol=1e-10)
    assert not torch.allclose(ref["visual"], causal["visual"], rtol=1e-3)  # the support matters
    baselines = {
        "tmme": tmme_reference(attn, grads, answer_positions=positions),
        "rollout": rollout_reference(attn, answer_positions=positions)[0],
        "raw_attention": raw_attention_reference(attn, answer_positions=positions),
        "gradcam": gradcam_reference(attn, grads, answer_positions=positions, supports=supports),
    }
    every = [True] * T
    for name, rows in baselines.items():
        got = methods.get(name, token_policy="all").explain(trace)
        want = per_token_rows_to_maps(rows, kw["visual_index"], kw["prompt_index"], every)
        torch.testing.assert_close(
            got.visual.flatten().double(), want["visual"], rtol=1e-5, atol=1e-10, msg=name
        )
    causal_cam = gradcam_reference(attn, grads, answer_positions=positions)
    assert not all(torch.allclose(a, b) for a, b in zip(causal_cam, baselines["gradcam"]))


# ------------------------------------------------------------------------ odds and ends
def test_the_logit_lens_does_not_softcap(tiny_adapter, monkeypatch):
    """`Gemma3ForConditionalGeneration` ignores final_logit_softcapping; so does `unembed`."""
    adapter = tiny_adapter("gemma3")
    monkeypatch.setattr(adapter.model.config.text_config, "final_logit_softcapping", 0.5)
    hidden = torch.randn(3, adapter.model.config.text_config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(adapter.unembed(hidden), adapter.model.lm_head(hidden))


def test_a_question_holding_the_image_placeholder_is_named(tiny_adapter):
    adapter = tiny_adapter("gemma3")
    with pytest.raises(CaptureError, match="stand for an image"):
        adapter.prepare(SPEC.image(), f"<start_of_image> {QUESTION}")


def test_load_switches_pan_and_scan(tiny_model_dir):
    adapter = xattr.models.load(tiny_model_dir("gemma3"), pan_and_scan=False)
    assert adapter.pan_and_scan is False and not adapter.image_options()["do_pan_and_scan"]
    assert adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION).grids == [(4, 4)]
