"""DEX-AR (SPEC §4): layer-wise logit-lens gradients w.r.t. each layer's own attention,
dynamic head filtering and sequence-level filtering of linguistic tokens.

For answer token t (predicted at p_t) and each of the last K layers l (default 10, clipped
to L), the logit-lens logit ``z_t^l = lm_head(final_norm(h_l[p_t]))[y_t]`` is differentiated
w.r.t. that layer's attention ``A[l]`` only (one VJP per (layer, token), batched over tokens;
each runs back from ``h_l`` into layer l alone). With ``G^+ = relu(d z_t^l / d A[l])`` (not
multiplied by A), per head:

- ``S_img = max_{j in V} G^+[p_t, j]``, ``S_txt = max_{j in P ∪ G, j < p_t} G^+[p_t, j]``
  (P: the trace's ``prompt_index``; G: its answer positions; an empty set gives 0);
- head weight ``w = relu(S_img - S_txt)`` (dynamic head filtering);
- token map ``m_t = sum_{l,h} w * minmax(G^+[p_t, V])`` (min-max over V; a constant row is 0);
- sequence filter ``delta_t = relu(max_{l,h} S_img - max_{l,h} S_txt)``; sentence map
  ``sum_t delta_t * m_t``. Tokens with ``delta_t = 0`` are "linguistic": they drop out and are
  listed in ``meta["linguistic_tokens"]`` (indices) and left out of ``token_mask``.

Which hidden state is the output of layer l (verified in transformers 5.23 and 5.25 for Qwen2-VL,
Qwen2.5-VL and LLaVA/Llama): ``out.hidden_states`` has L+1 entries; entry 0 is the input
embeddings and entry l (1..L) is the output of decoder layer l, except that the **last entry
already has the final norm applied** (``capture_outputs`` replaces it with
``last_hidden_state``). So layers l < L are read with ``lm_head(final_norm(.))`` (`trace.readout`)
and the last one with ``lm_head`` alone (`ModelAdapter.unembed`), which reproduces the model's
logits. Which convention holds is checked at run time against the captured logits of the
produced tokens and recorded in ``meta["last_hidden_normed"]``.

Choices that are ours: ``token_policy`` (default "all") further restricts the tokens that
enter the sentence map; the prompt relevance is not defined by DEX-AR and is left empty.
Cost: the trace's one forward pass plus K x T short VJPs (``meta["backward_passes"]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace, TraceError, pad_heads
from ..vjp import batched_vjp
from .base import AttributionWarning, Attributor, Needs, hparam, positive
from .kinds import refuse_layer_subset, refuse_visual_prefix
from .packaging import make_explanation
from .tokens import POLICIES, policy_needs, register_policy, select_tokens

NEEDS = Needs(gradients=True, hidden_states=True)


@dataclass
class DexarStats:
    """DEX-AR's per-token quantities for one trace (K selected layers, H heads)."""

    layers: list[int]  # 0-based model layers, input to output
    token_maps: Tensor  # [T, |V|] m_t
    delta: Tensor  # [T] delta_t
    head_weights: Tensor  # [T, K, H] w
    s_img: Tensor  # [T, K, H]
    s_txt: Tensor  # [T, K, H]
    last_hidden_normed: bool | None = None
    backward_passes: int = 0


def dexar_maps(rows: Tensor, visual_index: Tensor, text_mask: Tensor) -> DexarStats:
    """DEX-AR's formulas from gradient rows ``d z_t^l / d A[l][h, p_t, :]``.

    ``rows`` [T, K, H, N] (not rectified); ``text_mask`` [T, N] bool marks P ∪ G positions
    ``j < p_t`` for each token.
    """
    g = rows.clamp(min=0)  # G^+ [T, K, H, N]
    gv = g[..., visual_index]  # [T, K, H, |V|]
    s_img = gv.amax(dim=-1)  # [T, K, H]
    # G^+ >= 0, so zeroing the other positions leaves the max over the set (0 when empty)
    s_txt = (g * text_mask[:, None, None, :].to(g.dtype)).amax(dim=-1)  # [T, K, H]
    w = (s_img - s_txt).clamp(min=0)  # dynamic head filtering [T, K, H]
    low = gv.amin(dim=-1, keepdim=True)  # [T, K, H, 1]
    span = s_img[..., None] - low
    scaled = torch.where(span > 0, (gv - low) / span.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
    token_maps = (w[..., None] * scaled).sum(dim=(1, 2))  # [T, |V|]
    delta = (s_img.amax(dim=(1, 2)) - s_txt.amax(dim=(1, 2))).clamp(min=0)  # [T]
    return DexarStats([], token_maps, delta, w, s_img, s_txt)


def text_positions_mask(trace: Trace) -> Tensor:
    """[T, N] bool: the positions of P ∪ G before each token's predicting position p_t."""
    text = torch.zeros(trace.seq_len, dtype=torch.bool)
    text[trace.prompt_index] = True
    text[trace.answer_positions] = True
    before = torch.arange(trace.seq_len)[None, :] < trace.predicting_positions[:, None]  # [T, N]
    return text[None, :] & before


def last_k_layers(num_layers: int, last_k: int) -> list[int]:
    """The last ``last_k`` layers (clipped to the model's), 0-based, input to output."""
    if last_k < 1:
        raise ValueError(f"last_k must be >= 1, got {last_k}")
    return list(range(max(0, num_layers - last_k), num_layers))


def dexar_stats(trace: Trace, last_k: int = 10, batch_vjp: int = 8) -> DexarStats:
    """DEX-AR's per-token maps and filters for ``trace`` (memoised on the trace)."""
    layers = last_k_layers(trace.num_layers, last_k)
    key = ("dexar", tuple(layers))
    if key not in trace.memo:
        rows, normed = logit_lens_rows(trace, layers, batch_vjp)
        stats = dexar_maps(rows, trace.visual_index, text_positions_mask(trace))
        stats.layers, stats.last_hidden_normed = layers, normed
        stats.backward_passes = len(layers) * trace.num_answer_tokens
        trace.memo[key] = stats
    return trace.memo[key]


@register_policy("dexar", needs=Needs(attentions=False, gradients=True, hidden_states=True))
def _dexar_policy(trace: Trace, last_k: int = 10, **_: Any) -> tuple[Tensor, Tensor]:
    """DEX-AR's sequence filter as a token policy: keep t if delta_t > 0."""
    keep = dexar_stats(trace, last_k=last_k).delta > 0
    return keep, torch.zeros_like(keep)


def logit_lens_rows(trace: Trace, layers: Sequence[int], batch_vjp: int = 8) -> tuple[Tensor, bool]:
    """Rows ``d z_t^l / d A[l][:, p_t, :]`` for every answer token and listed layer: [T, K, H, N].

    The logit lens at layer l reaches that layer's attention through its output o only at
    row p_t, so each row is ``(d z_t^l / d o[p_t]) V^T`` per head (o = A V). Also returns
    whether the last hidden state already had the final norm applied.
    """
    refuse_visual_prefix(trace, "dexar")
    refuse_layer_subset(trace, "dexar")
    graph = trace.graph
    if graph is None or not graph.get("outputs"):
        raise TraceError("dexar needs the capture graph: capture the trace with gradients=True")
    hidden = graph.get("hidden_states") or []
    if len(hidden) != trace.num_layers + 1:
        raise TraceError(
            "dexar needs the hidden states in the graph: capture the trace with "
            f"gradients=True and hidden_states=True (got {len(hidden)} of {trace.num_layers + 1})"
        )
    if trace.input_ids is None or trace.readout is None:
        raise TraceError(
            "dexar needs the trace's input_ids and readout (capture with hidden_states=True)"
        )
    positions = trace.predicting_positions  # [T]
    y = trace.input_ids[trace.answer_positions]  # [T]
    readout_mid, readout_last, normed = _lens_readouts(trace)
    n_tok, step = trace.num_answer_tokens, max(1, batch_vjp)
    rows = []
    with torch.enable_grad():
        for layer in layers:
            out, value = (
                graph["outputs"][layer],
                graph["values"][layer],
            )  # [1, N, H, d], [1, Hkv, N, d]
            pos = positions.to(out.device)
            h = _unbatch(hidden[layer + 1])[pos.to(hidden[layer + 1].device)]  # [T, D] at p_t
            readout = readout_last if layer == trace.num_layers - 1 else readout_mid
            z = readout(h).float()  # [T, vocab]
            z = z[torch.arange(n_tok, device=z.device), y.to(z.device)]  # [T] z_t^l
            v = value[0].detach().float()  # [Hkv, N, d]
            v = v.repeat_interleave(out.shape[2] // v.shape[0], dim=0)  # [H, N, d]
            per_layer = []
            for start in range(0, n_tok, step):
                part = list(range(start, min(n_tok, start + step)))
                (d_out,) = batched_vjp(z, [out], part)  # [c, 1, N, H, d]
                index = torch.arange(len(part), device=out.device)
                at_p = d_out[index, 0, pos[part]].float()  # [c, H, d]
                per_layer.append(torch.einsum("chd,hnd->chn", at_p, v))  # [c, H, N]
            rows.append(torch.cat(per_layer).to(trace.device))
    heads = max(r.shape[1] for r in rows)  # a layer with fewer heads: zero rows, no weight
    return torch.stack([pad_heads(r, heads, 1) for r in rows], dim=1).cpu(), normed  # [T, K, H, N]


def _lens_readouts(
    trace: Trace,
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], bool]:
    """(readout of layers < L, readout of the last layer, last hidden state already normed)."""
    readout = trace.readout
    owner = getattr(readout, "__self__", None)  # the adapter whose bound `readout` this is
    unembed = getattr(owner, "unembed", None)
    reference = trace.meta.get("logits")  # [T] the model's logits of the produced tokens
    if unembed is None:
        return readout, readout, False
    if reference is None:  # transformers 5.x convention (module docstring)
        return readout, unembed, True
    hidden = _unbatch(trace.graph["hidden_states"][-1])  # [N, D]
    positions = trace.predicting_positions.to(hidden.device)
    y = trace.input_ids[trace.answer_positions].to(hidden.device)
    ref = reference.float()
    with torch.no_grad():
        for fn, normed in ((unembed, True), (readout, False)):
            z = fn(hidden[positions]).float()[torch.arange(len(y)), y].cpu()
            tol = 1e-3 if hidden.dtype == torch.float32 else 3e-2
            if torch.allclose(z, ref, rtol=tol, atol=tol):
                return readout, fn, normed
    raise TraceError(
        "neither lm_head(h_L) nor lm_head(norm(h_L)) reproduces the captured logits: "
        "unknown hidden-state convention for the logit lens"
    )


def _unbatch(x: Tensor) -> Tensor:
    """A graph tensor without the forward's batch axis of 1 (hidden [1, N, D] -> [N, D])."""
    return x[0] if x.dim() == 3 else x


class Dexar(Attributor, name="dexar"):
    """DEX-AR: per-layer logit-lens gradients of attention, head and sequence filtering."""

    requires = NEEDS
    last_k: int = hparam(10, check=positive, doc="layers used, from the top")
    token_policy: str = hparam(
        "all", choices=POLICIES, needs=policy_needs, doc="delta_t > 0 always applies"
    )
    batch_vjp: int = hparam(8, check=positive, doc="answer tokens per batched VJP")

    def attribute(self, trace: Trace) -> Explanation:
        """Per-token maps m_t, filters delta_t and the sentence map sum_t delta_t m_t."""
        stats = dexar_stats(trace, self.last_k, self.batch_vjp)
        visual_tokens = stats.delta > 0  # [T] the non-linguistic tokens
        token_mask = visual_tokens & select_tokens(trace, self.token_policy, last_k=self.last_k)
        weights = torch.where(token_mask, stats.delta, 0.0)  # [T]
        visual = (weights[:, None] * stats.token_maps).sum(dim=0)  # [|V|]
        linguistic = [t for t in range(trace.num_answer_tokens) if not bool(visual_tokens[t])]
        meta = {
            "layers": stats.layers,
            "linguistic_tokens": linguistic,
            "linguistic_token_text": [trace.answer_tokens[t] for t in linguistic],
            "head_weights": stats.head_weights,
            "s_img_max": stats.s_img.amax(dim=(1, 2)),
            "s_txt_max": stats.s_txt.amax(dim=(1, 2)),
            "last_hidden_normed": stats.last_hidden_normed,
            "forward_passes": 1,
            "backward_passes": stats.backward_passes,
        }
        with warnings.catch_warnings():
            if not bool(token_mask.any()):
                warnings.warn(
                    "dexar: every answer token is linguistic (delta_t = 0 for all selected tokens): "
                    "no head attends to the image more than to the text; returning a zero map",
                    AttributionWarning,
                    stacklevel=3,
                )
                warnings.simplefilter("ignore", AttributionWarning)  # no second, generic warning
            return make_explanation(
                trace,
                "dexar",
                visual=visual,
                prompt=None,  # type: ignore[arg-type]
                token_relevance=stats.delta,
                token_mask=token_mask,
                token_visual=stats.token_maps,
                meta=meta,
            )
