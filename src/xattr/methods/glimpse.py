"""GLIMPSE (SPEC §2): gradient-weighted attention, adaptive head fusion, depth-weighted
propagation and cross-modal token weighting, aggregated over the whole answer.

`Glimpse.attribute` follows SPEC §2 step by step; the comments name the steps. Choices that
are ours rather than the paper's (README, "GLIMPSE"):

- Depth prior (step 5) positions are the model's layer numbers: ``d[l] = exp((l/L)/tau_depth)``
  with ``l = 1..L`` the layer's 1-based index in the whole model and ``L`` the model's layer
  count, also when propagating through a subset; normalised over the selected layers.
- Gradient sums run over the causal support ``j <= i`` (see `common`).
- Token weights (step 8) are normalised over the aggregated tokens (``token_mask``). The
  ``token_weighting`` ablations drop the same factor from both maps: "no_prompt" drops the
  cross-modal alignment (``aP`` for the visual map, ``aV`` for the prompt map), "no_confidence"
  drops ``c_t``, "none" drops both. If every weight is zero (e.g. no prompt relevance at all)
  the weights fall back to uniform, with an `AttributionWarning`.
- Relevance flow (step 11): function words come from `FUNCTION_WORDS`; the content word a
  function word links to is the next answer token that is neither a function word nor
  punctuation. See `relevance_flow`.
- Blur (step 12) is a normalised Gaussian convolution of each image's final map in token-grid
  units (edges are not darkened); token maps are not blurred.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace, pad_heads
from .base import AttributionWarning, hparam, non_negative, positive, unit_interval
from .kinds import KIND_RULE, is_kind_spec, layers_for
from .packaging import make_explanation, pad_row
from .propagation import is_layer_subset, row_normalize_
from .sweep import POSITIVE_SUM, WEIGHTED, GradientConsumer, LayerStep, StreamingAttributor
from .tokens import POLICIES, clean_token, policy_needs, punctuation_mask, select_tokens

# Step 8 ablations (paper Table 3): token_weighting -> (use alignment, use confidence).
TOKEN_WEIGHTINGS = {
    "full": (True, True),
    "no_prompt": (False, True),
    "no_confidence": (True, False),
    "none": (False, False),
}
HEAD_FUSIONS = ("adaptive", "mean")

# Step 11: English function words whose relevance flows to the content word they link to.
FUNCTION_WORDS = frozenset(
    (  # noqa: SIM905 (a word list reads better as text)
        "a an the this that these those some any each every no "
        "is are was were be been being am do does did has have had having will would shall "
        "should can could may might must "
        "of in on at to for from by with about as into onto over under above below between "
        "through during before after near off out up down upon within without against among "
        "and or but nor so yet if then than because while although though whereas "
        "it its it's he him his she her hers they them their theirs we us our you your i me my "
        "who whom whose which what where when why how there here not also very just too"
    ).split()
)


class Glimpse(StreamingAttributor, name="glimpse"):
    """GLIMPSE: one visual map, one prompt map and per-token relevance for a whole answer."""

    contrastive = True

    tau_head: float = hparam(0.5, check=positive, doc="head-fusion softmax temperature")
    head_fusion: str = hparam(
        "adaptive", choices=HEAD_FUSIONS, doc='"mean": the simple-average ablation'
    )
    tau_depth: float = hparam(0.2, check=positive, doc="depth-prior temperature")
    depth_prior: bool = hparam(True, doc='false: "w/o depth weighting"')
    layer_relevance: bool = hparam(True, doc='false: "w/o layer relevance"')
    layers: Any = hparam(
        "all",
        check=is_layer_subset,
        doc="layer subset",
    )
    layer_kinds: Any = hparam("all", check=is_kind_spec, rule=KIND_RULE, doc="layer kinds read")
    token_weighting: str = hparam(
        "full", choices=TOKEN_WEIGHTINGS, doc="which factors weight the tokens (paper Table 3)"
    )
    token_policy: str = hparam(
        "non_punctuation", choices=POLICIES, needs=policy_needs, doc="answer tokens aggregated"
    )
    blur_sigma: float = hparam(
        0.0,
        check=non_negative,
        doc="Gaussian blur of the final map, in grid cells",
    )
    relevance_flow: bool = hparam(
        False, doc="redistribute token relevance from function words (display only)"
    )
    flow_beta: float = hparam(0.5, check=unit_interval)
    return_token_maps: bool = hparam(False, doc="keep every answer token's own map")
    return_layer_maps: bool = hparam(False, doc="keep each layer's share of the map")
    eps: float = hparam(1e-8, check=positive)

    # ------------------------------------------------------------------ steps 1-7
    def head_weights(self, mass: Tensor, grad_mass: Tensor) -> Tensor:
        """Step 2: ``w = softmax(s / tau_head)``, ``s = sum(Ahat) / (sum(G^+) + eps)``: [.., H]."""
        if self.head_fusion == "mean":  # ablation "simple average"
            return torch.full_like(mass, 1.0 / mass.shape[-1])
        scores = mass / (grad_mass + self.eps)  # [.., H] E_{G^+}[A] per head (paper Eq. 7)
        return torch.softmax(scores / self.tau_head, dim=-1)

    def layer_weights(
        self, evidence: Tensor, layers: list[int], num_layers: int
    ) -> dict[str, Tensor]:
        """Steps 4-6: layer evidence g, depth prior d, ``lam = g d / sum(g d)``: [.., K] each."""
        ones = torch.full_like(evidence, 1.0 / len(layers))
        total = evidence.sum(dim=-1, keepdim=True)
        if not self.layer_relevance:
            g = ones  # ablation "w/o layer relevance"
        else:  # step 4: ||sum_h Ahat[l,h]||_1, normalised (all zero: no evidence anywhere)
            g = torch.where(
                total > 0, evidence / total.clamp_min(torch.finfo(evidence.dtype).tiny), 0.0
            )
        depth = torch.tensor(
            [(layer + 1) / num_layers for layer in layers],
            dtype=evidence.dtype,
            device=evidence.device,
        )
        # step 5: exp((l/L)/tau) normalised, as a softmax (no overflow at small tau)
        if self.depth_prior:
            d = torch.softmax(depth / self.tau_depth, dim=0)
        else:
            d = torch.full_like(depth, 1.0 / len(layers))
        joint = g * d
        norm = joint.sum(dim=-1, keepdim=True)
        lam = torch.where(norm > 0, joint / norm.clamp_min(torch.finfo(joint.dtype).tiny), 0.0)
        return {"evidence": g, "depth": d, "lam": lam}  # step 6

    def consumer(self, trace: Trace) -> GlimpseConsumer:
        return GlimpseConsumer(self, trace)

    # ------------------------------------------------------------------ steps 8-12
    def token_weights(
        self, confidence: Tensor, alignment: Tensor, mask: Tensor, which: str
    ) -> Tensor:
        """Step 8: ``w_t = c_t * alignment_t`` (or its ablation), L1-normalised over ``mask``: [T]."""
        use_alignment, use_confidence = TOKEN_WEIGHTINGS[self.token_weighting]
        w = mask.to(alignment.dtype)
        if use_confidence:
            w = w * confidence
        if use_alignment:
            w = w * alignment
        total = w.sum()
        if total > 0:
            return w / total
        warnings.warn(
            f"glimpse: every {which}-map token weight is zero (no token has "
            f"{'prompt' if which == 'visual' else 'visual'} relevance or confidence); "
            "weighting the aggregated tokens uniformly",
            AttributionWarning,
            stacklevel=3,
        )
        return mask.to(alignment.dtype) / mask.sum()

    def aggregate(
        self, trace: Trace, R: Tensor, info: dict[str, Tensor], deltas: Tensor | None
    ) -> Explanation:
        """Steps 8-12 from the token rows ``R`` [T, N] (r_t = R_t[p_t, :])."""
        mask = select_tokens(trace, self.token_policy)  # step 12: drop punctuation
        visual_rows = R[:, trace.visual_index]  # [T, |V|] r_t[V]
        prompt_rows = R[:, trace.prompt_index]  # [T, |P|] r_t[P]

        # Step 8: alignment and token weights (each map is weighted by the *other* modality).
        a_prompt = prompt_rows.sum(dim=-1)  # [T] aP_t
        a_visual = visual_rows.sum(dim=-1)  # [T] aV_t
        confidence = trace.confidences.to(R.dtype)  # [T] c_t
        w_visual = self.token_weights(confidence, a_prompt, mask, "visual")  # wV_t ~ c_t aP_t
        w_prompt = self.token_weights(confidence, a_visual, mask, "prompt")  # wP_t ~ c_t aV_t

        # Step 9: joint token relevance.
        rho = a_prompt * a_visual  # [T]

        # Step 10: holistic maps.
        s_visual = w_visual @ visual_rows  # [|V|]
        s_prompt = w_prompt @ prompt_rows  # [|P|]

        # Step 11 (display only): relevance-flow redistribution of rho.
        token_relevance = self._flow(trace, R, rho) if self.relevance_flow else rho

        meta: dict[str, Any] = {
            "layers": info["layers"],
            "head_weights": info["heads"],  # [T, L', H]
            "layer_weights": info["lam"],  # [T, L'] lam
            "layer_evidence": info["evidence"],  # [T, L'] g
            "depth_prior": info["depth"],  # [L'] d
            "prompt_alignment": a_prompt,
            "visual_alignment": a_visual,
            "visual_token_weights": w_visual,
            "prompt_token_weights": w_prompt,
            "confidence": confidence,
            "rho": rho,
        }
        # layer l's share of the map: sum_t wV_t Delta_{t,l}[V]; the shares add up to the map
        layer_visual = None
        if deltas is not None:
            layer_visual = torch.einsum("t,tkv->kv", w_visual, deltas[..., trace.visual_index])
        # Step 12: optional light blur of the final map(s).
        blur = None
        if self.blur_sigma > 0:
            blur = lambda grid: gaussian_blur(grid, self.blur_sigma)  # noqa: E731
        return make_explanation(
            trace,
            "glimpse",
            visual=s_visual,
            prompt=s_prompt,
            token_relevance=token_relevance,
            token_mask=mask,
            token_visual=visual_rows if self.return_token_maps else None,
            layer_visual=layer_visual,
            meta=meta,
            transform=blur,
        )

    def _flow(self, trace: Trace, R: Tensor, rho: Tensor) -> Tensor:
        if trace.tokens is None:
            warnings.warn(
                "glimpse: relevance_flow needs token strings to find function words; "
                "the trace has none, so token relevance is not redistributed",
                AttributionWarning,
                stacklevel=3,
            )
            return rho
        at_answers = R[:, trace.answer_positions]  # [T, T] r_i[s_k]
        return relevance_flow(at_answers, rho, content_links(trace.answer_tokens), self.flow_beta)


class GlimpseConsumer(GradientConsumer):
    """Steps 1-7 per chunk of answer tokens: fused maps per layer, then the propagation."""

    wants = frozenset({POSITIVE_SUM, WEIGHTED})

    def __init__(self, method: Glimpse, trace: Trace) -> None:
        self.method, self.trace = method, trace
        self.layers = layers_for(trace, method.layers, method.layer_kinds, "glimpse")
        self.done: dict[str, list[Tensor]] = {"rows": [], "heads": [], "lam": [], "evidence": []}
        self.deltas: list[Tensor] = []
        self.depth: Tensor | None = None

    def bytes_per_token(self, n: int) -> int:
        return len(self.layers) * n * n * 4  # the fused map of every layer until the chunk ends

    def begin_chunk(self, tokens: list[int], positions: Tensor, n: int) -> None:
        self.positions, self.n = positions, n
        k = len(self.layers)
        self.fused: list[Tensor] = [None] * k  # type: ignore[list-item]  # [c, n, n] Abar
        self.mass: list[Tensor] = [None] * k  # type: ignore[list-item]  # [c] raw evidence
        self.head_w: list[Tensor] = [None] * k  # type: ignore[list-item]  # [c, H]

    def visit(self, step: LayerStep) -> None:
        # Steps 1-3 on the chunk's block [:n, :n] (the shared A ⊙ G^+ pass of `sweep`):
        #   1. Ahat[l,h] = A[l,h] ⊙ G[l,h]^+
        #   2. w[l,:] = head_weights(per-head sums of Ahat and of G^+ over the support)
        #   3. Abar[l] = rownorm(sum_h w[l,h] Ahat[l,h]); zero rows stay zero
        assert step.weighted is not None and step.weighted_sum is not None
        c, heads, n, _ = step.weighted.shape
        w = self.method.head_weights(step.weighted_sum, step.positive_support_sum)  # [c, H]
        fused = torch.bmm(w[:, None, :], step.weighted.view(c, heads, n * n)).view(c, n, n)
        k = self.layers.index(step.layer)
        self.fused[k] = row_normalize_(fused)
        # Step 4 (raw): ||sum_h Ahat[l,h]||_1 = its total mass, since Ahat >= 0.
        self.mass[k] = step.weighted_sum.sum(dim=-1)  # [c]
        self.head_w[k] = w

    def end_chunk(self) -> None:
        home = self.fused[-1].device
        evidence = torch.stack([m.to(home) for m in self.mass], dim=-1)  # [c, K]
        weights = self.method.layer_weights(evidence, self.layers, self.trace.num_layers)  # 4-6
        lam = weights["lam"]  # [c, K]
        # Step 7: r_t = row p_t of prod_l (I + lam_l Abar_l), as row vectors, top layer first.
        c = lam.shape[0]
        v = torch.zeros(c, self.n, dtype=lam.dtype, device=home)
        v[torch.arange(c, device=home), self.positions.to(home)] = 1.0
        deltas: list[Tensor] = []
        for k in range(len(self.layers) - 1, -1, -1):
            fused = self.fused[k]
            v = v.to(fused.device)
            delta = lam[:, k, None].to(v.device) * torch.bmm(v[:, None, :], fused)[:, 0]  # [c, n]
            v = v + delta
            if self.method.return_layer_maps:
                deltas.append(delta.to(home))
            self.fused[k] = None  # type: ignore[call-overload]  # free as we go
        self.done["rows"].append(pad_row(v.to(home), self.trace.seq_len).cpu())
        heads = self.trace.num_heads  # a layer with fewer heads (hybrid models): NaN past its own
        padded = [pad_heads(w.to(home), heads, 1, math.nan) for w in self.head_w]
        self.done["heads"].append(torch.stack(padded, dim=1).cpu())  # [c, K, H]
        self.done["lam"].append(lam.cpu())
        self.done["evidence"].append(weights["evidence"].cpu())
        if deltas:  # [c, K, N] in input-to-output layer order
            self.deltas.append(pad_row(torch.stack(deltas[::-1], dim=1), self.trace.seq_len).cpu())
        self.depth = weights["depth"].cpu()

    def result(self) -> Explanation:
        assert self.depth is not None
        info: dict[str, Any] = {k: torch.cat(v) for k, v in self.done.items()}
        info.update(layers=self.layers, depth=self.depth)
        deltas = torch.cat(self.deltas) if self.deltas else None
        return self.method.aggregate(self.trace, info.pop("rows"), info, deltas)


def content_links(tokens: list[str]) -> list[int | None]:
    """For each answer token: the content word a function word links to (next answer token
    that is neither a function word nor punctuation), or None (content word, or no such token)."""
    function = [clean_token(tok).lower() in FUNCTION_WORDS for tok in tokens]
    content = [
        not f and not p and bool(clean_token(tok))
        for f, p, tok in zip(function, punctuation_mask(tokens), tokens)
    ]
    links: list[int | None] = []
    for j, is_function in enumerate(function):
        target = next((k for k in range(j + 1, len(tokens)) if content[k]), None)
        links.append(target if is_function else None)
    return links


def relevance_flow(at_answers: Tensor, rho: Tensor, links: list[int | None], beta: float) -> Tensor:
    """Step 11 (our reading of paper Eqs. 21-22): move relevance from function words to content.

    ``at_answers[i, k] = r_i[s_k]``. Influence ``I[i,j] = r_i[s_j] / sum_{k<i} r_i[s_k]`` for
    ``j < i``; flow ``F[i,j] = I[i,j] rho_i``. A function word j with a link c(j) hands
    ``beta * sum_i F[i,j]`` (the relevance later tokens route through it) to c(j). Negative
    remainders are clipped to 0 and the result is rescaled to the original total ``sum(rho)``,
    so scores with and without flow are comparable: [T].
    """
    n = rho.numel()
    earlier = torch.ones(n, n, dtype=rho.dtype).tril(diagonal=-1)  # [i, j] = 1 for j < i
    inflow = at_answers * earlier  # r_i[s_j], j < i
    budget = inflow.sum(dim=-1, keepdim=True)  # [T, 1] sum_{k<i} r_i[s_k]
    tiny = torch.finfo(rho.dtype).tiny
    influence = torch.where(budget > 0, inflow / budget.clamp_min(tiny), 0.0)  # I[i, j]
    received = (influence * rho[:, None]).sum(dim=0)  # [T] sum_i F[i, j]
    out = rho.clone()
    for j, target in enumerate(links):
        if target is not None:
            moved = beta * received[j]
            out[j] -= moved
            out[target] += moved
    out = out.clamp_min(0.0)
    total = out.sum()
    return out * (rho.sum() / total) if total > 0 else out


def gaussian_blur(grid: Tensor, sigma: float) -> Tensor:
    """Normalised Gaussian blur of an [h, w] map, sigma in grid cells (edges not darkened)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=grid.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))  # [K]

    def smooth(m: Tensor) -> Tensor:  # separable, zero padding
        x = F.conv2d(m[None, None], kernel.view(1, 1, 1, -1), padding=(0, radius))
        return F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))[0, 0]

    return smooth(grid) / smooth(torch.ones_like(grid))
