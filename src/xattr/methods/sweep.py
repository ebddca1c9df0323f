"""One pass over every answer token's gradients, shared by all gradient methods on a trace.

Per-token gradients ``G_t[l] = d z_t / d A[l]`` ([H, N, N] per layer) are far too large to
hold for every token and layer of a real model. The sweep asks the trace's gradient source
for a *chunk* of answer tokens at a time (sized to a memory budget), then walks the layers
top-down (the order relevance propagates in) and hands each method a `LayerStep`: the
chunk's gradients and the layer's attention on the chunk's causal block, with the
reductions several methods share (the positive part ``G^+``, ``A ⊙ G^+``, its per-head sums
and head mean) computed once. Each method keeps only what it needs per token (a relevance
row, a few scalars per layer) and drops the rest. Memory is flat in the answer length T;
every token's gradients are computed once however many methods consume them.

Conventions (docs/math.md):

- **Causal block.** Answer token t is read at row p_t; nothing past p_t reaches that row,
  so a chunk's tensors are cropped to ``[:n, :n]`` with ``n = max p_t + 1`` over the chunk.
  Rows past a token's own p_t are zero in its gradient, so the crop is exact for every token.
- **Support.** Sums of gradients (GLIMPSE's ``sum(G^+)``, Grad-CAM's mean of G) run over the
  positions a row may attend to: the model's own mask (causal ``j <= i`` by default;
  bidirectional image blocks or sliding windows where the model has them). Autograd also
  reports ``dO_i . V_j`` for weights the mask holds at zero, which says nothing about the input.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..explanation import Explanation
from ..heap import trim_heap
from ..trace import LINEAR, SOFTMAX, Trace
from .base import Attributor, Needs
from .numerics import finite_flag, raise_first_bad, working_dtype

# What a consumer may ask a step for (`GradientConsumer.wants`).
GRADIENTS = "gradients"  # [c, H, n, n] the raw G, kept intact for the consumer
SIGNED_SUM = "signed_support_sum"  # [c, H] sum of G over the support
POSITIVE_SUM = "positive_support_sum"  # [c, H] sum of G^+ over the support
WEIGHTED = "weighted"  # [c, H, n, n] A ⊙ G^+ and its per-head total "weighted_sum" [c, H]
HEAD_MEAN = "head_mean"  # [c, n, n] mean over heads of A ⊙ G^+ (TMME's layer map)

DEFAULT_BUDGET = 256 * 2**20  # bytes of per-chunk working memory on a CPU


class LayerStep:
    """One layer of one chunk of answer tokens, with the reductions the consumers asked for.

    ``gradients`` [c, H, n, n], ``attention`` [H, n, n], ``support`` [n * n] (1 where a row may
    attend) are in the working dtype on the layer's device; ``positions`` [c] are the
    chunk's predicting positions p_t on that device. The step owns ``gradients`` (a buffer
    reused from layer to layer) and turns it into ``A ⊙ G^+`` in place unless a consumer
    asked for the raw gradients (`GRADIENTS`); then ``gradients`` is None.
    """

    def __init__(
        self,
        layer: int,
        tokens: list[int],
        positions: Tensor,
        attention: Tensor,
        gradients: Tensor,
        support: Tensor,
        wants: frozenset[str],
        kind: str = SOFTMAX,
    ) -> None:
        self.layer, self.tokens, self.positions, self.kind = layer, tokens, positions, kind
        self.attention, self.gradients, self.support = attention, gradients, support
        c, heads, n, _ = gradients.shape
        self.signed_support_sum: Tensor | None = None
        self.positive_support_sum: Tensor | None = None
        self.weighted: Tensor | None = None
        self.weighted_sum: Tensor | None = None
        self.head_mean: Tensor | None = None
        if SIGNED_SUM in wants:
            self.signed_support_sum = torch.einsum("chij,ij->ch", gradients, support.view(n, n))
        if wants & {POSITIVE_SUM, WEIGHTED, HEAD_MEAN}:
            signed = gradients * attention if kind == LINEAR else None  # A ⊙ G (A signed)
            if GRADIENTS in wants:
                ahat = torch.clamp(gradients, min=0)  # G^+ beside the raw G
            else:
                ahat = gradients.clamp_(min=0)  # G^+ in the reused buffer
                self.gradients = None  # type: ignore[assignment]
            flat = ahat.view(c * heads, n * n)
            if POSITIVE_SUM in wants:
                self.positive_support_sum = (flat @ support).view(c, heads)
            if signed is None:
                ahat.mul_(attention)  # A ⊙ G^+ in place (zero outside the support: A is)
            else:  # (A ⊙ G)^+: equal to A ⊙ G^+ where A >= 0 (`methods.kinds`)
                ahat.copy_(signed.clamp_(min=0))
            self.weighted = ahat
            self.weighted_sum = flat.sum(dim=-1).view(c, heads)
            if HEAD_MEAN in wants:
                self.head_mean = ahat.mean(dim=1)  # [c, n, n]

    def rows_at(self, values: Tensor) -> Tensor:
        """Row p_t of each token's [.., n, n] map: ``values`` [c, n, n] -> [c, n]."""
        index = self.positions.view(-1, 1, 1).expand(-1, 1, values.shape[-1])
        return values.gather(1, index)[:, 0]


class GradientConsumer(ABC):
    """A method's per-trace state during a sweep: it visits its layers, top-down, per chunk."""

    layers: Sequence[int] = ()  # the model layers it reads, 0-based, ascending
    wants: frozenset[str] = frozenset({GRADIENTS})  # what it reads (see the constants above)

    def bytes_per_token(self, n: int) -> int:
        """Memory it keeps per token of a chunk whose block is ``n`` wide (for chunk sizing)."""
        return 0

    def begin_chunk(self, tokens: list[int], positions: Tensor, n: int) -> None:
        """A new chunk: answer tokens ``tokens`` predicted at ``positions`` [c] (CPU), block ``n``."""

    @abstractmethod
    def visit(self, step: LayerStep) -> None:
        """One of its layers, in top-down order."""

    def end_chunk(self) -> None:
        """The chunk's layers are done (every token's gradients there were finite)."""

    @abstractmethod
    def result(self) -> Explanation:
        """The explanation, once every chunk has been visited."""


class StreamingAttributor(Attributor):
    """A gradient method written as a `GradientConsumer`, so methods can share one sweep."""

    requires: ClassVar[Needs] = Needs(gradients=True)

    @abstractmethod
    def consumer(self, trace: Trace) -> GradientConsumer:
        """Fresh per-trace state for one sweep over ``trace``."""

    def streams(self) -> bool:
        """Whether these settings consume the sweep (a variant may compute otherwise)."""
        return True

    def attribute(self, trace: Trace) -> Explanation:
        consumer = self.consumer(trace)
        report = run_sweep(trace, [consumer])
        if report.failures:
            raise report.failures[id(consumer)]
        return consumer.result()


def memory_budget(device: torch.device) -> int:
    """Bytes a sweep's chunk may use: ``XATTR_GRADIENT_MEMORY`` (bytes) if set; on CUDA a
    quarter of the free memory; else `DEFAULT_BUDGET`."""
    if os.environ.get("XATTR_GRADIENT_MEMORY"):
        return int(float(os.environ["XATTR_GRADIENT_MEMORY"]))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(DEFAULT_BUDGET, free // 4)
    return DEFAULT_BUDGET


def chunk_size(
    trace: Trace, layers: Sequence[int], consumers: Sequence[GradientConsumer], budget: int
) -> int:
    """Answer tokens per chunk: as many as fit in ``budget`` bytes (at least one)."""
    n = int(trace.predicting_positions.max()) + 1
    item = torch.finfo(working_dtype(trace)).bits // 8
    per_token = 2 * trace.num_heads * n * n * item  # G and A ⊙ G^+ of one layer
    per_token += sum(c.bytes_per_token(n) for c in consumers)
    assert trace.gradient_source is not None
    per_token += trace.gradient_source.bytes_per_token(layers)
    return max(1, min(trace.num_answer_tokens, budget // max(1, per_token)))


@dataclass
class SweepReport:
    """Per consumer (by ``id``): seconds spent in its own work, and the error that stopped it."""

    seconds: dict[int, float] = field(default_factory=dict)
    failures: dict[int, Exception] = field(default_factory=dict)


def run_sweep(
    trace: Trace, consumers: Sequence[GradientConsumer], budget: int | None = None
) -> SweepReport:
    """Feed every answer token's gradients to ``consumers``, chunk by chunk, layers top-down.

    A consumer that raises is dropped from the sweep (its error is in the report) and the
    others go on. Non-finite attentions or gradients stop the sweep with a ValueError naming
    the layer (attentions) or the token and layer (gradients): one host synchronisation
    per chunk.
    """
    source = trace.gradient_source
    assert source is not None, "run_sweep needs a trace with gradients"
    report = SweepReport(seconds={id(c): 0.0 for c in consumers})
    layers = sorted(set().union(*(c.layers for c in consumers)))
    dtype = working_dtype(trace)
    on_cpu = trace.device.type == "cpu"
    budget = memory_budget(trace.device) if budget is None else budget
    size = chunk_size(trace, layers, consumers, budget)
    positions = trace.predicting_positions.tolist()
    supports: dict[Any, Tensor] = {}
    buffers: dict[torch.device, Tensor] = {}  # one [c, H, n, n] gradient buffer per device

    def call(c: GradientConsumer, fn: Any, *args: Any) -> None:
        if id(c) in report.failures:
            return
        began = time.perf_counter()
        try:
            fn(*args)
        except Exception as err:  # one method's failure must not stop the others
            report.failures[id(c)] = err
        report.seconds[id(c)] += time.perf_counter() - began

    for start in range(0, trace.num_answer_tokens, size):
        tokens = list(range(start, min(trace.num_answer_tokens, start + size)))
        pos = torch.tensor([positions[t] for t in tokens])
        n = int(pos.max()) + 1
        live = [c for c in consumers if id(c) not in report.failures]
        if not live:
            break
        visiting = {layer: [c for c in live if layer in c.layers] for layer in layers}
        needed = [layer for layer in layers if visiting[layer]]
        wants = {layer: frozenset().union(*(c.wants for c in visiting[layer])) for layer in needed}
        chunk = source.chunk(tokens, needed)
        for c in live:
            call(c, c.begin_chunk, tokens, pos, n)
        attention_ok, gradients_ok = [], []
        on_device: dict[torch.device, Tensor] = {}
        for layer in reversed(needed):
            full = trace.attentions[layer]  # [H, N, N]
            if start == 0:  # every row any chunk reads is checked once
                attention_ok.append(finite_flag(full))
            attention = full[:, :n, :n].to(dtype)  # [H, n, n]
            device = attention.device
            if device not in on_device:
                on_device[device] = pos.to(device)
            shape = (len(tokens), attention.shape[0], n, n)  # H_l: layers may differ
            buffer = buffers.get(device)
            if buffer is None or buffer.numel() < math.prod(shape):
                buffer = buffers[device] = torch.empty(math.prod(shape), dtype=dtype, device=device)
            gradients = chunk.layer(layer, n, out=buffer[: math.prod(shape)].view(shape))
            step = LayerStep(
                layer,
                tokens,
                on_device[device],
                attention,
                gradients.to(device, dtype),  # [c, H, n, n]
                _support(trace, layer, n, attention, supports),
                wants[layer],
                trace.layer_kinds[layer] if trace.layer_kinds else SOFTMAX,
            )
            for c in visiting[layer]:
                call(c, c.visit, step)
            gradients_ok.append(chunk.finite(layer).to(device))
        _check(attention_ok, gradients_ok, tokens, list(reversed(needed)))
        for c in live:
            call(c, c.end_chunk)
        if on_cpu:  # freed heap pages back to the OS (`xattr.heap`)
            trim_heap()
    return report


def _support(trace: Trace, layer: int, n: int, like: Tensor, cache: dict[Any, Any]) -> Tensor:
    """The layer's support on the block, flattened: [n * n] of 0/1 (cached per mask for the
    current block size; the cache keeps the mask alive, so a lazily made one's memory is not
    reused under its key). Chunks come in order and n never shrinks, so the blocks of an
    earlier n are dropped: one-token chunks would otherwise keep one block per token."""
    if cache.get("n") != n:
        cache.clear()
        cache["n"] = n
    mask = trace.support(layer)
    key = (None if mask is None else (mask.data_ptr(), tuple(mask.shape)), n, like.device)
    if key not in cache:
        if mask is None:
            block = torch.ones(n, n, dtype=like.dtype, device=like.device).tril_()
        else:
            block = mask[:n, :n].to(like.device, like.dtype)
        cache[key] = (mask, block.reshape(-1).contiguous())
    return cache[key][1]


def _check(
    attention_ok: list[Tensor], gradients_ok: list[Tensor], tokens: list[int], layers: list[int]
) -> None:
    """Read every flag of a chunk back at once; name the first non-finite layer or token.

    ``attention_ok`` is empty after the first chunk (each layer's attention is checked once).
    """
    home = gradients_ok[0].device
    order = sorted(range(len(layers)), key=lambda k: layers[k])  # report input-to-output
    if attention_ok:
        attn = torch.stack([attention_ok[k].to(home) for k in order]).cpu()  # [K], one sync
        for ok, k in zip(attn.tolist(), order, strict=True):
            if not ok:
                raise ValueError(
                    f"non-finite values in attentions of layer {layers[k]} (fp16 overflow?)"
                )
    grads = torch.stack([gradients_ok[k].to(home) for k in order], dim=1)  # [c, K]
    raise_first_bad(grads, tokens, [layers[k] for k in order], "gradients")


def consumers_of(methods: Iterable[Attributor], trace: Trace) -> dict[int, GradientConsumer]:
    """The streaming methods' consumers for one trace, by the method's ``id``."""
    return {
        id(m): m.consumer(trace)
        for m in methods
        if isinstance(m, StreamingAttributor) and m.streams()
    }
