"""LFM2-VL's own rules: the split rule against what the real-settings processor emits (views,
patch grids, tile tags; aspect ratios up to 250:1, and at 300:1 a view over the patch budget
refused), tiles against the image's pixels, the projector's raster order checked exactly,
the trace holding only the softmax-attention layers, the convolution layer's formula and its
3-token band, DEX-AR refused, bad input; the torch stand-in of the image processor against
the real (torchvision) one where torchvision is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xattr
import xattr.models.torch_backend as torch_backend
from support.families import QUESTION, SPECS
from xattr.models import CaptureError
from xattr.models.lfm2_vl import (
    Lfm2VlImageOnlyProcessor,
    Lfm2VlTorchImageProcessor,
    view_grids,
)
from xattr.toy.tiny import lfm2_vl as builder
from xattr.trace import TraceError

SPEC = SPECS["lfm2_vl"]


@pytest.fixture(scope="module")
def adapter(tiny_adapter):
    return tiny_adapter("lfm2_vl")


@pytest.fixture(scope="module")
def real_processor(adapter):
    """The checkpoints' processor settings (512 px tiles, 16 px patches, 64-256 tokens a
    view, 2-10 tiles, a thumbnail) around the tiny tokenizer."""
    return Lfm2VlImageOnlyProcessor(
        image_processor=Lfm2VlTorchImageProcessor(), tokenizer=adapter.tokenizer
    )


def _image(width: int, height: int):
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    "size",
    [
        (512, 512),  # one view, 16 x 16 tokens
        (300, 1000),  # one tall view
        (1024, 1024),  # 2 x 2 tiles + thumbnail
        (1500, 700),
        (4000, 100),  # 40:1: 10 tiles in a row
        (100, 4000),
        (10000, 40),  # 250:1, untiled: one token row of 253
        (20, 20),  # upscaled to the minimum
    ],
)
def test_split_rule_matches_the_real_processor(real_processor, size):
    """Grids from the split rule = the views, patch grids and the prompt's tag/token sequence
    the processor emits: ``<|img_row_r_col_c|>`` + the tile's tokens per tile row-major, then
    ``<|img_thumbnail|>`` + the thumbnail's, between the image markers."""
    ip = real_processor.image_processor
    out = real_processor(images=[_image(*size)], text=["<image>"], return_tensors="pt")
    grids = view_grids(size, ip)
    shapes = [tuple(int(v) // 2 for v in s) for s in out["spatial_shapes"]]
    assert shapes == [g.shape for g in grids]
    tokens = real_processor.tokenizer.convert_ids_to_tokens(out["input_ids"][0].tolist())
    expected = ["<|image_start|>"]
    for g in grids:
        if len(grids) > 1:
            if g.name == "thumbnail":
                expected.append("<|img_thumbnail|>")
            else:
                r, c = (int(v) for v in g.name.split()[1].split(","))
                expected.append(f"<|img_row_{r + 1}_col_{c + 1}|>")
        expected += ["<image>"] * g.cells
    assert tokens == [*expected, "<|image_end|>"]
    if len(grids) > 1:  # tiles cover the image exactly, row-major
        rows = max(int(g.name.split()[1].split(",")[0]) for g in grids[:-1]) + 1
        cols = (len(grids) - 1) // rows
        assert grids[-1].box == (0.0, 0.0, 1.0, 1.0)
        assert grids[cols - 1].box == (0.0, (cols - 1) / cols, 1 / rows, 1.0)
        assert all(g.shape == (16, 16) for g in grids[:-1])


@pytest.mark.parametrize("size", [(1024, 1024), (4000, 100), (300, 1000)])
@pytest.mark.parametrize("option", [{"use_thumbnail": False}, {"do_image_splitting": False}])
def test_split_rule_follows_the_processor_options(adapter, size, option):
    """Without the thumbnail the tiles alone; without splitting one view, however large."""
    ip = Lfm2VlTorchImageProcessor(**option)
    processor = Lfm2VlImageOnlyProcessor(image_processor=ip, tokenizer=adapter.tokenizer)
    out = processor(images=[_image(*size)], text=["<image>"], return_tensors="pt")
    grids = view_grids(size, ip)
    assert [tuple(int(v) // 2 for v in s) for s in out["spatial_shapes"]] == [
        g.shape for g in grids
    ]
    image_id = adapter.tokenizer.convert_tokens_to_ids("<image>")
    assert int((out["input_ids"] == image_id).sum()) == sum(g.cells for g in grids)
    assert "thumbnail" not in [g.name for g in grids]
    if not option.get("do_image_splitting", True):
        assert len(grids) == 1


def test_beyond_the_patch_budget_the_real_processor_overflows(real_processor):
    """At 12000 x 40 (300:1, untiled: under twice the one-view pixels) the one view needs
    2 x 554 = 1,108 patches, over the budget of 1,024: the processor emits them all with a
    mask of 1,024, which the adapter refuses (the tiny case below)."""
    out = real_processor(images=[_image(12000, 40)], text=["<image>"], return_tensors="pt")
    assert out["pixel_values"].shape[1] == 1108 and out["pixel_attention_mask"].shape[1] == 1024


def test_tiles_hold_the_pixels_of_their_boxes(adapter):
    """A 256 x 128 image tiles 4 x 2 onto a canvas of its own size (no resampling): each tile
    view, read back from ``pixel_values``, is its box's pixels; the thumbnail is the whole."""
    image = _image(256, 128)
    prepared = adapter.prepare(image, QUESTION)
    grids = prepared.layout.grids
    assert [g.name for g in grids] == [
        *(f"tile {r},{c}" for r in range(2) for c in range(4)),
        "thumbnail",
    ]
    views = adapter.pixel_values_to_views(prepared.inputs["pixel_values"], prepared)
    pixels = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255
    for g, view in zip(grids[:-1], views[:-1], strict=True):
        top, left = round(g.box[0] * 128), round(g.box[1] * 256)
        expected = (pixels[:, top : top + 64, left : left + 64] - 0.5) / 0.5  # mean = std = 0.5
        torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)
    assert grids[-1].box == (0.0, 0.0, 1.0, 1.0)
    assert tuple(views[-1].shape[-2:]) == adapter.pixel_views(prepared)[-1].size


def test_projector_tokens_are_raster_over_2x2_patch_blocks(adapter):
    """Exactly: on a one-view 96 x 32 image (4 x 12 patches, 2 x 6 tokens), a change to the
    vision tower's output at patch (i, j) alone moves image token (i // 2) * 6 + j // 2 alone."""
    prepared = adapter.prepare(_image(96, 32), QUESTION)
    assert [g.shape for g in prepared.layout.grids] == [(2, 6)]
    inputs = prepared.inputs
    model = adapter.model.model
    tower = model.vision_tower
    with torch.no_grad():
        hidden = tower(
            pixel_values=inputs["pixel_values"],
            spatial_shapes=inputs["spatial_shapes"],
            pixel_attention_mask=inputs["pixel_attention_mask"],
        ).last_hidden_state  # [1, P, D]

    def features(patch: int | None) -> torch.Tensor:
        h = hidden.clone()
        if patch is not None:
            h[0, patch] += 1.0
        handle = tower.register_forward_hook(
            lambda _m, _a, out: out.__setitem__("last_hidden_state", h) or out
        )
        try:
            with torch.no_grad():
                out = model.get_image_features(
                    pixel_values=inputs["pixel_values"],
                    spatial_shapes=inputs["spatial_shapes"],
                    pixel_attention_mask=inputs["pixel_attention_mask"],
                )
        finally:
            handle.remove()
        return out.pooler_output[0]  # [12, D]

    base = features(None)
    for i in range(4):
        for j in range(12):
            moved = (features(i * 12 + j) - base).abs().sum(-1)  # [12]
            assert torch.nonzero(moved).flatten().tolist() == [(i // 2) * 6 + j // 2], (i, j)


def test_trace_holds_the_attention_layers_only(adapter):
    """``trace.attentions[l]`` is the l-th softmax layer: its recorded ``A`` times the values
    reproduces that decoder layer's attention output (hooked from the model itself)."""
    assert adapter.trace_layers() == [1, 3]  # conv, attn, conv, attn, conv
    layers = adapter.language_model().layers
    outputs = {}
    hooks = [
        layers[i].self_attn.register_forward_hook(
            lambda _m, _a, out, i=i: outputs.__setitem__(i, out[0].detach())
        )
        for i in adapter.trace_layers()
    ]
    try:
        trace = adapter.trace(SPEC.image(), QUESTION, answer="red circle")
    finally:
        for h in hooks:
            h.remove()
    assert trace.num_layers == 2 and trace.layer_kinds == ["softmax", "softmax"]
    for layer, i in enumerate(adapter.trace_layers()):
        a = trace.attentions[layer]  # [H, N, N]
        value = trace.graph["values"][layer][0].detach()  # [Hkv, N, d]
        value = value.repeat_interleave(a.shape[0] // value.shape[0], dim=0)
        mixed = (a @ value).transpose(0, 1).reshape(a.shape[1], -1)  # [N, H*d]
        module = layers[i].self_attn
        torch.testing.assert_close(module.out_proj(mixed)[None], outputs[i], atol=1e-5, rtol=1e-4)


def test_conv_layer_is_the_documented_gated_band(adapter):
    """Layer 0 (conv) computes ``y_t = C_t ⊙ Σ_k w_k ⊙ (B ⊙ x)_{t−k}``, k = 0..2, written
    out by hand; and a change at position s moves its output at s, s+1, s+2 only."""
    conv = adapter.language_model().layers[0].conv
    torch.manual_seed(0)
    n, d = 9, conv.out_proj.in_features
    h = torch.randn(1, n, d)
    with torch.no_grad():
        y = conv(h)
        b, c, x = conv.in_proj(h)[0].chunk(3, dim=-1)  # [N, D] each
        w = conv.conv.weight[:, 0]  # [D, 3]: tap j multiplies position t - 2 + j
        bx = b * x
        mixed = torch.zeros(n, d)
        for t in range(n):
            for k in range(3):
                if t - k >= 0:
                    mixed[t] += w[:, 2 - k] * bx[t - k]
        torch.testing.assert_close(conv.out_proj(c * mixed)[None], y, atol=1e-5, rtol=1e-4)
        s = 3
        moved = h.clone()
        moved[0, s] += 1.0
        changed = (conv(moved) - y)[0].abs().sum(-1)  # [N]
    assert torch.nonzero(changed).flatten().tolist() == [s, s + 1, s + 2]


def test_dexar_is_refused_by_name(adapter):
    """DEX-AR's per-layer logit lens does not line up with a trace of some layers only."""
    assert "dexar" in adapter.refused_methods
    with pytest.raises(TraceError, match=r"dexar reads .* decoder layers \[1, 3\] only"):
        xattr.explain(adapter, SPEC.image(), QUESTION, method="dexar", answer="red")


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((2000, 16), "lfm2_vl processor cannot take this 2000x16 image"),  # tiled: it fails
        ((1500, 16), "view of 268 patches for a 1500x16 image, over its budget of 192"),
    ],
)
def test_an_image_over_the_patch_budget_is_named(adapter, size, message):
    """A thumbnail over the patch budget makes the processor fail; an untiled view over it
    comes back longer than its mask: both raise a CaptureError naming the image size."""
    with pytest.raises(CaptureError, match=message):
        adapter.prepare(_image(*size), QUESTION)


def test_real_checkpoint_config_names_the_family():
    """conf/model/lfm2_vl_1_6b.yaml loads this family."""
    from pathlib import Path

    import yaml

    conf = yaml.safe_load((Path(__file__).parents[1] / "conf/model/lfm2_vl_1_6b.yaml").read_text())
    assert conf["family"] == "lfm2_vl" and conf["path"] == "LiquidAI/LFM2-VL-1.6B"
    assert Lfm2VlTorchImageProcessor().max_tiles == builder.MAX_TILES  # the checkpoints' tile range


STAND_IN_SIZES = [  # (W, H) at the checkpoints' settings
    (512, 512),  # one view, unresized
    (300, 1000),  # one tall view, resized
    (20, 20),  # upscaled to the minimum
    (1024, 1024),  # 2 x 2 tiles + thumbnail
    (1500, 700),  # 4 x 2 tiles + thumbnail
    (777, 333),
    (4000, 100),  # 40:1
    (100, 4000),
    (10000, 40),  # 250:1
    (12000, 40),  # 300:1: a view over the patch budget
]


def _both(tokenizer, image, **options):
    """The real (torchvision) processor's and the stand-in's outputs for ``image``."""
    from transformers import Lfm2VlImageProcessor, Lfm2VlProcessor

    real = Lfm2VlProcessor(image_processor=Lfm2VlImageProcessor(), tokenizer=tokenizer)
    stand_in = Lfm2VlImageOnlyProcessor(Lfm2VlTorchImageProcessor(), tokenizer)
    return [
        p(images=[image], text=["<image>"], return_tensors="pt", **options)
        for p in (real, stand_in)
    ]


def _assert_same(real, mine):
    """Every tensor the processor returns is equal, bit for bit."""
    assert set(real) == set(mine)
    diff = float((real["pixel_values"] - mine["pixel_values"]).abs().max())
    assert real["pixel_values"].shape == mine["pixel_values"].shape
    assert torch.equal(real["pixel_values"], mine["pixel_values"]), f"max |diff| {diff}"
    for key in ("spatial_shapes", "pixel_attention_mask", "input_ids"):
        assert torch.equal(real[key], mine[key]), key


@pytest.mark.parametrize("size", STAND_IN_SIZES)
def test_the_stand_in_equals_the_torchvision_processor(size):
    """Where torchvision is installed, the stand-in's pixel_values, spatial shapes, masks and
    prompt tokens equal the real processor's exactly (uint8 images: the same uint8 kernel)."""
    pytest.importorskip("torchvision")
    _assert_same(*_both(builder.tokenizer(), _image(*size)))


@pytest.mark.parametrize("size", [(300, 1000), (1500, 700), (10000, 40)])
def test_the_stand_in_equals_torchvision_on_its_float_path(monkeypatch, size):
    """Where the CPU has no vectorised uint8 kernel both resize in float32 and round back;
    forced onto that path, the two are still equal (it differs from the uint8 kernel's
    result by one grey level here and there, so the path must follow torchvision's)."""
    pytest.importorskip("torchvision")
    from torchvision.transforms.v2.functional import _geometry

    monkeypatch.setattr(_geometry, "_do_native_uint8_resize_on_cpu", lambda _mode: False)
    monkeypatch.setattr(torch_backend, "native_uint8_bilinear", lambda _device: False)
    _assert_same(*_both(builder.tokenizer(), _image(*size)))


def test_the_stand_in_equals_torchvision_on_grey_and_float_arrays():
    """A grey channel-first array converted to RGB, and a float array not rescaled."""
    pytest.importorskip("torchvision")
    grey = np.random.default_rng(2).integers(0, 256, (1, 700, 1500), dtype=np.uint8)
    _assert_same(*_both(builder.tokenizer(), grey, do_convert_rgb=True))
    floats = np.random.default_rng(3).random((3, 333, 777), dtype=np.float32)
    _assert_same(*_both(builder.tokenizer(), floats, do_rescale=False))


def test_the_stand_in_saves_and_loads_as_the_real_classes(adapter, tmp_path):
    """Saved under the real class names; loaded back (without torchvision) as the stand-in,
    with the same settings."""
    import json

    from xattr.models.processors import IMAGE_ONLY_PROCESSORS

    adapter.processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Lfm2VlProcessor"
    assert saved["image_processor"]["image_processor_type"] == "Lfm2VlImageProcessor"
    assert IMAGE_ONLY_PROCESSORS["lfm2_vl"] is Lfm2VlImageOnlyProcessor
    loaded = Lfm2VlImageOnlyProcessor.from_pretrained(tmp_path)
    assert type(loaded.image_processor) is Lfm2VlTorchImageProcessor
    assert loaded.image_processor.to_dict() == adapter.processor.image_processor.to_dict()


def test_the_real_class_is_imported_without_leaving_a_placeholder():
    """Without torchvision the real module imports with a placeholder that is removed after:
    nothing named torchvision stays importable-looking in sys.modules."""
    import importlib.util
    import sys

    from transformers.models.lfm2_vl import image_processing_lfm2_vl as real_module

    assert Lfm2VlTorchImageProcessor.__mro__[1] is real_module.Lfm2VlImageProcessor
    if importlib.util.find_spec("torchvision") is None:
        assert not [name for name in sys.modules if name.startswith("torchvision")]
