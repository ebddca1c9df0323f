"""Gemma 4's own rules: the variable-resolution grid against the processor at the real and the
tiny settings (extreme aspect ratios included), the per-layer supports (image blocks seen both
ways on sliding layers only, windows), per-layer head sizes and shared keys and values, every
method honouring such supports on a hand-built trace, the softcapped logit lens, the pixel
path on the processor's patch list, and the inputs it refuses (audio, video, encoders)."""

from __future__ import annotations

import pytest
import torch

import xattr
from support.families import QUESTION, SPECS, check_pixel_blend
from support.reference import (
    glimpse_reference,
    gradcam_reference,
    layout,
    per_token_rows_to_maps,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
)
from xattr import methods
from xattr.layout import LayoutError
from xattr.models import CaptureError
from xattr.models.gemma4 import Gemma4Adapter
from xattr.toy.tiny import gemma4 as tiny

SPEC = SPECS["gemma4"]
ANSWER = "red circle"

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from support.reference


# ------------------------------------------------------------------------------ layout
# google/gemma-4-*-it's processor: 16 px patches, 3 x 3 pooling, 280 soft tokens, so at most
# 2520 patches (645,120 px) and sides in multiples of 48 px. Hand-computed, (W, H) -> (rows, cols):
REAL_GRIDS = {
    (896, 896): (16, 16),  # 896 * sqrt(645120 / 896^2) = 803 px -> 16 cells of 48 px
    (640, 480): (14, 19),  # x sqrt(2.1): 696 x 927 px -> 672 x 912
    (480, 640): (19, 14),
    (10, 10): (16, 16),  # a tiny image is enlarged to the budget
    (4000, 100): (2, 105),  # 1:40: 127 x 5080 px -> 96 x 5040
    (10000, 50): (1, 236),  # 1:200: 57 x 11359 px -> 48 x 11328
    (20000, 20): (1, 280),  # 1:1000: the short side rounds to 0 -> one cell, the long side capped
    (20, 20000): (280, 1),
}
# the tiny processor: 4 px patches, 3 x 3 pooling, 70 soft tokens (630 patches, 10,080 px,
# sides in multiples of 12 px)
TINY_GRIDS = {
    (96, 96): (8, 8),  # kept as is
    (144, 64): (5, 12),  # x 1.046: 67 x 151 px -> 60 x 144
    (300, 40): (3, 22),  # x 0.917: 37 x 275 px -> 36 x 264
    (40, 300): (22, 3),
    (1000, 10): (1, 70),  # 1:100: one 12 px row, 840 px long (the 70-token cap)
    (10, 1000): (70, 1),
}


@pytest.fixture(scope="module")
def real_settings(tiny_adapter):
    """The tiny adapter with the checkpoints' image processor settings swapped in."""
    adapter = tiny_adapter("gemma4")
    return tiny.processor(adapter.tokenizer, tiny.image_processor(patch_size=16, soft_tokens=280))


@pytest.mark.parametrize(("size", "grid"), list(REAL_GRIDS.items()))
def test_the_grid_at_the_real_settings_is_the_processors(
    tiny_adapter, real_settings, monkeypatch, size, grid
):
    adapter = tiny_adapter("gemma4")
    monkeypatch.setattr(adapter, "processor", real_settings)
    prepared = adapter.prepare(SPEC.image(size), QUESTION)
    assert prepared.grids == [grid]
    assert [g.box for g in prepared.layout.grids] == [(0.0, 0.0, 1.0, 1.0)]  # nothing cropped
    assert prepared.visual_index.numel() == grid[0] * grid[1] <= 280
    patches = prepared.inputs["pixel_values"].shape[1]
    assert patches == 280 * 9  # the patch list is padded to the budget
    assert (
        int((prepared.inputs["image_position_ids"][0] >= 0).all(-1).sum()) == 9 * grid[0] * grid[1]
    )


@pytest.mark.parametrize(("size", "grid"), list(TINY_GRIDS.items()))
def test_the_grid_at_the_tiny_settings_is_the_processors(tiny_adapter, size, grid):
    adapter = tiny_adapter("gemma4")
    prepared = adapter.prepare(SPEC.image(size), QUESTION)
    assert prepared.grids == [grid]
    height, width = adapter.processed_size(prepared)
    assert (height, width) == (12 * grid[0], 12 * grid[1])


def test_load_sets_the_soft_token_budget(tiny_model_dir):
    """The tiny processor's 70 tokens raised to 140 (1260 patches, 20,160 px): a 96 px square
    becomes 11 x 11 cells (141 px -> 132 px); a budget the processor lacks is named."""
    adapter = xattr.models.load(tiny_model_dir("gemma4"), max_soft_tokens=140)
    assert adapter.prepare(SPEC.image(), QUESTION).grids == [(11, 11)]
    with pytest.raises(CaptureError, match="max_soft_tokens=100.*70, 140, 280, 560, 1120"):
        xattr.models.load(tiny_model_dir("gemma4"), max_soft_tokens=100)


def _visual_embeddings(adapter, image) -> torch.Tensor:
    """The language model's input embeddings at the soft tokens, in raster order: [|V|, D]."""
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
    return seen["embeds"][prepared.visual_index]


@pytest.mark.parametrize("size", [(300, 40), (40, 300)])
def test_a_white_block_lights_its_cell_at_a_long_aspect_ratio(tiny_adapter, size):
    """Resized 300 x 40 -> 264 x 36 (3 x 22 cells, each side scaled apart; and transposed): a white block in
    the middle of cell (r, c) of the original changes soft token (r, c) the most."""
    adapter = tiny_adapter("gemma4")
    width, height = size
    rows, cols = TINY_GRIDS[size]
    base = _visual_embeddings(adapter, SPEC.image(size))
    for r, c in {(0, 0), (rows - 1, cols - 1), (rows // 2, cols // 2), (0, cols - 1)}:
        h, w = height / rows, width / cols
        block = (
            round((r + 0.25) * h),
            round((c + 0.25) * w),
            round((r + 0.75) * h),
            round((c + 0.75) * w),
        )
        moved = _visual_embeddings(adapter, SPEC.image(size, block=block))
        assert int((moved - base).norm(dim=-1).argmax()) == r * cols + c, (r, c)


def test_the_soft_tokens_are_one_block_between_their_markers(tiny_adapter):
    adapter = tiny_adapter("gemma4")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    ids, config = prepared.prompt_ids, adapter.model.config
    (boi,) = torch.nonzero(ids == config.boi_token_id).flatten().tolist()
    (eoi,) = torch.nonzero(ids == config.eoi_token_id).flatten().tolist()
    assert torch.equal(prepared.visual_index, torch.arange(boi + 1, eoi))
    types = prepared.inputs["mm_token_type_ids"][0]
    assert torch.equal(torch.nonzero(types).flatten(), prepared.visual_index)  # markers are 0
    full = adapter.full_inputs(prepared, adapter.encode_answer(ANSWER))
    assert full["mm_token_type_ids"][0, -2:].tolist() == [0, 0]  # answer tokens are text


def test_a_layout_the_prompt_disagrees_with_is_refused(tiny_adapter):
    adapter = tiny_adapter("gemma4")
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)
    inputs = dict(prepared.inputs)
    positions = inputs["image_position_ids"].clone()
    positions[0, 0] = torch.tensor([14 * 3 - 1, 0])  # a patch 42 columns out: 14 cells wide
    inputs["image_position_ids"] = positions
    with pytest.raises(LayoutError, match="60 image tokens.*5 x 14 soft tokens"):
        adapter.visual_layout(inputs, SPEC.geometry_size)


# ---------------------------------------------------------------- the recorded supports
def _gemma4_support(block: torch.Tensor, window: int | None, both_ways: bool) -> torch.Tensor:
    """Causal (OR same image block where ``both_ways``), AND j > i - window: bool [N, N]."""
    n = block.numel()
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    support = j <= i
    if both_ways:
        support = support | ((block[:, None] == block[None, :]) & (block[:, None] >= 0))
    return support if window is None else support & (j > i - window)


def _check_supports(adapter, bidirectional: bool) -> None:
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, ANSWER, gradients=False)
    prepared = adapter.prepare(image, QUESTION)
    n = trace.input_ids.numel()
    block = torch.full((n,), -1)
    block[prepared.visual_index] = 0
    text = adapter.model.config.text_config
    assert text.layer_types == list(tiny.LAYER_TYPES)
    for layer, kind in enumerate(text.layer_types):
        sliding = kind == "sliding_attention"
        expected = _gemma4_support(
            block, text.sliding_window if sliding else None, bidirectional and sliding
        )
        assert torch.equal(trace.support(layer).cpu(), expected), (layer, kind)
        attn = trace.attentions[layer]  # [H, N, N]: zero exactly off the support
        assert float(attn[:, ~expected].abs().max()) == 0.0
        assert bool((attn[:, expected] > 0).all())
    view = prepared.visual_index
    first, last = int(view[0]), int(view[-1])
    sliding_sees_ahead = float(trace.attentions[0][:, first, first + 1].min()) > 0
    assert sliding_sees_ahead == bidirectional  # the next soft token, within the window
    assert float(trace.attentions[1][:, first, last].max()) == 0.0  # full layers: causal


def test_sliding_layers_see_the_image_block_both_ways_and_full_layers_do_not(tiny_adapter):
    """use_bidirectional_attention="vision": the block is bidirectional on sliding layers only
    (windowed there), the full layers (and the layers that share their keys) stay causal."""
    _check_supports(tiny_adapter("gemma4"), bidirectional=True)


def test_without_the_vision_setting_every_layer_is_causal(tmp_path):
    from xattr.toy.build import build_tiny_model

    path = build_tiny_model("gemma4", tmp_path / "causal", seed=0, bidirectional=None)
    _check_supports(xattr.models.load(path), bidirectional=False)


def test_sdpa_loads_beside_an_eager_only_audio_tower(tmp_path):
    """E2B / E4B: transformers refuses SDPA for the audio tower, so a plain "sdpa" goes to the
    text and vision models; the capture then runs (and records) SDPA."""
    from xattr.toy.build import build_tiny_model

    path = build_tiny_model("gemma4", tmp_path / "audio", seed=0, audio=True)
    adapter = xattr.models.load(path, attn_implementation="sdpa")
    config = adapter.model.config
    assert config.audio_config._attn_implementation == "eager"
    assert config.text_config._attn_implementation == "sdpa"
    trace = adapter.trace(SPEC.image(), QUESTION, ANSWER)
    assert trace.meta["attn_implementation"] == "sdpa"
    eager = xattr.models.load(path).trace(SPEC.image(), QUESTION, ANSWER)
    torch.testing.assert_close(trace.attentions[3], eager.attentions[3], rtol=1e-4, atol=1e-5)


def test_layers_differ_in_head_size_and_key_value_heads_not_in_query_heads(tiny_adapter):
    """Sliding layers: 2 kv heads of 16; full layers: 1 kv head of 32, keys reused as values;
    the last two layers reuse the first two's keys and values; 4 query heads everywhere."""
    adapter = tiny_adapter("gemma4")
    trace = adapter.trace(SPEC.image(), QUESTION, ANSWER)
    assert [trace.layer_heads(layer) for layer in range(4)] == [4, 4, 4, 4]
    values = trace.graph["values"]  # L x [1, Hkv, N, d]
    outputs = trace.graph["outputs"]  # L x [1, N, H, d]
    n = trace.input_ids.numel()
    assert [tuple(v.shape) for v in values] == [(1, 2, n, 16), (1, 1, n, 32)] * 2
    assert [o.shape[-1] for o in outputs] == [16, 32, 16, 32]
    assert torch.equal(values[2], values[0]) and torch.equal(values[3], values[1])  # shared
    expected = (n * 4 * (16 + 32 + 16 + 32) + 2 * 4 * n * n) * 4  # float32 bytes
    assert trace.gradient_source.bytes_per_token(range(4)) == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_every_method_sums_and_propagates_over_gemma4_supports(seed):
    """A hand-built trace with Gemma 4's supports (layer 0 sliding, the block both ways;
    layer 1 full, causal): GLIMPSE and Grad-CAM equal their references over those supports;
    Grad-CAM, which reads the last layer, sees a causal one there."""
    L, H, N, T, grid, window = 2, 2, 22, 3, (2, 4), 5
    g = torch.Generator().manual_seed(seed)
    lay = layout(N, T, grid)
    block = torch.full((N,), -1)
    block[lay["visual_index"]] = 0
    supports = [_gemma4_support(block, window, True), _gemma4_support(block, None, False)]
    scores = torch.randn(L, H, N, N, generator=g, dtype=torch.float64) * 2.0
    attn = torch.stack(
        [torch.softmax(scores[k].masked_fill(~supports[k], float("-inf")), -1) for k in range(L)]
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
    assert not torch.allclose(ref["visual"], causal["visual"], rtol=1e-3)  # the support matters
    cam = gradcam_reference(attn, grads, answer_positions=positions, supports=supports)
    got = methods.get("gradcam", token_policy="all").explain(trace)
    want = per_token_rows_to_maps(cam, kw["visual_index"], kw["prompt_index"], [True] * T)
    torch.testing.assert_close(got.visual.flatten().double(), want["visual"], rtol=1e-5, atol=1e-10)
    causal_cam = gradcam_reference(attn, grads, answer_positions=positions)
    assert all(torch.equal(a, b) for a, b in zip(causal_cam, cam, strict=True))


# ------------------------------------------------------------------------ odds and ends
def test_the_logit_lens_softcaps_as_the_model_does(tiny_adapter):
    """`Gemma4ForConditionalGeneration` caps its logits (30 * tanh(z / 30)); so does `unembed`:
    the last hidden state read out equals the model's own logits."""
    adapter = tiny_adapter("gemma4")
    image = SPEC.image()
    trace = adapter.trace(image, QUESTION, ANSWER, gradients=False, hidden_states=True)
    inputs = adapter.full_inputs(adapter.prepare(image, QUESTION), adapter.encode_answer(ANSWER))
    with torch.no_grad():
        logits = adapter.model(**inputs).logits[0]
        lens = adapter.unembed(trace.hidden_states[-1])
        head = adapter.model.lm_head(trace.hidden_states[-1])
    torch.testing.assert_close(lens, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lens, 30.0 * torch.tanh(head / 30.0))


def test_the_pixel_path_is_the_processors_patch_list(tiny_adapter):
    adapter = tiny_adapter("gemma4")
    check_pixel_blend(adapter, SPEC.image(), atol=0.5 / 255 + 1e-5)  # [0, 1] pixels, uint8 blend
    prepared = adapter.prepare(SPEC.image(SPEC.geometry_size), QUESTION)  # resized, padded
    pv = prepared.inputs["pixel_values"]  # [1, 630, 48]
    (image,) = adapter.pixel_values_to_views(pv, prepared)
    assert image.shape == (3, 60, 144)
    back = adapter.views_to_pixel_values([image[None]], prepared, fill=0.0)[0]
    assert torch.equal(back, pv)  # the processor pads with zero patches


@pytest.mark.parametrize("token", ["<|audio|>", "<|video|>", "<|audio>"])
def test_audio_and_video_tokens_in_the_question_are_refused(tiny_adapter, token):
    with pytest.raises(CaptureError, match="audio and video inputs are out of scope"):
        tiny_adapter("gemma4").prepare(SPEC.image(), f"{token} {QUESTION}")


@pytest.mark.parametrize("token", ["<|image>", "<image|>"])
def test_the_image_markers_in_the_question_are_refused(tiny_adapter, token):
    with pytest.raises(CaptureError, match="stand for an image"):
        tiny_adapter("gemma4").prepare(SPEC.image(), f"{token} {QUESTION}")


def test_an_answer_holding_an_audio_token_is_refused(tiny_adapter):
    with pytest.raises(CaptureError, match=r"<\|audio\|>"):
        tiny_adapter("gemma4").trace(SPEC.image(), QUESTION, answer="red <|audio|>")


def test_encoders_and_text_only_checkpoints_are_refused(tiny_adapter, monkeypatch):
    adapter = tiny_adapter("gemma4")
    text = adapter.model.config.text_config
    monkeypatch.setattr(text, "use_bidirectional_attention", "all")
    with pytest.raises(CaptureError, match="'all'.*causal decoders only"):
        Gemma4Adapter(adapter.model, adapter.processor)
    monkeypatch.setattr(text, "use_bidirectional_attention", "vision")
    monkeypatch.setattr(adapter.model.config, "vision_config", None)
    with pytest.raises(CaptureError, match="no vision tower"):
        Gemma4Adapter(adapter.model, adapter.processor)
