"""Explanation: upsampling, overlay and a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xattr import Explanation


def _expl() -> Explanation:
    return Explanation(
        method="glimpse",
        visual=torch.tensor([[0.0, 1.0], [2.0, 3.0]]),
        answer_tokens=["red", "."],
        token_relevance=torch.tensor([0.7, 0.1]),
        prompt_tokens=["what", "color"],
        prompt_relevance=torch.tensor([0.2, 0.8]),
        token_mask=torch.tensor([True, False]),
        hparams={"tau_head": 0.5, "layers": (1, 2)},
        meta={"answer": "red."},
    )


def test_visual_pixels_keeps_the_mean_and_orientation():
    up = _expl().visual_pixels((4, 6))
    assert up.shape == (4, 6)
    # bilinear without corner alignment preserves the mean of a 2x2 map upsampled x2/x3
    assert float(up.mean()) == pytest.approx(1.5, abs=1e-6)
    assert float(up[0, 0]) < float(up[0, -1]) < float(up[-1, -1])  # right and down grow


def test_overlay_is_an_rgb_image_of_the_input_size_and_highlights_the_peak():
    img = Image.new("RGB", (40, 20), (128, 128, 128))
    out = _expl().overlay(img, alpha=1.0)
    assert out.size == (40, 20) and out.mode == "RGB"
    arr = np.asarray(out).astype(int)
    # jet colormap: low values blue, high values red
    assert arr[0, 0, 2] > arr[0, 0, 0]
    assert arr[-1, -1, 0] > arr[-1, -1, 2]


def test_save_load_round_trip(tmp_path):
    expl = _expl()
    expl.save(tmp_path / "e")
    back = Explanation.load(tmp_path / "e")
    torch.testing.assert_close(back.visual, expl.visual)
    torch.testing.assert_close(back.prompt_relevance, expl.prompt_relevance)
    assert back.token_mask.tolist() == [True, False]
    assert back.token_maps is None
    assert back.hparams == {"tau_head": 0.5, "layers": [1, 2]}
    assert back.answer_tokens == ["red", "."] and back.method == "glimpse"


def test_load_from_a_folder_without_an_explanation(tmp_path):
    with pytest.raises(FileNotFoundError, match="explanation.json"):
        Explanation.load(tmp_path)


def test_visual_pixels_over_a_box_are_the_whole_image_composition_at_the_same_centres():
    """Tiles and a thumbnail: 6 x 8 pixels over the top-left quarter are pixels of the
    12 x 16 composition of the whole image (their centres coincide), for the quarter and
    for a box that is not a union of tiles."""
    from xattr.layout import Grid

    tiles = [
        Grid(2, 2, 0, (r / 2, c / 2, (r + 1) / 2, (c + 1) / 2)) for r in (0, 1) for c in (0, 1)
    ]
    grids = [*tiles, Grid(3, 3)]
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(*g.shape, generator=gen) for g in grids]
    expl = Explanation("t", maps[0], ["a"], torch.ones(1), grids=grids, more_maps=maps[1:])
    whole = expl.visual_pixels((12, 16))
    torch.testing.assert_close(expl.visual_pixels((12, 16), box=(0.0, 0.0, 1.0, 1.0)), whole)
    quarter = expl.visual_pixels((6, 8), box=(0.0, 0.0, 0.5, 0.5))
    torch.testing.assert_close(quarter, whole[:6, :8], rtol=1e-6, atol=1e-6)
    middle = expl.visual_pixels((6, 8), box=(0.25, 0.25, 0.75, 0.75))
    torch.testing.assert_close(middle, whole[3:9, 4:12], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="positive extent"):
        expl.visual_pixels((6, 8), box=(0.5, 0.0, 0.5, 1.0))
