"""Map metrics: hand-computed values on tiny maps, independent re-implementations, edge cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import xattr.metrics as metrics
from xattr.metrics import MetricUndefinedWarning
from xattr.metrics._resize import resize_area, resize_bilinear

# Any MetricUndefinedWarning not expected by a pytest.warns block fails the test.
pytestmark = pytest.mark.filterwarnings("error::xattr.metrics.MetricUndefinedWarning")

NAMES = [
    "auc_judd",
    "cc",
    "energy_pointing_game",
    "faithfulness",  # model-in-the-loop: DeletionInsertion
    "iou_topk",
    "kl",
    "nss",
    "pointing_game",
    "sim",
    "spearman",
]
MAP_NAMES = [n for n in NAMES if n != "faithfulness"]  # (saliency, reference) -> float
S4 = np.array([[1.0, 2.0], [3.0, 4.0]])


def m(name: str, **options):
    return metrics.get(name, **options)


def rng_maps(seed: int, shape=(12, 12)):
    rng = np.random.default_rng(seed)
    return rng.random(shape), rng.random(shape)


# --------------------------------------------------------------------------- registry


def test_available_names_exact():
    assert metrics.available() == NAMES


def test_the_faithfulness_metric_and_its_columns_answer_by_name():
    from xattr.metrics.faithfulness import DeletionInsertion

    assert isinstance(metrics.get("faithfulness", curves=["insertion"]), DeletionInsertion)
    assert metrics.model_metric_columns() == {
        "faithfulness": ["deletion_auc", "insertion_auc", "deletion_ppl", "faithfulness_passes"]
    }
    with pytest.raises(KeyError, match="'deletion_auc' is a column of the 'faithfulness' metric"):
        metrics.get("deletion_auc")


@pytest.mark.parametrize("name", MAP_NAMES)
def test_metric_class_attributes(name):
    metric = metrics.get(name)
    cls = type(metric)
    assert cls.name == name == metric.name
    assert isinstance(cls.higher_is_better, bool)
    assert isinstance(cls.range, str) and cls.range
    doc = cls.__doc__ or ""
    assert "Definition" in doc and "Range" in doc and "Better" in doc
    assert ("Better: higher" in doc) == cls.higher_is_better


def test_directions():
    assert not m("kl").higher_is_better
    assert all(m(n).higher_is_better for n in MAP_NAMES if n != "kl")


def test_get_options_and_errors():
    assert m("nss", percentile=80).percentile == 80
    assert m("spearman", grid=7).grid == (7, 7)
    assert m("spearman", grid=None).grid is None
    with pytest.raises(KeyError, match="nss"):
        metrics.get("nope")
    with pytest.raises(TypeError):
        metrics.get("cc", percentile=3)
    with pytest.raises(ValueError):
        metrics.get("nss", percentile=101)
    with pytest.raises(ValueError):
        metrics.get("iou_topk", k=0.0)
    with pytest.raises(ValueError):
        metrics.get("pointing_game", ties="random")


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        m("cc")(np.zeros((1, 2, 2)), np.zeros((2, 2)))


# --------------------------------------------------------------------------- resizing


def test_resize_bilinear_by_hand():
    # 1x2 [0, 1] -> 1x4, align_corners=False: source x = (x + .5) / 2 - .5
    # = -.25, .25, .75, 1.25 -> clamped 0, .25, .75, 1 -> values 0, .25, .75, 1.
    out = resize_bilinear(np.array([[0.0, 1.0]]), (1, 4))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]])


def test_resize_area_by_hand():
    # 1x3 [0, 3, 6] -> 1x2: cell 0 covers [0, 1.5): (0*1 + 3*.5) / 1.5 = 1;
    # cell 1 covers [1.5, 3): (3*.5 + 6*1) / 1.5 = 5.
    np.testing.assert_allclose(resize_area(np.array([[0.0, 3.0, 6.0]]), (1, 2)), [[1.0, 5.0]])
    # divisible sizes: plain block means, same as adaptive average pooling
    x = np.arange(36.0).reshape(6, 6)
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(x)[None, None], (3, 2))[0, 0].numpy()
    np.testing.assert_allclose(resize_area(x, (3, 2)), pooled)
    # non-divisible sizes preserve the mean
    y = np.random.default_rng(0).random((17, 23))
    assert resize_area(y, (14, 14)).mean() == pytest.approx(y.mean())


@pytest.mark.parametrize("name", [n for n in MAP_NAMES if n != "spearman"])
def test_resize_rule_saliency_to_reference(name):
    # The saliency map (7x9) is upsampled bilinearly to the reference's size (14x18);
    # the reference is never resized.
    rng = np.random.default_rng(3)
    s_small = rng.random((7, 9))
    ref = (rng.random((14, 18)) > 0.6).astype(float)
    ref[0, 0] = 1.0
    s_big = (
        F.interpolate(
            torch.from_numpy(s_small)[None, None],
            size=(14, 18),
            mode="bilinear",
            align_corners=False,
        )[0, 0]
        .numpy()
        .copy()
    )
    metric = m(name)
    assert metric(s_small, ref) == pytest.approx(metric(s_big, ref), abs=1e-12)


def test_resize_rule_is_not_reference_downsampling():
    # A case where resizing the reference instead would give a different value.
    rng = np.random.default_rng(4)
    s_small, ref = rng.random((4, 4)), rng.random((8, 8))
    ref_small = resize_bilinear(ref, (4, 4))
    assert m("cc")(s_small, ref) != pytest.approx(m("cc")(s_small, ref_small), abs=1e-6)


def test_spearman_resizes_both_to_grid_by_area():
    rng = np.random.default_rng(5)
    s, h = rng.random((28, 42)), rng.random((14, 14))
    # independent: 28x42 -> 14x14 block means of 2x3 blocks; h already on the grid
    s_grid = s.reshape(14, 2, 14, 3).mean(axis=(1, 3))
    expected = stats.spearmanr(s_grid.ravel(), h.ravel()).statistic
    assert m("spearman")(s, h) == pytest.approx(expected)
    # and the value really depends on the grid (native resolution differs)
    assert m("spearman", grid=None)(s[:14, :14], h) != pytest.approx(expected)


def test_torch_and_numpy_agree():
    s, h = rng_maps(1)
    h = h * (h > 0.5)  # sparse, so AUC-Judd has negatives
    for name in ("nss", "cc", "kl", "auc_judd"):
        assert m(name)(torch.from_numpy(s).float(), torch.from_numpy(h)) == pytest.approx(
            m(name)(s.astype(np.float32), h), abs=1e-6
        )


# --------------------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("name", MAP_NAMES)
@pytest.mark.parametrize("where", ["saliency", "reference"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_gives_nan_with_warning(name, where, bad):
    s, h = rng_maps(2)
    h = (h > 0.5).astype(float)
    (s if where == "saliency" else h)[3, 4] = bad
    with pytest.warns(MetricUndefinedWarning, match=where):
        assert math.isnan(m(name)(s, h))


def test_warning_is_attributed_to_the_caller():
    with pytest.warns(MetricUndefinedWarning) as record:
        m("pointing_game")(np.ones((3, 3)), np.eye(3))
    assert record[0].filename == __file__


# --------------------------------------------------------------------------- NSS


def test_nss_by_hand():
    # S = [[1,2],[3,4]]: mean 2.5, population std sqrt((2.25+.25+.25+2.25)/4) = sqrt(1.25).
    # H = [[0,0],[0,1]]: percentile 90 (linear) of [0,0,0,1] = 0 + .7*(1-0) = .7 -> F = {(1,1)}.
    # NSS = (4 - 2.5) / sqrt(1.25) = 1.341641
    h = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert m("nss")(S4, h) == pytest.approx(1.5 / math.sqrt(1.25))
    # H = [[0,1],[2,3]], q = 50: percentile of [0,1,2,3] = 1.5 -> F = pixels with S = 3, 4;
    # z = .5/sqrt(1.25), 1.5/sqrt(1.25) -> mean 1/sqrt(1.25) = 0.894427
    h2 = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert m("nss", percentile=50)(S4, h2) == pytest.approx(1.0 / math.sqrt(1.25))
    # default q=90: percentile of [0,1,2,3] = 2.7 -> F = {S=4} -> 1.341641
    assert m("nss")(S4, h2) == pytest.approx(1.5 / math.sqrt(1.25))


def test_nss_sparse_map_excludes_minimum():
    # q=50 on [0,0,0,1] gives threshold 0: the literal formula puts every pixel in F
    # (NSS = mean z = 0); with exclude_min (default) F = {(1,1)} -> 1.341641.
    h = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert m("nss", percentile=50)(S4, h) == pytest.approx(1.5 / math.sqrt(1.25))
    assert m("nss", percentile=50, exclude_min=False)(S4, h) == pytest.approx(0.0, abs=1e-12)


def test_nss_matches_reimplementation():
    s, h = rng_maps(7, (9, 11))
    thr = sorted(h.ravel())  # percentile 80 by explicit linear interpolation
    pos = 0.8 * (len(thr) - 1)
    lo = int(pos)
    t = thr[lo] + (pos - lo) * (thr[lo + 1] - thr[lo])
    vals = s.ravel().tolist()
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    sel = [(sv - mu) / sd for sv, hv in zip(vals, h.ravel()) if hv >= t]
    assert m("nss", percentile=80)(s, h) == pytest.approx(sum(sel) / len(sel))


def test_nss_constant_saliency_is_zero_with_warning():
    with pytest.warns(MetricUndefinedWarning, match="constant saliency"):
        assert m("nss")(np.full((3, 3), 2.0), np.eye(3)) == 0.0


@pytest.mark.parametrize("h", [np.zeros((3, 3)), np.full((3, 3), 0.4)])
def test_nss_empty_fixations_is_nan(h):
    with pytest.warns(MetricUndefinedWarning, match="empty fixation"):
        assert math.isnan(m("nss")(np.eye(3), h))


# --------------------------------------------------------------------------- Spearman


def _average_ranks(x):
    """Ranks 1..n, ties get the mean of the positions they occupy (explicit loop)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    den = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return num / den


def test_spearman_by_hand():
    # ranks S: 1,2,3,4; ranks H ([10,30,20,40]): 1,3,2,4; d^2 = 0+1+1+0 = 2
    # rho = 1 - 6*2 / (4*(16-1)) = 0.8
    h = np.array([[10.0, 30.0], [20.0, 40.0]])
    assert m("spearman", grid=None)(S4, h) == pytest.approx(0.8)
    # ties: S = [1,1,2,3] -> ranks 1.5,1.5,3,4; H ranks 1,2,3,4.
    # dx = -1,-1,.5,1.5; dy = -1.5,-.5,.5,1.5; sum dxdy = 4.5; sum dx^2 = 4.5; sum dy^2 = 5
    # rho = 4.5 / sqrt(22.5) = 0.948683
    s_tie = np.array([[1.0, 1.0], [2.0, 3.0]])
    assert m("spearman", grid=None)(s_tie, S4) == pytest.approx(4.5 / math.sqrt(22.5))


def test_spearman_matches_explicit_ranking_with_ties():
    rng = np.random.default_rng(8)
    s = rng.integers(0, 4, (6, 6)).astype(float)  # many ties
    h = rng.integers(0, 5, (6, 6)).astype(float)
    expected = _pearson(_average_ranks(s.ravel().tolist()), _average_ranks(h.ravel().tolist()))
    assert m("spearman", grid=None)(s, h) == pytest.approx(expected)
    assert m("spearman", grid=(6, 6))(s, h) == pytest.approx(expected)


def test_spearman_constant_is_nan():
    with pytest.warns(MetricUndefinedWarning, match="constant"):
        assert math.isnan(m("spearman", grid=None)(np.ones((3, 3)), np.eye(3)))
    # a 4x4 checkerboard is constant (0.5) once averaged onto a 2x2 grid
    checker = (np.indices((4, 4)).sum(axis=0) % 2).astype(float)
    assert m("spearman", grid=None)(checker, checker) == pytest.approx(1.0)
    with pytest.warns(MetricUndefinedWarning, match="constant"):
        assert math.isnan(m("spearman", grid=2)(checker, np.arange(16.0).reshape(4, 4)))


# --------------------------------------------------------------------------- CC


def test_cc_by_hand():
    # s0 = -1.5,-.5,.5,1.5; h0 ([1,3,2,4]) = -1.5,.5,-.5,1.5; sum s0*h0 = 2.25-.25-.25+2.25 = 4;
    # sum s0^2 = sum h0^2 = 5 -> CC = 4/5 = 0.8
    assert m("cc")(S4, np.array([[1.0, 3.0], [2.0, 4.0]])) == pytest.approx(0.8)
    assert m("cc")(S4, -S4) == pytest.approx(-1.0)


def test_cc_matches_reimplementation():
    s, h = rng_maps(9)
    assert m("cc")(s, h) == pytest.approx(_pearson(s.ravel().tolist(), h.ravel().tolist()))


def test_cc_constant_is_nan():
    with pytest.warns(MetricUndefinedWarning, match="constant"):
        assert math.isnan(m("cc")(S4, np.ones((2, 2))))


# --------------------------------------------------------------------------- KL


def test_kl_by_hand():
    # S' = [.25,.75,0,0]; H' = [.5,.5,0,0]
    # KL = .5 log(.5/.25) + .5 log(.5/.75) = .5 (log 2 + log 2/3) = .5 log(4/3) = 0.143841
    s = np.array([[1.0, 3.0], [0.0, 0.0]])
    h = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert m("kl")(s, h) == pytest.approx(0.5 * math.log(4 / 3))
    # uniform S vs two-point H: KL = 2 * .5 log(.5/.25) = log 2
    assert m("kl")(np.ones((2, 2)), np.eye(2)) == pytest.approx(math.log(2))
    assert m("kl")(S4, 3 * S4) == pytest.approx(0.0, abs=1e-12)


def test_kl_matches_reimplementation_with_zeros():
    s, h = rng_maps(10, (5, 5))
    s[0, :] = 0.0  # zero saliency where the human map has mass: eps matters
    eps = 2.2204e-16
    ss, hs = s.ravel().tolist(), h.ravel().tolist()
    expected = sum(
        (b / sum(hs)) * math.log(eps + (b / sum(hs)) / (a / sum(ss) + eps)) for a, b in zip(ss, hs)
    )
    assert m("kl")(s, h) == pytest.approx(expected)
    assert expected > 5  # the zeros are heavily penalised, not ignored


def test_kl_clips_negatives_and_no_mass_is_nan():
    s_neg = np.array([[-1.0, 1.0], [1.0, 1.0]])
    s_clip = np.array([[0.0, 1.0], [1.0, 1.0]])
    assert m("kl")(s_neg, S4) == pytest.approx(m("kl")(s_clip, S4))
    with pytest.warns(MetricUndefinedWarning, match="no positive mass"):
        assert math.isnan(m("kl")(-S4, S4))
    with pytest.warns(MetricUndefinedWarning, match="human map"):
        assert math.isnan(m("kl")(S4, np.zeros((2, 2))))


# --------------------------------------------------------------------------- SIM


def test_sim_by_hand():
    # S = [0,1,2,3] -> min-max [0,1/3,2/3,1] -> /2 -> [0,1/6,1/3,1/2]
    # H = [0,0,0,1] -> [0,0,0,1]; SIM = 0 + 0 + 0 + min(1/2, 1) = 0.5
    s = np.array([[0.0, 1.0], [2.0, 3.0]])
    h = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert m("sim")(s, h) == pytest.approx(0.5)
    assert m("sim")(2 * s + 5, h) == pytest.approx(0.5)  # min-max removes offset and scale
    assert m("sim")(s, s) == pytest.approx(1.0)


def test_sim_constant_is_nan():
    with pytest.warns(MetricUndefinedWarning, match="constant"):
        assert math.isnan(m("sim")(np.zeros((2, 2)), S4))


# --------------------------------------------------------------------------- AUC-Judd


def _auc_judd_brute(s, fixated):
    """Enumerate every threshold with plain loops; trapezoid from (0,0) to (1,1)."""
    sv, fv = s.ravel().tolist(), fixated.ravel().tolist()
    pos = [v for v, f in zip(sv, fv) if f]
    neg = [v for v, f in zip(sv, fv) if not f]
    pts = [(0.0, 0.0)]
    for t in sorted(set(pos), reverse=True):
        pts.append((sum(v >= t for v in neg) / len(neg), sum(v >= t for v in pos) / len(pos)))
    pts.append((1.0, 1.0))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(pts))


def test_auc_judd_by_hand():
    # S = [.9,.8,.3,.1], fixated = pixels 0 and 2 (S .9 and .3), negatives .8 and .1.
    # t=.9: TPR 1/2, FPR 0; t=.3: TPR 1, FPR 1/2 (.8 >= .3).
    # curve (0,0),(0,.5),(.5,1),(1,1): 0 + .5*(.5+1)/2 + .5*1 = .875
    s = np.array([[0.9, 0.8], [0.3, 0.1]])
    h = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert m("auc_judd")(s, h) == pytest.approx(0.875)


def test_auc_judd_ties_by_hand():
    # S = [1,1,0,0], fixated = pixel 0 only: one threshold t=1, TPR 1, FPR 1/3
    # (the tied negative counts too). (0,0),(1/3,1),(1,1): 1/6 + 2/3 = 5/6.
    # (Ranking the fixated pixel first among ties would give 1.0.)
    s = np.array([[1.0, 1.0], [0.0, 0.0]])
    h = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert m("auc_judd")(s, h) == pytest.approx(5 / 6)
    assert m("auc_judd")(np.full((3, 3), 0.2), np.eye(3)) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_auc_judd_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, (7, 8)).astype(float)  # heavy ties
    h = rng.random((7, 8))
    fixated = h > 0.6
    assert m("auc_judd", threshold=0.6)(s, h) == pytest.approx(_auc_judd_brute(s, fixated))


def test_auc_judd_undefined_cases():
    with pytest.warns(MetricUndefinedWarning, match="no fixated"):
        assert math.isnan(m("auc_judd")(S4, np.zeros((2, 2))))
    with pytest.warns(MetricUndefinedWarning, match="no negatives"):
        assert math.isnan(m("auc_judd")(S4, np.ones((2, 2))))


# --------------------------------------------------------------------------- localisation


def _square_mask(size=40):
    mask = np.zeros((size, size))
    mask[10:15, 10:15] = 1.0  # rows/cols 10..14
    return mask


def _peak(at, size=40):
    s = np.zeros((size, size))
    s[at] = 1.0
    return s


def test_pointing_game_tolerance_by_hand():
    mask = _square_mask()
    pg = m("pointing_game")
    assert pg(_peak((12, 12)), mask) == 1.0
    # (12, 29) is 29-14 = 15 px from (12, 14): inside tolerance 15; (12, 30) is 16 px away
    assert pg(_peak((12, 29)), mask) == 1.0
    assert pg(_peak((12, 30)), mask) == 0.0
    # (30, 30): sqrt(16^2 + 16^2) = 22.6 px from (14, 14)
    assert pg(_peak((30, 30)), mask) == 0.0
    assert m("pointing_game", tolerance=23)(_peak((30, 30)), mask) == 1.0
    assert m("pointing_game", tolerance=0)(_peak((12, 15)), mask) == 0.0
    assert pg(_peak((12, 15)), mask * 255) == 1.0  # {0, 255} masks work


def test_pointing_game_ties():
    mask = _square_mask()
    s = _peak((0, 39))  # first in row-major order, far outside
    s[12, 12] = 1.0  # tied maximum inside
    assert m("pointing_game")(s, mask) == 1.0
    assert m("pointing_game", ties="first")(s, mask) == 0.0
    assert m("pointing_game", ties="mean")(s, mask) == 0.5


def test_pointing_game_undefined():
    with pytest.warns(MetricUndefinedWarning, match="no peak"):
        assert math.isnan(m("pointing_game")(np.ones((40, 40)), _square_mask()))
    with pytest.warns(MetricUndefinedWarning, match="empty mask"):
        assert math.isnan(m("pointing_game")(_peak((1, 1)), np.zeros((40, 40))))


def test_iou_topk_by_hand():
    mask = np.zeros((4, 4))
    mask[:2, :2] = 1.0  # 4 of 16 pixels -> default k = 1/4 -> n = 4
    s = np.arange(16.0).reshape(4, 4)[::-1, ::-1].copy()  # 15 at (0,0) ... 0 at (3,3)
    # top 4 values 15,14,13,12 sit at (0,0),(0,1),(0,2),(0,3): 2 in mask; union 4+4-2 = 6
    assert m("iou_topk")(s, mask) == pytest.approx(2 / 6)
    s2 = s.copy()
    s2[1, 0], s2[1, 1] = 30.0, 29.0  # top 4 now (1,0),(1,1),(0,0),(0,1): all in mask
    assert m("iou_topk")(s2, mask) == pytest.approx(1.0)
    # k = .5 -> n = 8: the 8 largest of s2 cover the 4 mask pixels -> 4/8
    assert m("iou_topk", k=0.5)(s2, mask) == pytest.approx(0.5)


def test_iou_topk_ties_included():
    mask = np.zeros((4, 4))
    mask[0, :2] = 1.0  # n = 2
    s = np.zeros((4, 4))
    s[0, 0] = 2.0
    s[0, 1] = s[3, 3] = 1.0  # tie at the 2nd value: T = {(0,0),(0,1),(3,3)}
    # intersection 2, union 3
    assert m("iou_topk")(s, mask) == pytest.approx(2 / 3)


def test_iou_topk_undefined():
    with pytest.warns(MetricUndefinedWarning, match="constant"):
        assert math.isnan(m("iou_topk")(np.ones((4, 4)), np.eye(4)))
    with pytest.warns(MetricUndefinedWarning, match="empty mask"):
        assert math.isnan(m("iou_topk")(S4, np.zeros((2, 2))))


def test_energy_pointing_game_by_hand():
    mask = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert m("energy_pointing_game")(S4, mask) == pytest.approx(1 / 10)
    # negatives clipped: [[2,-5],[1,1]] -> 2 / (2+0+1+1) = .5 (unclipped would be 2/-1)
    assert m("energy_pointing_game")(np.array([[2.0, -5.0], [1.0, 1.0]]), mask) == 0.5
    # constant positive map -> mask area fraction (chance level)
    assert m("energy_pointing_game")(np.ones((2, 2)), mask) == 0.25


def test_energy_pointing_game_undefined():
    mask = np.array([[1.0, 0.0], [0.0, 0.0]])
    with pytest.warns(MetricUndefinedWarning, match="no positive energy"):
        assert math.isnan(m("energy_pointing_game")(-S4, mask))
    with pytest.warns(MetricUndefinedWarning, match="empty mask"):
        assert math.isnan(m("energy_pointing_game")(S4, np.zeros((2, 2))))
