"""Llama 3.2 Vision's own rules: the image reaches the text only by cross-attention, and the
trace places its tokens as a prefix (`xattr.models.cross`): the tiles' canvas against what the
processor emitted, each layer's block against the model's own attention weights and their
gradients, and the methods that read hidden states refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xattr
from support.families import QUESTION, SPECS
from xattr.trace import TraceError

SPEC = SPECS["mllama"]


@pytest.mark.parametrize(
    ("size", "tiles"),
    [((32, 32), (1, 1)), ((94, 32), (1, 3)), ((300, 40), (1, 4)), ((40, 300), (4, 1)),
     ((70, 60), (2, 2)), ((12, 20), (1, 1))],
)  # fmt: skip
def test_the_canvas_is_the_processors(tiny_adapter, size, tiles):
    """Tiles and the padded part of the canvas, read off the processor's own pixel values."""
    adapter = tiny_adapter("mllama")
    prepared = adapter.prepare(SPEC.image(size), QUESTION)
    (grid,) = prepared.layout.grids
    side = adapter.tile_tokens[0]
    assert (grid.rows, grid.cols) == (tiles[0] * side, tiles[1] * side)
    pixels = prepared.inputs["pixel_values"][0, 0]  # [max tiles, C, T, T]
    used = int(prepared.inputs["aspect_ratio_mask"][0, 0].sum())
    assert used == tiles[0] * tiles[1]
    tile = pixels.shape[-1]
    canvas = torch.zeros(3, tiles[0] * tile, tiles[1] * tile)  # the tiles put back, row-major
    for k in range(used):
        r, c = divmod(k, tiles[1])
        canvas[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = pixels[k]
    pad = canvas[:, -1, -1]  # the bottom-right pixel is padding or the image's last
    content = (canvas != pad[:, None, None]).any(0)  # the noisy image is nowhere constant
    height = int(content.any(1).nonzero().max()) + 1
    width = int(content.any(0).nonzero().max()) + 1
    _, _, bottom, right = grid.box  # the canvas as a fraction of the resized image
    assert bottom == pytest.approx(canvas.shape[1] / height, abs=1e-9)
    assert right == pytest.approx(canvas.shape[2] / width, abs=1e-9)


def _model_attention(adapter, image, trace):
    """The eager model's own attention weights of every layer, kept in the graph of a fresh
    forward that starts at the input embeddings, and the logits."""
    prefix = trace.meta["visual_prefix"]
    answer = trace.input_ids[trace.answer_positions]
    inputs = adapter.full_inputs(adapter.prepare(image, QUESTION), answer)
    store = []
    hooks = [
        m.register_forward_hook(lambda _m, _a, out: store.append(out[1]))
        for m in adapter.attention_modules()
    ]
    try:
        logits = adapter.model(**inputs, use_cache=False).logits[0]
    finally:
        for h in hooks:
            h.remove()
    return store, logits, prefix


def test_each_layer_is_its_block_of_the_prefixed_sequence(tiny_adapter):
    adapter = tiny_adapter("mllama")
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, answer="red circle")
    weights, logits, prefix = _model_attention(adapter, image, trace)
    assert trace.layer_kinds == ["softmax", "cross", "softmax", "cross", "softmax"]
    assert trace.seq_len == prefix + logits.shape[0]
    for layer, (kind, own) in enumerate(zip(trace.layer_kinds, weights, strict=True)):
        a = trace.attentions[layer]  # [H, N', N']
        block = a[:, prefix:, :prefix] if kind == "cross" else a[:, prefix:, prefix:]
        torch.testing.assert_close(block, own[0].detach(), rtol=1e-5, atol=1e-7)
        assert a.sum() == pytest.approx(float(block.sum()), rel=1e-6)  # nothing else is filled
    # every answer row sees every used tile's tokens at a cross layer, no class token
    # outside V carries relevance it should not: V is the used tiles' patch tokens
    assert trace.visual_index.max() < prefix


def test_gradients_are_the_models_own_on_each_block(tiny_adapter):
    adapter = tiny_adapter("mllama")
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, answer="red circle")
    weights, logits, prefix = _model_attention(adapter, image, trace)
    for t, s in enumerate(trace.answer_positions.tolist()):
        z = logits[s - prefix - 1, int(trace.input_ids[s])]
        expected = torch.autograd.grad(z, weights, retain_graph=True)
        got = trace.gradients_for([t])[0]  # [L, H, N', N']
        for layer, kind in enumerate(trace.layer_kinds):
            block = (
                got[layer, :, prefix:, :prefix]
                if kind == "cross"
                else got[layer, :, prefix:, prefix:]
            )
            torch.testing.assert_close(block, expected[layer][0], rtol=1e-4, atol=1e-8)


def test_hidden_state_methods_are_refused_and_gradcam_reads_the_last_cross_layer(tiny_adapter):
    adapter = tiny_adapter("mllama")
    image = SPEC.image()
    with pytest.raises(TraceError, match="dexar reads the language model's hidden states"):
        xattr.explain(adapter, image, QUESTION, method="dexar", answer="red circle")
    with pytest.raises(TraceError, match="hidden variant reads the language model's hidden"):
        xattr.explain(adapter, image, QUESTION, method="gradcam", answer="red circle",
                      variant="hidden")  # fmt: skip
    trace = adapter.trace(image, QUESTION, answer="red circle")
    expl = xattr.methods.get("gradcam").attribute(trace)
    assert expl.meta["layer"] == 3  # the last cross-attention layer; layer 4 never sees the image
    # by hand: a_h = mean over N'^2 of G[3,h] on its support; row relu(sum_h a_h A[3,h][p_t]) / H
    n, heads = trace.seq_len, trace.layer_heads(3)
    support = trace.support(3).double()
    attention = trace.attentions[3].double()
    rows = []
    for t, p in enumerate(trace.predicting_positions.tolist()):
        g = trace.gradients_for([t])[0, 3].double()  # [H, N', N']
        a = (g * support).sum(dim=(1, 2)) / n**2  # [H]
        rows.append(((a[:, None] * attention[:, p, :]).sum(0)).clamp_min(0) / heads)
    expected = torch.stack(rows).mean(0)[trace.visual_index]
    torch.testing.assert_close(expl.visual.flatten().double(), expected, rtol=1e-5, atol=1e-12)


def test_rollout_reaches_the_image_only_through_the_cross_layers(tiny_adapter):
    adapter = tiny_adapter("mllama")
    image = SPEC.image()
    only_self = xattr.explain(adapter, image, QUESTION, method="rollout", answer="red",
                              layer_kinds="softmax")  # fmt: skip
    assert float(only_self.visual.abs().max()) == 0.0  # self-attention never sees the image
    full = xattr.explain(adapter, image, QUESTION, method="rollout", answer="red")
    assert float(full.visual.sum()) > 0 and np.isfinite(full.visual.numpy()).all()
