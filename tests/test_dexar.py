"""DEX-AR (SPEC §4) against plain reference implementations: explicit loops over tokens,
layers and heads for the map formulas, and an independent forward with hooks and one
``torch.autograd.grad`` per (layer, token) for the logit-lens gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import xattr
from support.families import SPECS
from xattr.methods import AttributionWarning
from xattr.methods import dexar as dexar_module
from xattr.methods.dexar import Dexar, dexar_maps, dexar_stats, last_k_layers, text_positions_mask
from xattr.trace import Trace, TraceError

QUESTION = "what color is the circle?"
ANSWER = "red circle , yes"


# ---------------------------------------------------------------- plain references
def reference_maps(rows: torch.Tensor, visual: list[int], text: list[int], pred: list[int]):
    """DEX-AR's formulas with explicit loops: (token maps [T, |V|], delta [T], weights [T, K, H])."""
    n_tok, n_layers, n_heads, _ = rows.shape
    maps = torch.zeros(n_tok, len(visual), dtype=torch.float64)
    delta = torch.zeros(n_tok, dtype=torch.float64)
    weights = torch.zeros(n_tok, n_layers, n_heads, dtype=torch.float64)
    for t in range(n_tok):
        best_img, best_txt = 0.0, 0.0
        for k in range(n_layers):
            for h in range(n_heads):
                gp = [max(float(v), 0.0) for v in rows[t, k, h]]
                s_img = max(gp[j] for j in visual)
                before = [gp[j] for j in text if j < pred[t]]
                s_txt = max(before) if before else 0.0
                w = max(s_img - s_txt, 0.0)
                weights[t, k, h] = w
                lo, hi = min(gp[j] for j in visual), max(gp[j] for j in visual)
                for i, j in enumerate(visual):
                    maps[t, i] += w * ((gp[j] - lo) / (hi - lo) if hi > lo else 0.0)
                best_img, best_txt = max(best_img, s_img), max(best_txt, s_txt)
        delta[t] = max(best_img - best_txt, 0.0)
    return maps, delta, weights


def reference_rows(adapter, image, question: str, answer: str, layers: list[int]) -> torch.Tensor:
    """d z_t^l / d A[l][:, p_t, :] from a fresh forward with hooks: [T, K, H, N].

    ``z_t^l = lm_head(final_norm(out_l[p_t]))[y_t]`` with ``out_l`` the decoder layer's own
    (un-normed) output, captured by a hook: no use of ``output_hidden_states``.
    """
    prepared = adapter.prepare(image, question)
    answer_ids = adapter.encode_answer(answer)
    inputs = adapter.full_inputs(prepared, answer_ids)
    n_prompt = prepared.prompt_ids.numel()
    decoder = adapter.model.model.language_model.layers
    attn, outs = {}, {}
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, a, o, i=i: attn.__setitem__(i, o[1]))
        for i, layer in enumerate(decoder)
    ] + [
        layer.register_forward_hook(
            lambda m, a, o, i=i: outs.__setitem__(i, o[0] if isinstance(o, tuple) else o)
        )
        for i, layer in enumerate(decoder)
    ]
    flags = [(p, p.requires_grad) for p in adapter.model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            logits = adapter.model(**inputs, use_cache=False).logits[0]
    finally:
        for h in hooks:
            h.remove()
    head, norm = adapter.model.lm_head, adapter.final_norm()
    n_tok, n_heads, n = answer_ids.numel(), attn[0].shape[1], attn[0].shape[-1]
    # sanity of the reference itself: the lens at the last layer is the model's logit
    last = head(norm(outs[len(decoder) - 1][0]))
    assert torch.allclose(last, logits, atol=1e-5)
    rows = torch.zeros(n_tok, len(layers), n_heads, n)
    for k, layer in enumerate(layers):
        for t in range(n_tok):
            p = n_prompt + t - 1
            z = head(norm(outs[layer][0, p]))[answer_ids[t]]
            (g,) = torch.autograd.grad(z, attn[layer], retain_graph=True)
            rows[t, k] = g[0, :, p, :]
    for p, flag in flags:
        p.requires_grad_(flag)
    return rows


def _image(size: int = 112, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))


def _image_size(adapter) -> int:
    return SPECS[adapter.family].native_size


# ---------------------------------------------------------------------- formulas
def test_maps_match_explicit_loops_on_random_rows():
    """Token maps, head weights and delta_t equal the loop reference, incl. constant rows and a linguistic token."""
    gen = torch.Generator().manual_seed(0)
    n_tok, n_layers, n_heads, n = 4, 3, 5, 30
    rows = torch.randn(n_tok, n_layers, n_heads, n, generator=gen, dtype=torch.float64)
    visual = list(range(4, 16))
    prompt, answer = list(range(18, 24)), [26, 27, 28, 29]
    pred = [a - 1 for a in answer]
    rows[0, 1, 2, visual] = 0.7  # a constant visual row: min-max gives zeros
    rows[1, :, :, visual] = -1.0  # token 1 sees nothing in V: delta = 0 ("linguistic")
    rows[2, :, :, 18] = 50.0  # a text gradient larger than any visual one: every head filtered
    rows[0, 0, 0, visual[3]] = 10.0  # token 0: one head clearly prefers the image
    text = torch.zeros(n, dtype=torch.bool)
    text[prompt + answer] = True
    mask = text[None] & (torch.arange(n)[None] < torch.tensor(pred)[:, None])
    stats = dexar_maps(rows, torch.tensor(visual), mask)
    ref_maps, ref_delta, ref_w = reference_maps(rows, visual, prompt + answer, pred)
    torch.testing.assert_close(stats.token_maps, ref_maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.delta, ref_delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.head_weights, ref_w, atol=1e-5, rtol=0)
    assert float(stats.delta[1]) == 0.0 and float(stats.delta[2]) == 0.0
    assert float(stats.delta[0]) > 0 and torch.isfinite(stats.token_maps).all()


def test_text_positions_are_prompt_and_answer_before_p_t():
    """P ∪ G restricted to j < p_t, per token."""
    trace = Trace.from_tensors(
        [torch.full((1, 8, 8), 1 / 8)],
        visual_index=[1, 2],
        prompt_index=[3, 4],
        answer_positions=[6, 7],
        grid=(1, 2),
    )
    mask = text_positions_mask(trace)
    assert mask[0].nonzero().flatten().tolist() == [3, 4]  # p_0 = 5
    assert mask[1].nonzero().flatten().tolist() == [3, 4]  # p_1 = 6: s_0 = 6 is not < 6


def test_last_k_clips_to_the_model():
    assert last_k_layers(4, 10) == [0, 1, 2, 3]
    assert last_k_layers(12, 3) == [9, 10, 11]
    with pytest.raises(ValueError):
        last_k_layers(4, 0)


# ------------------------------------------------------------- on real tiny models
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_dexar_matches_independent_autograd_reference(tiny_adapter, family):
    """End to end on a real trace: gradient rows, per-token maps, delta_t and sentence map agree to 1e-5."""
    adapter = tiny_adapter(family)
    image = _image(_image_size(adapter))
    trace = adapter.trace(image, QUESTION, ANSWER, gradients=True, hidden_states=True)
    layers = last_k_layers(trace.num_layers, 10)
    ref_rows = reference_rows(adapter, image, QUESTION, ANSWER, layers)
    rows, normed = dexar_module.logit_lens_rows(trace, layers)
    assert normed  # transformers 5.x: the last hidden state already went through the final norm
    torch.testing.assert_close(rows, ref_rows, atol=1e-5, rtol=1e-5)

    text = torch.cat([trace.prompt_index, trace.answer_positions]).tolist()
    maps, delta, _ = reference_maps(
        ref_rows.double(), trace.visual_index.tolist(), text, trace.predicting_positions.tolist()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        expl = Dexar(last_k=10).explain(trace)
    h, w = trace.grids[0]
    torch.testing.assert_close(expl.token_maps.double(), maps.view(-1, h, w), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(expl.token_relevance.double(), delta, atol=1e-5, rtol=1e-5)
    sentence = (delta[:, None] * maps).sum(dim=0).view(h, w)
    torch.testing.assert_close(expl.visual.double(), sentence, atol=1e-5, rtol=1e-5)
    linguistic = [t for t in range(len(delta)) if float(delta[t]) == 0.0]
    assert expl.meta["linguistic_tokens"] == linguistic
    assert expl.token_mask.tolist() == [float(d) > 0 for d in delta]
    assert expl.meta["backward_passes"] == len(layers) * trace.num_answer_tokens

    # last_k=1: only the last layer, read with lm_head alone (no second final norm)
    last = dexar_stats(trace, last_k=1)
    assert last.layers == [trace.num_layers - 1]
    ref_last, _, _ = reference_maps(
        ref_rows[:, -1:].double(),
        trace.visual_index.tolist(),
        text,
        trace.predicting_positions.tolist(),
    )
    torch.testing.assert_close(last.token_maps.double(), ref_last, atol=1e-5, rtol=1e-5)


def test_all_linguistic_gives_a_zero_map_with_a_warning(tiny_adapter, monkeypatch, tmp_path):
    """No head prefers the image: warn, zero map, flagged, never NaN."""
    adapter = tiny_adapter("qwen2_vl")
    trace = adapter.trace(_image(), QUESTION, "red", gradients=True, hidden_states=True)

    def text_only(trace, layers, batch_vjp=8):
        rows = torch.zeros(trace.num_answer_tokens, len(layers), trace.num_heads, trace.seq_len)
        rows[..., trace.prompt_index] = 1.0
        return rows, True

    monkeypatch.setattr(dexar_module, "logit_lens_rows", text_only)
    with pytest.warns(AttributionWarning, match="linguistic"):
        expl = Dexar().explain(trace)
    assert expl.meta["empty_visual_map"] is True
    assert not expl.visual.any() and torch.isfinite(expl.visual).all()
    assert expl.meta["linguistic_tokens"] == list(range(trace.num_answer_tokens))
    assert not expl.token_mask.any()
    loaded = xattr.Explanation.load(expl.save(tmp_path))  # meta survives JSON
    assert loaded.meta["linguistic_tokens"] == expl.meta["linguistic_tokens"]


def test_dexar_without_graph_or_hidden_states_is_a_clear_error(tiny_adapter):
    adapter = tiny_adapter("qwen2_vl")
    trace = adapter.trace(_image(), QUESTION, "red", gradients=True, hidden_states=False)
    with pytest.raises(TraceError, match="hidden_states=True"):
        Dexar().explain(trace)
    assert xattr.methods.get("dexar").needs.hidden_states
