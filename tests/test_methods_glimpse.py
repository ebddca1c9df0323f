"""GLIMPSE against its literal reference, a hand-worked case, its limits and its ablations."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import xattr
from support.reference import (
    blur_reference,
    close,
    glimpse_reference,
    random_trace,
    relevance_flow_reference,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
)
from xattr import methods
from xattr.methods import AttributionWarning
from xattr.methods.glimpse import content_links, gaussian_blur

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from support.reference

SIZES = [  # (N, L, H, T, grid)
    (7, 1, 1, 1, (1, 2)),
    (7, 2, 3, 3, (1, 2)),
    (16, 4, 3, 3, (2, 3)),
    (16, 2, 1, 1, (2, 2)),
    (33, 4, 3, 3, (3, 4)),
    (33, 1, 3, 1, (4, 4)),
]


def run(trace, **hparams):
    return methods.get("glimpse", **hparams).explain(trace)


# --------------------------------------------------------------- vs the reference
@pytest.mark.parametrize(("N", "L", "H", "T", "grid"), SIZES)
def test_glimpse_matches_reference(N, L, H, T, grid):
    trace, attn, grads, lay, conf = random_trace(N, L, H, T, grid, seed=N + L + H + T)
    expl = run(trace)
    ref = glimpse_reference(
        attn,
        grads,
        visual_index=lay["visual_index"],
        prompt_index=lay["prompt_index"],
        answer_positions=lay["answer_positions"],
        confidences=conf,
    )
    close(expl.visual.flatten(), ref["visual"])
    close(expl.prompt_relevance, ref["prompt"])
    close(expl.token_relevance, ref["rho"])
    close(expl.meta["head_weights"], ref["head_weights"])
    close(expl.meta["layer_weights"], ref["layer_weights"])
    close(expl.meta["visual_token_weights"], ref["w_visual"])
    close(expl.meta["prompt_token_weights"], ref["w_prompt"])
    assert expl.visual.shape == grid
    assert expl.meta["empty_visual_map"] is False


ABLATIONS = [  # (hparams, reference kwargs): every row of the paper's Table 3
    ({"token_weighting": "no_prompt"}, {"use_alignment": False}),
    ({"token_weighting": "no_confidence"}, {"use_confidence": False}),
    ({"token_weighting": "none"}, {"use_alignment": False, "use_confidence": False}),
    ({"head_fusion": "mean"}, {"head_fusion": "mean"}),
    ({"tau_head": 0.2}, {"tau_head": 0.2}),
    ({"tau_head": 1.0}, {"tau_head": 1.0}),
    ({"depth_prior": False}, {"depth_prior": False}),
    ({"layer_relevance": False}, {"layer_relevance": False}),
    ({"tau_depth": 0.5}, {"tau_depth": 0.5}),
    ({"tau_depth": 1.0}, {"tau_depth": 1.0}),
    ({"layers": 0.6}, {"layers": [2, 3, 4, 5]}),  # fractions round up: 0.6 * 6 = 3.6 -> 4 layers
    ({"layers": 0.3}, {"layers": [4, 5]}),  # 0.3 * 6 = 1.8 -> 2 layers
    ({"layers": 0.3, "depth_prior": False}, {"layers": [4, 5], "depth_prior": False}),
    ({"layers": 2}, {"layers": [4, 5]}),
    ({"layers": [0, 2, 5]}, {"layers": [0, 2, 5]}),
]


@pytest.fixture(scope="module")
def ablation_trace():
    """One trace for every ablation (its shared passes are memoised), and the default result."""
    trace, attn, grads, lay, conf = random_trace(24, 6, 3, 3, (2, 3), seed=11)
    return (trace, attn, grads, lay, conf), run(trace)


@pytest.mark.parametrize(("hparams", "ref_kwargs"), ABLATIONS, ids=lambda x: str(x))
def test_every_table3_ablation_is_reachable_and_matches_reference(
    hparams, ref_kwargs, ablation_trace
):
    (trace, attn, grads, lay, conf), default = ablation_trace
    expl = run(trace, **hparams)
    ref = glimpse_reference(
        attn,
        grads,
        visual_index=lay["visual_index"],
        prompt_index=lay["prompt_index"],
        answer_positions=lay["answer_positions"],
        confidences=conf,
        **ref_kwargs,
    )
    close(expl.visual.flatten(), ref["visual"])
    close(expl.prompt_relevance, ref["prompt"])
    close(expl.token_relevance, ref["rho"])
    assert not torch.allclose(expl.visual, default.visual, rtol=1e-4), "ablation changed nothing"


# ------------------------------------------------------------- a hand-worked case
def hand_trace():
    """N = 5: [img a, img b, prompt 'color', answer 'red' (s=3, p=2), answer 'car' (s=4, p=3)]."""
    head0 = torch.tensor(  # "looks at the image"
        [
            [1.0, 0, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0],
            [0.5, 0, 0.5, 0, 0],
            [0, 0, 0, 0.5, 0.5],
        ]
    )
    head1 = torch.tensor(  # "looks at text / itself"
        [
            [1.0, 0, 0, 0, 0],
            [0, 1.0, 0, 0, 0],
            [0, 0, 1.0, 0, 0],
            [0, 0, 0.5, 0.5, 0],
            [0, 0, 0, 0, 1.0],
        ]
    )
    attn = torch.stack([head0, head1])[None].repeat(2, 1, 1, 1).double()  # [L=2, H=2, 5, 5]
    G = torch.zeros(2, 2, 2, 5, 5, dtype=torch.float64)  # [t, l, h, i, j]
    # token 0 ('red', read at row 2)
    G[0, 0, 0, 2, 0], G[0, 0, 0, 2, 1], G[0, 0, 0, 2, 2] = 3, 3, -1
    G[0, 0, 1, 2, 2], G[0, 0, 1, 0, 1] = 1, 4  # (0, 1) is above the diagonal: not counted
    G[0, 1, 0, 2, 0] = 2
    G[0, 1, 1, 2, 2], G[0, 1, 1, 1, 1] = 1, 1
    # token 1 ('car', read at row 3)
    G[1, 0, 0, 3, 0] = 2
    G[1, 0, 1, 3, 3], G[1, 0, 1, 3, 2] = 2, -3
    G[1, 1, 0, 3, 0], G[1, 1, 0, 2, 1] = 1, 2
    G[1, 1, 1, 3, 2] = 1
    return xattr.Trace.from_tensors(
        list(attn),
        G,
        visual_index=[0, 1],
        prompt_index=[2],
        answer_positions=[3, 4],
        grid=(1, 2),
        confidences=[1.0, 0.5],
        tokens=["<img>", "<img>", "color", "red", "car"],
    )


def test_glimpse_hand_worked_case():
    # Temperatures chosen so exponentials are small integers:
    #   tau_head = 0.5 / ln 3  ->  exp(s / tau_head) = 3^(2 s): s = 0.5 -> 3, s = 1 -> 9
    #   tau_depth = 0.5 / ln 2 ->  d[l] ∝ exp((l/2) / tau_depth) = 2^l: d = [2, 4] / 6 = [1/3, 2/3]
    expl = run(hand_trace(), tau_head=0.5 / math.log(3), tau_depth=0.5 / math.log(2))
    meta = expl.meta

    # Token 'red' (p = 2), layer 1:
    #   head 0: Ahat[2, :] = [.5*3, .5*3, 0*relu(-1)] = [1.5, 1.5, 0]; sum Ahat = 3;
    #           sum G^+ (j <= i) = 3 + 3 = 6; s = 3/6 = 0.5
    #   head 1: Ahat[2, 2] = 1*1 = 1; G[0, 1] = 4 lies above the diagonal, so sum G^+ = 1; s = 1
    #   w = [3, 9] / 12 = [0.25, 0.75]
    #   fused row 2 = 0.25*[1.5, 1.5, 0] + 0.75*[0, 0, 1] = [0.375, 0.375, 0.75] -> rownorm
    #   Abar_1[2] = [0.25, 0.25, 0.5]; g_1 = 3 + 1 = 4
    # layer 2:
    #   head 0: Ahat[2, 0] = .5*2 = 1, sum G^+ = 2 -> s = 0.5
    #   head 1: Ahat[2, 2] = 1, Ahat[1, 1] = 1, sum G^+ = 2 -> s = 1;  w = [0.25, 0.75]
    #   Abar_2[2] = rownorm(0.25*[1, 0, 0] + 0.75*[0, 0, 1]) = [0.25, 0, 0.75]; g_2 = 1 + 2 = 3
    # lam ∝ g d = [4/7 * 1/3, 3/7 * 2/3] = [4/21, 6/21] -> [0.4, 0.6]
    # Propagation, top layer first, v = e_2:
    #   layer 2: v = e_2 + 0.6 * [0.25, 0, 0.75] = [0.15, 0, 1.45]
    #   layer 1: v @ Abar_1 = 0.15*Abar_1[0] (= 0) + 1.45*[0.25, 0.25, 0.5] = [0.3625, 0.3625, 0.725]
    #            v = [0.15, 0, 1.45] + 0.4*[0.3625, 0.3625, 0.725] = [0.295, 0.145, 1.74]
    #   r_red = [0.295, 0.145, 1.74, 0, 0]: aV = 0.44, aP = 1.74
    #
    # Token 'car' (p = 3), layer 1:
    #   head 0: Ahat[3, 0] = .5*2 = 1, sum G^+ = 2 -> s = 0.5
    #   head 1: Ahat[3, 3] = .5*2 = 1, G[3, 2] = -3 is cut by ReLU, sum G^+ = 2 -> s = 0.5
    #   w = [0.5, 0.5]; Abar_1[3] = rownorm([0.5, 0, 0, 0.5]) = [0.5, 0, 0, 0.5]; g_1 = 2
    # layer 2:
    #   head 0: Ahat[3, 0] = .5*1 = 0.5, Ahat[2, 1] = .5*2 = 1; sum = 1.5, sum G^+ = 3 -> s = 0.5
    #   head 1: Ahat[3, 2] = .5*1 = 0.5, sum G^+ = 1 -> s = 0.5;  w = [0.5, 0.5]
    #   Abar_2[3] = rownorm([0.25, 0, 0.25, 0]) = [0.5, 0, 0.5, 0]; g_2 = 1.5 + 0.5 = 2
    # lam ∝ [2/4 * 1/3, 2/4 * 2/3] -> [1/3, 2/3]
    # Propagation, v = e_3:
    #   layer 2: v = e_3 + 2/3 * [0.5, 0, 0.5, 0] = [1/3, 0, 1/3, 1]
    #   layer 1: rows 0 and 2 of Abar_1 are zero for this token; v @ Abar_1 = [0.5, 0, 0, 0.5]
    #            v = [1/3 + 1/6, 0, 1/3, 1 + 1/6] = [0.5, 0, 1/3, 7/6]
    #   r_car = [0.5, 0, 1/3, 7/6, 0]: aV = 0.5, aP = 1/3
    close(meta["head_weights"], [[[0.25, 0.75], [0.25, 0.75]], [[0.5, 0.5], [0.5, 0.5]]])
    close(meta["layer_evidence"], [[4 / 7, 3 / 7], [0.5, 0.5]])
    close(meta["depth_prior"], [1 / 3, 2 / 3])
    close(meta["layer_weights"], [[0.4, 0.6], [1 / 3, 2 / 3]])
    close(meta["prompt_alignment"], [1.74, 1 / 3])
    close(meta["visual_alignment"], [0.44, 0.5])

    # Token weights, c = [1, 0.5]:
    #   visual map: wV ∝ c * aP = [1.74, 1/6]; sum = 87/50 + 1/6 = 143/75 -> [261/286, 25/286]
    #   prompt map: wP ∝ c * aV = [0.44, 0.25]; sum 0.69 -> [44/69, 25/69]
    close(meta["visual_token_weights"], [261 / 286, 25 / 286])
    close(meta["prompt_token_weights"], [44 / 69, 25 / 69])
    # rho = aP * aV = [1.74 * 0.44, 1/3 * 0.5] = [0.7656, 1/6]
    close(expl.token_relevance, [0.7656, 1 / 6])
    # S_V = 261/286 * [0.295, 0.145] + 25/286 * [0.5, 0] = [89.495, 37.845] / 286
    close(expl.visual, [[89.495 / 286, 37.845 / 286]])
    # S_P = 44/69 * 1.74 + 25/69 * 1/3 = (76.56 + 25/3) / 69
    close(expl.prompt_relevance, [(76.56 + 25 / 3) / 69])


def test_hand_case_layer_order_matters():
    """Propagating bottom-up instead of top-down would give r_red = [0.28, 0.16, 1.74]."""
    expl = run(
        hand_trace(),
        tau_head=0.5 / math.log(3),
        tau_depth=0.5 / math.log(2),
        return_token_maps=True,
    )
    close(expl.token_maps[0], [[0.295, 0.145]])
    close(expl.token_maps[1], [[0.5, 0.0]])


# ---------------------------------------------------------------------------- limits
def test_large_head_temperature_equals_mean_fusion():
    trace, *_ = random_trace(16, 3, 3, 2, (2, 3), seed=3)
    hot = run(trace, tau_head=1e6)
    mean = run(trace, head_fusion="mean")
    close(hot.visual, mean.visual)
    close(hot.prompt_relevance, mean.prompt_relevance)
    close(hot.meta["head_weights"], torch.full_like(hot.meta["head_weights"], 1 / 3))


def test_without_depth_prior_and_layer_relevance_layer_weights_are_uniform():
    trace, *_ = random_trace(16, 4, 2, 2, (2, 3), seed=4)
    expl = run(trace, depth_prior=False, layer_relevance=False)
    close(expl.meta["layer_weights"], torch.full((2, 4), 0.25))


def test_zero_gradient_on_visual_columns_gives_exactly_zero_map_and_warns():
    trace, attn, grads, lay, conf = random_trace(16, 3, 2, 2, (2, 3), seed=5)
    grads = grads.clone()
    grads[..., lay["visual_index"]] = 0.0  # the answer ignores the image
    trace = xattr.Trace.from_tensors(list(attn), grads, confidences=conf, **lay)
    with (
        pytest.warns(AttributionWarning, match="all zero"),
        pytest.warns(AttributionWarning, match="every prompt-map token weight is zero"),
    ):
        expl = run(trace, blur_sigma=1.0, return_token_maps=True)
    assert torch.equal(expl.visual, torch.zeros_like(expl.visual))
    assert torch.equal(expl.token_maps, torch.zeros_like(expl.token_maps))
    assert expl.meta["empty_visual_map"] is True
    assert torch.isfinite(expl.prompt_relevance).all() and expl.prompt_relevance.sum() > 0


def test_nan_gradient_raises_naming_token_and_layer():
    trace, attn, grads, lay, conf = random_trace(16, 3, 2, 2, (2, 3), seed=6)
    grads = grads.clone()
    grads[1, 2, 0, 5, 3] = float("nan")
    trace = xattr.Trace.from_tensors(list(attn), grads, confidences=conf, **lay)
    with pytest.raises(ValueError, match="answer token 1, layer 2"):
        run(trace)


def test_negative_infinity_gradient_raises_too():
    trace, attn, grads, lay, conf = random_trace(16, 2, 2, 1, (2, 3), seed=6)
    grads = grads.clone()
    grads[0, 0, 1, 4, 1] = float("-inf")  # ReLU alone would hide it
    trace = xattr.Trace.from_tensors(list(attn), grads, confidences=conf, **lay)
    with pytest.raises(
        ValueError, match="non-finite values in gradients of answer token 0, layer 0"
    ):
        run(trace)


def test_nan_in_a_layer_outside_the_subset_is_not_read():
    """Finiteness is checked on the layers the method reads: a NaN elsewhere is not an error."""
    trace, attn, grads, lay, conf = random_trace(16, 3, 2, 2, (2, 3), seed=6)
    grads = grads.clone()
    grads[1, 0, 0, 5, 3] = float("nan")  # layer 0 of token 1
    trace = xattr.Trace.from_tensors(list(attn), grads, confidences=conf, **lay)
    clean = grads.clone()
    clean[1, 0] = 0.0
    reference = xattr.Trace.from_tensors(list(attn), clean, confidences=conf, **lay)
    torch.testing.assert_close(
        run(trace, layers=[1, 2]).visual, run(reference, layers=[1, 2]).visual
    )
    with pytest.raises(ValueError, match="answer token 1, layer 0"):
        run(trace)


def test_empty_layer_subset_is_an_error():
    trace, *_ = random_trace(16, 2, 2, 1, (2, 3))
    with pytest.raises(ValueError, match="selects no layer"):
        run(trace, layers=[])


@pytest.mark.parametrize(
    "bad",
    [
        {"head_fusion": "max"},
        {"token_weighting": "confidence"},
        {"tau_head": 0.0},
        {"tau_depth": -1.0},
        {"blur_sigma": -0.5},
        {"flow_beta": 2.0},
    ],
)
def test_bad_hyperparameters_are_rejected_at_construction(bad):
    with pytest.raises(ValueError):
        methods.get("glimpse", **bad)


def test_small_depth_temperature_does_not_overflow():
    """exp((l/L) / 1e-3) = exp(1000) overflows even float64; the prior is computed as a softmax."""
    _, attn, grads, lay, conf = random_trace(16, 4, 2, 2, (2, 3))
    single = xattr.Trace.from_tensors(list(attn.float()), grads.float(), confidences=conf, **lay)
    expl = run(single, tau_depth=1e-3)
    assert torch.isfinite(expl.visual).all() and expl.visual.sum() > 0
    close(expl.meta["depth_prior"], [0, 0, 0, 1], rtol=1e-6)


# ------------------------------------------------------------------ tokens and flow
def test_punctuation_is_not_aggregated_but_still_scored():
    tokens = [f"w{i}" for i in range(13)] + ["Ġred", "Ġcar", "."]
    trace, attn, grads, lay, conf = random_trace(16, 2, 2, 3, (2, 3), seed=8, tokens=tokens)
    expl = run(trace)
    assert expl.token_mask.tolist() == [True, True, False]
    ref = glimpse_reference(
        attn,
        grads,
        visual_index=lay["visual_index"],
        prompt_index=lay["prompt_index"],
        answer_positions=lay["answer_positions"],
        confidences=conf,
        token_mask=[True, True, False],
    )
    close(expl.visual.flatten(), ref["visual"])
    close(expl.token_relevance, ref["rho"])  # every token keeps its score
    everything = run(trace, token_policy="all")
    assert not torch.allclose(everything.visual, expl.visual)


def test_all_punctuation_answer_falls_back_to_all_tokens_with_warning():
    tokens = [f"w{i}" for i in range(14)] + ["!", "."]
    trace, *_ = random_trace(16, 2, 2, 2, (2, 3), seed=8, tokens=tokens)
    with pytest.warns(UserWarning, match="kept none"):
        expl = run(trace)
    assert expl.token_mask.tolist() == [True, True]


def test_content_links_follow_the_next_content_word():
    tokens = ["ĠThe", "Ġcat", "Ġis", "Ġon", "Ġthe", "Ġmat", "."]
    assert content_links(tokens) == [1, None, 5, 5, 5, None, None]


def test_relevance_flow_matches_reference_and_conserves_the_total():
    answer = ["ĠThe", "Ġcat", "Ġis", "Ġon", "Ġthe", "Ġmat", "."]
    tokens = [f"w{i}" for i in range(33 - len(answer))] + answer
    trace, attn, grads, lay, conf = random_trace(
        33, 3, 2, len(answer), (3, 4), seed=9, tokens=tokens
    )
    plain = run(trace)
    flowed = run(trace, relevance_flow=True, flow_beta=0.5)
    rows = glimpse_reference(
        attn,
        grads,
        visual_index=lay["visual_index"],
        prompt_index=lay["prompt_index"],
        answer_positions=lay["answer_positions"],
        confidences=conf,
        token_mask=[True] * 6 + [False],
    )["rows"]
    expected = relevance_flow_reference(
        rows, lay["answer_positions"], plain.token_relevance, [1, None, 5, 5, 5, None, None], 0.5
    )
    close(flowed.token_relevance, expected)
    close(flowed.meta["rho"], plain.token_relevance)
    close(flowed.token_relevance.sum(), plain.token_relevance.sum())
    close(flowed.visual, plain.visual)  # display only: the holistic map is untouched
    assert not torch.allclose(flowed.token_relevance, plain.token_relevance)


def test_relevance_flow_without_token_strings_warns_and_keeps_rho():
    trace, *_ = random_trace(16, 2, 2, 2, (2, 3))
    with pytest.warns(AttributionWarning, match="token strings"):
        expl = run(trace, relevance_flow=True)
    close(expl.token_relevance, expl.meta["rho"])


# ------------------------------------------------------------------ blur and images
@pytest.mark.parametrize(("shape", "sigma"), [((3, 4), 0.7), ((1, 5), 1.5), ((5, 5), 0.3)])
def test_gaussian_blur_matches_reference(shape, sigma):
    grid = torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    close(gaussian_blur(grid, sigma), blur_reference(grid, sigma))


def test_blur_is_applied_to_the_final_map_only():
    trace, *_ = random_trace(33, 2, 2, 2, (3, 4), seed=10)
    sharp = run(trace, return_token_maps=True)
    soft = run(trace, blur_sigma=1.0, return_token_maps=True)
    close(soft.visual, blur_reference(sharp.visual, 1.0))
    close(soft.token_maps, sharp.token_maps)


def test_two_images_are_split_by_grid():
    trace, attn, grads, lay, conf = random_trace(33, 2, 2, 2, (3, 4), seed=12)
    lay = {**lay, "grid": [(2, 3), (3, 2)]}  # the same 12 visual tokens as two images
    trace = xattr.Trace.from_tensors(list(attn), grads, confidences=conf, **lay)
    expl = run(trace, return_token_maps=True)
    ref = glimpse_reference(
        attn,
        grads,
        visual_index=lay["visual_index"],
        prompt_index=lay["prompt_index"],
        answer_positions=lay["answer_positions"],
        confidences=conf,
    )
    first, second = expl.visual_maps
    assert expl.visual.shape == (2, 3) and second.shape == (3, 2)
    assert expl.token_maps.shape == (2, 2, 3)
    close(torch.cat([first.flatten(), second.flatten()]), ref["visual"])


def test_float32_trace_is_computed_in_float32_and_close_to_float64():
    trace, attn, grads, lay, conf = random_trace(16, 3, 2, 2, (2, 3), seed=13)
    single = xattr.Trace.from_tensors(list(attn.float()), grads.float(), confidences=conf, **lay)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = run(trace), run(single)
    assert b.visual.dtype == torch.float32
    close(b.visual.double(), a.visual, rtol=1e-4)
