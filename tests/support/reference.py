"""Plain reference implementations of the attribution methods, read straight off SPEC §2-§3.

Full N x N matrices, the matrix recursions exactly as written (``R = I``,
``R <- R + lam Abar @ R`` input to output), explicit Python loops over layers, heads, rows
and tokens, no cropping and no code shared with ``xattr.methods``. Slow on purpose: the
tests check the fast implementations against these.

One convention beyond the SPEC text, shared with the fast code and documented in the
README: gradient sums (GLIMPSE's ``sum(G^+)``, Grad-CAM's ``mean(G)``) run over the causal
support ``j <= i`` (`causal_part`), because entries above the diagonal are gradients with
respect to attention weights the causal mask holds at zero; for a model with another mask
(bidirectional image blocks, sliding windows) over that mask (`support_part`).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import xattr


def close(actual, expected, rtol=1e-5):
    """float64 comparison to a relative tolerance (the methods' exactness contract: 1e-5)."""
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=1e-10,
    )


@pytest.fixture
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ random traces


def random_causal_attentions(
    L: int, H: int, N: int, generator: torch.Generator, support: Tensor | None = None
) -> Tensor:
    """Softmax of random scores under a mask (default causal): [L, H, N, N], rows sum to 1."""
    scores = torch.randn(L, H, N, N, generator=generator, dtype=torch.float64) * 2.0
    allowed = torch.ones(N, N, dtype=torch.bool).tril() if support is None else support
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def layout(N: int, T: int, grid: tuple[int, int]) -> dict:
    """Sequence layout: [bos] [visual h*w] [template, if room] [prompt ...] [answer T]."""
    n_visual = grid[0] * grid[1]
    template = 1 if N - T - n_visual - 1 >= 2 else 0
    n_prompt = N - T - n_visual - 1 - template
    assert n_prompt >= 1, "sequence too short for this layout"
    visual = list(range(1, 1 + n_visual))
    start = 1 + n_visual + template
    prompt = list(range(start, start + n_prompt))
    answer = list(range(N - T, N))
    return {
        "visual_index": visual,
        "prompt_index": prompt,
        "answer_positions": answer,
        "grid": grid,
    }


def random_trace_tensors(N: int, L: int, H: int, T: int, grid: tuple[int, int], seed: int = 0):
    """Attentions [L, H, N, N], gradients [T, L, H, N, N] and a layout, all float64.

    Gradient rows after p_t are zero (causality); entries above the diagonal are not (autograd
    reports them for masked attention weights too), so the causal-support rule is exercised.
    """
    g = torch.Generator().manual_seed(seed)
    attn = random_causal_attentions(L, H, N, g)
    grads = torch.randn(T, L, H, N, N, generator=g, dtype=torch.float64) + 0.3  # ~38% negative
    lay = layout(N, T, grid)
    for t, s in enumerate(lay["answer_positions"]):
        grads[t, :, :, s:, :] = 0.0  # rows past p_t = s_t - 1
    confidences = (0.2 + 0.8 * torch.rand(T, generator=g, dtype=torch.float64)).tolist()
    return attn, grads, lay, confidences


def random_trace(N: int, L: int, H: int, T: int, grid: tuple[int, int], seed: int = 0, tokens=None):
    """A `Trace` over `random_trace_tensors`, plus the raw tensors for the references."""
    attn, grads, lay, conf = random_trace_tensors(N, L, H, T, grid, seed)
    trace = xattr.Trace.from_tensors(list(attn), grads, confidences=conf, tokens=tokens, **lay)
    return trace, attn, grads, lay, conf


# ------------------------------------------------------------ gradients of a real model


def autograd_attention_gradients(adapter, image, question: str, trace) -> Tensor:
    """d z_t / d A of every layer for each answer token of ``trace``, from a fresh eager
    forward and one ``torch.autograd.grad`` per token: [T, L, H, N, N]."""
    inputs = adapter.full_inputs(
        adapter.prepare(image, question), trace.input_ids[trace.answer_positions]
    )
    store = []
    hooks = [
        m.register_forward_hook(lambda _m, _a, out: store.append(out[1]))
        for m in adapter.attention_modules()
    ]
    emb = adapter.model.get_input_embeddings().register_forward_hook(
        lambda _m, _a, out: out.detach().requires_grad_(True)
    )
    try:
        logits = adapter.model(**inputs, use_cache=False).logits[0]
    finally:
        for h in [*hooks, emb]:
            h.remove()
    out = []
    for s in trace.answer_positions.tolist():
        z = logits[s - 1, int(trace.input_ids[s])]
        out.append(torch.stack(torch.autograd.grad(z, store, retain_graph=True))[:, 0])
    return torch.stack(out)


# ------------------------------------------------------------------------ helpers


def rownorm(m: Tensor) -> Tensor:
    """Each row divided by its sum; zero rows stay zero (a loop, on purpose)."""
    out = torch.zeros_like(m)
    for i in range(m.shape[0]):
        total = m[i].sum()
        if total > 0:
            out[i] = m[i] / total
    return out


def relu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


def causal_part(g: Tensor) -> Tensor:
    """Entries j <= i of a square matrix (what torch.tril keeps), others zero."""
    n = g.shape[-1]
    keep = torch.arange(n)[:, None] >= torch.arange(n)[None, :]
    return torch.where(keep, g, torch.zeros_like(g))


def support_part(g: Tensor, support: Tensor | None = None) -> Tensor:
    """Entries of a square matrix where ``support`` (bool [N, N]) lets a row attend, others
    zero; the causal part when ``support`` is None."""
    return causal_part(g) if support is None else torch.where(support, g, torch.zeros_like(g))


def per_token_rows_to_maps(rows, visual_index, prompt_index, token_mask):
    """Baseline aggregation: mean over selected tokens of r_t[V] and r_t[P]; visual mass per token."""
    selected = [t for t in range(len(rows)) if token_mask[t]]
    visual = sum(rows[t][visual_index] for t in selected) / len(selected)
    prompt = sum(rows[t][prompt_index] for t in selected) / len(selected)
    mass = torch.stack([rows[t][visual_index].sum() for t in range(len(rows))])
    return {"visual": visual, "prompt": prompt, "token_relevance": mass, "rows": rows}


# ------------------------------------------------------------------------ GLIMPSE


def glimpse_reference(
    attn: Tensor,
    grads: Tensor,
    *,
    visual_index: list[int],
    prompt_index: list[int],
    answer_positions: list[int],
    confidences: list[float],
    token_mask: list[bool] | None = None,
    layers: list[int] | None = None,
    tau_head: float = 0.5,
    head_fusion: str = "adaptive",
    tau_depth: float = 0.2,
    depth_prior: bool = True,
    layer_relevance: bool = True,
    use_alignment: bool = True,
    use_confidence: bool = True,
    eps: float = 1e-8,
    supports: list[Tensor | None] | None = None,
) -> dict:
    """GLIMPSE, SPEC §2 steps 1-10, literally (gradient sums over each layer's ``supports``
    entry, causal by default)."""
    L, H, N, _ = attn.shape
    T = len(answer_positions)
    layers = list(range(L)) if layers is None else layers
    token_mask = [True] * T if token_mask is None else token_mask
    rows, head_weights, lams = [], [], []
    for t in range(T):
        p = answer_positions[t] - 1
        abars, gs, ws = [], [], []
        for layer in layers:
            ahat = [attn[layer, h] * relu(grads[t, layer, h]) for h in range(H)]  # step 1
            scores = []
            for h in range(H):  # step 2
                support = None if supports is None else supports[layer]
                pos_grad = relu(support_part(grads[t, layer, h], support)).sum()
                scores.append(ahat[h].sum() / (pos_grad + eps))
            if head_fusion == "adaptive":
                e = [math.exp(float(s) / tau_head) for s in scores]
                w = [x / sum(e) for x in e]
            else:
                w = [1.0 / H] * H
            fused = sum(w[h] * ahat[h] for h in range(H))
            abars.append(rownorm(fused))  # step 3
            gs.append(float(sum(ahat[h] for h in range(H)).abs().sum()))  # step 4
            ws.append(w)
        # steps 4-6
        uniform = [1.0 / len(layers)] * len(layers)
        g = [x / sum(gs) for x in gs] if layer_relevance else uniform
        if depth_prior:
            d = [math.exp(((layer + 1) / L) / tau_depth) for layer in layers]
            d = [x / sum(d) for x in d]
        else:
            d = uniform
        lam = [
            g[i] * d[i] / sum(g[k] * d[k] for k in range(len(layers))) for i in range(len(layers))
        ]
        # step 7: matrix recursion, input to output
        R = torch.eye(N, dtype=attn.dtype)
        for i in range(len(layers)):
            R = R + lam[i] * abars[i] @ R
        rows.append(R[p].clone())
        head_weights.append(ws)
        lams.append(lam)
    # step 8
    a_p = [float(rows[t][prompt_index].sum()) for t in range(T)]
    a_v = [float(rows[t][visual_index].sum()) for t in range(T)]

    def weights(alignment):
        w = []
        for t in range(T):
            x = 1.0
            if use_confidence:
                x *= confidences[t]
            if use_alignment:
                x *= alignment[t]
            w.append(x if token_mask[t] else 0.0)
        return [x / sum(w) for x in w]

    w_v, w_p = weights(a_p), weights(a_v)
    rho = [a_p[t] * a_v[t] for t in range(T)]  # step 9
    s_v = sum(w_v[t] * rows[t][visual_index] for t in range(T))  # step 10
    s_p = sum(w_p[t] * rows[t][prompt_index] for t in range(T))
    return {
        "visual": s_v,
        "prompt": s_p,
        "rho": torch.tensor(rho, dtype=attn.dtype),
        "rows": torch.stack(rows),
        "head_weights": torch.tensor(head_weights, dtype=attn.dtype),
        "layer_weights": torch.tensor(lams, dtype=attn.dtype),
        "w_visual": torch.tensor(w_v, dtype=attn.dtype),
        "w_prompt": torch.tensor(w_p, dtype=attn.dtype),
    }


def relevance_flow_reference(
    rows: Tensor, answer_positions: list[int], rho: Tensor, links: list, beta: float
) -> Tensor:
    """Step 11 as README states it: I, F, move beta * sum_i F[i, j] along links, clip, rescale."""
    T = len(answer_positions)
    received = [0.0] * T
    for i in range(T):
        budget = sum(float(rows[i][answer_positions[k]]) for k in range(i))
        for j in range(i):
            influence = float(rows[i][answer_positions[j]]) / budget if budget > 0 else 0.0
            received[j] += influence * float(rho[i])  # F[i, j]
    out = [float(x) for x in rho]
    for j in range(T):
        if links[j] is not None:
            out[j] -= beta * received[j]
            out[links[j]] += beta * received[j]
    out = [max(x, 0.0) for x in out]
    scale = float(rho.sum()) / sum(out)
    return torch.tensor([x * scale for x in out], dtype=rho.dtype)


def blur_reference(grid: Tensor, sigma: float) -> Tensor:
    """Gaussian weights over the in-bounds cells of a (2r+1)^2 window, r = ceil(3 sigma)."""
    h, w = grid.shape
    r = max(1, math.ceil(3 * sigma))
    out = torch.zeros_like(grid)
    for y in range(h):
        for x in range(w):
            num = den = 0.0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        k = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
                        num += k * float(grid[y + dy, x + dx])
                        den += k
            out[y, x] = num / den
    return out


# ---------------------------------------------------------------------- baselines


def tmme_reference(attn, grads, *, answer_positions, layers=None, residual_norm=False):
    """TMME rows R[p_t, :]: Abar = mean_h (A ⊙ G)^+, R <- R + Abar @ R from R = I."""
    L, H, N, _ = attn.shape
    layers = list(range(L)) if layers is None else layers
    rows = []
    for t, s in enumerate(answer_positions):
        R = torch.eye(N, dtype=attn.dtype)
        for layer in layers:
            abar = sum(relu(attn[layer, h] * grads[t, layer, h]) for h in range(H)) / H
            R = R + abar @ R
        if residual_norm:
            eye = torch.eye(N, dtype=attn.dtype)
            R = rownorm(R - eye) + eye
        rows.append(R[s - 1].clone())
    return rows


def rollout_reference(attn, *, answer_positions):
    """Rollout rows R[p_t, :] with R = Atil[L] @ ... @ Atil[1]; also returns R itself."""
    L, H, N, _ = attn.shape
    eye = torch.eye(N, dtype=attn.dtype)
    R = eye.clone()
    for layer in range(L):
        mean = sum(attn[layer, h] for h in range(H)) / H
        R = rownorm(0.5 * mean + 0.5 * eye) @ R
    return [R[s - 1].clone() for s in answer_positions], R


def raw_attention_reference(attn, *, answer_positions, layers=None):
    """Rows mean_{l,h} A[l,h][p_t, :]."""
    L, H, N, _ = attn.shape
    layers = list(range(L)) if layers is None else layers
    rows = []
    for s in answer_positions:
        total = torch.zeros(N, dtype=attn.dtype)
        for layer in layers:
            for h in range(H):
                total += attn[layer, h, s - 1]
        rows.append(total / (len(layers) * H))
    return rows


def gradcam_reference(attn, grads, *, answer_positions, supports=None):
    """Rows (sum_h a_h A[L,h])^+[p_t, :] / H with a_h = mean over N x N of tril(G[L,h])
    (of G[L,h] on the last layer's ``supports`` entry, when given)."""
    L, H, N, _ = attn.shape
    support = None if supports is None else supports[L - 1]
    rows = []
    for t, s in enumerate(answer_positions):
        cam = torch.zeros(N, N, dtype=attn.dtype)
        for h in range(H):
            a_h = support_part(grads[t, L - 1, h], support).sum() / (N * N)
            cam += a_h * attn[L - 1, h]
        rows.append(relu(cam)[s - 1] / H)
    return rows


def delta_rule_recurrence(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """The gated delta rule token by token (docs/math.md §6b), float64: q, k [H, N, dk] as the
    rule uses them (normalised, q scaled), v [H, N, dv], g, beta [H, N] -> o [H, N, dv]."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    heads, n, dk = k.shape
    out = torch.zeros(heads, n, v.shape[-1], dtype=torch.float64)
    for h in range(heads):
        state = torch.zeros(dk, v.shape[-1], dtype=torch.float64)  # S: keys -> values
        for t in range(n):
            state = torch.exp(g[h, t]) * state  # decay first
            write = beta[h, t] * (v[h, t] - state.T @ k[h, t])  # what the state misses
            state = state + torch.outer(k[h, t], write)
            out[h, t] = state.T @ q[h, t]
    return out
