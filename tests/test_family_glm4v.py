"""GLM-4.1V / 4.5V / 4.6V's own rules: the grid under the real pixel budget (extreme aspect
ratios included) inside GLM's image markers, the 3-D positions the capture's forward uses,
stale ``rope_deltas`` after a generation, exact gradients through the MoE router, the
GLM-4.6V MoE text model through the same adapter, and GLM's thinking answers as targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Glm4vImageProcessorPil

import xattr
from support.families import (
    QUESTION,
    SPECS,
    assert_same_maps,
    check_pixel_blend,
    explain_quietly,
)
from support.reference import autograd_attention_gradients
from xattr.metrics import DeletionInsertion
from xattr.models import CaptureError
from xattr.models.processors import IMAGE_ONLY_PROCESSORS
from xattr.toy.build import build_tiny_model
from xattr.toy.tiny.glm4v import REAL_PROCESSOR

SPEC = SPECS["glm4v"]
METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]


@pytest.fixture(scope="module")
def glm46v_moe_dir(tmp_path_factory):
    return build_tiny_model("glm46v", tmp_path_factory.mktemp("tiny_glm46v_moe"), moe=True)


def _real_budget_processor(adapter):
    """zai-org/GLM-4.1V-9B-Thinking's image processor around the tiny tokenizer."""
    image_processor = Glm4vImageProcessorPil(**REAL_PROCESSOR)
    return IMAGE_ONLY_PROCESSORS["glm4v"](
        image_processor=image_processor,
        tokenizer=adapter.tokenizer,
        chat_template=adapter.tokenizer.chat_template,
    )


# (W, H) -> merged (rows, cols), by hand from smart_resize: sides rounded to multiples of
# 28 px; the budget is 12,544 <= 2 * H * W <= 9,633,792; a side under 28 px is first scaled
# up to 28 px with the other side
@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ((300, 200), (7, 11)),  # 196 x 308
        ((200, 300), (11, 7)),
        ((640, 480), (17, 23)),  # 476 x 644
        ((1000, 300), (11, 36)),
        ((64, 64), (3, 3)),  # 2 * 56^2 < 12,544: up to 84 x 84
        ((4000, 3000), (67, 90)),  # over the budget: scaled by 1 / sqrt(2 * 12e6 / 9,633,792)
        ((1400, 20), (1, 70)),  # 20 px high: scaled up x1.4 to 28 x 1960
        ((20, 1400), (70, 1)),
        ((5000, 40), (1, 179)),  # aspect 125: one row of 179 tokens
    ],
)
def test_the_grid_under_the_real_pixel_budget_is_the_processors_token_count(
    tiny_adapter, size, grid
):
    adapter = tiny_adapter("glm4v")
    processor = _real_budget_processor(adapter)
    image = SPEC.image(size)
    inputs = processor(images=[image], text=[adapter.prompt_text(QUESTION)], return_tensors="pt")
    layout = adapter.visual_layout(dict(inputs), image.size)
    assert [g.shape for g in layout.grids] == [grid]
    assert layout.grids[0].box == (0.0, 0.0, 1.0, 1.0)  # stretched whole: no crop, no pad
    (t, h, w), merge = inputs["image_grid_thw"][0].tolist(), REAL_PROCESSOR["merge_size"]
    assert (t, h // merge, w // merge) == (1, *grid)
    ids, start = inputs["input_ids"][0], int(layout.positions[0])
    count = grid[0] * grid[1]
    # one run of <|image|> between <|begin_of_image|> and <|end_of_image|>
    assert torch.equal(layout.positions, torch.arange(start, start + count))
    tokens = adapter.tokenizer.convert_ids_to_tokens(ids[start - 1 : start + count + 1].tolist())
    assert tokens == ["<|begin_of_image|>", *["<|image|>"] * count, "<|end_of_image|>"]
    assert torch.equal(torch.nonzero(inputs["mm_token_type_ids"][0]).flatten(), layout.positions)


@pytest.mark.parametrize(("size", "grid"), [((1400, 20), (1, 70)), ((20, 700), (35, 1))])
def test_a_white_block_lights_its_own_token_at_an_extreme_aspect_ratio(
    tiny_adapter, monkeypatch, size, grid
):
    """Under the real budget a 20 px side is scaled up to 28 px first: a white block in the
    first, middle and last cell changes the language model's input at that cell's token most."""
    adapter = tiny_adapter("glm4v")
    monkeypatch.setattr(adapter, "processor", _real_budget_processor(adapter))
    width, height = size

    def visual_inputs(block=None):  # the image features the LM gets, in token order: [|V|, D]
        prepared = adapter.prepare(SPEC.image(size, block=block), QUESTION)
        with torch.no_grad():
            features = adapter.model.model.get_image_features(
                prepared.inputs["pixel_values"], prepared.inputs["image_grid_thw"]
            ).pooler_output[0]
        assert prepared.grids == [grid] and features.shape[0] == prepared.visual_index.numel()
        return features

    base = visual_inputs()
    rows, cols = grid
    for cell in (0, rows * cols // 2, rows * cols - 1):
        r, c = divmod(cell, cols)
        top, bottom = (r + 0.2) * height / rows, (r + 0.8) * height / rows
        left, right = (c + 0.2) * width / cols, (c + 0.8) * width / cols
        block = (round(top), round(left), round(bottom), round(right))
        change = (visual_inputs(block) - base).norm(dim=-1)  # [|V|]
        assert int(change.argmax()) == cell


def test_an_aspect_ratio_the_processor_refuses_is_named(tiny_adapter):
    """A 4 px side is scaled up to 28 px first (1000 x 4 -> 7000 x 28), an aspect of 250;
    smart_resize refuses 200 and more, and the capture names the image."""
    with pytest.raises(CaptureError, match="cannot take this 1000x4 image: absolute aspect"):
        tiny_adapter("glm4v").prepare(SPEC.image((1000, 4)), QUESTION)


def test_image_tokens_outside_the_image_markers_are_refused(tiny_adapter):
    from xattr.layout import LayoutError

    adapter = tiny_adapter("glm4v")
    inputs = dict(adapter.prepare(SPEC.image(), QUESTION).inputs)
    ids = inputs["input_ids"].clone()
    first = int(torch.nonzero(ids[0] == adapter.image_token_id)[0])
    ids[0, first - 1] = adapter.tokenizer.convert_tokens_to_ids("<|begin_of_video|>")
    with pytest.raises(LayoutError, match="not by <\\|begin_of_image\\|>"):
        adapter.visual_layout({**inputs, "input_ids": ids}, SPEC.image().size)


def _expected_positions(n: int, start: int, rows: int, cols: int) -> torch.Tensor:
    """GLM's 3-D positions by hand: [3, n] (t, h, w) for text before the image, the image
    cell (r, c) at (s, s + r, s + c) with s = ``start``, then text from s + max(rows, cols)."""
    out = torch.empty(3, n, dtype=torch.long)
    out[:, :start] = torch.arange(start)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    end = start + rows * cols
    out[0, start:end] = start
    out[1, start:end] = start + r.flatten()
    out[2, start:end] = start + c.flatten()
    out[:, end:] = start + max(rows, cols) + torch.arange(n - end)
    return out


@pytest.mark.parametrize("family", ["glm4v", "glm4v_moe"])
def test_the_capture_runs_on_glms_3d_positions_over_the_layouts_grid(
    tiny_adapter, monkeypatch, family
):
    """The positions the model builds in the captured forward (prompt + answer) are the
    hand-built ones over the layout's grid: raster order in the layout is the model's."""
    adapter = tiny_adapter(family)
    image = SPEC.image(SPEC.geometry_size)
    model = adapter.model.model
    seen = []
    real = model.get_rope_index

    def spy(*args, **kwargs):
        positions, deltas = real(*args, **kwargs)
        seen.append(positions)
        return positions, deltas

    monkeypatch.setattr(model, "get_rope_index", spy)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    (positions,) = seen
    (rows, cols), start = trace.grids[0], int(trace.visual_index[0])
    assert (rows, cols) == (4, 6)
    expected = _expected_positions(trace.input_ids.numel(), start, rows, cols)
    assert torch.equal(positions[:, 0], expected)


def test_a_capture_after_a_generation_ignores_the_kept_rope_deltas(tiny_adapter):
    """generate() leaves ``rope_deltas`` of its own image on the model; a later capture of
    another image recomputes its positions (same attention as a capture before it)."""
    adapter = tiny_adapter("glm4v")
    image = SPEC.image(SPEC.geometry_size)
    before = adapter.trace(image, QUESTION, "red circle", gradients=False)
    adapter.model.model.rope_deltas = None
    adapter.generate(adapter.prepare(SPEC.image((112, 224), seed=3), QUESTION), max_new_tokens=2)
    kept = adapter.model.model.rope_deltas
    assert kept is not None and int(kept.flatten()[0]) != 0  # a tall image: delta 8 - 32
    after = adapter.trace(image, QUESTION, "red circle", gradients=False)
    for a, b in zip(before.attentions, after.attentions, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["glm4v", "glm4v_moe"])
def test_gradients_equal_a_plain_autograd_loop(tiny_adapter, family):
    """Through partial rotary embeddings and (glm4v_moe) the routers' top-k choice."""
    adapter = tiny_adapter(family)
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, answer="red circle left")
    got = trace.gradients_for(range(trace.num_answer_tokens))  # [T, L, H, N, N]
    ref = autograd_attention_gradients(adapter, image, QUESTION, trace)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_the_routers_choose_the_same_experts_in_the_capture_as_in_a_plain_forward(tiny_adapter):
    """The capture (grad mode, recording wrappers) routes every token as a plain no-grad
    forward does, and the router's bias changes some choices (it is not inert)."""
    adapter = tiny_adapter("glm4v_moe")
    image = SPEC.image(SPEC.geometry_size)
    routers = [m for m in adapter.model.modules() if type(m).__name__ == "Glm4vMoeTextTopkRouter"]
    assert len(routers) == 1  # layer 0 dense, layer 1 routed
    chosen: list[torch.Tensor] = []
    hook = routers[0].register_forward_hook(lambda _m, _a, out: chosen.append(out[2].sort(-1)[0]))
    try:
        trace = adapter.trace(image, QUESTION, "red circle")
        inputs = adapter.full_inputs(
            adapter.prepare(image, QUESTION), trace.input_ids[trace.answer_positions]
        )
        with torch.no_grad():
            adapter.model(**inputs, use_cache=False)
    finally:
        hook.remove()
    captured, plain = chosen[0], chosen[-1]
    assert captured.shape == (trace.input_ids.numel(), 2)
    assert torch.equal(captured, plain)
    router = routers[0]
    with torch.no_grad():
        hidden = torch.randn(64, router.hidden_dim, generator=torch.Generator().manual_seed(0))
        by_score = torch.topk((hidden @ router.weight.T).sigmoid(), 2, dim=-1)[1].sort(-1)[0]
        by_bias = router(hidden)[2].sort(-1)[0]
    assert not torch.equal(by_score, by_bias)


def test_a_bf16_glm4v_moe_keeps_its_routers_in_fp32_and_runs_every_method(tiny_model_dir):
    """transformers keeps the router weights and score biases in fp32 in a bf16 model; the
    capture runs through the mixed dtypes, eager and SDPA."""
    image = SPEC.image(SPEC.geometry_size)
    for implementation in ("eager", "sdpa"):
        adapter = xattr.models.load(
            tiny_model_dir("glm4v_moe"), dtype="bfloat16", attn_implementation=implementation
        )
        (router,) = [
            m for m in adapter.model.modules() if type(m).__name__ == "Glm4vMoeTextTopkRouter"
        ]
        assert router.weight.dtype == router.e_score_correction_bias.dtype == torch.float32
        assert adapter.attention_modules()[1].q_proj.weight.dtype == torch.bfloat16
        maps = explain_quietly(adapter, image, METHODS, "red circle")
        assert all(torch.isfinite(x.visual).all() for x in maps.values()), implementation


def test_the_pixel_path_blends_like_the_processor_on_a_non_square_image(tiny_adapter):
    # uint8 rounding of the PIL blend: half a grey level over the smallest CLIP std
    check_pixel_blend(
        tiny_adapter("glm4v"), SPEC.image(SPEC.geometry_size), atol=0.5 / 255 / 0.26 + 1e-5
    )


@pytest.mark.parametrize("family", ["glm4v", "glm4v_moe"])
def test_faithfulness_curves_blend_pixel_values_as_the_processor_blends_images(
    tiny_adapter, family
):
    """Deletion / insertion on a non-square image: blending pixel_values (the fast path)
    scores what blending the PIL images and processing each scores, up to uint8 rounding."""
    adapter = tiny_adapter(family)
    image = SPEC.image(SPEC.geometry_size, seed=5)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    saliency = torch.randn(*trace.grid, generator=torch.Generator().manual_seed(0))
    answer = trace.input_ids[trace.answer_positions]
    curves = {}
    for space in ("processed", "image"):
        metric = DeletionInsertion(
            fractions=[0.0, 0.25, 0.5, 0.75, 1.0], curves=["deletion", "insertion"], space=space
        )
        curves[space] = metric.curves_for(adapter, image, QUESTION, answer, saliency).scores
    for curve in ("deletion", "insertion"):
        np.testing.assert_allclose(curves["processed"][curve], curves["image"][curve], atol=2e-2)
    assert DeletionInsertion()._processed_space(adapter)


def test_glm46v_with_the_moe_text_model_loads_through_the_same_adapter(glm46v_moe_dir):
    eager = xattr.models.load(glm46v_moe_dir)
    sdpa = xattr.models.load(glm46v_moe_dir, attn_implementation="sdpa")
    assert (
        eager.family == "glm46v" and type(eager.model).__name__ == "Glm46VForConditionalGeneration"
    )
    assert type(eager.language_model()).__name__ == "Glm4vMoeTextModel"
    image = SPEC.image(SPEC.geometry_size)
    a = explain_quietly(eager, image, METHODS, "red circle")
    assert eager.prepare(image, QUESTION).grids == [(4, 6)]
    assert all(x.visual.shape == (4, 6) and torch.isfinite(x.visual).all() for x in a.values())
    assert_same_maps(explain_quietly(sdpa, image, METHODS, "red circle"), a)


def test_a_glm_thinking_answer_is_explained_part_by_part(tiny_adapter):
    """GLM-4.1V-Thinking's answer format, teacher-forced: "final" is the text inside
    <answer> … </answer>, "reasoning" the text inside <think> … </think>."""
    adapter = tiny_adapter("glm4v")
    answer = "<think>the circle is red</think><answer>red circle</answer>"
    image = SPEC.image()
    final = explain_quietly_target(adapter, image, answer, "final")
    reasoning = explain_quietly_target(adapter, image, answer, "reasoning")
    assert [(s.text.strip(), s.start, s.end) for s in final.spans] == [("red circle", 7, 9)]
    assert [(s.text.strip(), s.start, s.end) for s in reasoning.spans] == [
        ("the circle is red", 1, 5)
    ]


def explain_quietly_target(adapter, image, answer: str, target: str):
    """One raw-attention explanation of ``target`` (warnings of the random model off)."""
    import warnings

    from xattr.methods import AttributionWarning
    from xattr.methods.tokens import TokenSelectionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        warnings.simplefilter("ignore", TokenSelectionWarning)
        return xattr.explain(
            adapter, image, QUESTION, method="raw_attention", answer=answer, target=target
        )
