"""Localisation metrics on a sample with only a sparse human map (>= 90% zeros).

``hm >= percentile(hm, 90)`` is then true everywhere (the percentile is 0), and every
method scored a pointing game of 1. The top region must be the map's nonzero pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import xattr
from xattr.data import Sample
from xattr.pipeline.evaluator import _reference_for

SIZE = 64


def _sparse_sample() -> Sample:
    hm = np.zeros((SIZE, SIZE), np.float32)
    hm[48:52, 48:52] = np.linspace(0.2, 1.0, 16, dtype=np.float32).reshape(4, 4)  # 0.4% nonzero
    return Sample("s", Image.new("RGB", (SIZE, SIZE)), "q?", human_map=hm)


def _peak_at(r: int, c: int) -> np.ndarray:
    s = np.zeros((SIZE, SIZE))
    s[r - 2 : r + 2, c - 2 : c + 2] = 1.0
    return s


def test_sparse_map_top_region_is_its_nonzero_pixels():
    sample = _sparse_sample()
    for metric in ("pointing_game", "iou_topk", "energy_pointing_game"):
        np.testing.assert_array_equal(
            _reference_for(metric, sample.mask, sample.human_map), sample.human_map > 0
        )


@pytest.mark.parametrize("metric", ["pointing_game", "iou_topk", "energy_pointing_game"])
def test_sparse_map_scores_a_miss_as_a_miss(metric):
    sample = _sparse_sample()
    reference = _reference_for(metric, sample.mask, sample.human_map)
    score = xattr.metrics.get(metric, **({"tolerance": 0} if metric == "pointing_game" else {}))
    assert score(_peak_at(10, 10), reference) == 0.0  # the map points far from the region
    assert score(_peak_at(50, 50), reference) == 1.0  # exactly on the human map's nonzero block


def test_dense_map_top_region_is_its_top_decile_and_constant_maps_have_none():
    h = np.arange(100, dtype=float).reshape(10, 10)
    assert xattr.metrics.top_region(h).sum() == 10  # 90..99 (numpy's percentile = 89.1)
    assert not xattr.metrics.top_region(np.full((4, 4), 0.3)).any()
    blank = Sample("z", Image.new("RGB", (8, 8)), "q?", human_map=np.zeros((8, 8), np.float32))
    assert (
        _reference_for("pointing_game", blank.mask, blank.human_map) is None
    )  # scored NaN (skipped), never a hit
