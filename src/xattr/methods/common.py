"""Pieces the attribution methods share: precision, finiteness checks, the fused pass over
``A ⊙ G^+`` (GLIMPSE step 1 = TMME's layer map), lazy layer maps, and building the result.

Two conventions hold for every method (README, "Methods"):

- **Causal block.** Answer token t is read at row p_t. With causal attention nothing past
  p_t reaches that row, so per token every tensor is cropped to ``[:p_t+1, :p_t+1]``.
- **Causal support of gradients.** ``G_t[l,h][i, j]`` for ``j > i`` is the gradient with
  respect to an attention weight the causal mask holds at zero (autograd still reports
  ``dO_i . V_j`` there); it says nothing about this input. Sums of gradients (GLIMPSE's head
  score denominator, Grad-CAM's head weight) therefore run over ``j <= i`` only. Rows past
  p_t are zero by causality. Together these make the crop exact.

Per-(token, layer) results of the fused pass are memoised on the trace (see
`GradientAttention`), so GLIMPSE, TMME and GLIMPSE sweeps over layer/token settings run on one
trace do that pass once.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace
from .propagation import row_normalize_

# Memoise per-(token, layer) derived maps on traces that cache their gradients. Costs about
# 2/H of the gradient memory; set to False to trade that memory for recomputation.
SHARE_ACROSS_METHODS = True

_MEMOS: dict[int, dict[Any, Any]] = {}

HeadWeightFn = Callable[[Tensor, Tensor], Tensor]  # (mass [H], grad_mass [H]) -> weights [H]


class AttributionWarning(UserWarning):
    """A method fell back to a documented default, or its result is degenerate (all zero)."""


# ------------------------------------------------------------------------ basics
def working_dtype(trace: Trace) -> torch.dtype:
    """float64 for float64 traces, float32 otherwise (half-precision traces are upcast)."""
    return torch.float64 if trace.attentions[0].dtype == torch.float64 else torch.float32


def plain(value: Any) -> Any:
    """OmegaConf lists (from Hydra configs) to plain lists, so hparams stay JSON-able."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


def trace_memo(trace: Trace) -> dict[Any, Any] | None:
    """A per-trace memo for derived maps, or None when the trace does not keep gradients."""
    if not (SHARE_ACROSS_METHODS and trace.cache_gradients):
        return None
    key = id(trace)
    memo = _MEMOS.get(key)
    if memo is None:
        memo = _MEMOS[key] = {}
        weakref.finalize(trace, _MEMOS.pop, key, None)  # dropped with the trace
    return memo


def clear_memo(trace: Trace) -> None:
    """Forget the derived maps memoised for ``trace`` (its gradients stay cached)."""
    _MEMOS.pop(id(trace), None)


def check_finite(x: Tensor, what: str) -> None:
    """Raise ValueError naming ``what`` if ``x`` holds NaN or +-inf (one read-only pass).

    The pass is a matrix-vector product with ones where ``x`` allows (BLAS speed; NaN and
    inf propagate), a plain sum otherwise; a non-finite total is confirmed element-wise
    before raising, since a sum of huge finite values can overflow.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.dtype == acc and x.dim() >= 2 and x.is_contiguous():
        total = (x.view(-1, x.shape[-1]) @ x.new_ones(x.shape[-1])).sum()
    else:
        total = x.sum(dtype=acc)
    if bool(torch.isfinite(total)):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"non-finite values in {what} (fp16 overflow?)")


def check_attentions(trace: Trace, layers: Sequence[int]) -> None:
    """Every selected layer's attention is finite (checked once per trace when memoised)."""
    memo = trace_memo(trace)
    for layer in layers:
        if memo is not None and ("attention_ok", layer) in memo:
            continue
        check_finite(trace.attentions[layer], f"attentions of layer {layer}")
        if memo is not None:
            memo["attention_ok", layer] = True


def causal_mask(n: int, like: Tensor) -> Tensor:
    """The causal support j <= i of an [n, n] block, flattened: [n * n] of 0/1."""
    return torch.ones(n, n, dtype=like.dtype, device=like.device).tril_().reshape(-1)


# ------------------------------------------------------- the A ⊙ G^+ pass (shared)
@dataclass
class LayerPass:
    """One answer token's positive-gradient-weighted attention at one layer, causal block."""

    mass: Tensor | None  # [H] sum(A ⊙ G^+) per head (None: not asked for)
    grad_mass: Tensor | None  # [H] sum(G^+) per head over the causal support
    head_mean: Tensor | None  # [n, n] mean_h A ⊙ G^+ (TMME's layer map)
    fused: Tensor | None = None  # [n, n] rownorm(sum_h w_h A ⊙ G^+), w = requested head weights
    head_weights: Tensor | None = None  # [H] those w


class GradientAttention:
    """``Ahat = A ⊙ G^+`` per (answer token, layer), reduced in one fused pass over the gradient.

    One pass over the causal block (into a reused workspace: never more than one layer's
    [H, n, n] alive, no allocation per layer) yields the per-head sums of ``Ahat`` and ``G^+``,
    the head mean (TMME's map) and, when the caller passes a head-weight function of those
    sums, the row-normalised head mix (GLIMPSE's Abar). Reductions are matrix-vector
    products (BLAS speed). Results are memoised on the trace (`trace_memo`): another method,
    or another setting that keeps the head weights, reuses them; a new head-weight key costs
    one more pass.
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.dtype = working_dtype(trace)
        self._memo = trace_memo(trace)
        self._workspace: Tensor | None = None  # [H * n_max^2], allocated on first use
        self._ones: Tensor | None = None  # [n_max^2]
        self._masks: dict[int, Tensor] = {}
        self._token: tuple[int, Tensor] | None = None  # the answer token whose gradient is held
        self._finite = True  # every layer of the held token's gradient is finite
        trace.prefetch_gradients()  # the methods using this pass visit every answer token

    def layer(
        self,
        t: int,
        layer: int,
        head_weights: HeadWeightFn | None = None,
        key: Any = None,
    ) -> LayerPass:
        """The pass for answer token ``t`` at ``layer``; ``key`` names ``head_weights`` for the memo."""
        memo = self._memo
        base = memo.get(("pass", t, layer)) if memo is not None else None
        if base is not None and head_weights is None:
            return base
        mix = memo.get(("mix", t, layer, key)) if memo is not None else None
        if base is not None and mix is not None:
            return LayerPass(base.mass, base.grad_mass, base.head_mean, *mix)
        result = self._compute(t, layer, head_weights)
        if memo is not None:
            memo["pass", t, layer] = LayerPass(result.mass, result.grad_mass, result.head_mean)
            if head_weights is not None:
                memo["mix", t, layer, key] = (result.fused, result.head_weights)
        return result

    def _compute(self, t: int, layer: int, head_weights: HeadWeightFn | None) -> LayerPass:
        n = int(self.trace.predicting_positions[t]) + 1
        full = self._gradients(t)[layer]  # [H, N, N]
        if not self._finite:  # some layer of this token is not finite: is it this one?
            check_finite(full, f"gradients of answer token {t}, layer {layer}")
        grad = full[:, :n, :n]  # [H, n, n] causal block
        attn = self.trace.attentions[layer][:, :n, :n]  # [H, n, n]
        heads = grad.shape[0]
        if self._workspace is None or self._ones is None:
            n_max = int(self.trace.predicting_positions.max()) + 1
            self._workspace = torch.empty(heads * n_max * n_max, dtype=self.dtype)
            self._ones = torch.ones(n_max * n_max, dtype=self.dtype)
        ahat = self._workspace[: heads * n * n].view(heads, n, n)
        if grad.dtype == self.dtype:
            torch.clamp(grad, min=0, out=ahat)  # G^+
        else:
            ahat.copy_(grad).clamp_(min=0)
        flat = ahat.view(heads, n * n)  # [H, n*n]
        # Per-head sums feed head weights; skipped for TMME alone on an unmemoised trace.
        stats = head_weights is not None or self._memo is not None
        grad_mass = flat @ self._causal_mask(n) if stats else None  # [H] sum of G^+, j <= i
        ahat.mul_(attn)  # Ahat = A ⊙ G^+, in place (zero above the diagonal: A is causal)
        mass = flat @ self._ones[: n * n] if stats else None  # [H] sum of Ahat
        head_mean = None  # TMME's map: skipped for GLIMPSE alone on an unmemoised trace
        if head_weights is None or self._memo is not None:
            head_mean = (flat.new_full((heads,), 1.0 / heads) @ flat).view(n, n)  # [n, n]
        if head_weights is None or mass is None or grad_mass is None:
            return LayerPass(mass, grad_mass, head_mean)
        weights = head_weights(mass, grad_mass).to(self.dtype)  # [H]
        fused = row_normalize_((weights @ flat).view(n, n))  # [n, n], fresh: normalised in place
        return LayerPass(mass, grad_mass, head_mean, fused, weights)

    def _gradients(self, t: int) -> Tensor:
        """Token t's gradients [L, H, N, N], fetched once per token even from a trace that
        recomputes them on every request (cache_gradients=False)."""
        if self._token is None or self._token[0] != t:
            grads = self.trace.token_gradients(t)  # [L, H, N, N]
            try:  # one pass over every layer; per-layer checks only if it fails
                check_finite(grads, f"gradients of answer token {t}")
                self._finite = True
            except ValueError:
                self._finite = False
            self._token = (t, grads)
        return self._token[1]

    def _causal_mask(self, n: int) -> Tensor:
        if n not in self._masks:
            self._masks[n] = causal_mask(n, torch.empty(0, dtype=self.dtype))
        return self._masks[n]


# -------------------------------------------------------------- propagation inputs
class LayerMaps(Sequence[Tensor]):
    """Layer maps built on demand, so a propagation holds one [N, N] map at a time."""

    def __init__(self, layers: Sequence[int], build: Callable[[int], Tensor]) -> None:
        self.layers = list(layers)
        self.build = build

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]
        return self.build(self.layers[index])


def pad_row(row: Tensor, size: int) -> Tensor:
    """A row cropped to the causal block, zero-padded back to the sequence length: [size]."""
    if row.shape[-1] == size:
        return row
    out = row.new_zeros(size)
    out[: row.shape[-1]] = row
    return out


# ---------------------------------------------------------------------- results
def split_grids(trace: Trace, values: Tensor) -> list[Tensor]:
    """Values over V ([..., |V|]) cut into one [..., h, w] map per image, raster order."""
    maps, start = [], 0
    for h, w in trace.grids:
        maps.append(values[..., start : start + h * w].reshape(*values.shape[:-1], h, w))
        start += h * w
    return maps


def make_explanation(
    trace: Trace,
    method: str,
    *,
    visual: Tensor,
    prompt: Tensor,
    token_relevance: Tensor,
    token_mask: Tensor,
    token_visual: Tensor | None = None,
    meta: dict[str, Any] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Explanation:
    """Package vectors over V and P as an Explanation; warn (and flag) an all-zero map.

    ``visual`` [|V|] becomes the first image's [h, w] map (every image's map is in
    ``meta["visual_maps"]`` when there are several); ``transform`` (e.g. a blur) is applied
    to each image's map; ``token_visual`` [T, |V|] becomes ``token_maps`` (first image).
    """
    meta = dict(meta or {})
    maps = split_grids(trace, visual)
    if transform is not None:
        maps = [transform(m) for m in maps]
    empty = not any(bool(m.any()) for m in maps)
    meta["empty_visual_map"] = empty
    if empty:
        warnings.warn(
            f"{method}: the visual map is all zero: no positive relevance on the image tokens "
            "(zero gradients or attention there, or every value clipped at zero by the method's "
            "ReLU); returned as zeros",
            AttributionWarning,
            stacklevel=3,
        )
    if len(maps) > 1:
        meta["visual_maps"] = maps
    token_maps = split_grids(trace, token_visual)[0] if token_visual is not None else None
    return Explanation(
        method=method,
        visual=maps[0],
        answer_tokens=trace.answer_tokens,
        token_relevance=token_relevance,
        prompt_tokens=trace.prompt_tokens,
        prompt_relevance=prompt,
        token_maps=token_maps,
        token_mask=token_mask,
        meta=meta,
    )


def average_rows(
    trace: Trace,
    method: str,
    rows: Tensor,
    token_mask: Tensor,
    *,
    return_token_maps: bool = False,
    meta: dict[str, Any] | None = None,
) -> Explanation:
    """The baselines' sequence-level adaptation (SPEC §3): per-token rows averaged over tokens.

    ``rows`` [T, N] holds each answer token's relevance row read at p_t. The visual map and
    prompt relevance are the means of ``rows[:, V]`` and ``rows[:, P]`` over the selected
    tokens; a token's relevance is its row's total visual mass.
    """
    visual_rows = rows[:, trace.visual_index]  # [T, |V|]
    prompt_rows = rows[:, trace.prompt_index]  # [T, |P|]
    meta = {**(meta or {}), "row_mass": rows.sum(dim=-1)}  # [T]
    return make_explanation(
        trace,
        method,
        visual=visual_rows[token_mask].mean(dim=0),
        prompt=prompt_rows[token_mask].mean(dim=0),
        token_relevance=visual_rows.sum(dim=-1),
        token_mask=token_mask,
        token_visual=visual_rows if return_token_maps else None,
        meta=meta,
    )
