"""Llama 4's own rules: the canvas recomputed from the processor config against what the
real-settings processor emits (336 px tiles, up to 16, 144 tokens per view, extreme aspect
ratios, padding tiles), the torchvision-free image processor against the real one where
torchvision loads, tile and global boxes against the pixels, the separators kept out of V,
each layer's real mask (chunked local or global causal), the queries the model used
(temperature-tuned on NoPE layers, QK-normed on RoPE layers), MoE routing under the capture
and gradients through it, the pixel path, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import transformers

import xattr
from support.families import (
    QUESTION,
    SPECS,
    assert_same_maps,
    check_one_view_raster_order,
    explain_quietly,
)
from support.reference import autograd_attention_gradients
from xattr.layout import LayoutError
from xattr.metrics.faithfulness import DeletionInsertion
from xattr.models import CaptureError, llama4
from xattr.models.llama4_images import Llama4ImagesWithoutTorchvision, tiling
from xattr.models.recording import recording
from xattr.toy.build import build_tiny_model
from xattr.toy.tiny import llama4 as builder

SPEC = SPECS["llama4"]
REAL_SIDE = 12  # 336 px views, 14 px patches, pixel shuffle ratio 0.5
ANSWER = "red circle left"


@pytest.fixture(scope="module")
def real_processor(tiny_adapter):
    """The checkpoint's processor settings around the tiny tokenizer."""
    tok = tiny_adapter("llama4").tokenizer
    return builder.processor(tok, builder.REAL_TILE, builder.REAL_PATCH, builder.REAL_MAX_TILES)


def _prompt(processor, image):
    """The processor's output for one image and the question, as the adapter calls it."""
    return processor(
        images=[image], text=["<|image|>" + QUESTION], return_tensors="pt", add_special_tokens=False
    )


def _runs(ids: torch.Tensor, token_id: int) -> list[torch.Tensor]:
    """The maximal runs of consecutive positions holding ``token_id``."""
    positions = torch.nonzero(ids == token_id).flatten()
    breaks = torch.nonzero(positions.diff() != 1).flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


# ------------------------------------------------------------------ the image processor
# (W, H) -> (rows, cols) of 336 px tiles, and the resized (h, w) on the canvas: the canvases
# as transformers 5.25's torchvision `Llama4ImageProcessor` (max_patches 16) emitted them
REAL_CANVASES = [
    ((336, 336), (1, 1), (336, 336)),
    ((20, 20), (1, 1), (336, 336)),  # a tiny image is enlarged to one tile
    ((300, 200), (1, 1), (224, 336)),  # one tile, its bottom third padding
    ((200, 300), (1, 1), (336, 224)),
    ((337, 336), (1, 2), (336, 337)),  # one pixel too wide: two tiles, no resize
    ((672, 672), (2, 2), (672, 672)),
    ((640, 480), (2, 2), (480, 640)),  # never upscaled past the image's own size
    ((1000, 300), (1, 3), (300, 1000)),
    ((2000, 300), (1, 6), (300, 2000)),
    ((5000, 100), (1, 15), (100, 5000)),  # aspect 50: 15 tiles in one row
    ((100, 5000), (15, 1), (5000, 100)),
    ((1500, 1400), (4, 4), (1254, 1344)),  # no canvas holds it: shrunk by 1344 / 1500
    ((3000, 3000), (4, 4), (1344, 1344)),  # the largest canvas, downscaled
]


@pytest.mark.parametrize(("size", "canvas", "resized"), REAL_CANVASES)
def test_the_recomputed_tiling_is_what_the_processor_emits(real_processor, size, canvas, resized):
    """The canvas and resize rule against the real settings' processor: grids, boxes (into the
    padding), views, 144-token runs, and the separators between them."""
    width, height = size
    plan = tiling(height, width, builder.REAL_TILE, builder.REAL_MAX_TILES)
    assert (plan.rows, plan.cols) == canvas
    assert plan.resized == resized
    image = SPEC.image(size)
    emitted = real_processor.image_processor(image, return_tensors="pt")["aspect_ratios"]
    assert emitted.tolist() == [list(canvas)]
    out = _prompt(real_processor, image)
    assert out["pixel_values"].shape[0] == plan.views
    ids, tok = out["input_ids"][0], real_processor.tokenizer
    patch = tok.convert_tokens_to_ids("<|patch|>")
    runs = _runs(ids, patch)
    assert [len(r) for r in runs] == [REAL_SIDE**2] * plan.views
    # between the runs: x separators inside a row, a y separator closing each row, then
    # <|image|> before the global view (or the one view)
    between = [
        tok.convert_ids_to_tokens(ids[int(a[-1]) + 1 : int(b[0])].tolist())
        for a, b in itertools.pairwise(runs)
    ]
    rows, cols = canvas
    expected = []
    if plan.tiles > 1:
        for r in range(rows):
            for c in range(cols):
                last = r == rows - 1 and c == cols - 1
                if c < cols - 1:
                    expected.append(["<|tile_x_separator|>"])
                elif not last:
                    expected.append(["<|tile_y_separator|>"])
        expected.append(["<|tile_y_separator|>", "<|image|>"])
    assert between == expected
    first = int(runs[0][0])
    assert tok.convert_ids_to_tokens(ids[first - 1 : first].tolist()) == (
        ["<|image|>"] if plan.tiles == 1 else ["<|image_start|>"]
    )
    assert tok.convert_ids_to_tokens([int(ids[int(runs[-1][-1]) + 1])]) == ["<|image_end|>"]


def test_tile_boxes_reach_into_the_padding_and_hold_the_processors_pixels(real_processor):
    """A white block on a 1000 x 300 image (1 x 3 tiles, kept at its size on a 336 x 1008
    canvas): in every view each token's 28 px square is as bright as its box's overlap with
    the block says, and the squares on the padding (below row 300, right of column 1000)
    are black."""
    width, height = 1000, 300
    top, left, bottom, right = 100, 500, 200, 700
    image = SPEC.image((width, height), block=(top, left, bottom, right))
    pv = _prompt(real_processor, image)["pixel_values"].float()  # [4, 3, 336, 336]
    plan = tiling(height, width, builder.REAL_TILE, builder.REAL_MAX_TILES)
    boxes = [plan.tile_box(0, c) for c in range(3)] + [(0.0, 0.0, 1.0, 1.0)]
    assert boxes[2][2] > 1 and boxes[2][3] > 1  # the last tile reaches past both edges
    n, px = REAL_SIDE, 28
    block = (top / height, left / width, bottom / height, right / width)
    bright, overlap, padding = [], [], []
    for view, (t0, l0, b0, r0) in zip(pv, boxes, strict=True):
        cells = (view * 0.5 + 0.5).mean(0).reshape(n, px, n, px).mean((1, 3))  # [12, 12]
        h, w = (b0 - t0) / n, (r0 - l0) / n
        ov = torch.zeros(n, n)
        for r in range(n):
            for c in range(n):
                y0, x0 = t0 + r * h, l0 + c * w
                dy = max(0.0, min(y0 + h, block[2]) - max(y0, block[0]))
                dx = max(0.0, min(x0 + w, block[3]) - max(x0, block[1]))
                ov[r, c] = dy * dx / (h * w)
                if y0 >= 1 or x0 >= 1:
                    padding.append(float(cells[r, c]))
        bright.append(cells.flatten())
        overlap.append(ov.flatten())
    corr = np.corrcoef(torch.cat(bright).numpy(), torch.cat(overlap).numpy())[0, 1]
    assert corr > 0.99
    assert padding and max(padding) == 0.0


TORCHVISION = transformers.utils.is_torchvision_available()


@pytest.mark.skipif(not TORCHVISION, reason="the real Llama4ImageProcessor needs torchvision")
@pytest.mark.parametrize("size", [s for s, _, _ in REAL_CANVASES] + [(160, 100), (1, 1)])
@pytest.mark.parametrize("to_max_canvas", [False, True])
def test_the_torchvision_free_image_processor_is_bit_exact(size, to_max_canvas):
    """Where torchvision loads, the stand-in's pixel_values and canvases equal the real
    processor's, bit for bit (bfloat16), at the real and the tiny settings, with and without
    ``resize_to_max_canvas``."""
    from transformers import Llama4ImageProcessor

    image = SPEC.image(size, seed=3)
    for tile, tiles in [(builder.REAL_TILE, builder.REAL_MAX_TILES), (64, builder.MAX_TILES)]:
        options = {
            "size": {"height": tile, "width": tile},
            "max_patches": tiles,
            "resize_to_max_canvas": to_max_canvas,
        }
        real = Llama4ImageProcessor(**options)(image, return_tensors="pt")
        mine = Llama4ImagesWithoutTorchvision(**options)(image, return_tensors="pt")
        assert mine["pixel_values"].dtype == real["pixel_values"].dtype == torch.bfloat16
        assert torch.equal(mine["pixel_values"], real["pixel_values"])
        assert torch.equal(mine["aspect_ratios"], real["aspect_ratios"])
        plan = tiling(image.height, image.width, tile, tiles, to_max_canvas)
        assert real["aspect_ratios"].tolist() == [[plan.rows, plan.cols]]


# pixel_values digests of transformers 5.25's torchvision `Llama4ImageProcessor` (torch 2.13,
# torchvision 0.28) on ``SPEC.image(size, seed=3)``: sha256 of the bfloat16 bits, 16 hex digits
REAL_DIGESTS = [
    ((300, 200), 336, 16, (1, 3, 336, 336), "903f6ebc070ca671"),  # one tile, padded below
    ((1000, 300), 336, 16, (4, 3, 336, 336), "8d48d8f5e26f533f"),  # 1 x 3, padded, global
    ((640, 480), 336, 16, (5, 3, 336, 336), "10e3516b5456efda"),  # 2 x 2, padded, global
    ((160, 100), 64, 6, (7, 3, 64, 64), "72f155f1ca4333db"),  # the tiny settings, 2 x 3
    ((20, 20), 64, 6, (1, 3, 64, 64), "2641acf5d55a5c9d"),  # enlarged to one tile
]


@pytest.mark.parametrize(("size", "tile", "tiles", "shape", "digest"), REAL_DIGESTS)
def test_the_stand_in_reproduces_the_real_processors_recorded_output(
    size, tile, tiles, shape, digest
):
    """Without torchvision too: the stand-in's pixel_values carry the real processor's bits."""
    import hashlib

    options = {"size": {"height": tile, "width": tile}, "max_patches": tiles}
    pv = Llama4ImagesWithoutTorchvision(**options)(SPEC.image(size, seed=3), return_tensors="pt")
    pv = pv["pixel_values"]
    assert tuple(pv.shape) == shape and pv.dtype == torch.bfloat16
    bits = pv.contiguous().view(torch.int16).numpy().tobytes()
    assert hashlib.sha256(bits).hexdigest()[:16] == digest


def test_the_saved_processor_names_the_real_classes(tiny_model_dir):
    """A tiny model's folder is an ordinary Llama 4 folder: the real processor and image
    processor classes, which load with torchvision; without it `load` uses the stand-in."""
    import json

    folder = tiny_model_dir("llama4")
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["processor_class"] == "Llama4Processor"
    assert config["image_processor"]["image_processor_type"] == "Llama4ImageProcessor"
    processor = xattr.models.load(folder).processor
    expected = (
        transformers.Llama4Processor if TORCHVISION else llama4.Llama4ProcessorWithoutTorchvision
    )
    assert isinstance(processor, expected)


def test_the_stand_in_reads_a_hub_style_folder(tiny_model_dir, tiny_adapter, tmp_path):
    """The hub checkpoints keep the image processor in preprocessor_config.json (under an
    older class name, with keys the stand-in does not take) and the template in
    chat_template.json: the stand-in loads them into the same processor output."""
    import json
    import shutil

    folder = tmp_path / "hub_style"
    shutil.copytree(tiny_model_dir("llama4"), folder)
    config = json.loads((folder / "processor_config.json").read_text())
    images = config.pop("image_processor")
    images.update(
        image_processor_type="Llama4ImageProcessorFast", crop_size=None, default_to_square=True
    )
    (folder / "processor_config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps(images))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    processor = llama4.Llama4ProcessorWithoutTorchvision.from_pretrained(folder)
    assert processor.image_processor.max_patches == builder.MAX_TILES
    reference = tiny_adapter("llama4").processor
    assert processor.chat_template == reference.chat_template
    image = SPEC.image(builder.PADDED_SIZE)
    a, b = _prompt(processor, image), _prompt(reference, image)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])


# ------------------------------------------------------------------ the tiny model's layout
def test_the_layout_is_the_patch_tokens_of_one_image_block(tiny_adapter):
    """The tiny prompt: one <|begin_of_text|> (the template's), 2 x 3 tiles then the global
    view, 16 patch tokens each, separators out of V, the question after the image."""
    adapter = tiny_adapter("llama4")
    prepared = adapter.prepare(SPEC.image(builder.PADDED_SIZE), QUESTION)
    ids, tok = prepared.prompt_ids, adapter.tokenizer
    assert int((ids == tok.bos_token_id).sum()) == 1 and int(ids[0]) == tok.bos_token_id
    names = [g.name for g in prepared.layout.grids]
    assert names == [f"tile {r},{c}" for r in range(2) for c in range(3)] + ["global"]
    assert prepared.grids == [(4, 4)] * 7
    # 160 x 100 kept at its size on a 192 x 128 canvas: tiles of 64 px
    assert prepared.layout.grids[5].box == pytest.approx((0.64, 0.8, 1.28, 1.2))
    runs = _runs(ids, adapter.image_token_id)
    assert torch.equal(torch.cat(runs), prepared.visual_index) and len(runs) == 7
    assert int(prepared.prompt_index[0]) > int(prepared.visual_index[-1])


def test_a_tiling_rule_the_processor_does_not_follow_is_refused_by_name(tiny_adapter, monkeypatch):
    adapter = tiny_adapter("llama4")
    image = SPEC.image(SPEC.geometry_size)
    wrong = tiling(64, 128, 64, builder.MAX_TILES)  # a 1 x 2 canvas
    monkeypatch.setattr(llama4, "tiling", lambda *args: wrong)
    with pytest.raises(LayoutError) as caught:
        adapter.prepare(image, QUESTION)
    message = str(caught.value)
    assert "llama4 adapter" in message and f"transformers {transformers.__version__}" in message
    assert "7 view(s), a 2 x 3 canvas (by its separators) and 112 image tokens" in message
    assert "onto 1 x 2 tiles: 3 view(s)" in message


# --------------------------------------------------------------- the recorded support
@pytest.fixture(scope="module")
def trace(tiny_adapter):
    adapter = tiny_adapter("llama4")
    return adapter.trace(SPEC.image(), QUESTION, ANSWER)


def test_the_trace_records_each_layers_real_mask(tiny_adapter, trace):
    """Layers 0-2 attend within chunks of 16 (the prompt crosses two boundaries), layer 3 is
    causal over everything; the attention is zero exactly off the recorded support."""
    text = tiny_adapter("llama4").model.config.text_config
    assert text.layer_types == ["chunked_attention"] * 3 + ["full_attention"]
    assert text.attention_chunk_size == builder.CHUNK
    n = trace.attentions[0].shape[-1]
    assert n > 2 * builder.CHUNK
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    expected = {
        "chunked_attention": (j <= i) & (i // builder.CHUNK == j // builder.CHUNK),
        "full_attention": j <= i,
    }
    for layer, kind in enumerate(text.layer_types):
        support = trace.support(layer)
        assert support is not None and torch.equal(support.cpu(), expected[kind]), kind
        attn = trace.attentions[layer]  # [H, N, N]
        assert float(attn[:, ~expected[kind]].abs().max()) == 0.0
        assert bool((attn[:, expected[kind]] > 0).all())
    # the answer is in the last chunk, past the image: it sees the image through layer 3 only
    rows, visual = trace.answer_positions - 1, trace.visual_index
    assert int(visual[-1]) // builder.CHUNK < int(rows[0]) // builder.CHUNK
    for layer in range(3):
        assert float(trace.attentions[layer][:, rows][:, :, visual].max()) == 0.0
    assert float(trace.attentions[3][:, rows][:, :, visual].min()) > 0.0


def _recorded(adapter, trace):
    """Each decoder layer's normed input (L x [N, D]) and the capture's records of its
    attention call, from one recorded forward of the traced sequence."""
    inputs = adapter.full_inputs(
        adapter.prepare(SPEC.image(), QUESTION), trace.input_ids[trace.answer_positions]
    )
    seen = []
    layers = adapter.language_model().layers
    hooks = [
        layer.input_layernorm.register_forward_hook(lambda _m, _a, out: seen.append(out[0]))
        for layer in layers
    ]
    try:
        with torch.no_grad(), recording(adapter.attention_modules(), keep_weights=True) as rec:
            adapter.model(**inputs, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen, rec.records


def test_the_nope_layer_records_its_temperature_tuned_queries(tiny_adapter, trace):
    """Layer 3 (no RoPE, no QK norm): the recorded query of position p is the projection
    times ``1 + attn_scale * log(1 + floor((p + 1) / floor_scale))``, which exceeds 1 from
    position 7 on (floor scale 8); its keys are the plain projections."""
    adapter = tiny_adapter("llama4")
    text = adapter.model.config.text_config
    attn = adapter.language_model().layers[3].self_attn
    assert not attn.use_rope and not hasattr(attn, "qk_norm") and text.attn_temperature_tuning
    xs, records = _recorded(adapter, trace)
    x = xs[3]  # [N, D]
    n, d = x.shape[0], attn.head_dim
    pos = torch.arange(n, dtype=torch.float32)
    scale = 1 + text.attn_scale * torch.log1p(torch.floor((pos + 1) / builder.FLOOR_SCALE))
    assert float(scale[6]) == 1.0 < float(scale[7]) and float(scale[-1]) > 1.15
    with torch.no_grad():
        q = attn.q_proj(x).view(n, -1, d).transpose(0, 1) * scale[None, :, None]  # [H, N, d]
        k = attn.k_proj(x).view(n, -1, d).transpose(0, 1)
    record = records[3]
    torch.testing.assert_close(record.query[0], q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(record.key[0], k, rtol=1e-5, atol=1e-6)
    # and the trace's attention of the layer is the softmax of these queries and keys
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    scores = (q @ k.transpose(-1, -2)) * d**-0.5
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    expected = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    torch.testing.assert_close(trace.attentions[3], expected, rtol=1e-4, atol=1e-6)


def test_the_rope_layers_record_qk_normed_rotated_queries(tiny_adapter, trace):
    """Layers 0-2: queries and keys are rotated then RMS-normed (no weight): every recorded
    head vector has mean square 1 (up to eps), each rotated pair of coordinates keeps the
    length it has in the normed projection, and the record is not the unrotated one."""
    adapter = tiny_adapter("llama4")
    xs, records = _recorded(adapter, trace)
    eps = adapter.model.config.text_config.rms_norm_eps
    for layer in range(3):
        attn = adapter.language_model().layers[layer].self_attn
        assert attn.use_rope and hasattr(attn, "qk_norm")
        record = records[layer]
        for recorded, proj in [(record.query, attn.q_proj), (record.key, attn.k_proj)]:
            got = recorded[0]  # [H, N, d]
            with torch.no_grad():
                raw = proj(xs[layer]).view(got.shape[1], -1, got.shape[2]).transpose(0, 1)
            # mean square 1 up to eps: m / (m + eps), m the projection's (a rotation keeps it)
            m = raw.pow(2).mean(-1)
            torch.testing.assert_close(got.pow(2).mean(-1), m / (m + eps), rtol=1e-5, atol=0)
            # a rotation keeps each (even, odd) pair's length: the normed rotation of the
            # projection has the pair lengths of the normed projection
            normed = raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + eps)
            pairs = lambda t: t.reshape(*t.shape[:-1], -1, 2).norm(dim=-1)  # noqa: E731
            torch.testing.assert_close(pairs(got), pairs(normed), rtol=1e-4, atol=1e-5)
            assert not torch.allclose(got, normed, atol=1e-3)  # and it is rotated


# ---------------------------------------------------------------------- MoE
def test_the_routers_choose_the_same_experts_in_the_capture_as_in_a_plain_forward(tiny_adapter):
    """Layers 1 and 3 route each token to one of 4 experts (plus the shared one): the capture
    (grad mode, recording wrappers) routes every token as a plain no-grad forward does, and
    the tokens do not all go to one expert."""
    adapter = tiny_adapter("llama4")
    image = SPEC.image(SPEC.geometry_size)
    routers = [m for m in adapter.model.modules() if type(m).__name__ == "Llama4Router"]
    assert len(routers) == 2 and adapter.model.config.text_config.moe_layers == [1, 3]
    chosen: list[torch.Tensor] = []
    hooks = [
        r.register_forward_hook(lambda _m, _a, out: chosen.append(out[1].argmax(-1)))
        for r in routers
    ]
    try:
        captured = adapter.trace(image, QUESTION, ANSWER)
        inputs = adapter.full_inputs(
            adapter.prepare(image, QUESTION), captured.input_ids[captured.answer_positions]
        )
        with torch.no_grad():
            adapter.model(**inputs, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    assert len(chosen) == 4
    for in_capture, plain in zip(chosen[:2], chosen[2:], strict=True):
        assert in_capture.shape == (captured.input_ids.numel(),)
        assert torch.equal(in_capture, plain)
        assert len(set(in_capture.tolist())) > 1


def test_gradients_through_the_routed_layers_equal_a_plain_autograd_loop(tiny_adapter):
    """Through chunked masks, NoPE temperature and the top-1 routers."""
    adapter = tiny_adapter("llama4")
    image = SPEC.image(SPEC.geometry_size)
    trace = adapter.trace(image, QUESTION, answer=ANSWER)
    got = trace.gradients_for(range(trace.num_answer_tokens))  # [T, L, H, N, N]
    ref = autograd_attention_gradients(adapter, image, QUESTION, trace)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_the_logit_lens_is_the_language_models_head(tiny_adapter):
    adapter = tiny_adapter("llama4")
    prepared = adapter.prepare(SPEC.image(), QUESTION)
    with torch.no_grad():
        out = adapter.model(**prepared.inputs, output_hidden_states=True)
        lens = adapter.unembed(out.hidden_states[-1])
    torch.testing.assert_close(lens, out.logits, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ faithfulness, pixel path
def test_faithfulness_blends_every_view_in_pixel_values_space(tiny_adapter):
    """Tiles (padding included) and the global view take one image-space mask each."""
    adapter = tiny_adapter("llama4")
    image = SPEC.image(builder.PADDED_SIZE)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    expl = explain_quietly(adapter, image, ["raw_attention"], "red circle")["raw_attention"]
    metric = DeletionInsertion(
        fractions=[0.0, 0.5, 1.0], curves=["deletion", "insertion"], min_span=0.0
    )
    prepared = adapter.prepare(image, QUESTION)
    assert metric._processed_space(adapter) and len(adapter.pixel_views(prepared)) == 7
    out = metric(adapter, image, QUESTION, trace, expl)
    assert out["faithfulness_passes"] == metric.forward_passes() == 4
    assert all(math.isfinite(v) for v in out.values())


def test_the_shuffled_tokens_are_in_raster_order_over_a_view(tiny_adapter):
    """After the vision adapter's pixel shuffle, token (r, c) of a view holds its (r, c)
    square: whitening exactly one token's square changes that token, and it alone by a margin."""
    check_one_view_raster_order(tiny_adapter("llama4"), SPEC)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("marker", ["<|image|>", "<|patch|>"])
def test_a_question_holding_an_image_placeholder_is_named(tiny_adapter, marker):
    adapter = tiny_adapter("llama4")
    with pytest.raises(CaptureError, match="stand for an image"):
        adapter.prepare(SPEC.image(), f"{marker} {QUESTION}")


def test_a_second_image_block_is_refused(tiny_adapter):
    adapter = tiny_adapter("llama4")
    with pytest.raises(CaptureError, match="holds 2 images; llama4 takes one"):
        adapter.prepare(SPEC.image(), f"<|image_start|> {QUESTION}")


# ------------------------------------------------- a language model without QK norm
@pytest.fixture(scope="module")
def no_qk_norm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_llama4_no_qk_norm")
    return build_tiny_model("llama4", out, text_layers=4, use_qk_norm=False)


def test_without_qk_norm_the_queries_are_the_rotated_projections_and_sdpa_agrees(no_qk_norm_dir):
    """``use_qk_norm`` off (the 128-expert checkpoint): no layer norms its queries, the
    recorded RoPE queries keep the projection's per-pair lengths unnormed, and every method's
    maps under SDPA equal eager's."""
    eager = xattr.models.load(no_qk_norm_dir)
    sdpa = xattr.models.load(no_qk_norm_dir, attn_implementation="sdpa")
    layers = eager.language_model().layers
    assert not any(hasattr(layer.self_attn, "qk_norm") for layer in layers)
    image = SPEC.image(builder.PADDED_SIZE)
    trace = eager.trace(image, QUESTION, ANSWER, gradients=False)
    xs, records = _recorded(eager, trace)
    attn = layers[0].self_attn
    got = records[0].query[0]  # [H, N, d]
    with torch.no_grad():
        raw = attn.q_proj(xs[0]).view(got.shape[1], -1, got.shape[2]).transpose(0, 1)
    pairs = lambda t: t.reshape(*t.shape[:-1], -1, 2).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pairs(got), pairs(raw), rtol=1e-4, atol=1e-6)
    methods = ["glimpse", "rollout", "raw_attention", "gradcam", "dexar"]
    assert_same_maps(
        explain_quietly(sdpa, image, methods, "red circle"),
        explain_quietly(eager, image, methods, "red circle"),
    )
