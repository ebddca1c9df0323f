"""Grad-CAM (Selvaraju et al. 2017) in two transformer forms (SPEC §3), averaged over the answer.

- ``variant="attention"`` (default): on the last layer L, head weight
  ``a_h = mean(G_t[L,h])`` (mean over the N x N matrix of the gradient on its causal support,
  see `common`), map ``(sum_h a_h A[L,h])^+[p_t, :] / H``. Only row p_t of A is read.
- ``variant="hidden"``: gradients of z_t with respect to the hidden states entering the last
  layer (the last layer's *output* at visual positions cannot reach z_t at p_t, so its
  input is the deepest place where they matter): per modality (V, then P) the channel
  weights are the gradient averaged over that modality's positions, the map is
  ``ReLU(sum_c alpha_c h[j, c])``. Needs a trace captured with gradients and hidden states
  (``trace.graph["hidden_states"]`` in the autograd graph) and the logits z_t in the graph:
  ``trace.graph["logits"]`` [T] when the capture provides it, else
  ``trace.readout(last hidden state at p_t)[y_t]``, checked against the captured
  ``trace.meta["logits"]`` (a warning if the readout does not reproduce them).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..explanation import Explanation
from ..trace import Trace, TraceError
from .base import Attributor, Needs, register
from .common import (
    AttributionWarning,
    average_rows,
    causal_mask,
    check_attentions,
    check_finite,
    working_dtype,
)
from .tokens import select_tokens

VARIANTS = ("attention", "hidden")


@register("gradcam")
class GradCAM(Attributor):
    """Grad-CAM on the last layer, per answer token, averaged over the selected tokens."""

    needs = Needs(gradients=True)

    def __init__(
        self,
        *,
        variant: str = "attention",
        token_policy: str = "non_punctuation",
        return_token_maps: bool = False,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"gradcam variant must be one of {VARIANTS}, got {variant!r}")
        super().__init__(
            variant=variant, token_policy=token_policy, return_token_maps=return_token_maps
        )
        self.variant, self.token_policy = variant, token_policy
        self.return_token_maps = return_token_maps
        if variant == "hidden":  # the graph comes with a gradient capture; attentions unused
            self.needs = Needs(gradients=True, hidden_states=True)

    def attribute(self, trace: Trace) -> Explanation:
        """Per-token Grad-CAM rows read at p_t, averaged over the selected tokens."""
        mask = select_tokens(trace, self.token_policy)
        rows = (
            self._attention_rows(trace) if self.variant == "attention" else self._hidden_rows(trace)
        )
        meta = {"layer": trace.num_layers - 1, "variant": self.variant}
        return average_rows(
            trace, "gradcam", rows, mask, return_token_maps=self.return_token_maps, meta=meta
        )

    def _attention_rows(self, trace: Trace) -> Tensor:
        last = trace.num_layers - 1
        check_attentions(trace, [last])
        dtype = working_dtype(trace)
        n_seq, heads = trace.seq_len, trace.num_heads
        support = causal_mask(n_seq, torch.empty(0, dtype=dtype))  # [N*N] 1 where j <= i
        rows = torch.zeros(trace.num_answer_tokens, n_seq, dtype=dtype)  # [T, N]
        trace.prefetch_gradients()  # every token's gradients, in batched chunks
        for t in range(trace.num_answer_tokens):
            p = int(trace.predicting_positions[t])
            grad = (
                trace.token_gradients(t)[last].reshape(heads, n_seq * n_seq).to(dtype)
            )  # [H, N*N]
            # a_h = mean over N x N of G[L,h] on its causal support (rows past p_t are zero);
            # one matrix-vector pass, in which NaN/inf anywhere in the layer propagate.
            a = grad @ support / n_seq**2  # [H]
            if not bool(torch.isfinite(a).all()):
                check_finite(grad, f"gradients of answer token {t}, layer {last}")
            attn_row = trace.attentions[last][:, p, :].to(dtype)  # [H, N] A[L,h][p_t, :]
            rows[t] = (a @ attn_row).clamp_min(0.0) / heads  # (sum_h a_h A[L,h])^+[p_t] / H
        return rows

    def _hidden_rows(self, trace: Trace) -> Tensor:
        graph = trace.graph or {}
        hidden = graph.get("hidden_states") or []
        if len(hidden) < 2 or not hidden[-2].requires_grad:
            raise TraceError(
                "gradcam variant='hidden' needs the hidden states in the autograd graph: "
                "capture the trace with gradients=True and hidden_states=True"
            )
        logit = self._logit_fn(trace, graph, hidden)
        dtype = working_dtype(trace)
        entering = hidden[-2]  # [1, N, D] input of the last layer, in the graph
        acts = entering.detach()[0].to(dtype)  # [N, D]
        rows = torch.zeros(trace.num_answer_tokens, trace.seq_len, dtype=dtype)  # [T, N]
        for t in range(trace.num_answer_tokens):
            (grad,) = torch.autograd.grad(logit(t), entering, retain_graph=True, allow_unused=True)
            if grad is None:
                continue  # the logit does not depend on these hidden states: zero row
            grad = grad.detach()[0].to(dtype)  # [N, D]
            check_finite(grad, f"hidden-state gradients of answer token {t}")
            for index in (trace.visual_index, trace.prompt_index):
                if index.numel():
                    alpha = grad[index].mean(dim=0)  # [D] channel weights (spatial average)
                    rows[t, index] = (acts[index] @ alpha).clamp_min(0.0)  # ReLU(sum_c alpha_c h)
        return rows

    @staticmethod
    def _logit_fn(trace: Trace, graph: dict, hidden: list[Tensor]):
        """z_t in the graph: ``graph["logits"]`` [T] if captured, else the readout of the last state."""
        if graph.get("logits") is not None:
            return lambda t: graph["logits"][t]
        if trace.readout is None or trace.input_ids is None:
            raise TraceError(
                "gradcam variant='hidden' needs the answer logits in trace.graph['logits'], or a "
                "readout and input_ids to recompute them from the last hidden state"
            )
        final = hidden[-1].reshape(-1, hidden[-1].shape[-1])  # [N, D], in the graph

        def logit(t: int) -> Tensor:
            p = int(trace.predicting_positions[t])
            token = int(trace.input_ids[int(trace.answer_positions[t])])
            z = trace.readout(final[p])[token]
            captured = trace.meta.get("logits")
            if captured is not None and not torch.isclose(
                z.detach().float().cpu(), captured[t].float(), rtol=1e-3, atol=1e-3
            ):
                warnings.warn(
                    f"gradcam: readout(last hidden state) gives logit {float(z.detach()):.4g} for answer "
                    f"token {t}, the capture recorded {float(captured[t]):.4g} (is the last "
                    "hidden state already normalised?); using the readout's logit",
                    AttributionWarning,
                    stacklevel=4,
                )
            return z

        return logit
