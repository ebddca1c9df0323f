"""Recording a forward pass: every language-model attention layer as the model ran it, and
the gradient source that streams ``d z_t / d A`` from the recording.

The capture wraps the model's own attention implementation (eager or SDPA) through
transformers' `AttentionInterface`: for the duration of the pass the language model's
config names the attention function ``"xattr_capture"``, which records the layer's post-RoPE
queries, keys and values, its explicit mask (sliding windows and bidirectional image
blocks included) and scaling, calls the real implementation, and keeps its output ``o`` in
the autograd graph. Nothing the model computes changes.

- Attention weights: eager returns them (they are kept, as the graph keeps them anyway);
  under SDPA they are never materialised, and ``A = softmax(Q K^T * scale + mask)`` is
  recomputed for one layer at a time when a method asks (`RecomputedAttentions`).
- Gradients: ``o = A V``, so ``d z / d A = (d z / d o) V^T`` per head. One batched backward
  per chunk of answer tokens gives ``d z_t / d o`` for every layer ([N, H, d] each, small);
  each layer's ``G`` is then formed on demand (`CapturedGradients`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..trace import GradientChunk, GradientSource
from ..vjp import batched_vjp
from .prompting import CaptureError

CAPTURE = "xattr_capture"
WRAPPABLE = ("eager", "sdpa")  # implementations the capture can run inside


@dataclass
class LayerRecord:
    """One language-model attention call, as the capture saw it (batch axis of 1 kept)."""

    query: Tensor  # [1, H, N, d] post-RoPE
    key: Tensor  # [1, Hkv, N, d]
    value: Tensor  # [1, Hkv, N, d]
    mask: Tensor | None  # [N, N] bool, True where a row may attend (None: causal)
    scaling: float
    softcap: float | None
    output: Tensor  # [1, N, H, d] attention output, in the graph
    weights: Tensor | None  # [H, N, N] detached (eager only)


class _Recorder:
    """Collects the records of the modules it was made for, in layer order."""

    def __init__(self, modules: Sequence[nn.Module], inner: str, keep_weights: bool) -> None:
        self.slot = {id(m): i for i, m in enumerate(modules)}
        self.inner, self.keep_weights = inner, keep_weights
        self.records: list[LayerRecord | None] = [None] * len(modules)


_ACTIVE: list[_Recorder] = []


def _explicit_mask(*args: Any, **kwargs: Any) -> Tensor | None:
    """transformers' boolean mask, never skipped: the capture needs every layer's real mask."""
    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _capture_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """Run the wrapped implementation and record what the methods need (module docstring)."""
    if not _ACTIVE:
        raise CaptureError(f"the {CAPTURE!r} attention runs only inside a capture")
    recorder = _ACTIVE[-1]
    if kwargs.get("s_aux") is not None or getattr(module, "sinks", None) is not None:
        raise CaptureError(
            f"{type(module).__name__} uses attention sinks, which the capture does not model"
        )
    scaling = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    bool_mask = attention_mask
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        bool_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if recorder.inner == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise CaptureError(f"{type(module).__module__} has no eager_attention_forward to wrap")
        additive = None
        if bool_mask is not None:
            low = torch.finfo(query.dtype).min
            additive = torch.zeros(bool_mask.shape, dtype=query.dtype, device=query.device)
            additive.masked_fill_(~bool_mask, low)
        output, weights = eager(
            module, query, key, value, additive, scaling=scaling, dropout=0.0, **kwargs
        )
    else:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        output, weights = sdpa_attention_forward(
            module, query, key, value, bool_mask, scaling=scaling, dropout=0.0, **kwargs
        )
    slot = recorder.slot.get(id(module))
    if slot is not None:
        recorder.records[slot] = LayerRecord(
            query=query,
            key=key,
            value=value,
            mask=None if bool_mask is None else bool_mask[0, 0],
            scaling=scaling,
            softcap=kwargs.get("softcap"),
            output=output,
            weights=weights.detach()[0]
            if (weights is not None and recorder.keep_weights)
            else None,
        )
    return output, weights


AttentionInterface.register(CAPTURE, _capture_attention)
AttentionMaskInterface.register(CAPTURE, _explicit_mask)


def language_implementation(config: Any) -> str:
    """The attention implementation the language model runs (a per-sub-config choice allowed)."""
    impl = getattr(config, "_attn_implementation", None)
    return "eager" if impl is None else str(impl)


def check_implementation(config: Any) -> str:
    """The language model's attention implementation, or a CaptureError naming an unwrappable one."""
    impl = language_implementation(config)
    if impl not in WRAPPABLE:
        raise CaptureError(
            f"the language model uses attention implementation {impl!r}, which the capture cannot "
            f"wrap; load it with attn_implementation set to one of {WRAPPABLE}"
        )
    return impl


@contextlib.contextmanager
def recording(modules: Sequence[nn.Module], *, keep_weights: bool) -> Iterator[_Recorder]:
    """Route the language model's attention through the capture for one forward pass."""
    config = modules[0].config  # the language model's config, shared by its layers
    inner = check_implementation(config)
    recorder = _Recorder(modules, inner, keep_weights)
    config._attn_implementation = CAPTURE
    _ACTIVE.append(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.pop()
        config._attn_implementation = inner


# --------------------------------------------------------------------- attentions
def recompute_attention(record: LayerRecord, dtype: torch.dtype) -> Tensor:
    """``softmax(Q K^T * scale (+ softcap) + mask)`` of one layer, in ``dtype``: [H, N, N]."""
    q = record.query[0].detach().to(dtype)  # [H, N, d]
    k = record.key[0].detach().to(dtype)  # [Hkv, N, d]
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # [H, N, d]
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(record.scaling)  # [H, N, N]
    if record.softcap is not None:
        scores = torch.tanh(scores / record.softcap) * record.softcap
    n = scores.shape[-1]
    mask = record.mask
    if mask is None:
        mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril_()
    scores.masked_fill_(~mask.to(scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1)


class RecomputedAttentions(Sequence[Tensor]):
    """The layers' attention weights, recomputed one layer at a time (never all held)."""

    def __init__(self, records: Sequence[LayerRecord], dtype: torch.dtype) -> None:
        self.records, self.dtype = list(records), dtype
        q = self.records[0].query
        self.head_shape = (int(q.shape[1]), int(q.shape[2]), int(q.shape[2]))
        self.device = q.device

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, layer: int) -> Tensor:  # type: ignore[override]
        return recompute_attention(self.records[layer], self.dtype)


# ---------------------------------------------------------------------- gradients
class _Chunk(GradientChunk):
    def __init__(self, tokens: Sequence[int], d_out: dict[int, Tensor], values: list[Tensor]):
        super().__init__(tokens)
        self.d_out, self.values = d_out, values

    def layer(self, layer: int, n: int, out: Tensor | None = None) -> Tensor:
        d_out = self.d_out[layer][:, 0, :n]  # [c, n, H, d] d z_t / d o
        work = torch.float64 if d_out.dtype == torch.float64 else torch.float32
        if out is not None:
            work = out.dtype
        v = self.values[layer][0, :, :n].to(work)  # [Hkv, n, d]
        v = v.repeat_interleave(d_out.shape[2] // v.shape[0], dim=0)  # [H, n, d]
        d_out = d_out.transpose(1, 2).to(work)  # [c, H, n, d]
        if out is None:
            return torch.matmul(d_out, v.transpose(-1, -2))  # [c, H, n, n]
        return torch.matmul(d_out, v.transpose(-1, -2), out=out)

    def finite(self, layer: int) -> Tensor:
        d_out = self.d_out[layer]
        ok = torch.isfinite(d_out.float().sum(dim=(1, 2, 3, 4)))  # [c]
        return ok & torch.isfinite(self.values[layer].float().sum())


class CapturedGradients(GradientSource):
    """``d z_t / d A`` from the captured pass: ``(d z_t / d o) V^T``, one chunk at a time."""

    def __init__(self, logits: Tensor, records: Sequence[LayerRecord]) -> None:
        self.logits = logits  # [T] z_t, in the graph
        self.outputs = [r.output for r in records]  # L x [1, N, H, d], in the graph
        self.values = [r.value.detach() for r in records]  # L x [1, Hkv, N, d]

    def chunk(self, tokens: Sequence[int], layers: Sequence[int]) -> GradientChunk:
        layers = list(layers)
        grads = batched_vjp(self.logits, [self.outputs[layer] for layer in layers], tokens)
        return _Chunk(tokens, dict(zip(layers, grads, strict=True)), self.values)

    def bytes_per_token(self, layers: Sequence[int]) -> int:
        out = self.outputs[0]
        n, heads, item = out.shape[1], out.shape[2], out.element_size()
        # d z / d o for every layer, plus what the backward itself holds per token
        # (an eager softmax backward keeps about two [H, N, N] tensors alive at a time)
        return len(layers) * out[0].numel() * item + 2 * heads * n * n * item
