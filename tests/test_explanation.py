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
