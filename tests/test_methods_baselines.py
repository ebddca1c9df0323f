"""TMME, rollout, raw attention and Grad-CAM against their literal references and limits."""

from __future__ import annotations

import warnings

import pytest
import torch

import xattr
from support.reference import (
    close,
    gradcam_reference,
    per_token_rows_to_maps,
    random_trace,
    raw_attention_reference,
    rollout_reference,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
    tmme_reference,
)
from xattr import methods
from xattr.methods import AttributionWarning
from xattr.trace import TraceError

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from support.reference

SIZES = [  # (N, L, H, T, grid)
    (7, 1, 1, 1, (1, 2)),
    (7, 2, 3, 3, (1, 2)),
    (16, 4, 3, 3, (2, 3)),
    (33, 4, 1, 3, (3, 4)),
    (33, 2, 3, 1, (4, 4)),
]


def check_against(expl, rows, lay, token_mask=None):
    ref = per_token_rows_to_maps(
        rows, lay["visual_index"], lay["prompt_index"], token_mask or [True] * len(rows)
    )
    assert ref["visual"].abs().sum() > 0, "vacuous comparison: the reference map is all zero"
    close(expl.visual.flatten(), ref["visual"])
    close(expl.prompt_relevance, ref["prompt"])
    close(expl.token_relevance, ref["token_relevance"])


@pytest.mark.parametrize(("N", "L", "H", "T", "grid"), SIZES)
@pytest.mark.parametrize(
    ("last_k", "residual_norm"), [(None, False), (None, True), (1, False), (2, True)]
)
def test_tmme_matches_reference(N, L, H, T, grid, last_k, residual_norm):
    trace, attn, grads, lay, _ = random_trace(N, L, H, T, grid, seed=N * L + H + 1)
    expl = methods.get("tmme", last_k=last_k, residual_norm=residual_norm).explain(trace)
    layers = list(range(L)) if last_k is None else list(range(max(0, L - last_k), L))
    rows = tmme_reference(
        attn,
        grads,
        answer_positions=lay["answer_positions"],
        layers=layers,
        residual_norm=residual_norm,
    )
    check_against(expl, rows, lay)


@pytest.mark.parametrize(("N", "L", "H", "T", "grid"), SIZES)
def test_rollout_matches_reference(N, L, H, T, grid):
    trace, attn, _, lay, _ = random_trace(N, L, H, T, grid, seed=N + 2 * L + H)
    expl = methods.get("rollout").explain(trace)
    rows, _ = rollout_reference(attn, answer_positions=lay["answer_positions"])
    check_against(expl, rows, lay)


@pytest.mark.parametrize(("N", "L", "H", "T", "grid"), SIZES)
@pytest.mark.parametrize("layers", ["all", [0], -1])
def test_raw_attention_matches_reference(N, L, H, T, grid, layers):
    trace, attn, _, lay, _ = random_trace(N, L, H, T, grid, seed=N + 3 * L + H)
    chosen = {"all": list(range(L)), -1: [L - 1]}.get(
        layers if not isinstance(layers, list) else None, layers
    )
    spec = [L - 1] if layers == -1 else layers
    expl = methods.get("raw_attention", layers=spec).explain(trace)
    rows = raw_attention_reference(attn, answer_positions=lay["answer_positions"], layers=chosen)
    check_against(expl, rows, lay)


@pytest.mark.parametrize(("N", "L", "H", "T", "grid"), SIZES)
def test_gradcam_matches_reference(N, L, H, T, grid):
    trace, attn, grads, lay, _ = random_trace(N, L, H, T, grid, seed=N + 4 * L + H)
    expl = methods.get("gradcam").explain(trace)
    rows = gradcam_reference(attn, grads, answer_positions=lay["answer_positions"])
    check_against(expl, rows, lay)


# ---------------------------------------------------------------------------- limits
def test_tmme_last_k_equal_to_depth_is_vanilla():
    trace, *_ = random_trace(16, 4, 3, 3, (2, 3), seed=1)
    vanilla = methods.get("tmme").explain(trace)
    for k in (4, 12):
        full = methods.get("tmme", last_k=k).explain(trace)
        close(full.visual, vanilla.visual)
        close(full.prompt_relevance, vanilla.prompt_relevance)
    shallow = methods.get("tmme", last_k=2).explain(trace)
    assert not torch.allclose(shallow.visual, vanilla.visual)


def test_rollout_rows_sum_to_one():
    trace, attn, _, lay, _ = random_trace(33, 4, 3, 3, (3, 4), seed=2)
    _, R = rollout_reference(attn, answer_positions=lay["answer_positions"])
    close(R.sum(dim=-1), torch.ones(33))  # the full product is row-stochastic
    expl = methods.get("rollout").explain(trace)
    close(expl.meta["row_mass"], torch.ones(3))  # so is each propagated row: V + rest = 1
    assert (expl.token_relevance > 0).all() and (expl.token_relevance < 1).all()


def test_methods_without_gradients_never_touch_them():
    trace, *_ = random_trace(16, 2, 2, 2, (2, 3), seed=3)

    def forbidden(_tokens):
        raise AssertionError("gradients were requested")

    trace.gradient_source = xattr.trace.FunctionGradients(forbidden)
    for name in ("rollout", "raw_attention"):
        assert not methods.get(name).needs.gradients
        methods.get(name).explain(trace)
    no_grad = xattr.Trace.from_tensors(
        trace.attentions,
        visual_index=trace.visual_index,
        prompt_index=trace.prompt_index,
        answer_positions=trace.answer_positions,
        grid=trace.grid,
    )
    for name in ("rollout", "raw_attention"):
        methods.get(name).explain(no_grad)


def test_predicting_position_is_one_before_the_answer_token():
    """Row p_t = s_t - 1 looks at visual token 0, row s_t at visual token 5: maps must pick p_t."""
    N, grid = 12, (2, 3)
    attn = torch.zeros(1, 1, N, N, dtype=torch.float64)
    for i in range(N):
        attn[0, 0, i, i] = 1.0
    attn[0, 0, 10, :] = 0.0
    attn[0, 0, 10, 1] = 1.0  # p_t = 10 attends to visual token 0 (position 1)
    attn[0, 0, 11, :] = 0.0
    attn[0, 0, 11, 6] = 1.0  # s_t = 11 attends to visual token 5 (position 6)
    grads = torch.ones(1, 1, 1, N, N, dtype=torch.float64).tril()
    grads[0, 0, 0, 11:] = 0.0
    trace = xattr.Trace.from_tensors(
        list(attn),
        grads,
        visual_index=range(1, 7),
        prompt_index=[8],
        answer_positions=[11],
        grid=grid,
    )
    for name in ("glimpse", "tmme", "rollout", "raw_attention", "gradcam"):
        with warnings.catch_warnings():  # GLIMPSE: no prompt relevance -> uniform token weights
            warnings.simplefilter("ignore", AttributionWarning)
            visual = methods.get(name).explain(trace).visual.flatten()
        assert int(visual.argmax()) == 0, name
        assert visual[5] == 0, name


def test_gradcam_relu_and_head_signs():
    """One head with positive mean gradient, one negative: the map keeps only what survives ReLU."""
    trace, attn, grads, lay, _ = random_trace(16, 2, 2, 1, (2, 3), seed=4)
    grads = grads.clone()
    grads[0, 1, 0] = grads[0, 1, 0].abs()
    grads[0, 1, 1] = -grads[0, 1, 1].abs()
    trace = xattr.Trace.from_tensors(list(attn), grads, **lay)
    expl = methods.get("gradcam").explain(trace)
    rows = gradcam_reference(attn, grads, answer_positions=lay["answer_positions"])
    check_against(expl, rows, lay)
    assert (expl.visual >= 0).all()


@pytest.mark.parametrize("name", ["tmme", "gradcam"])
def test_gradient_baselines_reject_traces_without_gradients(name):
    trace, *_ = random_trace(16, 2, 2, 1, (2, 3))
    bare = xattr.Trace.from_tensors(
        trace.attentions,
        visual_index=trace.visual_index,
        prompt_index=trace.prompt_index,
        answer_positions=trace.answer_positions,
        grid=trace.grid,
    )
    with pytest.raises(TraceError, match=f"'{name}' needs per-token gradients"):
        methods.get(name).explain(bare)


@pytest.mark.parametrize("bad", [{"last_k": 0}, {"last_k": True}])
def test_tmme_rejects_bad_last_k(bad):
    with pytest.raises(ValueError, match="last_k"):
        methods.get("tmme", **bad)


# ------------------------------------------------------------ Grad-CAM, hidden form
def toy_hidden_trace(N=10, D=6, grid=(2, 2), seed=0):
    """A two-layer toy 'model' whose last layer mixes positions causally, kept in the graph."""
    g = torch.Generator().manual_seed(seed)
    h0 = torch.randn(N, D, generator=g, dtype=torch.float64)
    Wq, Wk, Wv = (torch.randn(D, D, generator=g, dtype=torch.float64) for _ in range(3))
    head = torch.randn(D, 7, generator=g, dtype=torch.float64)
    causal = torch.ones(N, N, dtype=torch.bool).tril()

    def block(h):  # one causal attention layer with a residual
        scores = (h @ Wq) @ (h @ Wk).T / D**0.5
        attn = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        return h + attn @ (h @ Wv), attn

    entering = (h0 * 1.0).requires_grad_(True)[None]  # [1, N, D], a graph leaf
    final, attn = block(entering[0])
    ids = torch.randint(0, 7, (N,), generator=g)
    trace = xattr.Trace(
        attentions=[attn.detach()[None]],
        visual_index=torch.arange(1, 1 + grid[0] * grid[1]),
        prompt_index=torch.tensor([6, 7]),
        answer_positions=torch.tensor([8, 9]),
        grids=[grid],
        confidences=torch.ones(2),
        input_ids=ids,
        readout=lambda h: h @ head,
        hidden_states=[entering.detach()[0], final.detach()],
        graph={"attentions": [attn], "hidden_states": [entering, final[None]]},
        gradient_fn=lambda idx: torch.zeros(len(idx), 1, 1, N, N),
    )
    return trace, h0, lambda h: block(h)[0] @ head, ids


def test_gradcam_hidden_matches_a_fresh_autograd_computation():
    trace, h0, logits_of, ids = toy_hidden_trace()
    expl = methods.get("gradcam", variant="hidden").explain(trace)
    V, P = trace.visual_index, trace.prompt_index
    visual_rows, prompt_rows, masses = [], [], []
    for s in (8, 9):
        h = h0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(logits_of(h)[s - 1, int(ids[s])], h)
        cam_v = torch.relu(h0[V] @ grad[V].mean(dim=0))
        cam_p = torch.relu(h0[P] @ grad[P].mean(dim=0))
        visual_rows.append(cam_v)
        prompt_rows.append(cam_p)
        masses.append(cam_v.sum())
    close(expl.visual.flatten(), sum(visual_rows) / 2)
    close(expl.prompt_relevance, sum(prompt_rows) / 2)
    close(expl.token_relevance, torch.stack(masses))


def test_gradcam_hidden_without_graph_is_a_clear_error():
    trace, *_ = random_trace(16, 2, 2, 1, (2, 3))
    with pytest.raises(TraceError, match="hidden states in the autograd graph"):
        methods.get("gradcam", variant="hidden").explain(trace)
    with pytest.raises(ValueError, match="variant"):
        methods.get("gradcam", variant="pixels")


def test_gradcam_hidden_prefers_captured_graph_logits_and_checks_the_readout():
    trace, *_ = toy_hidden_trace()
    by_readout = methods.get("gradcam", variant="hidden").explain(trace)
    final = trace.graph["hidden_states"][-1][0]
    positions = trace.predicting_positions
    tokens = trace.input_ids[trace.answer_positions]
    trace.graph["logits"] = trace.readout(final[positions])[torch.arange(2), tokens]  # [T] in graph
    by_graph = methods.get("gradcam", variant="hidden").explain(trace)
    close(by_graph.visual, by_readout.visual)
    del trace.graph["logits"]
    trace.meta["logits"] = torch.tensor([100.0, -100.0])  # not what the readout gives
    with pytest.warns(AttributionWarning, match="already normalised"):
        methods.get("gradcam", variant="hidden").explain(trace)
