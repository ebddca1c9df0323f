"""PaliGemma 2's own rules: the fixed SigLIP grid, the prefix-LM mask the capture records,
answer tokens in the causal suffix, and Gemma 2's attention and final logit softcapping."""

from __future__ import annotations

import pytest
import torch

import xattr
from support.families import QUESTION, SPECS, check_pixel_blend
from xattr.models.recording import recompute_attention, recording
from xattr.toy.build import build_tiny_model

FAMILY = "paligemma"
ANSWER = "red circle left"


@pytest.fixture(scope="module")
def adapter_with(tmp_path_factory):
    """Factory: builder options -> adapter of a tiny PaliGemma built with them (cached)."""
    loaded = {}

    def get(**options):
        key = tuple(sorted(options.items()))
        if key not in loaded:
            out = tmp_path_factory.mktemp("tiny_paligemma_variant")
            loaded[key] = xattr.models.load(build_tiny_model(FAMILY, out, seed=0, **options))
        return loaded[key]

    return get


def _prefix_lm(n_prompt: int, n: int) -> torch.Tensor:
    """The prefix-LM pattern: [N, N] bool, the prompt one bidirectional block, the rest causal."""
    mask = torch.ones(n, n, dtype=torch.bool).tril_()
    mask[:n_prompt, :n_prompt] = True
    return mask


@pytest.mark.parametrize("image_size", [112, 224])
@pytest.mark.parametrize("size", [(112, 112), (168, 112), (60, 200), (500, 37)])
def test_the_grid_is_the_processors_image_tokens_over_the_whole_image(
    adapter_with, image_size, size
):
    """(S/14)^2 <image> tokens first (64 at 112 px, 256 at 224 px), whatever the image's
    shape; then <bos>, the prefix and "\\n"; one grid over the whole (stretched) image."""
    adapter = adapter_with(image_size=image_size)
    prepared = adapter.prepare(SPECS[FAMILY].image(size), QUESTION)
    side = image_size // 14
    n = side * side
    assert adapter.processor.image_seq_length == n
    assert torch.equal(prepared.visual_index, torch.arange(n))
    (grid,) = prepared.layout.grids
    assert (grid.rows, grid.cols, grid.box) == (side, side, (0.0, 0.0, 1.0, 1.0))
    tokens = adapter.tokenizer.convert_ids_to_tokens(prepared.prompt_ids[n:].tolist())
    assert tokens == ["<bos>", "answer", "en", "what", "color", "is", "the", "circle", "?", "\n"]
    assert tokens[3:9] == adapter.tokenizer.convert_ids_to_tokens(
        prepared.prompt_ids[prepared.prompt_index].tolist()
    )
    assert "labels" not in prepared.inputs
    assert prepared.inputs["pixel_values"].shape == (1, 3, image_size, image_size)


def test_answer_tokens_join_the_causal_suffix(tiny_adapter):
    """Appended answer tokens get token_type_ids 1: no earlier position sees a later one."""
    adapter = tiny_adapter(FAMILY)
    prepared = adapter.prepare(SPECS[FAMILY].image(), QUESTION)
    answer = adapter.encode_answer(ANSWER)
    inputs = adapter.full_inputs(prepared, answer)
    n_prompt = prepared.prompt_ids.numel()
    types = inputs["token_type_ids"][0]
    assert types[:n_prompt].eq(0).all() and types[n_prompt:].eq(1).all()
    other = answer.clone()
    other[-1] = adapter.tokenizer.convert_tokens_to_ids("blue")
    with torch.no_grad():
        a = adapter.model(**inputs).logits[0]
        b = adapter.model(**adapter.full_inputs(prepared, other)).logits[0]
    assert torch.equal(a[:-1], b[:-1])  # with type 0 the answer would leak backwards
    assert not torch.equal(a[-1], b[-1])


@pytest.mark.parametrize("sliding_window", [4096, 8])
def test_the_recorded_support_is_the_models_prefix_lm_mask(adapter_with, sliding_window):
    """Every layer's support is the real mask: image + prompt bidirectional, answer causal;
    a sliding layer keeps the whole prefix block and windows the causal part."""
    adapter = adapter_with(sliding_window=sliding_window)
    image = SPECS[FAMILY].image(SPECS[FAMILY].geometry_size)
    trace = adapter.trace(image, QUESTION, ANSWER, gradients=False)
    n_prompt, n = int(trace.answer_positions[0]), trace.seq_len
    prefix_lm = _prefix_lm(n_prompt, n)
    window = prefix_lm & torch.ones(n, n, dtype=torch.bool).triu_(-(sliding_window - 1))
    window[:n_prompt, :n_prompt] = True
    layer_types = adapter.model.config.text_config.layer_types
    assert "sliding_attention" in layer_types and "full_attention" in layer_types
    for layer, kind in enumerate(layer_types):
        expected = window if kind == "sliding_attention" else prefix_lm
        support = trace.support(layer)
        assert torch.equal(support, expected), (layer, kind)
        assert support[0, n_prompt - 1]  # the first image token sees the prompt's last token
        # the model's own eager weights are zero exactly off the support
        assert torch.equal(trace.attentions[layer] > 0, support.expand_as(trace.attentions[layer]))
    if sliding_window < n_prompt:
        sliding = layer_types.index("sliding_attention")
        assert not torch.equal(trace.support(sliding), prefix_lm)  # the window shows


def test_softcaps_are_recorded_and_the_logit_lens_reproduces_the_logits(adapter_with):
    """With caps small enough to bite: the recorded attention softcap recomputes the eager
    weights, and lm_head + final softcap (the logit lens) gives the model's logits."""
    adapter = adapter_with(attn_logit_softcapping=1.0, final_logit_softcapping=0.2)
    text = adapter.model.config.text_config
    with torch.no_grad():  # random weights give scores near 0: make them large enough to cap
        for module in adapter.attention_modules():
            module.q_proj.weight.mul_(50.0)
    image = SPECS[FAMILY].image()
    prepared = adapter.prepare(image, QUESTION)
    inputs = adapter.full_inputs(prepared, adapter.encode_answer(ANSWER))
    with torch.no_grad(), recording(adapter.attention_modules(), keep_weights=True) as rec:
        logits = adapter.model(**inputs).logits[0]  # [N, V]
    for record in rec.records:
        assert record.softcap == text.attn_logit_softcapping
        assert record.scaling == text.query_pre_attn_scalar**-0.5
        torch.testing.assert_close(recompute_attention(record, torch.float32), record.weights)
        uncapped = record.__class__(**{**record.__dict__, "softcap": None})
        gap = (recompute_attention(uncapped, torch.float32) - record.weights).abs().max()
        assert gap > 1e-2  # the cap changes the weights: recomputing must apply it

    trace = adapter.trace(image, QUESTION, ANSWER, hidden_states=True)
    p, y = trace.predicting_positions, trace.input_ids[trace.answer_positions]
    t = torch.arange(p.numel())
    last = trace.hidden_states[-1]  # [N, D], already through the final norm
    torch.testing.assert_close(adapter.unembed(last[p])[t, y], trace.meta["logits"])
    torch.testing.assert_close(adapter.unembed(last), logits)
    seen = {}

    def grab(_module, args, _output):
        seen["h"] = args[0][0].detach()  # [N, D] the final norm's input

    hook = adapter.final_norm().register_forward_hook(grab)
    with torch.no_grad():
        adapter.model(**inputs)
    hook.remove()
    torch.testing.assert_close(adapter.readout(seen["h"]), logits)  # norm + head + cap
    raw = adapter.model.lm_head(last)
    assert raw.abs().max() > text.final_logit_softcapping  # the cap bites ...
    assert logits.abs().max() < text.final_logit_softcapping  # ... and bounds the logits


def test_blending_pixel_values_equals_processing_the_blended_image(tiny_adapter):
    """SigLIP's resize + rescale + normalise is per-pixel affine: the iGOS path is exact at
    the native size (up to uint8 rounding)."""
    check_pixel_blend(tiny_adapter(FAMILY), SPECS[FAMILY].image(seed=3), 0.5 / 255 / 0.5 + 1e-5)
