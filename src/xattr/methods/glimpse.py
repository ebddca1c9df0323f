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
from ..trace import Trace
from .base import Attributor, Needs, register
from .common import (
    AttributionWarning,
    GradientAttention,
    check_attentions,
    make_explanation,
    pad_row,
    plain,
)
from .propagation import propagate_residual, select_layers
from .tokens import clean_token, is_punctuation, select_tokens

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


@register("glimpse")
class Glimpse(Attributor):
    """GLIMPSE: one visual map, one prompt map and per-token relevance for a whole answer."""

    needs = Needs(gradients=True)

    def __init__(
        self,
        *,
        tau_head: float = 0.5,
        head_fusion: str = "adaptive",
        tau_depth: float = 0.2,
        depth_prior: bool = True,
        layer_relevance: bool = True,
        layers: str | int | float | list[int] = "all",
        token_weighting: str = "full",
        token_policy: str = "non_punctuation",
        blur_sigma: float = 0.0,
        relevance_flow: bool = False,
        flow_beta: float = 0.5,
        return_token_maps: bool = False,
        eps: float = 1e-8,
    ) -> None:
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
        if token_weighting not in TOKEN_WEIGHTINGS:
            raise ValueError(
                f"token_weighting must be one of {tuple(TOKEN_WEIGHTINGS)}, got {token_weighting!r}"
            )
        for name, value in (("tau_head", tau_head), ("tau_depth", tau_depth)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {blur_sigma}")
        if not 0.0 <= flow_beta <= 1.0:
            raise ValueError(f"flow_beta must be in [0, 1], got {flow_beta}")
        super().__init__(
            tau_head=tau_head,
            head_fusion=head_fusion,
            tau_depth=tau_depth,
            depth_prior=depth_prior,
            layer_relevance=layer_relevance,
            layers=plain(layers),
            token_weighting=token_weighting,
            token_policy=token_policy,
            blur_sigma=blur_sigma,
            relevance_flow=relevance_flow,
            flow_beta=flow_beta,
            return_token_maps=return_token_maps,
            eps=eps,
        )
        self.tau_head, self.head_fusion, self.eps = tau_head, head_fusion, eps
        self.tau_depth, self.depth_prior = tau_depth, depth_prior
        self.layer_relevance, self.layers = layer_relevance, plain(layers)
        self.token_weighting, self.token_policy = token_weighting, token_policy
        self.blur_sigma, self.return_token_maps = blur_sigma, return_token_maps
        self.relevance_flow, self.flow_beta = relevance_flow, flow_beta

    # ------------------------------------------------------------------ steps 1-7
    def head_weights(self, mass: Tensor, grad_mass: Tensor) -> Tensor:
        """Step 2: ``w = softmax(s / tau_head)``, ``s = sum(Ahat) / (sum(G^+) + eps)``: [H]."""
        if self.head_fusion == "mean":  # ablation "simple average"
            return torch.full_like(mass, 1.0 / mass.numel())
        scores = mass / (grad_mass + self.eps)  # [H] E_{G^+}[A] per head (paper Eq. 7)
        return torch.softmax(scores / self.tau_head, dim=0)

    @property
    def _fusion_key(self) -> tuple:
        """What the head weights depend on: the memo key of the fused maps."""
        if self.head_fusion == "mean":
            return ("glimpse", "mean")
        return ("glimpse", "adaptive", self.tau_head, self.eps)

    def layer_weights(
        self, evidence: Tensor, layers: list[int], num_layers: int
    ) -> dict[str, Tensor]:
        """Steps 4-6: layer evidence g, depth prior d and ``lam = g d / sum(g d)`` over ``layers``."""
        ones = torch.full_like(evidence, 1.0 / len(layers))
        total = evidence.sum()
        if not self.layer_relevance:
            g = ones  # ablation "w/o layer relevance"
        elif total > 0:
            g = evidence / total  # step 4: ||sum_h Ahat[l,h]||_1, normalised
        else:
            g = torch.zeros_like(evidence)  # no positive gradient-weighted attention anywhere
        depth = torch.tensor([(layer + 1) / num_layers for layer in layers], dtype=evidence.dtype)
        # step 5: exp((l/L)/tau) normalised, as a softmax (no overflow at small tau)
        d = torch.softmax(depth / self.tau_depth, dim=0) if self.depth_prior else ones
        joint = g * d
        lam = joint / joint.sum() if joint.sum() > 0 else torch.zeros_like(joint)  # step 6
        return {"evidence": g, "depth": d, "lam": lam}

    def token_row(
        self, trace: Trace, attention: GradientAttention, t: int, layers: list[int]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Steps 1-7 for answer token t: its relevance row ``r_t = R[p_t, :]`` (full length): [N]."""
        fused, evidence, head_weights = [], [], []
        for layer in layers:
            # Steps 1-3 in one fused pass over the gradient (common.GradientAttention):
            #   1. Ahat[l,h] = A[l,h] ⊙ G[l,h]^+ on the causal block [:p_t+1, :p_t+1]
            #   2. w[l,:] = self.head_weights(per-head sums of Ahat and G^+)
            #   3. Abar[l] = rownorm(sum_h w[l,h] Ahat[l,h]); zero rows stay zero
            step = attention.layer(t, layer, self.head_weights, key=self._fusion_key)
            fused.append(step.fused)  # [p_t + 1, p_t + 1]
            # Step 4 (raw): ||sum_h Ahat[l,h]||_1 = its total mass, since Ahat >= 0.
            assert step.mass is not None  # always computed when head weights are asked for
            evidence.append(step.mass.sum())
            head_weights.append(step.head_weights)
        weights = self.layer_weights(torch.stack(evidence), layers, trace.num_layers)  # 4-6
        p = int(trace.predicting_positions[t])
        # Step 7: r_t = row p_t of prod_l (I + lam_l Abar_l), as a row vector, top layer first.
        row = propagate_residual(fused, p, weights["lam"])  # [p_t + 1]
        info = {**weights, "heads": torch.stack(head_weights)}
        return pad_row(row, trace.seq_len), info

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

    def attribute(self, trace: Trace) -> Explanation:
        """Run GLIMPSE on ``trace`` (SPEC §2 steps 1-12)."""
        layers = select_layers(trace.num_layers, self.layers)
        mask = select_tokens(trace, self.token_policy)  # step 12: drop punctuation
        check_attentions(trace, layers)
        attention = GradientAttention(trace)

        # Steps 1-7, per answer token (every token, so that each has a relevance score).
        rows, infos = [], []
        for t in range(trace.num_answer_tokens):
            row, info = self.token_row(trace, attention, t, layers)
            rows.append(row)
            infos.append(info)
        R = torch.stack(rows)  # [T, N] r_t = R_t[p_t, :]
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
        token_relevance = rho
        if self.relevance_flow:
            token_relevance = self._flow(trace, R, rho)

        meta: dict[str, Any] = {
            "layers": layers,
            "head_weights": torch.stack([i["heads"] for i in infos]),  # [T, L', H]
            "layer_weights": torch.stack([i["lam"] for i in infos]),  # [T, L'] lam
            "layer_evidence": torch.stack([i["evidence"] for i in infos]),  # [T, L'] g
            "depth_prior": infos[0]["depth"],  # [L'] d
            "prompt_alignment": a_prompt,
            "visual_alignment": a_visual,
            "visual_token_weights": w_visual,
            "prompt_token_weights": w_prompt,
            "confidence": confidence,
            "rho": rho,
        }
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


def content_links(tokens: list[str]) -> list[int | None]:
    """For each answer token: the content word a function word links to (next answer token
    that is neither a function word nor punctuation), or None (content word, or no such token)."""
    function = [clean_token(tok).lower() in FUNCTION_WORDS for tok in tokens]
    content = [not f and not is_punctuation(tok) for f, tok in zip(function, tokens)]
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
