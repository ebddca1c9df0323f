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
import copy
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..trace import CROSS, LINEAR, SOFTMAX, GradientChunk, GradientSource
from ..vjp import batched_vjp
from .delta_rule import heads_first, implicit_attention, prepare_qk
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
    kind: str = SOFTMAX  # CROSS: keys and values are another sequence's (N_k != N)

    @property
    def heads(self) -> int:
        return int(self.query.shape[1])


@dataclass
class LinearRecord:
    """One linear-attention (Gated DeltaNet) call: the delta rule's inputs as the layer passed
    them to its kernel, and its output ``o = A v`` (before the gated norm), in the graph."""

    query: Tensor  # [1, N, Hk, dk] after the short convolution, before the L2 norm
    key: Tensor  # [1, N, Hk, dk]
    value: Tensor  # [1, Hv, N, dv] (heads first, as `LayerRecord.value`)
    g: Tensor  # [1, N, Hv] log decay
    beta: Tensor  # [1, N, Hv] write strength
    output: Tensor  # [1, N, Hv, dv] in the graph
    kind = LINEAR

    @property
    def heads(self) -> int:
        return int(self.value.shape[1])

    def implicit_attention(self, dtype: torch.dtype) -> Tensor:
        """``A[h, t, s]`` with ``o_t = sum_s A[h, t, s] v_s`` (docs/math.md): [Hv, N, N]."""
        q, k = prepare_qk(self.query.detach(), self.key.detach(), self.heads)
        g, beta = heads_first(self.g.detach()), heads_first(self.beta.detach())
        return implicit_attention(q, k, g, beta, out_dtype=dtype)  # computed in float64


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
            kind=CROSS if "CrossAttention" in type(module).__name__ else SOFTMAX,
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


LINEAR_KERNEL = "torch_chunk_gated_delta_rule"  # what a Gated DeltaNet layer's forward calls


def is_linear(module: nn.Module) -> bool:
    """A linear-attention (Gated DeltaNet) module: its own kernel, no AttentionInterface."""
    return hasattr(sys.modules[type(module).__module__], LINEAR_KERNEL) and hasattr(module, "A_log")


def language_config(modules: Sequence[nn.Module]) -> Any:
    """The language model's config, from its first softmax attention module."""
    for module in modules:
        if not is_linear(module):
            return module.config
    raise CaptureError("the language model has no softmax attention layer to read its config")


@contextlib.contextmanager
def recording(modules: Sequence[nn.Module], *, keep_weights: bool) -> Iterator[_Recorder]:
    """Route the language model's attention through the capture for one forward pass; linear
    layers are recorded where they call their delta-rule kernel."""
    config = language_config(modules)  # shared by the layers
    inner = check_implementation(config)
    recorder = _Recorder(modules, inner, keep_weights)
    config._attn_implementation = CAPTURE
    _ACTIVE.append(recorder)
    try:
        linear = [m for m in modules if is_linear(m)]
        with _recording_linear(linear, recorder) if linear else contextlib.nullcontext():
            yield recorder
    finally:
        _ACTIVE.pop()
        config._attn_implementation = inner


@contextlib.contextmanager
def _recording_linear(modules: Sequence[nn.Module], recorder: _Recorder) -> Iterator[None]:
    """Record each Gated DeltaNet layer's kernel call (inputs and output) into its slot: the
    modeling module's kernel is wrapped for the pass, and a pre-hook on each layer says which
    layer calls it next."""
    calling: list[int] = []

    def announce(slot: int) -> Any:
        return lambda _module, _args: calling.append(slot)

    handles = [m.register_forward_pre_hook(announce(recorder.slot[id(m)])) for m in modules]
    namespaces = {sys.modules[type(m).__module__] for m in modules}
    kernels = {ns: getattr(ns, LINEAR_KERNEL) for ns in namespaces}

    def wrap(kernel: Any) -> Any:
        def recorded(query, key, value, g, beta, **kwargs):
            if not kwargs.get("use_qk_l2norm_in_kernel", False):
                raise CaptureError("a Gated DeltaNet layer called its kernel without the L2 norm")
            out, state = kernel(query, key, value, g=g, beta=beta, **kwargs)
            if calling:  # [1, N, H, d] each; value heads first, as a softmax record's
                recorder.records[calling.pop()] = LinearRecord(
                    query, key, value.transpose(1, 2), g, beta, out
                )
            return out, state

        return recorded

    for namespace, kernel in kernels.items():
        setattr(namespace, LINEAR_KERNEL, wrap(kernel))
    try:
        yield
    finally:
        for namespace, kernel in kernels.items():
            setattr(namespace, LINEAR_KERNEL, kernel)
        for handle in handles:
            handle.remove()


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


DEFAULT_IMPLICIT_MEMORY = 2**30  # bytes of linear layers' implicit attention kept on a CPU


def implicit_memory(device: torch.device) -> int:
    """Bytes of linear layers' implicit attention a trace may keep between reads:
    ``XATTR_IMPLICIT_MEMORY`` (bytes) if set; on CUDA a quarter of the free memory; else
    `DEFAULT_IMPLICIT_MEMORY`."""
    if os.environ.get("XATTR_IMPLICIT_MEMORY"):
        return int(float(os.environ["XATTR_IMPLICIT_MEMORY"]))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return DEFAULT_IMPLICIT_MEMORY


class RecomputedAttentions(Sequence[Tensor]):
    """The layers' attention weights, computed one layer at a time when asked: kept eager
    weights as they are, a softmax layer's recomputed from its queries and keys, a linear
    layer's implicit attention from its recorded q, k, g and beta.

    A linear layer's A costs O(H N^3) and is read once per sweep chunk, by rollout, raw
    attention and the finiteness check, so the first layers computed are kept while they fit
    in ``cache_bytes`` (`implicit_memory` by default) and the rest are computed again at each
    read. Layers are read in cycles (every layer, then every layer again), where keeping the
    first ones beats evicting: each kept layer is a hit on every later cycle. The kept
    tensors are shared: readers must not write into them (as with eager weights)."""

    def __init__(
        self,
        records: Sequence[LayerRecord | LinearRecord],
        dtype: torch.dtype,
        cache_bytes: int | None = None,
    ) -> None:
        self.records, self.dtype = list(records), dtype
        self.layer_heads = [r.heads for r in self.records]
        self.seq_len = int(self.records[0].value.shape[2])
        self.device = self.records[0].value.device
        self.cache_left = implicit_memory(self.device) if cache_bytes is None else cache_bytes
        self.kept: dict[int, Tensor] = {}  # layer -> [H, N, N] implicit attention

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, layer: int) -> Tensor:  # type: ignore[override]
        record = self.records[layer]
        if isinstance(record, LinearRecord):
            if layer in self.kept:
                return self.kept[layer]
            attention = record.implicit_attention(self.dtype)
            size = attention.numel() * attention.element_size()
            if size <= self.cache_left:
                self.kept[layer] = attention
                self.cache_left -= size
            return attention
        if record.weights is not None:
            return record.weights
        return recompute_attention(record, self.dtype)


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

    def with_logits(self, logits: Tensor) -> CapturedGradients:
        other = copy.copy(self)
        other.logits = logits
        return other

    def bytes_per_token(self, layers: Sequence[int]) -> int:
        out = self.outputs[0]
        n, heads, item = out.shape[1], out.shape[2], out.element_size()
        # d z / d o for every layer (head sizes may differ by layer: Gemma 4's full layers),
        # plus what the backward itself holds per token (an eager softmax backward keeps
        # about two [H, N, N] tensors alive at a time)
        d_out = sum(self.outputs[layer][0].numel() for layer in layers)
        return d_out * item + 2 * heads * n * n * item
