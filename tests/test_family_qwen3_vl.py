"""Qwen3-VL's own rules: the grid under the real pixel budget, deepstack inside the capture,
exact gradients through it, and the MoE variant through the same adapter."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2VLImageProcessorPil

import xattr
from support.families import QUESTION, SPECS, assert_same_maps, explain_quietly
from support.reference import autograd_attention_gradients
from xattr.models import CaptureError
from xattr.models.processors import IMAGE_ONLY_PROCESSORS
from xattr.toy.build import build_tiny_model

SPEC = SPECS["qwen3_vl"]
METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return build_tiny_model("qwen3_vl", tmp_path_factory.mktemp("tiny_qwen3_vl_moe"), moe=True)


def _real_budget_processor(adapter):
    """The processor of Qwen/Qwen3-VL-8B-Instruct (patch 16, merge 2, 256^2..4096^2 pixels)
    around the tiny tokenizer."""
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 65536, "longest_edge": 16777216},
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return IMAGE_ONLY_PROCESSORS["qwen3_vl"](
        image_processor=image_processor,
        tokenizer=adapter.tokenizer,
        chat_template=adapter.tokenizer.chat_template,
    )


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ((300, 200), (7, 10)),  # up-scaled to 320 x 224 to reach the minimum pixels
        ((200, 300), (10, 7)),
        ((640, 480), (15, 20)),
        ((1000, 300), (9, 31)),
        ((64, 64), (8, 8)),  # up-scaled to 256 x 256
    ],
)
def test_the_grid_under_the_real_pixel_budget_is_the_processors_token_count(
    tiny_adapter, size, grid
):
    adapter = tiny_adapter("qwen3_vl")
    processor = _real_budget_processor(adapter)
    image = SPEC.image(size)
    inputs = processor(images=[image], text=[adapter.prompt_text(QUESTION)], return_tensors="pt")
    layout = adapter.visual_layout(dict(inputs), image.size)
    assert [g.shape for g in layout.grids] == [grid]
    assert layout.grids[0].box == (0.0, 0.0, 1.0, 1.0)  # stretched whole: no crop, no pad
    (t, h, w), merge = inputs["image_grid_thw"][0].tolist(), processor.image_processor.merge_size
    assert (t, h // merge, w // merge) == (1, *grid)  # the patch grid the processor emits
    assert layout.positions.numel() == grid[0] * grid[1]
    ids = inputs["input_ids"][0]
    # one contiguous run between <|vision_start|> and <|vision_end|>, no row separators
    start = int(layout.positions[0])
    assert ids[start - 1] == processor.vision_start_token_id
    assert ids[int(layout.positions[-1]) + 1] == processor.vision_end_token_id
    assert torch.equal(layout.positions, torch.arange(start, start + grid[0] * grid[1]))
    assert torch.equal(torch.nonzero(inputs["mm_token_type_ids"][0]).flatten(), layout.positions)


def test_answer_tokens_are_text_in_mm_token_type_ids(tiny_adapter):
    adapter = tiny_adapter("qwen3_vl")
    prepared = adapter.prepare(SPEC.image(), QUESTION)
    full = adapter.full_inputs(prepared, adapter.encode_answer("red circle"))
    types = full["mm_token_type_ids"][0]
    assert types.shape == full["input_ids"][0].shape
    assert torch.equal(torch.nonzero(types).flatten(), prepared.visual_index)


def test_deepstack_reaches_the_recorded_attention_after_layer_zero(tiny_adapter, monkeypatch):
    """Without the deepstack addition layer 0 is unchanged and layer 1 differs: the traced
    attention is that of the model with its deepstack features."""
    adapter = tiny_adapter("qwen3_vl")
    image = SPEC.image(SPEC.geometry_size)
    with_ds = adapter.trace(image, QUESTION, "red circle", gradients=False)
    lm = adapter.language_model()
    monkeypatch.setattr(lm, "_deepstack_process", lambda hidden, _mask, _embeds: hidden)
    without = adapter.trace(image, QUESTION, "red circle", gradients=False)
    torch.testing.assert_close(with_ds.attentions[0], without.attentions[0])
    first = int(with_ds.visual_index[0])
    diff = (with_ds.attentions[1] - without.attentions[1]).abs().amax(dim=(0, 2))  # [N] queries
    assert float(diff[:first].max()) == 0.0  # rows before the image cannot see it
    assert float(diff[first:].min()) > 0.0


def test_gradients_through_deepstack_equal_a_plain_autograd_loop(tiny_adapter):
    adapter = tiny_adapter("qwen3_vl")
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, answer="red circle left")
    got = trace.gradients_for(range(trace.num_answer_tokens))  # [T, L, H, N, N]
    ref = autograd_attention_gradients(adapter, image, QUESTION, trace)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_the_moe_variant_loads_through_the_same_adapter_and_runs_every_method(moe_dir):
    eager = xattr.models.load(moe_dir)
    sdpa = xattr.models.load(moe_dir, attn_implementation="sdpa")
    assert eager.family == "qwen3_vl" and type(eager.model).__name__.startswith("Qwen3VLMoe")
    assert type(eager.attention_modules()[0]).__name__ == "Qwen3VLMoeTextAttention"
    image = SPEC.image(SPEC.geometry_size)
    a = explain_quietly(eager, image, METHODS, "red circle")
    assert eager.prepare(image, QUESTION).grids == [(4, 6)]
    assert all(x.visual.shape == (4, 6) and torch.isfinite(x.visual).all() for x in a.values())
    assert_same_maps(explain_quietly(sdpa, image, METHODS, "red circle"), a)
    generated = eager.trace(image, QUESTION, answer=None, gradients=False)
    assert generated.answer_source == "generated"


def test_an_image_the_processor_cannot_resize_is_named(tiny_adapter):
    """smart_resize refuses aspect ratios of 200 and more; the capture names the image."""
    with pytest.raises(CaptureError, match="cannot take this 1000x4 image: absolute aspect"):
        tiny_adapter("qwen3_vl").prepare(SPEC.image((1000, 4)), QUESTION)
