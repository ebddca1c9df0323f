"""Every registered family on its tiny model: every method, eager vs SDPA, given and generated
answers, and the bad inputs a family must name. (The layout geometry is in test_capture.)"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import xattr
from support.families import FAMILIES, QUESTION, SPECS
from xattr.methods import AttributionWarning
from xattr.methods.tokens import TokenSelectionWarning
from xattr.metrics.faithfulness import DeletionInsertion
from xattr.models import CaptureError

TRACE_METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]
ANSWER = "red circle"


def _quiet():
    """Random tiny models give degenerate maps; the warnings saying so are expected here."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", AttributionWarning)
    warnings.simplefilter("ignore", TokenSelectionWarning)
    return ctx


@pytest.fixture(scope="module")
def sdpa_adapter(tiny_model_dir):
    loaded = {}

    def get(family: str):
        if SPECS[family].no_sdpa:
            pytest.skip(f"{family}: {SPECS[family].no_sdpa}")
        if family not in loaded:
            loaded[family] = xattr.models.load(tiny_model_dir(family), attn_implementation="sdpa")
        return loaded[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_runs_from_one_capture(tiny_adapter, family):
    adapter = tiny_adapter(family)
    image = SPECS[family].image(SPECS[family].geometry_size)
    ctx = _quiet()
    try:
        methods = [m for m in TRACE_METHODS if m not in SPECS[family].unsupported]
        out = xattr.explain(adapter, image, QUESTION, method=methods, answer=ANSWER)
    finally:
        ctx.__exit__(None, None, None)
    layout = adapter.prepare(image, QUESTION).layout
    for name, expl in out.items():
        assert [m.shape for m in expl.visual_maps] == [g.shape for g in layout.grids], name
        assert all(torch.isfinite(m).all() for m in expl.visual_maps), name
        assert expl.answer_tokens == ["red", " circle"], name  # display texts
        pixels = expl.visual_pixels((image.height, image.width))
        assert pixels.shape == (image.height, image.width) and torch.isfinite(pixels).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_igos_and_processed_space_faithfulness_run_on_every_family(tiny_adapter, family):
    """The pixel-mask path reaches every view (tiles, thumbnails, crops): iGOS gives a finite
    map on every grid at today's pass count, and the deletion / insertion curves blended in
    pixel_values space are finite."""
    adapter = tiny_adapter(family)
    image = SPECS[family].image(SPECS[family].geometry_size)
    igos = {"igos": {"iterations": 1, "ig_steps": 1, "mask_size": 4, "token_policy": "all"}}
    ctx = _quiet()
    try:
        expl = xattr.explain(adapter, image, QUESTION, method=igos, answer=ANSWER)["igos"]
    finally:
        ctx.__exit__(None, None, None)
    layout = adapter.prepare(image, QUESTION).layout
    assert [m.shape for m in expl.visual_maps] == [g.shape for g in layout.grids]
    assert all(torch.isfinite(m).all() for m in expl.visual_maps)
    assert expl.meta["forward_passes"] == 2 + 4 and expl.meta["backward_passes"] == 4
    metric = DeletionInsertion(  # min_span 0: a random tiny model barely tells image from blur
        fractions=[0.0, 0.5, 1.0], curves=["deletion", "insertion"], space="processed", min_span=0
    )
    trace = adapter.trace(image, QUESTION, ANSWER, gradients=False)
    scores = metric(adapter, image, QUESTION, trace, expl)
    assert all(math.isfinite(v) for v in scores.values()), scores
    assert scores["faithfulness_passes"] == metric.forward_passes() == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_capture_gives_the_eager_maps(tiny_adapter, sdpa_adapter, family):
    """SDPA never materialises attention; the recomputed A and (dz/do) V^T give eager's maps."""
    image = SPECS[family].image(SPECS[family].geometry_size)
    methods = [m for m in TRACE_METHODS if m not in SPECS[family].unsupported]
    ctx = _quiet()
    try:
        eager = xattr.explain(tiny_adapter(family), image, QUESTION, method=methods, answer=ANSWER)
        sdpa = xattr.explain(sdpa_adapter(family), image, QUESTION, method=methods, answer=ANSWER)
    finally:
        ctx.__exit__(None, None, None)
    for name in methods:
        for a, b in zip(eager[name].visual_maps, sdpa[name].visual_maps, strict=True):
            scale = float(a.abs().max()) or 1.0
            torch.testing.assert_close(b / scale, a / scale, rtol=0, atol=1e-4, msg=name)
        torch.testing.assert_close(
            sdpa[name].token_relevance, eager[name].token_relevance, rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_trace_recomputes_the_eager_attention(tiny_adapter, sdpa_adapter, family):
    image = SPECS[family].image()
    a = tiny_adapter(family).trace(image, QUESTION, ANSWER)
    b = sdpa_adapter(family).trace(image, QUESTION, ANSWER)
    assert b.meta["attn_implementation"] == "sdpa"
    for layer in range(a.num_layers):
        torch.testing.assert_close(
            b.attentions[layer], a.attentions[layer].float(), rtol=1e-4, atol=1e-5
        )
    grads = a.gradients_for([1])
    # float32 rounding grows with the gradients' size (Gemma 4's reach 0.4: 1.5e-6 apart)
    atol = max(1e-6, 1e-5 * float(grads.abs().max()))
    torch.testing.assert_close(b.gradients_for([1]), grads, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_generated_answer_is_explained_like_a_given_one(tiny_adapter, family):
    adapter = tiny_adapter(family)
    image = SPECS[family].image()
    generated = adapter.trace(image, QUESTION, answer=None)
    assert generated.answer_source == "generated"
    ids = generated.input_ids[generated.answer_positions]
    given = adapter.trace(image, QUESTION, answer=ids)
    torch.testing.assert_close(given.meta["logits"], generated.meta["logits"])
    assert not (set(ids.tolist()) & adapter.placeholder_ids())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_question_holding_an_image_token_is_named(tiny_adapter, family):
    adapter = tiny_adapter(family)
    token = adapter.tokenizer.convert_ids_to_tokens(adapter.image_token_id)
    with pytest.raises(CaptureError, match="stand for an image"):
        adapter.prepare(SPECS[family].image(), f"{token} {QUESTION}")


def test_a_checkpoint_no_adapter_knows_lists_the_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt5v"}))
    with pytest.raises(CaptureError, match="'gpt5v'; known families: .*llava.*qwen2_vl"):
        xattr.models.load(tmp_path)
