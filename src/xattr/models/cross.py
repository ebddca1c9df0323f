"""A visual prefix for models whose image reaches the text only by cross-attention (mllama).

Such a model's token sequence holds text only; its image tokens are keys and values of the
cross-attention layers. The trace places them in front of the text as a *visual prefix*:
positions ``0 .. N_v − 1`` are the image tokens (tile by tile, each tile's class token
first), ``N_v ..`` the text. In that one sequence of ``N' = N_v + N_t`` positions every
layer is an ``[H, N', N']`` map, so every attention method runs unchanged:

- a self-attention layer's ``A`` fills the text block ``[N_v:, N_v:]``;
- a cross-attention layer's ``A`` ``[H, N_t, N_v]`` fills the block ``[N_v:, :N_v]``
  (text rows, image columns), its mask the support there;
- image rows are empty on every layer: image tokens never change inside the language model,
  so relevance that reaches them stays (rollout's identity term keeps it).

Gradients follow the same placement: ``G = (dz/do) Vᵀ`` with the layer's own values (the
image tokens' on a cross layer). Nothing ``[N', N']`` is held for more than one layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..trace import CROSS, GradientChunk, GradientSource
from .recording import CapturedGradients, LayerRecord


def _placed(inner: Tensor, kind: str, prefix: int, size: int, out: Tensor | None = None) -> Tensor:
    """``inner`` [.., H, rows, cols] of text space placed in a [.., H, size, size] block."""
    shape = (*inner.shape[:-2], size, size)
    block = (
        torch.zeros(shape, dtype=inner.dtype, device=inner.device) if out is None else out.zero_()
    )
    rows = size - prefix
    if kind == CROSS:
        block[..., prefix:, :prefix] = inner[..., :rows, :prefix]
    else:
        block[..., prefix:, prefix:] = inner[..., :rows, :rows]
    return block


class PrefixedAttentions(Sequence[Tensor]):
    """Each layer's attention on the prefixed sequence: [H, N', N'] (module docstring)."""

    def __init__(self, inner: Sequence[Tensor], kinds: Sequence[str], prefix: int, text: int):
        self.inner, self.kinds, self.prefix = inner, list(kinds), prefix
        self.seq_len = prefix + text
        self.layer_heads = [int(h) for h in inner.layer_heads]
        self.device = inner.device

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, layer: int) -> Tensor:  # type: ignore[override]
        return _placed(self.inner[layer], self.kinds[layer], self.prefix, self.seq_len)


class PrefixedSupports(Sequence[Tensor]):
    """Where each layer's rows may attend on the prefixed sequence: bool [N', N']."""

    def __init__(self, records: Sequence[LayerRecord], prefix: int, text: int) -> None:
        self.records, self.prefix, self.text = list(records), prefix, text
        self.made: dict[tuple, Tensor] = {}  # one tensor per distinct mask (layers share them)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, layer: int) -> Tensor:  # type: ignore[override]
        record = self.records[layer]
        mask = record.mask
        key = (record.kind, None if mask is None else (mask.data_ptr(), tuple(mask.stride())))
        if key not in self.made:
            if mask is None:  # causal over the text
                mask = torch.ones(self.text, self.text, dtype=torch.bool).tril_()
            self.made[key] = _placed(mask.cpu(), record.kind, self.prefix, self.prefix + self.text)
        return self.made[key]


class _PrefixedChunk(GradientChunk):
    def __init__(self, inner: GradientChunk, records: Sequence[LayerRecord], prefix: int) -> None:
        super().__init__(inner.tokens)
        self.inner, self.records, self.prefix = inner, records, prefix

    def layer(self, layer: int, n: int, out: Tensor | None = None) -> Tensor:
        record, rows = self.records[layer], n - self.prefix
        if record.kind != CROSS:
            return _placed(self.inner.layer(layer, rows), record.kind, self.prefix, n, out)
        d_out = self.inner.d_out[layer][:, 0, :rows]  # type: ignore[attr-defined]  # [c, r, H, d]
        work = out.dtype if out is not None else torch.float32
        if d_out.dtype == torch.float64 and out is None:
            work = torch.float64
        v = record.value[0].detach().to(work)  # [Hkv, N_v, d]: the image tokens' values
        v = v.repeat_interleave(d_out.shape[2] // v.shape[0], dim=0)  # [H, N_v, d]
        grads = torch.matmul(d_out.transpose(1, 2).to(work), v.transpose(-1, -2))  # [c, H, r, N_v]
        return _placed(grads, CROSS, self.prefix, n, out)

    def finite(self, layer: int) -> Tensor:
        return self.inner.finite(layer)


class PrefixedGradients(GradientSource):
    """``dz/dA`` on the prefixed sequence, from the captured text-space gradients."""

    def __init__(self, inner: CapturedGradients, records: Sequence[LayerRecord], prefix: int):
        self.inner, self.records, self.prefix = inner, list(records), prefix

    def chunk(self, tokens: Sequence[int], layers: Sequence[int]) -> GradientChunk:
        return _PrefixedChunk(self.inner.chunk(tokens, layers), self.records, self.prefix)

    def bytes_per_token(self, layers: Sequence[int]) -> int:
        return self.inner.bytes_per_token(layers)

    def with_logits(self, logits: Tensor) -> PrefixedGradients:
        return PrefixedGradients(self.inner.with_logits(logits), self.records, self.prefix)
