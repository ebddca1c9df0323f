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
from ..trace import CROSS, Trace, TraceError
from .base import AttributionWarning, Needs, hparam
from .kinds import refuse_visual_prefix
from .numerics import check_finite, working_dtype
from .packaging import average_rows, pad_row
from .sweep import SIGNED_SUM, GradientConsumer, LayerStep, StreamingAttributor
from .tokens import POLICIES, policy_needs, select_tokens

VARIANTS = {
    "attention": None,
    "hidden": Needs(attentions=False, gradients=True, hidden_states=True),
}


def last_layer(trace: Trace) -> int:
    """The layer Grad-CAM reads: the last, or on a model whose image enters only through
    cross-attention (mllama) the last cross-attention layer, the last that sees the image."""
    cross = trace.layers_of_kind([CROSS])
    return cross[-1] if cross else trace.num_layers - 1


class GradCAM(StreamingAttributor, name="gradcam"):
    """Grad-CAM on the last layer, per answer token, averaged over the selected tokens."""

    contrastive = True

    variant: str = hparam(
        "attention", choices=VARIANTS, needs=VARIANTS.get, doc="attention | hidden"
    )
    token_policy: str = hparam("non_punctuation", choices=POLICIES, needs=policy_needs)
    return_token_maps: bool = hparam(False, doc="keep every answer token's own map")

    def streams(self) -> bool:
        return self.variant == "attention"

    def consumer(self, trace: Trace) -> GradCAMConsumer:
        return GradCAMConsumer(self, trace)

    def attribute(self, trace: Trace) -> Explanation:
        """Per-token Grad-CAM rows read at p_t, averaged over the selected tokens."""
        if self.variant == "attention":
            return super().attribute(trace)
        return self.package(trace, self._hidden_rows(trace))

    def package(self, trace: Trace, rows: Tensor) -> Explanation:
        mask = select_tokens(trace, self.token_policy)
        meta = {"layer": last_layer(trace), "variant": self.variant}
        return average_rows(
            trace, "gradcam", rows, mask, return_token_maps=self.return_token_maps, meta=meta
        )

    def _hidden_rows(self, trace: Trace) -> Tensor:
        refuse_visual_prefix(trace, "gradcam's hidden variant")
        graph = trace.graph or {}
        hidden = graph.get("hidden_states") or []
        if len(hidden) < 2 or not hidden[-2].requires_grad:
            raise TraceError(
                "gradcam variant='hidden' needs the hidden states in the autograd graph: "
                "capture the trace with gradients=True and hidden_states=True"
            )
        logit = _logit_fn(trace, graph, hidden)
        dtype = working_dtype(trace)
        entering = hidden[-2]  # [1, N, D] input of the last layer, in the graph
        acts = entering.detach()[0].to(dtype)  # [N, D]
        rows = torch.zeros(trace.num_answer_tokens, trace.seq_len, dtype=dtype, device=acts.device)
        indices = [i.to(acts.device) for i in (trace.visual_index, trace.prompt_index) if i.numel()]
        for t in range(trace.num_answer_tokens):
            (grad,) = torch.autograd.grad(logit(t), entering, retain_graph=True, allow_unused=True)
            if grad is None:
                continue  # the logit does not depend on these hidden states: zero row
            grad = grad.detach()[0].to(dtype)  # [N, D]
            check_finite(grad, f"hidden-state gradients of answer token {t}")
            for index in indices:
                alpha = grad[index].mean(dim=0)  # [D] channel weights (spatial average)
                rows[t, index] = (acts[index] @ alpha).clamp_min(0.0)  # ReLU(sum_c alpha_c h)
        return rows.cpu()


class GradCAMConsumer(GradientConsumer):
    """The attention variant at the last layer: ``a_h = mean(G[L,h])`` over the support."""

    wants = frozenset({SIGNED_SUM})

    def __init__(self, method: GradCAM, trace: Trace) -> None:
        self.method, self.trace = method, trace
        self.layers = [last_layer(trace)]
        self.rows: list[Tensor] = []

    def visit(self, step: LayerStep) -> None:
        assert step.signed_support_sum is not None
        n_seq, heads = self.trace.seq_len, step.attention.shape[0]
        # a_h = mean over N x N of G[L,h] on its support (rows past p_t are zero)
        a = step.signed_support_sum / n_seq**2  # [c, H]
        attn_rows = step.attention[:, step.positions, :].transpose(0, 1)  # [c, H, n] A[L,h][p_t]
        rows = (torch.bmm(a[:, None, :], attn_rows)[:, 0]).clamp_min(0.0) / heads  # [c, n]
        self.rows.append(pad_row(rows, n_seq).cpu())

    def result(self) -> Explanation:
        return self.method.package(self.trace, torch.cat(self.rows))


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
