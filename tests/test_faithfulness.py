"""Deletion / insertion faithfulness: hand-computed curves with a fake model, then a tiny real one."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from support.families import SPECS
from xattr.explanation import Explanation
from xattr.layout import Grid, canvas_grid
from xattr.metrics import DeletionInsertion, MetricUndefinedWarning
from xattr.metrics.faithfulness import _cell_index, canvas_saliency

# Any MetricUndefinedWarning not expected by a pytest.warns block fails the test.
pytestmark = pytest.mark.filterwarnings("error::xattr.metrics.MetricUndefinedWarning")

QUARTERS = (0.0, 0.25, 0.5, 0.75, 1.0)
W = np.array([0.4, 0.3, 0.2, 0.1])  # importance of the four cells of a 1x4 grid
PERFECT = W.reshape(1, 4)  # saliency = importance
REVERSED = -PERFECT


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on 2 shared cores, 2 spinning threads slow tiny forwards 40x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CellModel:
    """A fake adapter: s(image) = sum_c W_c * brightness of cell c in [0, 1], on a 1x4 grid.

    Per-token log-likelihoods are ``[s - 1, s - 3]``, so the mean is ``s - 2``: -1 for the
    white original, -2 for the black baseline. Records every call.
    """

    def __init__(self, weights: np.ndarray = W, const: float | None = None) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.const = const
        self.calls: list[dict] = []

    def brightness(self, image: Image.Image) -> np.ndarray:
        arr = np.asarray(image, dtype=np.float64) / 255.0  # [H, W, 3]
        return np.array([c.mean() for c in np.array_split(arr, len(self.weights), axis=1)])

    def answer_logprobs(self, images, question, answer_ids, batch_size=8):
        images = list(images)
        self.calls.append(
            {"n": len(images), "batch_size": batch_size, "answer": answer_ids, "images": images}
        )
        s = [
            self.const if self.const is not None else float(self.weights @ self.brightness(im))
            for im in images
        ]
        return torch.tensor([[v - 1.0, v - 3.0] for v in s], dtype=torch.float64)


def white(width: int = 8, height: int = 8) -> Image.Image:
    return Image.new("RGB", (width, height), (255, 255, 255))


def trapezoid(ys, xs=QUARTERS) -> float:
    return sum((b - a) * (ya + yb) / 2 for a, b, ya, yb in zip(xs, xs[1:], ys, ys[1:]))


def metric(**options) -> DeletionInsertion:
    options.setdefault("fractions", QUARTERS)
    options.setdefault("perturbation", "zero")
    return DeletionInsertion(**options)


ANSWER = torch.tensor([5, 7])


# ----------------------------------------------------------------- hand-computed curves
def test_deletion_removes_the_most_salient_cells_first():
    """Perfect map: s = 1, .6, .3, .1, 0 -> AUC .375; reversed: 1, .9, .7, .4, 0 -> .625."""
    model = CellModel()
    perfect = metric().score(model, white(), "q", ANSWER, PERFECT)["deletion_auc"]
    reversed_ = metric().score(model, white(), "q", ANSWER, REVERSED)["deletion_auc"]
    assert perfect == pytest.approx(trapezoid([1, 0.6, 0.3, 0.1, 0]))
    assert perfect == pytest.approx(0.375)
    assert reversed_ == pytest.approx(0.625)
    assert perfect < reversed_
    # The image at f = .25 has exactly the most salient cell (columns 0-1) blacked out.
    sent = np.asarray(model.calls[0]["images"][2])
    assert (sent[:, :2] == 0).all() and (sent[:, 2:] == 255).all()


def test_insertion_inserts_the_most_salient_cells_first():
    """Perfect map: s = 0, .4, .7, .9, 1 -> AUC .625; reversed: 0, .1, .3, .6, 1 -> .375."""
    model = CellModel()
    m = metric(curves=["insertion"])
    perfect = m.score(model, white(), "q", ANSWER, PERFECT)
    reversed_ = m.score(model, white(), "q", ANSWER, REVERSED)
    assert set(perfect) == {"insertion_auc", "faithfulness_passes"} == set(m.outputs)
    assert perfect["insertion_auc"] == pytest.approx(0.625)
    assert reversed_["insertion_auc"] == pytest.approx(0.375)
    sent = np.asarray(model.calls[0]["images"][2])  # f = .25: only cell 0 shows the image
    assert (sent[:, :2] == 255).all() and (sent[:, 2:] == 0).all()


def test_curves_are_normalised_to_the_original_and_the_baseline():
    """Raw scores run from s_orig = -1 to s_base = -2; normalised, 1 -> 0 and 0 -> 1."""
    curves = metric(curves=["deletion", "insertion"]).curves_for(
        CellModel(), white(), "q", ANSWER, PERFECT
    )
    assert curves.s_orig == pytest.approx(-1.0) and curves.s_base == pytest.approx(-2.0)
    np.testing.assert_allclose(curves.scores["deletion"], [-1, -1.4, -1.7, -1.9, -2])
    np.testing.assert_allclose(curves.normalised("deletion"), [1, 0.6, 0.3, 0.1, 0])
    np.testing.assert_allclose(curves.normalised("insertion"), [0, 0.4, 0.7, 0.9, 1])


def test_normalisation_is_invariant_to_the_scale_of_the_scores():
    """Doubling every weight doubles s - s_base and s_orig - s_base: same normalised AUC."""
    a = metric().score(CellModel(W), white(), "q", ANSWER, PERFECT)["deletion_auc"]
    b = metric().score(CellModel(2 * W), white(), "q", ANSWER, PERFECT)["deletion_auc"]
    assert a == pytest.approx(b)


def test_normalised_perplexity_is_exp_of_the_score_drop():
    """PPL(answer | deleted f) / PPL(answer | original) = exp(s_orig - s(f)), area by trapezoid."""
    m = metric()
    out = m.score(CellModel(), white(), "q", ANSWER, PERFECT)
    ratios = [math.exp(-1 - s) for s in (-1, -1.4, -1.7, -1.9, -2)]
    assert ratios[0] == 1.0
    assert out["deletion_ppl"] == pytest.approx(trapezoid(ratios))
    curves = m.curves_for(CellModel(), white(), "q", ANSWER, PERFECT)
    np.testing.assert_allclose(curves.ppl_ratio("deletion"), ratios)
    # Perplexity is exp(-mean log p): check the ratio against that definition directly.
    ppl = np.exp(-curves.scores["deletion"])
    np.testing.assert_allclose(ppl / ppl[0], ratios)
    # Removing salient cells first raises perplexity sooner than the reversed order.
    assert (
        out["deletion_ppl"] > m.score(CellModel(), white(), "q", ANSWER, REVERSED)["deletion_ppl"]
    )


def test_non_uniform_fractions_weight_the_area_by_width():
    m = metric(fractions=[0.0, 0.25, 1.0])
    out = m.score(CellModel(), white(), "q", ANSWER, PERFECT)
    assert out["deletion_auc"] == pytest.approx(0.25 * (1 + 0.6) / 2 + 0.75 * (0.6 + 0) / 2)
    assert out["faithfulness_passes"] == 3 == m.forward_passes()


def test_fractions_round_half_up_to_whole_cells():
    """10 cells (1x10 grid): f = .25 perturbs round-half-up(2.5) = 3 cells, f = .5 five."""
    model = CellModel(weights=np.full(10, 0.1))
    sal = np.arange(10, 0, -1, dtype=float).reshape(1, 10)
    metric().score(model, white(20, 4), "q", ANSWER, sal)
    sent = model.calls[0]["images"]
    dark_cells = [int((model.brightness(im) == 0).sum()) for im in sent[2:]]
    assert dark_cells == [3, 5, 8]  # 2.5 -> 3, 5 -> 5, 7.5 -> 8


# --------------------------------------------------------------------------------- ties
def test_tied_cells_share_the_removal():
    """Saliency [3, 1, 1, 0]: at f = .5 the cut falls inside the tie {1, 2}: both half-removed."""
    model = CellModel()
    sal = np.array([[3.0, 1.0, 1.0, 0.0]])
    out = metric().score(model, white(), "q", ANSWER, sal)
    half = 128 / 255  # 0.5 * 255 = 127.5 rounds (half to even) to 128 in the uint8 image
    s = [1.0, 0.6, 0.3 * half + 0.2 * half + 0.1, 0.1, 0.0]
    assert out["deletion_auc"] == pytest.approx(trapezoid(s))
    np.testing.assert_allclose(model.brightness(model.calls[0]["images"][3]), [0, half, half, 1])


def test_tie_handling_does_not_depend_on_raster_order():
    """Mirroring map and importances together gives the same curve (no raster tie-break)."""
    sal = np.array([[0.0, 1.0, 1.0, 3.0]])
    a = metric().score(CellModel(W), white(), "q", ANSWER, sal[:, ::-1].copy())
    b = metric().score(CellModel(W[::-1].copy()), white(), "q", ANSWER, sal)
    assert a["deletion_auc"] == pytest.approx(b["deletion_auc"])


def test_a_constant_map_blends_the_whole_image_uniformly():
    model = CellModel()
    metric().score(model, white(), "q", ANSWER, np.ones((1, 4)))
    for f, im in zip(QUARTERS[1:-1], model.calls[0]["images"][2:]):
        level = np.round(255 * (1 - f))
        assert (np.asarray(im) == level).all(), f


# ---------------------------------------------------------------------- undefined values
def test_equal_original_and_baseline_scores_give_nan_with_a_warning():
    model = CellModel(const=-0.5)
    m = metric(curves=["deletion", "insertion"])
    with pytest.warns(MetricUndefinedWarning, match="cannot be normalised") as record:
        out = m.score(model, white(), "q", ANSWER, PERFECT)
    assert len(record) == 2  # one per curve
    assert math.isnan(out["deletion_auc"]) and math.isnan(out["insertion_auc"])
    assert out["deletion_ppl"] == 1.0  # perplexity never changed: defined, no warning needed
    assert out["faithfulness_passes"] == m.forward_passes()


def test_scores_closer_than_min_span_are_undefined():
    model = CellModel(weights=W * 1e-6)  # the image barely matters
    with pytest.warns(MetricUndefinedWarning, match="min_span"):
        assert math.isnan(metric().score(model, white(), "q", ANSWER, PERFECT)["deletion_auc"])
    out = metric(min_span=0.0).score(model, white(), "q", ANSWER, PERFECT)
    assert out["deletion_auc"] == pytest.approx(0.375, rel=1e-4)


def test_a_baseline_equal_to_the_image_is_undefined_after_one_pass():
    model = CellModel()
    black = Image.new("RGB", (8, 8))
    with pytest.warns(MetricUndefinedWarning, match="baseline image equals the image"):
        out = metric().score(model, black, "q", ANSWER, PERFECT)
    assert math.isnan(out["deletion_auc"])
    assert out["deletion_ppl"] == 1.0
    assert out["faithfulness_passes"] == 1 == sum(c["n"] for c in model.calls)


def test_a_map_with_nan_gives_nan_and_runs_no_model():
    model = CellModel()
    sal = np.array([[1.0, math.nan, 0.0, 2.0]])
    with pytest.warns(MetricUndefinedWarning, match="NaN or inf"):
        out = metric(curves=["deletion", "insertion"]).score(model, white(), "q", ANSWER, sal)
    assert all(math.isnan(out[k]) for k in ("deletion_auc", "insertion_auc", "deletion_ppl"))
    assert out["faithfulness_passes"] == 0 and model.calls == []


def test_non_finite_model_scores_are_undefined():
    model = CellModel(const=-math.inf)
    with pytest.warns(MetricUndefinedWarning) as record:
        out = metric().score(model, white(), "q", ANSWER, PERFECT)
    assert math.isnan(out["deletion_auc"]) and math.isnan(out["deletion_ppl"])
    assert any("non-finite" in str(w.message) for w in record)


# ------------------------------------------------------------------ pixels and perturbation
def _centre_rule(n_pixels: int, n_cells: int) -> np.ndarray:
    """Cell of each pixel by its centre, in floating point: an independent reference."""
    centres = np.arange(n_pixels) + 0.5
    return np.floor(centres * n_cells / n_pixels).astype(int)


@pytest.mark.parametrize(
    ("grid", "size"), [((4, 4), (30, 30)), ((3, 4), (30, 20)), ((2, 2), (8, 8)), ((5, 3), (7, 11))]
)
def test_cells_tile_images_of_any_size(grid, size):
    """Every pixel in exactly one cell; cells are rectangles whose sides differ by <= 1 pixel."""
    index = _cell_index(grid, size)
    width, height = size
    assert index.shape == (height, width)
    expected = _centre_rule(height, grid[0])[:, None] * grid[1] + _centre_rule(width, grid[1])
    np.testing.assert_array_equal(index, expected)
    counts = np.bincount(index.ravel(), minlength=grid[0] * grid[1])
    assert counts.sum() == width * height
    if height >= grid[0] and width >= grid[1]:
        rows = np.bincount(_centre_rule(height, grid[0]))
        cols = np.bincount(_centre_rule(width, grid[1]))
        assert rows.max() - rows.min() <= 1 and cols.max() - cols.min() <= 1
        assert counts.min() > 0


def test_deletion_on_a_4x4_grid_over_a_30x30_image_blacks_out_exactly_the_top_cells():
    rng = np.random.default_rng(0)
    sal = rng.permutation(16).astype(float).reshape(4, 4)
    model = CellModel()
    metric().score(model, white(30, 30), "q", ANSWER, sal)
    cell = _centre_rule(30, 4)[:, None] * 4 + _centre_rule(30, 4)[None, :]
    ranked = np.argsort(-sal.ravel())
    for k, im in zip((4, 8, 12), model.calls[0]["images"][2:]):
        dark = (np.asarray(im) == 0).all(axis=-1)
        np.testing.assert_array_equal(dark, np.isin(cell, ranked[:k]))
        assert ((np.asarray(im) == 0) | (np.asarray(im) == 255)).all()


def test_perturbation_baselines():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    arr = np.asarray(image, dtype=np.float64)
    mean = np.asarray(DeletionInsertion(perturbation="mean").baseline(image))
    np.testing.assert_array_equal(mean, np.broadcast_to(arr.mean(axis=(0, 1)).round(), arr.shape))
    assert not np.asarray(DeletionInsertion(perturbation="zero").baseline(image)).any()
    blurred = DeletionInsertion(perturbation="blur", blur_radius=2.0).baseline(image)
    ref = image.filter(ImageFilter.GaussianBlur(radius=2.0))
    np.testing.assert_array_equal(np.asarray(blurred), np.asarray(ref))


def test_deleted_regions_take_the_baseline_pixels():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    m = metric(perturbation="mean")
    model = CellModel()
    m.score(model, image, "q", ANSWER, PERFECT)
    base, sent = np.asarray(m.baseline(image)), np.asarray(model.calls[0]["images"][3])
    np.testing.assert_array_equal(sent[:, :4], base[:, :4])  # f = .5: cells 0, 1 deleted
    np.testing.assert_array_equal(sent[:, 4:], np.asarray(image)[:, 4:])
    np.testing.assert_array_equal(np.asarray(model.calls[0]["images"][1]), base)


# ------------------------------------------------------------------ passes and batching
@pytest.mark.parametrize("curves", [["deletion"], ["insertion"], ["deletion", "insertion"]])
def test_images_sent_equal_forward_passes_in_one_batched_call(curves):
    m = DeletionInsertion(curves=curves, batch_size=4, perturbation="zero")
    model = CellModel()
    out = m.score(model, white(), "q", ANSWER, PERFECT)
    assert len(model.calls) == 1
    assert model.calls[0]["n"] == m.forward_passes() == out["faithfulness_passes"]
    assert m.forward_passes() == 2 + 9 * len(curves)
    assert model.calls[0]["batch_size"] == 4
    assert list(out) == m.outputs


def test_call_scores_the_answer_of_the_trace_and_the_visual_map():
    model = CellModel()
    trace = SimpleNamespace(input_ids=torch.tensor([1, 2, 3, 9, 4]), answer_positions=[3, 4])
    expl = Explanation("test", torch.tensor(PERFECT), ["a", "b"], torch.ones(2))
    out = metric()(model, white(), "q", trace, expl)
    assert out["deletion_auc"] == pytest.approx(0.375)
    assert model.calls[0]["answer"].tolist() == [9, 4]


@pytest.mark.parametrize(
    "options",
    [
        {"fractions": [0.1, 1.0]},
        {"fractions": [0.0, 0.5]},
        {"fractions": [0.0, 0.5, 0.5, 1.0]},
        {"fractions": [0.0]},
        {"fractions": [0.0, math.nan, 1.0]},
        {"perturbation": "noise"},
        {"curves": ["deletion", "bogus"]},
        {"curves": []},
        {"batch_size": 0},
        {"blur_radius": 0.0},
    ],
)
def test_bad_options_are_rejected(options):
    with pytest.raises(ValueError):
        DeletionInsertion(**options)


def test_bad_maps_are_rejected():
    with pytest.raises(ValueError, match="2-D"):
        metric().score(CellModel(), white(), "q", ANSWER, np.ones(4))


# ------------------------------------------------------------------------ a real model
QUESTION = "what color is the circle?"


def _noisy(seed: int, size: int = 112) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def _count_forwards(model: torch.nn.Module) -> tuple[list[int], object]:
    sizes: list[int] = []

    def hook(_module, _args, kwargs):
        sizes.append(int(kwargs["input_ids"].shape[0]))

    return sizes, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_batched_answer_logprobs_equal_one_forward_per_image(tiny_adapter):
    """Batches of 2 over 5 images = a plain forward per image, log_softmax at p_t = s_t - 1."""
    adapter = tiny_adapter("qwen2_5_vl")
    images = [_noisy(i) for i in range(5)]
    trace = adapter.trace(images[0], QUESTION, "red circle", gradients=False)
    answer = trace.input_ids[trace.answer_positions]
    sizes, handle = _count_forwards(adapter.model)
    try:
        batched = adapter.answer_logprobs(images, QUESTION, answer, batch_size=2)
    finally:
        handle.remove()
    assert sizes == [2, 2, 1]
    assert batched.shape == (5, answer.numel()) and batched.dtype == torch.float32
    predicting = trace.predicting_positions
    for i, image in enumerate(images):
        inputs = adapter.full_inputs(adapter.prepare(image, QUESTION), answer)
        with torch.no_grad():
            logits = adapter.model(**inputs, use_cache=False).logits[0]
        if i == 0:  # the trace reads z_t at the same positions
            z = logits[predicting, answer]
            torch.testing.assert_close(trace.meta["logits"], z, rtol=1e-5, atol=1e-5)
        expected = torch.log_softmax(logits[predicting].float(), -1)[range(answer.numel()), answer]
        torch.testing.assert_close(batched[i], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # the image matters


def test_deletion_insertion_on_a_real_model(tiny_adapter):
    """End to end through the adapter: batching is invisible, passes match the forward count."""
    adapter = tiny_adapter("qwen2_5_vl")
    image = _noisy(7)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    (gh, gw) = trace.grid
    sal = torch.arange(gh * gw, dtype=torch.float32).reshape(gh, gw)
    expl = Explanation("test", sal, trace.answer_tokens, torch.ones(trace.num_answer_tokens))
    fractions = [0.0, 0.25, 0.5, 1.0]
    m = DeletionInsertion(fractions=fractions, curves=["deletion", "insertion"], batch_size=3)
    sizes, handle = _count_forwards(adapter.model)
    try:
        out = m(adapter, image, QUESTION, trace, expl)
    finally:
        handle.remove()
    assert sizes == [3, 3] and sum(sizes) == m.forward_passes() == out["faithfulness_passes"] == 6
    assert all(math.isfinite(v) for v in out.values())
    one_by_one = DeletionInsertion(
        fractions=fractions, curves=["deletion", "insertion"], batch_size=1
    )(adapter, image, QUESTION, trace, expl)
    for key in m.outputs:
        assert out[key] == pytest.approx(one_by_one[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize(
    "family",
    ["qwen2_5_vl", "llava", "llava_next", "internvl", "idefics3", "gemma4", "gemma3"],
)
def test_pixel_values_blending_matches_blending_the_image(tiny_adapter, family):
    """The fast path (process image and baseline once, blend pixel_values) scores the same
    curves as blending PIL images and processing each, up to the uint8 rounding of the latter
    and, with several views (tiles and a thumbnail), the resampling of the cell edges. The
    map is a random one per grid, ranked over the canvas of all grids (`canvas_saliency`)."""
    adapter = tiny_adapter(family)
    size = SPECS[family].native_size
    image = _noisy(3).resize(
        (size, size) if family in ("qwen2_5_vl", "llava") else SPECS[family].geometry_size
    )
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    gen = torch.Generator().manual_seed(0)
    grids = list(trace.layout.grids)
    sal, box = canvas_saliency(_expl([torch.randn(*g.shape, generator=gen) for g in grids], grids))
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    fast = DeletionInsertion(
        fractions=fractions, curves=["deletion", "insertion"], space="processed"
    )
    slow = DeletionInsertion(fractions=fractions, curves=["deletion", "insertion"], space="image")
    answer = trace.input_ids[trace.answer_positions]
    a = fast.curves_for(adapter, image, QUESTION, answer, sal, region=box)
    b = slow.curves_for(adapter, image, QUESTION, answer, sal, region=box)
    for curve in ("deletion", "insertion"):
        np.testing.assert_allclose(a.scores[curve], b.scores[curve], atol=2e-2)
    assert fast._processed_space(adapter) and DeletionInsertion()._processed_space(adapter)


def test_cell_index_places_the_grid_on_its_region():
    """A grid on the middle half of the columns (a centre crop): hand-computed cells."""
    index = _cell_index((2, 2), (8, 4), (0.0, 0.25, 1.0, 0.75))  # W=8, H=4
    want_row = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # columns 0-1 outside: nearest cell (0)
    np.testing.assert_array_equal(index[0], want_row)
    np.testing.assert_array_equal(index[3], want_row + 2)
    np.testing.assert_array_equal(index[:2], np.stack([want_row, want_row]))


# ------------------------------------------------------- the whole image: every grid counts
def _tiles_and_thumbnail(n: int = 3, cells: int = 4) -> list[Grid]:
    """n x n tiles of cells x cells tokens over the image, then a thumbnail (InternVL's order)."""
    tiles = [
        Grid(cells, cells, 0, (r / n, c / n, (r + 1) / n, (c + 1) / n), f"tile {r},{c}")
        for r in range(n)
        for c in range(n)
    ]
    return [*tiles, Grid(cells, cells, 0, (0.0, 0.0, 1.0, 1.0), "thumbnail")]


def _expl(maps: list[torch.Tensor], grids: list[Grid]) -> Explanation:
    return Explanation(
        "test", maps[0], ["a"], torch.ones(1), grids=list(grids), more_maps=list(maps[1:])
    )


def test_canvas_grid_is_the_finest_grid_over_every_box():
    """Hand-computed canvases: tiles set the density, the union of the boxes the extent."""
    full = (0.0, 0.0, 1.0, 1.0)
    thirds = [(0.0, c / 3, 1.0, (c + 1) / 3) for c in range(3)]
    cases = [
        (_tiles_and_thumbnail(), (12, 12), full),  # InternVL / Aya Vision: tiles first
        ([Grid(4, 4, box=full), Grid(4, 12, box=full)], (4, 12), full),  # LLaVA-NeXT
        ([Grid(4, 4, box=full), *(Grid(4, 4, box=b) for b in thirds)], (4, 12), full),  # Gemma 3
        ([Grid(8, 8, box=(0.0, 1 / 6, 1.0, 5 / 6))], (8, 8), (0.0, 1 / 6, 1.0, 5 / 6)),  # crop
        ([Grid(4, 12, box=(0.0, 0.0, 1.0, 1.021))], (4, 12), (0.0, 0.0, 1.0, 1.021)),  # padded
        (
            [Grid(2, 2, box=(0.25, 0.25, 0.75, 0.5)), Grid(2, 2, box=(0.25, 0.5, 0.75, 0.75))],
            (2, 4),
            (0.25, 0.25, 0.75, 0.75),
        ),
        ([Grid(2, 2, image=0), Grid(8, 8, image=1)], (2, 2), full),  # image 1 is not image 0
    ]
    for grids, shape, box in cases:
        canvas = canvas_grid(grids)
        assert canvas.shape == shape and canvas.box == pytest.approx(box), grids
    with pytest.raises(ValueError, match="no token grid covers image 1"):
        canvas_grid([Grid(2, 2)], image=1)


def test_canvas_saliency_composes_every_grid_at_the_cell_centres():
    """Tiles: each tile's map is its block of the 12 x 12 canvas, exactly. A thumbnail alone:
    its plain bilinear upsampling to 12 x 12, per unit of area (x 1/9, its cells are 9 times
    a tile cell's). One grid: its own map over its own box."""
    grids = _tiles_and_thumbnail()
    gen = torch.Generator().manual_seed(0)
    tiles = [torch.randn(4, 4, generator=gen) for _ in range(9)]
    sal, box = canvas_saliency(_expl([*tiles, torch.zeros(4, 4)], grids))
    blocks = torch.cat([torch.cat(tiles[3 * r : 3 * r + 3], dim=1) for r in range(3)], dim=0)
    assert box == (0.0, 0.0, 1.0, 1.0)
    torch.testing.assert_close(sal, blocks, rtol=0, atol=0)
    thumb = torch.randn(4, 4, generator=gen)
    sal, _ = canvas_saliency(_expl([*(torch.zeros(4, 4) for _ in range(9)), thumb], grids))
    up = F.interpolate(thumb[None, None], size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(sal, up[0, 0] / 9, rtol=1e-6, atol=1e-7)
    one = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    crop = Grid(8, 8, box=(0.0, 1 / 6, 1.0, 5 / 6))
    sal, box = canvas_saliency(_expl([one], [crop]))
    assert sal is one and box == crop.box


def _internvl_layout(tiny_adapter) -> tuple[object, Image.Image, list[Grid]]:
    """InternVL's tiny model on a 165 x 150 image: 3 x 3 tiles of 4 x 4 tokens, a thumbnail."""
    adapter = tiny_adapter("internvl")
    image = _noisy(11).resize(SPECS["internvl"].geometry_size)
    grids = list(adapter.prepare(image, QUESTION).layout.grids)
    assert [g.name for g in grids] == [f"tile {r},{c}" for r in range(3) for c in range(3)] + [
        "thumbnail"
    ]
    assert all(g.shape == (4, 4) for g in grids)
    return adapter, image, grids


def _tile_2_1_first(grids: list[Grid]) -> Explanation:
    """Tile 2,1 (bottom middle) salient everywhere; tile 0,0 a ramp peaking at its corner (so
    ranking tile 0,0's map alone deletes the top-left corner first); thumbnail and the other
    tiles zero."""
    maps = [torch.zeros(4, 4) for _ in grids]
    maps[0] = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 16
    maps[7] = torch.full((4, 4), 2.0)
    assert grids[7].name == "tile 2,1"
    return _expl(maps, grids)


def _inside(box, n_pixels_y: int, n_pixels_x: int, view=(0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """[H, W] bool: pixels (over ``view`` of the image) whose centres fall inside ``box``."""
    top, left, bottom, right = box
    ys = view[0] + (np.arange(n_pixels_y) + 0.5) / n_pixels_y * (view[2] - view[0])
    xs = view[1] + (np.arange(n_pixels_x) + 0.5) / n_pixels_x * (view[3] - view[1])
    return ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]


def test_a_tile_outside_the_first_deletes_first_on_the_image(tiny_adapter):
    """InternVL (tiles, then the thumbnail): a map on tile 2,1 deletes exactly tile 2,1's
    pixels at the first step, k = 16 of the 144 canvas cells (fraction 1/9)."""
    _, image, grids = _internvl_layout(tiny_adapter)
    model = CellModel()  # records the images; its scores do not matter here
    m = metric(fractions=[0.0, 1 / 9, 0.5, 1.0], curves=["deletion", "insertion"])
    m(
        model,
        image,
        QUESTION,
        SimpleNamespace(input_ids=ANSWER, answer_positions=[0, 1]),
        _tile_2_1_first(grids),
    )
    sent = [np.asarray(im) for im in model.calls[0]["images"]]
    assert len(sent) == m.forward_passes() == 6
    region = _inside(grids[7].box, image.height, image.width)
    assert 0 < region.sum() < region.size / 8
    original = np.asarray(image)
    deleted, inserted = sent[2], sent[4]  # f = 1/9 of each curve
    np.testing.assert_array_equal(deleted[region], 0)
    np.testing.assert_array_equal(deleted[~region], original[~region])
    np.testing.assert_array_equal(inserted[region], original[region])
    np.testing.assert_array_equal(inserted[~region], 0)


def test_a_tile_outside_the_first_deletes_first_in_every_view(tiny_adapter, monkeypatch):
    """The same map in pixel_values space: the first deletion's mask keeps every view but
    tile 2,1's, which it deletes whole, and the thumbnail loses the pixels over tile 2,1."""
    adapter, image, grids = _internvl_layout(tiny_adapter)
    seen = []

    def fake(prepared, baseline, keep, answer_ids, *, box=None, mode="bilinear", **_):
        seen.append((keep.clone(), box, mode))
        kept = keep.flatten(1).mean(1)  # [B]: a score that tells the original from the baseline
        return kept[:, None].expand(-1, answer_ids.numel())

    monkeypatch.setattr(adapter, "masked_answer_logprobs", fake)
    m = metric(fractions=[0.0, 1 / 9, 1.0], space="processed")
    m(
        adapter,
        image,
        QUESTION,
        SimpleNamespace(input_ids=ANSWER, answer_positions=[0, 1]),
        _tile_2_1_first(grids),
    )
    keep = torch.cat([k for k, _, _ in seen])  # [3, 12, 12]: original, baseline, f = 1/9
    box, mode = seen[0][1], seen[0][2]
    assert keep.shape == (3, 12, 12) and box == pytest.approx((0.0, 0.0, 1.0, 1.0))
    want = torch.ones(12, 12)
    want[8:12, 4:8] = 0  # tile 2,1's 16 cells of the canvas
    torch.testing.assert_close(keep[2], want)
    prepared = adapter.prepare(image, QUESTION)
    weights = adapter.mask_to_pixel_values(keep[2:], prepared, box=box, mode=mode)[0]
    views = adapter.pixel_values_to_views(weights, prepared)
    for view, seen_weight in zip(adapter.pixel_views(prepared), views, strict=True):
        h, w = view.size
        expected = ~_inside(grids[7].box, h, w, view.box)  # kept where not over tile 2,1
        assert (seen_weight == torch.as_tensor(expected, dtype=seen_weight.dtype)).all(), view
    assert not views[7].any() and views[0].all()  # tile 2,1 deleted, tile 0,0 kept


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_one_grid_families_rank_their_map_as_before(tiny_adapter, family):
    """One grid (llava: a centre crop): the canvas is that grid and its map, so the metric
    scores exactly what ranking ``expl.visual`` over ``expl.image_region`` scores."""
    adapter = tiny_adapter(family)
    image = _noisy(5).resize(SPECS[family].geometry_size)
    trace = adapter.trace(image, QUESTION, "red circle", gradients=False)
    (grid,) = trace.layout.grids
    sal = torch.randn(*grid.shape, generator=torch.Generator().manual_seed(1))
    expl = Explanation(
        "test", sal, trace.answer_tokens, torch.ones(trace.num_answer_tokens), grids=[grid]
    )
    ranked, box = canvas_saliency(expl)
    assert ranked is sal and box == grid.box == expl.image_region
    if family == "llava":
        assert box != (0.0, 0.0, 1.0, 1.0)  # the crop is kept as the region
    m = DeletionInsertion(fractions=[0.0, 0.5, 1.0], curves=["deletion", "insertion"])
    answer = trace.input_ids[trace.answer_positions]
    before = m.score(adapter, image, QUESTION, answer, expl.visual, region=expl.image_region)
    assert m(adapter, image, QUESTION, trace, expl) == before
