"""`PlainTorchBackend`: the plain-torch resize, normalize and grey-to-RGB against hand-computed
expectations (no torchvision needed; the LFM2-VL tests compare it with torchvision itself)."""

from __future__ import annotations

import pytest
import torch
from transformers.image_utils import PILImageResampling, SizeDict

from xattr.models.lfm2_vl import Lfm2VlTorchImageProcessor

IP = Lfm2VlTorchImageProcessor()


def test_halving_with_antialias_is_the_1331_filter():
    """Bilinear with antialias halves an axis by the triangle filter two source pixels wide:
    weights (1, 3, 3, 1) / 8 around each output pixel (without antialias it would be (1, 1) / 2)."""
    x = torch.arange(16, dtype=torch.float32).pow(2).reshape(1, 1, 16)  # [C, H, W], W curved
    out = IP.resize(x.expand(1, 4, 16), SizeDict(height=4, width=8))[0, 0]  # [8]
    row = x[0, 0]
    for i in range(1, 7):  # interior outputs (the edges renormalise over the image)
        taps = row[2 * i - 1 : 2 * i + 3]
        expected = (taps * torch.tensor([1.0, 3.0, 3.0, 1.0])).sum() / 8
        torch.testing.assert_close(out[i], expected)


def test_resize_keeps_an_unchanged_size_and_uint8():
    """The same size returns the image itself; uint8 in, uint8 out, batch dims kept."""
    x = torch.randint(0, 256, (2, 3, 10, 12), dtype=torch.uint8)
    assert IP.resize(x, SizeDict(height=10, width=12)) is x
    out = IP.resize(x, SizeDict(height=5, width=7))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 5, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resample": PILImageResampling.BICUBIC}, "bilinearly only"),
        ({"size": SizeDict(shortest_edge=8)}, "height and width"),
    ],
)
def test_resize_refuses_what_it_does_not_do(kwargs, message):
    options = {"size": SizeDict(height=4, width=4), **kwargs}
    with pytest.raises(ValueError, match=message):
        IP.resize(torch.zeros(3, 8, 8), **options)


def test_normalize_and_grey_to_rgb():
    """(x - mean) / std per channel; zero std and RGBA refused; grey repeated to 3 channels."""
    x = torch.rand(2, 3, 4, 5)
    out = IP.normalize(x, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)]):
        torch.testing.assert_close(out[:, c], (x[:, c] - m) / s)
    with pytest.raises(ValueError, match="zero std"):
        IP.normalize(x, [0.0] * 3, [1.0, 0.0, 1.0])
    grey = torch.randint(0, 256, (1, 4, 5), dtype=torch.uint8)
    assert torch.equal(IP.convert_to_rgb(grey), grey.expand(3, 4, 5))
    with pytest.raises(ValueError, match="got 4"):
        IP.convert_to_rgb(torch.zeros(4, 4, 5, dtype=torch.uint8))
