"""Mistral 3 / Pixtral's own rules: the merged grid from image_sizes against the tokens the
processor emits, [IMG_BREAK] / [IMG_END] kept out of the visual tokens, one <s>, the causal (or
windowed) support, image_sizes in batched scoring, and the pixel-mask path."""

from __future__ import annotations

import math

import pytest
import torch

import xattr
from support.families import QUESTION, SPECS, check_pixel_blend
from xattr.toy.build import build_tiny_model

FAMILY = "mistral3"
CELL = 28  # patch 14 x spatial merge 2
LONGEST = 224  # the tiny processor's longest_edge


@pytest.fixture(scope="module")
def adapter_with(tmp_path_factory):
    """Factory: builder options -> adapter of a tiny Mistral 3 built with them (cached)."""
    loaded = {}

    def get(**options):
        key = tuple(sorted(options.items()))
        if key not in loaded:
            out = tmp_path_factory.mktemp("tiny_mistral3_variant")
            loaded[key] = xattr.models.load(build_tiny_model(FAMILY, out, seed=0, **options))
        return loaded[key]

    return get


def _expected_grid(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) by Pixtral's rule: shrink to fit longest_edge, round sides up to 28 px."""
    ratio = max(height / LONGEST, width / LONGEST)
    if ratio > 1:
        height, width = math.floor(height / ratio), math.floor(width / ratio)
    return math.ceil(height / CELL), math.ceil(width / CELL)


@pytest.mark.parametrize(
    "size", [(112, 112), (300, 200), (200, 300), (168, 112), (500, 37), (20, 20), (600, 600)]
)
def test_the_grid_and_its_separators_match_the_processor(tiny_adapter, size):
    """rows x cols [IMG] tokens in raster order, a [IMG_BREAK] after every row but the last,
    [IMG_END] after it, as the processor emits them in input_ids; no separator is visual."""
    adapter = tiny_adapter(FAMILY)
    prepared = adapter.prepare(SPECS[FAMILY].image(size), QUESTION)
    rows, cols = _expected_grid(*size)
    assert prepared.inputs["image_sizes"].tolist() == [[rows * CELL, cols * CELL]]
    (grid,) = prepared.layout.grids
    assert (grid.rows, grid.cols, grid.box) == (rows, cols, (0.0, 0.0, 1.0, 1.0))
    ids = prepared.prompt_ids
    tokens = adapter.tokenizer.convert_ids_to_tokens(ids.tolist())
    first = tokens.index("[IMG]")
    expected = torch.tensor([first + r * (cols + 1) + c for r in range(rows) for c in range(cols)])
    assert torch.equal(prepared.visual_index, expected)
    block = tokens[first : first + rows * (cols + 1)]
    assert block == (["[IMG]"] * cols + ["[IMG_BREAK]"]) * (rows - 1) + ["[IMG]"] * cols + [
        "[IMG_END]"
    ]
    image_tokens = [t for t in tokens if t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]")]
    assert len(image_tokens) == len(block)  # the block is all the processor emitted
    separators = {i for i, t in enumerate(tokens) if t in ("[IMG_BREAK]", "[IMG_END]")}
    assert not separators & set(prepared.visual_index.tolist())


def test_the_prompt_starts_with_one_bos(tiny_adapter):
    """The chat template renders <s> and the tokenizer would add another: the adapter
    tokenises the rendered prompt without special tokens."""
    adapter = tiny_adapter(FAMILY)
    prepared = adapter.prepare(SPECS[FAMILY].image(), QUESTION)
    bos = adapter.tokenizer.bos_token_id
    assert prepared.text.startswith(adapter.tokenizer.bos_token)
    assert prepared.prompt_ids[0] == bos and int((prepared.prompt_ids == bos).sum()) == 1
    doubled = adapter.processor(images=[SPECS[FAMILY].image()], text=[prepared.text])
    assert doubled["input_ids"][0][:2].tolist() == [bos, bos]  # what the default call would give
    assert adapter.tokenizer.convert_ids_to_tokens(prepared.prompt_ids[-1:].tolist()) == ["[/INST]"]


@pytest.mark.parametrize("sliding_window", [None, 8])
def test_the_recorded_support_is_the_models_causal_mask(adapter_with, sliding_window):
    """Image tokens are causal like text; a sliding window, where a checkpoint has one,
    shows in every layer's support and in the model's own eager weights."""
    adapter = adapter_with(sliding_window=sliding_window)
    image = SPECS[FAMILY].image(SPECS[FAMILY].geometry_size)
    trace = adapter.trace(image, QUESTION, "red circle left", gradients=False)
    n = trace.seq_len
    expected = torch.ones(n, n, dtype=torch.bool).tril_()
    if sliding_window is not None:
        expected.triu_(-(sliding_window - 1))
    for layer in range(trace.num_layers):
        support = trace.support(layer)
        assert torch.equal(support, expected), layer
        weights = trace.attentions[layer]  # [H, N, N]
        assert torch.equal(weights > 0, support.expand_as(weights))


def test_batched_scoring_repeats_image_sizes(tiny_adapter):
    """answer_logprobs concatenates image_sizes per copy: a batch scores like one at a time."""
    adapter = tiny_adapter(FAMILY)
    size = SPECS[FAMILY].geometry_size
    images = [SPECS[FAMILY].image(size, seed=s) for s in range(3)]
    answer = adapter.encode_answer("red circle")
    batched = adapter.answer_logprobs(images, QUESTION, answer, batch_size=3)
    single = torch.cat([adapter.answer_logprobs([im], QUESTION, answer) for im in images])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert not torch.equal(batched[0], batched[1])  # the images are told apart


@pytest.mark.parametrize("size", [(112, 112), (168, 112)])
def test_blending_pixel_values_equals_processing_the_blended_image(tiny_adapter, size):
    """Pixtral's resize + rescale + normalise is per-pixel affine: exact where the processor
    keeps the size (sides multiples of 28 within longest_edge), up to uint8 rounding."""
    # half a grey level over the smallest CLIP std
    check_pixel_blend(
        tiny_adapter(FAMILY), SPECS[FAMILY].image(size, seed=3), 0.5 / 255 / 0.26 + 1e-5
    )
