"""Where the token grid sits on the original image (LLaVA's centre crop) and maps placed there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xattr import metrics
from xattr.data.sample import Sample
from xattr.explanation import Explanation
from xattr.models.geometry import processor_region
from xattr.pipeline.evaluator import SampleEvaluator


def _ramp_image(width: int, height: int) -> Image.Image:
    """Red encodes the column, green the row: 255 * index / (size - 1)."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("size", [(300, 150), (150, 300), (112, 112)])
def test_llava_region_is_the_crop_the_processor_keeps(tiny_adapter, size):
    """The processed pixels' ramp values land where the predicted region says they come from."""
    adapter = tiny_adapter("llava")
    width, height = size
    proc = adapter.processor.image_processor
    pv = adapter.processor(
        images=[_ramp_image(width, height)], text=["<image>"], return_tensors="pt"
    )
    img = pv["pixel_values"][0].double()  # [3, S, S] normalised
    mean = torch.tensor(proc.image_mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(proc.image_std, dtype=torch.float64)[:, None, None]
    img = (img * std + mean) * 255  # back to 0..255
    top, left, bottom, right = processor_region((width, height), proc)
    side = img.shape[-1]
    inner = torch.arange(side // 8, side - side // 8)  # away from the resampling edges
    centres = (inner.double() + 0.5) / side  # processed pixel centres, fractions of the crop
    # original pixel index at each processed centre, as the ramp encodes it
    want_x = ((left + centres * (right - left)) * width - 0.5) * 255 / (width - 1)
    want_y = ((top + centres * (bottom - top)) * height - 0.5) * 255 / (height - 1)
    got_x = img[0, side // 2, inner]
    got_y = img[1, inner, side // 2]
    assert torch.allclose(got_x, want_x, atol=2.5), (got_x - want_x).abs().max()
    assert torch.allclose(got_y, want_y, atol=2.5), (got_y - want_y).abs().max()
    if width != height:  # a non-square image loses its sides (or top and bottom)
        assert (right - left < 1) if width > height else (bottom - top < 1)


def test_padded_processor_region_extends_past_the_image():
    """Pad to a centred square, resize, crop all of it: the box is the padded square."""
    config = {
        "do_pad": True,
        "do_resize": True,
        "size": {"shortest_edge": 50},
        "do_center_crop": True,
        "crop_size": {"height": 50, "width": 50},
    }
    assert processor_region((200, 100), config) == (-0.5, 0.0, 1.5, 1.0)
    no_crop = {"do_center_crop": False}
    assert processor_region((200, 100), no_crop) == (0.0, 0.0, 1.0, 1.0)


def _expl(visual: torch.Tensor, region=None) -> Explanation:
    meta = {} if region is None else {"image_region": region}
    return Explanation("m", visual, ["a"], torch.ones(1), meta=meta)


def test_visual_pixels_places_the_grid_on_its_region():
    """The middle half of the columns is the plain upsampled map; the sides get the minimum."""
    grid = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    pixels = _expl(grid, (0.0, 0.25, 1.0, 0.75)).visual_pixels((4, 8))
    inside = F.interpolate(grid[None, None], size=(4, 4), mode="bilinear", align_corners=False)[
        0, 0
    ]
    torch.testing.assert_close(pixels[:, 2:6], inside)
    assert torch.all(pixels[:, :2] == 1.0) and torch.all(pixels[:, 6:] == 1.0)
    full = F.interpolate(grid[None, None], size=(4, 8), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(_expl(grid).visual_pixels((4, 8)), full)


def test_explanation_region_survives_save_and_load(tmp_path):
    expl = _expl(torch.rand(3, 3), (0.0, 0.2, 1.0, 0.8))
    expl.save(tmp_path / "e")
    assert Explanation.load(tmp_path / "e").image_region == (0.0, 0.2, 1.0, 0.8)


def test_llava_scores_are_computed_on_the_region_it_saw(tiny_adapter):
    """On a wide image NSS uses the map placed on the centre crop, not stretched over the image."""
    adapter = tiny_adapter("llava")
    image = Image.new("RGB", (224, 112), (120, 120, 120))
    mask = np.zeros((112, 224), dtype=bool)
    mask[40:70, 100:140] = True  # an object in the middle of the crop
    sample = Sample("s", image, "What color is the circle?", mask=mask)
    method = __import__("xattr").methods.get("raw_attention")
    nss = metrics.get("nss")
    evaluator = SampleEvaluator(adapter, {"raw_attention": method}, {"nss": nss})
    result = evaluator.evaluate(sample)
    expl = result.explanations["raw_attention"]
    assert expl.image_region[1] > 0.2 and expl.image_region[3] < 0.8  # the centre square
    placed = expl.visual_pixels(mask.shape).numpy()
    assert result.rows[0]["nss"] == pytest.approx(nss(placed, mask.astype(np.float32)))
    stretched = nss(expl.visual.float().numpy(), mask.astype(np.float32))
    assert result.rows[0]["nss"] != pytest.approx(stretched)
