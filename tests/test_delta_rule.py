"""The implicit attention of a gated delta-rule layer (docs/math.md §6b), checked against a
plain recurrence, transformers' own chunked kernel and a case computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

from support.reference import delta_rule_recurrence
from xattr.models.delta_rule import heads_first, implicit_attention, prepare_qk


def _inputs(
    n: int, decay: float, seed: int = 0, hk: int = 2, hv: int = 4, dk: int = 8, dv: int = 6
):
    """Random kernel inputs as a layer passes them: q, k [1, N, Hk, dk], v [1, N, Hv, dv],
    g, beta [1, N, Hv] (g in [-decay, 0))."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, n, hk, dk, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, n, hv, dv, generator=gen, dtype=torch.float64)
    g = -decay * torch.rand(1, n, hv, generator=gen, dtype=torch.float64).clamp_min(1e-3)
    beta = torch.rand(1, n, hv, generator=gen, dtype=torch.float64)
    return q, k, v, g, beta


@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("decay", [8.0, 1e-3])
def test_a_times_v_is_the_recurrence_in_float64(n, decay):
    q, k, v, g, beta = _inputs(n, decay)
    qq, kk = prepare_qk(q, k, v.shape[2])
    a = implicit_attention(qq, kk, heads_first(g), heads_first(beta))
    vv = v[0].transpose(0, 1)  # [Hv, N, dv]
    expected = delta_rule_recurrence(qq, kk, vv, heads_first(g), heads_first(beta))
    assert (a @ vv - expected).abs().max() <= 1e-10 * expected.abs().max().clamp_min(1e-300)
    assert torch.count_nonzero(a.triu(1)) == 0  # causal


def test_a_times_v_is_the_models_chunked_kernel():
    q, k, v, g, beta = _inputs(130, 2.0, seed=1)
    out, _ = torch_chunk_gated_delta_rule(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
    qq, kk = prepare_qk(q, k, v.shape[2])
    a = implicit_attention(qq, kk, heads_first(g), heads_first(beta))
    got = a @ v[0].transpose(0, 1)
    expected = out[0].transpose(0, 1).double()  # the kernel computes in float32
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_two_tokens_by_hand():
    """One head, d_k = 2: keys e1 and (e1 + e2)/√2, q already normalised and scaled."""
    r = 1 / math.sqrt(2)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # [1, 2, 2]
    k = torch.tensor([[[1.0, 0.0], [r, r]]], dtype=torch.float64)
    g = torch.tensor([[0.0, math.log(0.5)]], dtype=torch.float64)  # γ_2 = 1/2
    beta = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    a = implicit_attention(q, k, g, beta)[0]
    # A[1,1] = β1 q1·k1 = 0.5; A[2,2] = β2 q2·k2 = 0.25 r
    # A[2,1] = β1 q2ᵀ γ2 (I − β2 k2 k2ᵀ) k1 = 0.5 · 0.5 · (0 − 0.25 · r · r) = −1/32
    expected = torch.tensor([[0.5, 0.0], [-1 / 32, 0.25 * r]], dtype=torch.float64)
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-15)


def test_orthogonal_keys_without_decay_or_erasure_are_plain_linear_attention():
    """β = 1, g = 0 and orthonormal keys: nothing is erased, A[t, s] = q_t·k_s (s ≤ t)."""
    n = 4
    k = torch.eye(n, dtype=torch.float64)[None]  # [1, N, N]: key t is e_t
    q = torch.randn(1, n, n, dtype=torch.float64)
    ones, zeros = torch.ones(1, n, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64)
    a = implicit_attention(q, k, zeros, ones)[0]
    torch.testing.assert_close(a, (q[0] @ k[0].T).tril(), rtol=0, atol=1e-14)
