"""Every method on traces captured from tiny models of the real classes (real code paths)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from support.families import SPECS
from support.reference import (
    glimpse_reference,
    gradcam_reference,
    per_token_rows_to_maps,
    raw_attention_reference,
    rollout_reference,
    tmme_reference,
)
from xattr import methods
from xattr.methods import AttributionWarning

QUESTION = "what color is the circle?"


@pytest.fixture(scope="module", params=["qwen2_vl", "llava"])
def captured(request, tiny_adapter):
    """A teacher-forced trace with gradients and hidden states, and its tensors in float64."""
    adapter = tiny_adapter(request.param)
    size = SPECS[adapter.family].native_size
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    trace = adapter.trace(Image.fromarray(pixels), QUESTION, "red car.", hidden_states=True)
    attn = torch.stack(trace.attentions).double()  # [L, H, N, N]
    grads = trace.gradients().double()  # [T, L, H, N, N]
    return trace, attn, grads


def test_real_gradients_are_nonzero_above_the_diagonal(captured):
    """Why gradient sums are restricted to the support (methods.sweep)."""
    _, _, grads = captured
    assert torch.triu(grads[0, 0, 0], diagonal=1).abs().sum() > 0


def test_every_method_matches_its_reference_on_a_real_trace(captured):
    trace, attn, grads = captured
    kw = {
        "visual_index": trace.visual_index.tolist(),
        "prompt_index": trace.prompt_index.tolist(),
    }
    positions = trace.answer_positions.tolist()
    mask = methods.get("glimpse").explain(trace).token_mask.tolist()
    assert False in mask and True in mask  # "." is not aggregated
    ref = glimpse_reference(
        attn,
        grads,
        answer_positions=positions,
        confidences=trace.confidences.tolist(),
        token_mask=mask,
        **kw,
    )
    expl = methods.get("glimpse").explain(trace)
    for actual, expected in (
        (expl.visual.flatten(), ref["visual"]),
        (expl.prompt_relevance, ref["prompt"]),
        (expl.token_relevance, ref["rho"]),
    ):
        torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-7)
    baselines = {
        "tmme": tmme_reference(attn, grads, answer_positions=positions),
        "rollout": rollout_reference(attn, answer_positions=positions)[0],
        "raw_attention": raw_attention_reference(attn, answer_positions=positions),
        "gradcam": gradcam_reference(attn, grads, answer_positions=positions),
    }
    for name, rows in baselines.items():
        expl = methods.get(name).explain(trace)
        ref = per_token_rows_to_maps(rows, kw["visual_index"], kw["prompt_index"], mask)
        torch.testing.assert_close(
            expl.visual.flatten().double(), ref["visual"], rtol=1e-4, atol=1e-9
        )
        torch.testing.assert_close(
            expl.token_relevance.double(), ref["token_relevance"], rtol=1e-4, atol=1e-9
        )


def test_gradcam_hidden_runs_on_a_real_trace(captured):
    trace, _, _ = captured
    with warnings.catch_warnings():  # the readout may not reproduce the logits exactly
        warnings.simplefilter("ignore", AttributionWarning)
        expl = methods.get("gradcam", variant="hidden").explain(trace)
    assert expl.visual.shape == trace.grid
    assert torch.isfinite(expl.visual).all() and (expl.visual >= 0).all()
