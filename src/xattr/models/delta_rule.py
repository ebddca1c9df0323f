"""The implicit attention of a gated delta-rule layer (Gated DeltaNet, Qwen3.5's linear layers).

Per value head, with the state ``S`` [d_k, d_v], decay ``γ_t = exp(g_t)`` and write strength
``β_t``, the layer computes ``S_t = γ_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`` and
``o_t = S_tᵀ q_t``. Unrolled, ``o_t = Σ_{s≤t} A[t, s] v_s`` with

    A[t, s] = β_s q_tᵀ (Π_{r=s+1..t} γ_r (I − β_r k_r k_rᵀ)) k_s      (r = t on the left)

and in matrix form (docs/math.md, "Linear-attention layers")

    A = (Q Kᵀ ⊙ Γ ⊙ M) · T⁻¹ · diag(β),   T = I + strict_lower(diag(β) K Kᵀ ⊙ Γ),

``Γ[t, s] = exp(Σ_{r=s+1..t} g_r)``, ``M`` the causal mask (s ≤ t). ``q``, ``k`` are the
kernel's: L2-normalised, ``q`` scaled by ``d_k^-1/2``, repeated to the value heads.
Cost per head: two ``N × N × d_k`` products and one unit-triangular solve, ``O(N³)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

L2_EPS = 1e-6  # the kernel's L2-norm epsilon


def prepare_qk(query: Tensor, key: Tensor, value_heads: int) -> tuple[Tensor, Tensor]:
    """The kernel's q and k from what the layer passes it ([1, N, Hk, dk] each): repeated to
    the value heads, L2-normalised, q scaled by ``dk^-1/2``: ([Hv, N, dk], [Hv, N, dk])."""
    q, k = (x[0].transpose(0, 1).double() for x in (query, key))  # [Hk, N, dk]
    repeat = value_heads // q.shape[0]
    q, k = (x.repeat_interleave(repeat, dim=0) for x in (q, k))
    q, k = (x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2_EPS) for x in (q, k))
    return q * q.shape[-1] ** -0.5, k


def heads_first(x: Tensor) -> Tensor:
    """A per-token, per-head quantity [1, N, H] as [H, N]."""
    return x[0].transpose(0, 1)


def implicit_attention(
    q: Tensor, k: Tensor, g: Tensor, beta: Tensor, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``A`` [H, N, N] (module docstring) from q, k [H, N, dk], g, beta [H, N], in ``dtype``
    (computed in float64, one head at a time, then cast)."""
    heads, n, _ = q.shape
    out = torch.empty(heads, n, n, dtype=dtype, device=q.device)
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril_()
    for h in range(heads):
        qh, kh = q[h].double(), k[h].double()  # [N, dk]
        cum = g[h].double().cumsum(0)  # [N]
        # Γ[t, s] = exp(G_t − G_s) on s ≤ t: the difference first (G alone underflows)
        decay = (cum[:, None] - cum[None, :]).masked_fill_(~causal, float("-inf")).exp_()
        read = (qh @ kh.T).mul_(decay)  # [N, N] Q Kᵀ ⊙ Γ ⊙ M
        b = beta[h].double()
        system = (kh @ kh.T).mul_(decay).mul_(b[:, None])  # its strict lower part is T − I
        a = torch.linalg.solve_triangular(system, read, upper=False, left=False, unitriangular=True)
        out[h] = a.mul_(b[None, :])  # · diag(β)
    return out
