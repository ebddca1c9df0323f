"""Trace capture on tiny models of the real classes: positions, gradients, state, bad input."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

import xattr
from support.families import FAMILIES, QUESTION, SPECS
from support.reference import autograd_attention_gradients
from xattr.images import ImageError
from xattr.models import CaptureError


def _image(size: int, block: tuple[int, int, int] | None = None, seed: int = 0) -> Image.Image:
    """A dark noisy square image; ``block=(row, col, cell)`` paints one cell-sized white square."""
    b = (
        None
        if block is None
        else (
            block[0] * block[2],
            block[1] * block[2],
            (block[0] + 1) * block[2],
            (block[1] + 1) * block[2],
        )
    )
    return SPECS["qwen2_vl"].image(size, seed=seed, block=b)


def _image_size(adapter) -> int:
    """A square image size the family's processor keeps as is (no resize, no crop)."""
    return SPECS[adapter.family].native_size


def _lm_input_embeddings(adapter, image) -> tuple[torch.Tensor, object]:
    """The language model's input embeddings at the visual positions, in V order: [|V|, D]."""
    prepared = adapter.prepare(image, QUESTION)
    seen = {}

    def grab(_module, _args, kwargs):
        if adapter.visual_prefix(prepared):  # cross-attention models: the image tokens' states
            states = kwargs["cross_attention_states"].detach()
            seen["embeds"] = states.reshape(-1, states.shape[-1])
        else:
            seen["embeds"] = kwargs["inputs_embeds"].detach()[0]

    handle = adapter.language_model().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**prepared.inputs)
    finally:
        handle.remove()
    return seen["embeds"][prepared.visual_index], prepared


def _cell_box(grid, r: int, c: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixels (top, left, bottom, right) of the middle of cell (r, c) of ``grid`` on the image."""
    top, left, bottom, right = grid.box
    h, w = (bottom - top) / grid.rows, (right - left) / grid.cols
    y0, x0 = top + r * h, left + c * w
    return (
        round((y0 + 0.2 * h) * height),
        round((x0 + 0.2 * w) * width),
        round((y0 + 0.8 * h) * height),
        round((x0 + 0.8 * w) * width),
    )


def _cell_at(grid, y: float, x: float) -> int | None:
    """Raster index of the cell of ``grid`` holding the point (y, x) (fractions), if any."""
    top, left, bottom, right = grid.box
    if not (top <= y < bottom and left <= x < right):
        return None
    r = int((y - top) / (bottom - top) * grid.rows)
    c = int((x - left) / (right - left) * grid.cols)
    return r * grid.cols + c


@pytest.mark.parametrize("family", FAMILIES)
def test_a_white_block_lights_exactly_the_tokens_whose_boxes_contain_it(tiny_adapter, family):
    """On a non-square image, a white block inside one cell of a grid changes, in every grid
    whose box holds the block (base grid, tile, thumbnail), the token of the cell holding it
    the most, with the processor's real resizing, cropping and tiling."""
    adapter = tiny_adapter(family)
    width, height = SPECS[family].geometry_size
    base, prepared = _lm_input_embeddings(adapter, SPECS[family].image((width, height)))
    layout = prepared.layout
    checked = 0
    for g, grid in enumerate(layout.grids):
        for r, c in {
            (0, 0),
            (0, grid.cols - 1),
            (grid.rows - 1, 0),
            (grid.rows // 2, grid.cols // 2),
        }:
            box = _cell_box(grid, r, c, width, height)
            y, x = (box[0] + box[2]) / 2 / height, (box[1] + box[3]) / 2 / width
            if not (0 <= y < 1 and 0 <= x < 1):
                continue  # a cell outside the image (padding)
            moved, _ = _lm_input_embeddings(
                adapter, SPECS[family].image((width, height), block=box)
            )
            change = (moved - base).norm(dim=-1)  # [|V|]
            for h, (other, span) in enumerate(zip(layout.grids, layout.slices(), strict=True)):
                cell = _cell_at(other, y, x)
                if cell is None or other.image != grid.image:
                    continue
                got = int(change[span].argmax())
                assert got == cell, (
                    f"grid {h} ({other.name}): block in cell {(r, c)} of grid {g} lit {got}, expected {cell}"
                )
                checked += 1
    assert checked >= 4


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_are_read_at_the_predicting_position(tiny_adapter, family):
    """z_t is the logit of y_t at p_t = s_t - 1, and a greedy y_t is the argmax there."""
    adapter = tiny_adapter(family)
    trace = adapter.trace(_image(_image_size(adapter)), QUESTION, answer=None)
    assert trace.answer_source == "generated"
    ids = trace.input_ids
    prefix = trace.meta["visual_prefix"]  # image tokens before the model's own sequence
    with torch.no_grad():
        inputs = adapter.full_inputs(
            adapter.prepare(_image(_image_size(adapter)), QUESTION), ids[trace.answer_positions]
        )
        logits = adapter.model(**inputs).logits[0]
    for t, s in enumerate(trace.answer_positions.tolist()):
        y = int(ids[s])
        s -= prefix
        assert trace.meta["logits"][t] == pytest.approx(float(logits[s - 1, y]), rel=1e-5, abs=1e-5)
        assert int(logits[s - 1].argmax()) == y  # greedy: the token was produced at s - 1
        probs = torch.softmax(logits[s - 1], -1)
        assert float(trace.confidences[t]) == pytest.approx(float(probs[y]), rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_rows_after_the_predicting_position_are_zero(tiny_adapter, family):
    adapter = tiny_adapter(family)
    trace = adapter.trace(_image(_image_size(adapter)), QUESTION, answer="red circle")
    for t, grads in trace.iter_gradients():  # [L, H, N, N]
        p = int(trace.predicting_positions[t])
        assert torch.count_nonzero(grads[:, :, p + 1 :, :]) == 0
        assert torch.count_nonzero(grads[:, :, p, :]) > 0  # the row read is not empty


@pytest.mark.parametrize("chunk", [1, 2, 3, 8])
def test_batched_gradients_equal_a_plain_autograd_loop(tiny_adapter, chunk):
    adapter = tiny_adapter("qwen2_5_vl")
    image = _image(112)
    trace = adapter.trace(image, QUESTION, answer="red circle left")
    T = trace.num_answer_tokens  # chunks of `chunk` tokens, each one batched backward pass
    got = torch.cat([trace.gradients_for(range(s, min(T, s + chunk))) for s in range(0, T, chunk)])

    # reference: a fresh forward and one torch.autograd.grad per token
    ref = autograd_attention_gradients(adapter, image, QUESTION, trace)  # [T, L, H, N, N]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_given_answer_is_teacher_forced_and_generated_matches_generate(tiny_adapter, family):
    adapter = tiny_adapter(family)
    image = _image(_image_size(adapter))
    given = adapter.trace(image, QUESTION, answer="blue square")
    expected = adapter.tokenizer("blue square", add_special_tokens=False)["input_ids"]
    assert given.input_ids[given.answer_positions].tolist() == expected
    assert given.answer_source == "given"
    assert given.answer_pieces == adapter.tokenizer.convert_ids_to_tokens(expected)
    assert "".join(given.answer_tokens) == adapter.tokenizer.decode(expected)  # display texts
    assert given.answer_tokens[1:] == [" square"]

    generated = adapter.trace(image, QUESTION, answer=None, gradients=False)
    prepared = adapter.prepare(image, QUESTION)
    with torch.no_grad():
        out = adapter.model.generate(
            **prepared.inputs, max_new_tokens=adapter.max_new_tokens, do_sample=False
        )
    new = out[0, prepared.prompt_ids.numel() :].tolist()
    got = generated.input_ids[generated.answer_positions].tolist()
    assert new[: len(got)] == got
    assert len(got) == len(new) or new[len(got)] in adapter.stop_ids()


@pytest.mark.parametrize("family", FAMILIES)
def test_question_tokens_are_exactly_the_question(tiny_adapter, family):
    adapter = tiny_adapter(family)
    trace = adapter.trace(_image(_image_size(adapter)), QUESTION, answer="red", gradients=False)
    assert trace.prompt_pieces == adapter.tokenizer.tokenize(QUESTION)
    # display texts: what the (word-level, lower-casing) tokenizer decodes the question to
    question_ids = adapter.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    assert "".join(trace.prompt_tokens).strip() == adapter.tokenizer.decode(question_ids).strip()
    # V, P and the answer are disjoint and V holds only image tokens
    v, p, g = (
        set(x.tolist()) for x in (trace.visual_index, trace.prompt_index, trace.answer_positions)
    )
    assert not (v & p) and not (v & g) and not (p & g)
    assert all(int(trace.input_ids[i]) == adapter.image_token_id for i in v)


def test_capture_leaves_the_model_as_found(tiny_adapter):
    adapter = tiny_adapter("qwen2_5_vl")
    model = adapter.model
    model.train()
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 2 == 0)
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    try:
        trace = adapter.trace(_image(112), QUESTION, answer="red circle")
        trace.gradients()
        assert model.training
        assert [p.requires_grad for p in params] == [i % 2 == 0 for i in range(len(params))]
        assert all(p.grad is None for p in params)
        assert (
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
            == hooks_before
        )
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(True)


def test_trace_runs_in_eval_mode_without_dropout(tiny_adapter):
    """With dropout switched on in the config, two captures still agree exactly."""
    adapter = tiny_adapter("qwen2_5_vl")
    model = adapter.model
    old = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    attn = [m for m in adapter.attention_modules()]
    old_attn = [m.attention_dropout for m in attn]
    model.train()
    try:
        for m in attn:
            m.attention_dropout = 0.5
        a = adapter.trace(_image(112), QUESTION, answer="red", gradients=False)
        b = adapter.trace(_image(112), QUESTION, answer="red", gradients=False)
        for x, y in zip(a.attentions, b.attentions):
            torch.testing.assert_close(x, y)
    finally:
        model.eval()
        for m, p in old:
            m.p = p
        for m, d in zip(attn, old_attn):
            m.attention_dropout = d


def test_methods_that_need_no_gradients_get_a_trace_without_a_graph(tiny_adapter):
    adapter = tiny_adapter("qwen2_5_vl")
    trace = adapter.trace(_image(112), QUESTION, answer="red", gradients=False)
    assert not trace.has_gradients
    assert all(not a.requires_grad for a in trace.attentions)
    with pytest.raises(xattr.TraceError, match="without them"):
        trace.require_gradients("glimpse")


# ------------------------------------------------------------------ bad input
def test_missing_and_corrupt_images_are_named(tiny_adapter, tmp_path):
    adapter = tiny_adapter("qwen2_5_vl")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        adapter.trace(tmp_path / "nope.png", QUESTION)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ImageError, match="corrupt.png"):
        adapter.trace(bad, QUESTION)


def test_empty_question_is_rejected(tiny_adapter):
    with pytest.raises(CaptureError, match="question is empty"):
        tiny_adapter("qwen2_5_vl").trace(_image(112), "   ")


def test_an_attention_implementation_the_capture_cannot_wrap_is_named(tiny_model_dir):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("vendor_kernel", sdpa_attention_forward)  # e.g. a fused kernel
    with pytest.raises(CaptureError, match="'vendor_kernel'"):
        xattr.models.load(tiny_model_dir("qwen2_5_vl"), attn_implementation="vendor_kernel")
    # SDPA, for the whole model or per sub-config, is accepted
    for impl in ("sdpa", {"text_config": "sdpa", "vision_config": "sdpa"}):
        adapter = xattr.models.load(tiny_model_dir("qwen2_5_vl"), attn_implementation=impl)
        assert (
            adapter.trace(_image(112), QUESTION, "red", gradients=False).meta["attn_implementation"]
            == "sdpa"
        )


def test_image_without_visual_tokens_is_rejected(tiny_adapter, monkeypatch):
    adapter = tiny_adapter("llava")
    from xattr.layout import VisualLayout

    monkeypatch.setattr(
        type(adapter), "visual_layout", lambda self, inputs, size: VisualLayout(torch.zeros(0), [])
    )
    with pytest.raises(CaptureError, match="no visual tokens"):
        adapter.trace(_image(_image_size(adapter)), QUESTION)


def test_sequence_longer_than_context_is_rejected(tiny_adapter, monkeypatch):
    adapter = tiny_adapter("qwen2_5_vl")
    monkeypatch.setattr(type(adapter), "context_length", property(lambda self: 10))
    with pytest.raises(CaptureError, match="longer than the model's context of 10"):
        adapter.trace(_image(112), QUESTION, answer="red")


def test_unknown_family_and_missing_directory(tmp_path):
    known = ", ".join(xattr.models.available())  # every registered family, in order
    with pytest.raises(KeyError, match=f"known: {re.escape(known)}$"):
        xattr.models.load("gpt5v", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_model"):
        xattr.models.load("llava", tmp_path / "missing_model")


def test_gradients_survive_an_outer_no_grad(tiny_adapter):
    """Inside a Lightning test loop everything runs under no_grad; gradients must not vanish."""
    adapter = tiny_adapter("qwen2_5_vl")
    free = adapter.trace(_image(112), QUESTION, answer="red circle").gradients()
    with torch.no_grad():
        inside = adapter.trace(_image(112), QUESTION, answer="red circle").gradients()
    assert float(free.abs().sum()) > 0
    torch.testing.assert_close(inside, free)


@pytest.mark.parametrize(("method", "needs_grad"), [("rollout", False), ("glimpse", True)])
def test_explain_captures_only_what_the_method_needs(tiny_adapter, monkeypatch, method, needs_grad):
    adapter = tiny_adapter("qwen2_5_vl")
    seen = {}
    original = type(adapter).trace

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(adapter), "trace", spy)
    expl = xattr.explain(adapter, _image(112), QUESTION, method=method, answer="red circle")
    assert seen["gradients"] is needs_grad
    assert (
        expl.method == method
        and expl.visual.shape == adapter.prepare(_image(112), QUESTION).grids[0]
    )
    assert expl.answer_tokens == ["red", " circle"] and expl.meta["answer_source"] == "given"
    assert torch.isfinite(expl.visual).all() and float(expl.visual.abs().sum()) > 0
    assert expl.timings["capture_s"] > 0


@pytest.mark.parametrize(
    ("method", "policy"), [("rollout", "dexar"), ("glimpse", "visual"), ("tmme", "all")]
)
def test_every_method_takes_every_token_policy(tiny_adapter, method, policy):
    """A policy widens what is captured: rollout + dexar needs gradients, visual the model."""
    attributor = xattr.methods.get(method, token_policy=policy)
    assert attributor.needs.gradients is (method != "rollout" or policy == "dexar")
    assert attributor.needs.model is (policy == "visual")
    expl = xattr.explain(adapter := tiny_adapter("qwen2_5_vl"), _image(112), QUESTION, method=method,
                         answer="red circle", token_policy=policy)  # fmt: skip
    assert expl.token_mask is not None and expl.token_mask.shape == (2,)
    assert expl.visual.shape == adapter.prepare(_image(112), QUESTION).grids[0]
    with pytest.raises(ValueError, match="unknown token policy"):
        xattr.methods.get(method, token_policy="nouns").explain(
            adapter.trace(_image(112), QUESTION, answer="red", gradients=method != "rollout")
        )


def test_image_placeholders_never_enter_a_teacher_forced_answer(tiny_adapter):
    """A given answer holding the image token is refused by name; a generated one is cleaned."""
    adapter = tiny_adapter("qwen2_5_vl")
    token = adapter.tokenizer.convert_ids_to_tokens(adapter.image_token_id)
    with pytest.raises(CaptureError, match=re.escape(token)):
        adapter.trace(_image(112), QUESTION, answer=f"red {token}")
    with pytest.raises(CaptureError, match=re.escape(token)):
        adapter.trace(_image(112), QUESTION, answer=torch.tensor([adapter.image_token_id]))
    red = adapter.tokenizer.convert_tokens_to_ids("red")
    stop = next(iter(adapter.stop_ids()))
    with pytest.warns(UserWarning, match=re.escape(token)):
        kept = adapter.clean_generated([red, adapter.image_token_id, red, stop, red])
    assert kept.tolist() == [red, red]  # placeholder dropped, cut at the stop id
