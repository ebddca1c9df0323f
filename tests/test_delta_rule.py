"""The implicit attention of a gated delta-rule layer (docs/math.md §6b), checked against a
plain recurrence, transformers' own chunked kernel, cases computed by hand and a tiny real
Qwen3.5 text model's linear layers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen3_5TextConfig, Qwen3_5TextModel
from transformers.models.qwen3_5 import modeling_qwen3_5
from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

from support.reference import delta_rule_recurrence
from xattr.models.delta_rule import heads_first, implicit_attention, prepare_qk


def _inputs(
    n: int,
    decay: float,
    seed: int = 0,
    hk: int = 2,
    hv: int = 4,
    dk: int = 8,
    dv: int = 6,
    dtype: torch.dtype = torch.float64,
):
    """Random kernel inputs as a layer passes them: q, k [1, N, Hk, dk], v [1, N, Hv, dv],
    g, beta [1, N, Hv] (g in [-decay, -decay/1000], beta in (0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, n, hk, dk, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, n, hv, dv, generator=gen, dtype=torch.float64)
    g = -decay * torch.rand(1, n, hv, generator=gen, dtype=torch.float64).clamp_min(1e-3)
    beta = torch.rand(1, n, hv, generator=gen, dtype=torch.float64)
    return tuple(x.to(dtype) for x in (q, k, v, g, beta))


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``expected``."""
    got, expected = got.double(), expected.double()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


def _attention(q, k, g, beta, value_heads: int, dtype=torch.float64) -> torch.Tensor:
    """``A`` [Hv, N, N] from the kernel's inputs as the layer passes them."""
    qq, kk = prepare_qk(q, k, value_heads)
    return implicit_attention(qq, kk, heads_first(g), heads_first(beta), dtype=dtype)


@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("decay", [8.0, 1e-3])
def test_a_times_v_is_the_recurrence_in_float64(n, decay):
    q, k, v, g, beta = _inputs(n, decay)
    qq, kk = prepare_qk(q, k, v.shape[2])
    a = implicit_attention(qq, kk, heads_first(g), heads_first(beta))
    vv = v[0].transpose(0, 1)  # [Hv, N, dv]
    expected = delta_rule_recurrence(qq, kk, vv, heads_first(g), heads_first(beta))
    assert _relative_error(a @ vv, expected) <= 1e-10
    assert torch.count_nonzero(a.triu(1)) == 0  # causal


@pytest.mark.parametrize("decay", [8.0, 1e-3])
def test_float32_at_the_real_length_is_the_recurrence_to_1e_5(decay):
    """N = 1,300 in float32: strong decays put |G| in the thousands, where float32 differences
    of the running sums alone would cost ~1e-4; the log decays stay float64."""
    q, k, v, g, beta = _inputs(1300, decay, seed=2, hk=1, hv=2, dk=16, dv=4)
    qq, kk = prepare_qk(q, k, v.shape[2])
    gg, bb = heads_first(g), heads_first(beta)
    a = implicit_attention(qq, kk, gg, bb, dtype=torch.float32)
    assert a.dtype == torch.float32
    vv = v[0].transpose(0, 1)  # [Hv, N, dv]
    assert _relative_error(a.double() @ vv, delta_rule_recurrence(qq, kk, vv, gg, bb)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "hk"), [(1, 2), (130, 2), (130, 4)])
def test_a_times_v_is_the_models_chunked_kernel(dtype, n, hk):
    """The layer's own kernel on the raw q, k (it normalises them itself), in its float32."""
    q, k, v, g, beta = _inputs(n, 2.0, seed=1, hk=hk, dtype=dtype)
    out, _ = torch_chunk_gated_delta_rule(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
    expected = out[0].transpose(0, 1)  # [Hv, N, dv]; the kernel computes in float32
    for work in (torch.float64, torch.float32):
        a = _attention(q, k, g, beta, v.shape[2], dtype=work)
        assert _relative_error(a.double() @ v[0].transpose(0, 1).double(), expected) <= 1e-5


def test_a_is_lower_triangular_with_diagonal_beta_q_dot_k():
    """Causal: exactly zero above the diagonal; ``A[t, t] = β_t q_t·k_t`` (nothing between)."""
    q, k, v, g, beta = _inputs(90, 0.5, seed=3)
    qq, kk = prepare_qk(q, k, v.shape[2])
    bb = heads_first(beta)
    for dtype in (torch.float64, torch.float32):
        a = implicit_attention(qq, kk, heads_first(g), bb, dtype=dtype)
        assert torch.count_nonzero(a.triu(1)) == 0
        diagonal = bb * (qq * kk).sum(-1)  # [Hv, N]
        assert _relative_error(a.diagonal(dim1=-2, dim2=-1), diagonal) <= 1e-6


def test_prepare_qk_repeats_normalises_and_scales():
    """Value head h reads key head h // (Hv / Hk); |k| = 1 and |q| = dk^-1/2 (eps aside)."""
    q, k, *_ = _inputs(5, 1.0, hk=2, dk=9)
    qq, kk = prepare_qk(q, k, 4)
    assert qq.shape == kk.shape == (4, 5, 9)
    for h in range(4):
        torch.testing.assert_close(kk[h], kk[2 * (h // 2)], rtol=0, atol=0)
        raw = k[0, :, h // 2]  # [N, dk]
        torch.testing.assert_close(kk[h], raw / raw.norm(dim=-1, keepdim=True), rtol=1e-6, atol=0)
    torch.testing.assert_close(qq.norm(dim=-1), torch.full((4, 5), 1 / 3.0, dtype=qq.dtype))


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


def test_two_scalar_tokens_by_hand():
    """One head, d_k = d_v = 1 (unit keys are ±1): k = (1, −1), q = (1, 1), γ_2 = 1/2,
    β = (1/2, 1/4), v = (2, 4); the state and A worked out by hand."""
    q = torch.tensor([[[1.0], [1.0]]], dtype=torch.float64)  # [1, 2, 1]
    k = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    g = torch.tensor([[0.0, math.log(0.5)]], dtype=torch.float64)
    beta = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    a = implicit_attention(q, k, g, beta)[0]
    # A[1,1] = β1 q1 k1 = 0.5;  A[2,2] = β2 q2 k2 = −0.25
    # A[2,1] = β1 q2 γ2 (1 − β2 k2²) k1 = 0.5 · 0.5 · 0.75 = 0.1875 (γ1 never applies to step 1)
    torch.testing.assert_close(a, torch.tensor([[0.5, 0.0], [0.1875, -0.25]]).double())
    # The recurrence by hand: S1 = β1 k1 v1 = 1, o1 = 1; S ← γ2 S1 = 0.5;
    # δ2 = β2 (v2 − S k2) = 0.25 · 4.5 = 1.125; S2 = 0.5 + k2 δ2 = −0.625 = o2
    # and from A: 0.1875 · 2 − 0.25 · 4 = −0.625
    v = torch.tensor([2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(a @ v, torch.tensor([1.0, -0.625], dtype=torch.float64))


def test_orthogonal_keys_without_decay_or_erasure_are_plain_linear_attention():
    """β = 1, g = 0 and orthonormal keys: nothing is erased, A[t, s] = q_t·k_s (s ≤ t)."""
    n = 4
    k = torch.eye(n, dtype=torch.float64)[None]  # [1, N, N]: key t is e_t
    q = torch.randn(1, n, n, dtype=torch.float64)
    ones, zeros = torch.ones(1, n, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64)
    a = implicit_attention(q, k, zeros, ones)[0]
    torch.testing.assert_close(a, (q[0] @ k[0].T).tril(), rtol=0, atol=1e-14)


def test_a_times_v_is_each_linear_layers_kernel_output_in_a_real_model(monkeypatch):
    """A tiny Qwen3_5TextModel (3 linear layers, 1 softmax): the kernel's recorded inputs give
    an ``A`` whose ``A v`` is the kernel's recorded output, on every linear layer."""
    torch.manual_seed(0)
    config = Qwen3_5TextConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
    )
    model = Qwen3_5TextModel(config).eval()
    with torch.no_grad():  # layer 0 remembers far back (g ≈ −1e-3..−0.1); the others decay fast
        model.layers[0].linear_attn.A_log.uniform_(-7.0, -2.5)
    calls = []

    def recorded(query, key, value, g, beta, **kwargs):
        out, state = torch_chunk_gated_delta_rule(query, key, value, g=g, beta=beta, **kwargs)
        calls.append((query, key, value, g, beta, kwargs, out))
        return out, state

    monkeypatch.setattr(modeling_qwen3_5, "torch_chunk_gated_delta_rule", recorded)
    ids = torch.randint(0, config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    assert len(calls) == 3  # one per linear layer
    for query, key, value, g, beta, kwargs, out in calls:
        assert kwargs["use_qk_l2norm_in_kernel"] is True
        assert query.shape == key.shape == (1, 100, 2, 16) and value.shape == (1, 100, 4, 16)
        a = _attention(query, key, g, beta, value.shape[2])  # [Hv, N, N]
        got = a @ value[0].transpose(0, 1).double()  # [Hv, N, dv]
        assert _relative_error(got, out[0].transpose(0, 1)) <= 1e-5
