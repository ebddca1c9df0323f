"""The implicit attention of a gated delta-rule layer (Gated DeltaNet, Qwen3.5's linear layers).

Per value head, with the state ``S`` [d_k, d_v], decay ``γ_t = exp(g_t)`` and write strength
``β_t``, the layer decays first and then writes: ``S ← γ_t S``, ``S ← S + β_t k_t (v_t − Sᵀ
k_t)ᵀ``, ``o_t = Sᵀ q_t``; that is ``S_t = γ_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ``.
Unrolled, ``o_t = Σ_{s≤t} A[t, s] v_s`` exactly, with

    A[t, s] = β_s q_tᵀ (M_t M_{t−1} ⋯ M_{s+1}) k_s,   M_r = γ_r (I − β_r k_r k_rᵀ)

(the write of step ``s`` is not decayed by ``γ_s``; ``A[t, t] = β_t q_t·k_t``), and in matrix
form (docs/math.md §6b)

    A = (Q Kᵀ ⊙ Γ ⊙ M) · T⁻¹ · diag(β),   T = I + strict_lower(diag(β) (K Kᵀ ⊙ Γ)),

``Γ[t, s] = exp(G_t − G_s)`` with ``G`` the running sum of ``g``, ``M`` the causal mask
(s ≤ t). ``q``, ``k`` are the kernel's: L2-normalised, ``q`` scaled by ``d_k^-1/2``, repeated
to the value heads (`prepare_qk`).

Cost per head: two ``N × N × d_k`` products and one unit-triangular solve with ``N``
right-hand sides, ``O(N² d_k + N³)`` time and a few ``N × N`` buffers; heads run one at a
time. The log-decay differences are always formed in float64: in float32 ``G_t − G_s``
cancels (``|G|`` reaches thousands at N ≈ 1,300), which alone costs ~1e-4 relative.
"""

from __future__ import annotations

import torch
from torch import Tensor

L2_EPS = 1e-6  # the kernel's L2-norm epsilon


def prepare_qk(query: Tensor, key: Tensor, value_heads: int) -> tuple[Tensor, Tensor]:
    """The kernel's q and k from what the layer passes it ([1, N, Hk, dk] each): repeated to
    the value heads, L2-normalised, q scaled by ``dk^-1/2``: ([Hv, N, dk], [Hv, N, dk])."""
    q, k = (x[0].transpose(0, 1).double() for x in (query, key))  # [Hk, N, dk]
    repeat = value_heads // q.shape[0]  # value head h reads key head h // repeat
    q, k = (x.repeat_interleave(repeat, dim=0) for x in (q, k))  # [Hv, N, dk]
    q, k = (x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2_EPS) for x in (q, k))
    return q * q.shape[-1] ** -0.5, k


def heads_first(x: Tensor) -> Tensor:
    """A per-token, per-head quantity [1, N, H] (g, beta) as [H, N]."""
    return x[0].transpose(0, 1)


def pair_decays(g: Tensor, dtype: torch.dtype) -> Tensor:
    """``Γ`` [N, N] from one head's log decays g [N]: ``exp(G_t − G_s)`` on s ≤ t, 0 above;
    differences in float64 and masked before ``exp`` (``exp(G_t)`` alone underflows)."""
    cum = g.double().cumsum(0)  # [N] G
    diff = cum[:, None] - cum[None, :]  # [N, N] G_t − G_s
    above = torch.ones_like(diff, dtype=torch.bool).triu_(1)
    return diff.masked_fill_(above, float("-inf")).exp_().to(dtype)


def implicit_attention(
    q: Tensor,
    k: Tensor,
    g: Tensor,
    beta: Tensor,
    dtype: torch.dtype = torch.float64,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """``A`` [H, N, N] (module docstring) from q, k [H, N, dk], g, beta [H, N], computed in
    ``dtype`` one head at a time and stored in ``out_dtype`` (default ``dtype``); float32 stays
    within ~5e-6 relative of float64 at N ≈ 1,300."""
    heads, n, _ = q.shape
    out = torch.empty(heads, n, n, dtype=out_dtype or dtype, device=q.device)
    for h in range(heads):
        qh, kh, b = q[h].to(dtype), k[h].to(dtype), beta[h].to(dtype)  # [N, dk], [N, dk], [N]
        decay = pair_decays(g[h], dtype)  # [N, N] Γ ⊙ M
        read = (qh @ kh.T).mul_(decay)  # [N, N] Q Kᵀ ⊙ Γ ⊙ M
        system = (kh @ kh.T).mul_(decay).mul_(b[:, None])  # [N, N] its strict lower part: T − I
        # X T = read, T unit lower-triangular (its diagonal and upper part are not read)
        a = torch.linalg.solve_triangular(system, read, upper=False, left=False, unitriangular=True)
        out[h] = a.mul_(b[None, :])  # [N, N] · diag(β)
    return out
