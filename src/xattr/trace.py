"""The captured record of one answer: attentions, index sets and lazily computed gradients.

A `Trace` is what every attribution method consumes. It follows SPEC §1: one causal
sequence of length N with index sets V (visual), P (question text) and G (answer); answer
token t sits at position s_t and is predicted at p_t = s_t - 1; `G_t[l, h] = d z_t / d A[l, h]`
with z_t the logit of y_t at p_t, one gradient per answer token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# Computes the gradients of the answer-token logits listed by index: -> [k, L, H, N, N]
GradientFn = Callable[[Sequence[int]], Tensor]


class TraceError(ValueError):
    """A trace that cannot support what was asked of it (missing gradients, bad shapes)."""


@dataclass
class Trace:
    """Attentions, index sets, confidences and per-answer-token gradients of one answer."""

    attentions: list[Tensor]  # L x [H, N, N], causal, rows sum to 1
    visual_index: Tensor  # [|V|] sequence positions of visual tokens, grid raster order per image
    prompt_index: Tensor  # [|P|] positions of the question's own tokens
    answer_positions: Tensor  # [T] s_t; the predicting position is s_t - 1
    grids: list[tuple[int, int]]  # (h, w) token grid of each image; visual_index concatenates them
    confidences: Tensor  # [T] softmax probability of each produced token at p_t
    input_ids: Tensor | None = None  # [N]
    tokens: list[str] | None = None  # N token strings
    answer_source: str = "given"  # "given" (teacher-forced) or "generated" (greedy)
    hidden_states: list[Tensor] | None = None  # L+1 x [N, D] (embeddings, then each layer)
    readout: Callable[[Tensor], Tensor] | None = (
        None  # hidden [.., D] -> logits (final norm + head)
    )
    meta: dict[str, Any] = field(default_factory=dict)
    gradient_fn: GradientFn | None = field(default=None, repr=False)
    # Tensors still in the autograd graph of the captured pass, for methods that need
    # gradients of other quantities (e.g. DEX-AR's logit lens): "attentions" L x [1, H, N, N],
    # "hidden_states" L+1 x [1, N, D] (when captured), each with the forward's batch axis of 1,
    # and "logits" [T] (z_t)
    # (take gradients w.r.t. these very tensors, then drop the axis). None without gradients.
    graph: dict[str, list[Tensor]] | None = field(default=None, repr=False)
    cache_gradients: bool = True
    _gradient_cache: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._validate()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_tensors(
        cls,
        attentions: Sequence[Tensor] | Tensor,
        gradients: Tensor | None = None,
        *,
        visual_index: Tensor | Sequence[int],
        prompt_index: Tensor | Sequence[int],
        answer_positions: Tensor | Sequence[int],
        grid: tuple[int, int] | Sequence[tuple[int, int]],
        confidences: Tensor | Sequence[float] | None = None,
        tokens: list[str] | None = None,
    ) -> Trace:
        """A trace from plain tensors: attentions L x [H, N, N], gradients [T, L, H, N, N]."""
        attn = [a.detach() for a in attentions]
        answer_positions = torch.as_tensor(answer_positions, dtype=torch.long)
        n_tokens = int(answer_positions.numel())
        if confidences is None:
            confidences = torch.ones(n_tokens)
        grids = [tuple(grid)] if isinstance(grid[0], int) else [tuple(g) for g in grid]  # type: ignore[arg-type]
        gradient_fn = None
        cached: dict[int, Tensor] = {}
        if gradients is not None:
            grads = gradients.detach()
            expected = (n_tokens, len(attn), *attn[0].shape) if attn else None
            if tuple(grads.shape) != expected:
                raise TraceError(
                    f"gradients have shape {tuple(grads.shape)}, expected [T, L, H, N, N] = {expected}"
                )
            gradient_fn = lambda idx: grads[list(idx)]  # noqa: E731
            # Views of the tensor passed in: token_gradients(t) then costs no copy.
            cached = {t: grads[t] for t in range(n_tokens)}
        return cls(
            attentions=attn,
            visual_index=torch.as_tensor(visual_index, dtype=torch.long),
            prompt_index=torch.as_tensor(prompt_index, dtype=torch.long),
            answer_positions=answer_positions,
            grids=grids,  # type: ignore[arg-type]
            confidences=torch.as_tensor(confidences, dtype=torch.float32),
            tokens=tokens,
            gradient_fn=gradient_fn,
            _gradient_cache=cached,
        )

    def _validate(self) -> None:
        if not self.attentions:
            raise TraceError("trace has no attention layers")
        h, n, n2 = self.attentions[0].shape
        if n != n2:
            raise TraceError(
                f"attention must be square [H, N, N], got {tuple(self.attentions[0].shape)}"
            )
        for layer, a in enumerate(self.attentions):
            if tuple(a.shape) != (h, n, n):
                raise TraceError(
                    f"layer {layer} attention has shape {tuple(a.shape)}, expected {(h, n, n)}"
                )
        n_visual = sum(gh * gw for gh, gw in self.grids)
        if n_visual != self.visual_index.numel():
            raise TraceError(
                f"grids {self.grids} hold {n_visual} cells but there are "
                f"{self.visual_index.numel()} visual tokens"
            )
        if self.visual_index.numel() == 0:
            raise TraceError("trace has no visual tokens: nothing to attribute to the image")
        if self.answer_positions.numel() == 0:
            raise TraceError("trace has an answer of zero tokens")
        if self.confidences.numel() != self.answer_positions.numel():
            raise TraceError("one confidence per answer token is required")
        for name, index in (
            ("visual_index", self.visual_index),
            ("prompt_index", self.prompt_index),
            ("answer_positions", self.answer_positions),
        ):
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
                raise TraceError(f"{name} has positions outside the sequence of length {n}")
        if int(self.answer_positions.min()) < 1:
            raise TraceError("an answer token at position 0 has no predicting position")

    # ------------------------------------------------------------------- properties
    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        return int(self.attentions[0].shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.attentions[0].shape[-1])

    @property
    def num_answer_tokens(self) -> int:
        return int(self.answer_positions.numel())

    @property
    def predicting_positions(self) -> Tensor:
        """p_t = s_t - 1: the row every per-token relevance is read at."""
        return self.answer_positions - 1

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid of the first image."""
        return self.grids[0]

    @property
    def answer_tokens(self) -> list[str]:
        return self._tokens_at(self.answer_positions)

    @property
    def prompt_tokens(self) -> list[str]:
        return self._tokens_at(self.prompt_index)

    def _tokens_at(self, positions: Tensor) -> list[str]:
        if self.tokens is None:
            return [f"<{int(p)}>" for p in positions]
        return [self.tokens[int(p)] for p in positions]

    def attention_stack(self) -> Tensor:
        """All attentions as one detached tensor [L, H, N, N]."""
        return torch.stack([a.detach() for a in self.attentions])

    # -------------------------------------------------------------------- gradients
    @property
    def has_gradients(self) -> bool:
        return self.gradient_fn is not None

    def require_gradients(self, method: str) -> None:
        """Raise a clear error when a gradient method gets a trace without gradients."""
        if not self.has_gradients:
            raise TraceError(
                f"method {method!r} needs per-token gradients but this trace was captured "
                "without them (capture with gradients=True, or pass gradients to from_tensors)"
            )

    def token_gradients(self, t: int) -> Tensor:
        """d z_t / d A for answer token t: [L, H, N, N] (computed once, then cached; no copy)."""
        cached = self._gradient_cache.get(t)
        if cached is not None:
            return cached
        if self.gradient_fn is None:
            raise TraceError("trace has no gradients")
        if not 0 <= t < self.num_answer_tokens:
            raise TraceError(f"answer token {t} out of range (T = {self.num_answer_tokens})")
        grad = self.gradient_fn([t])[0]
        if self.cache_gradients:
            self._gradient_cache[t] = grad
        return grad

    def gradients_for(self, tokens: Sequence[int]) -> Tensor:
        """Gradients of the listed answer tokens: [k, L, H, N, N]."""
        if self.gradient_fn is None:
            raise TraceError("trace has no gradients")
        for t in tokens:
            if not 0 <= t < self.num_answer_tokens:
                raise TraceError(f"answer token {t} out of range (T = {self.num_answer_tokens})")
        found = {**self._gradient_cache, **self._compute_missing(tokens)}
        return torch.stack([found[t] for t in tokens])

    def prefetch_gradients(self, tokens: Sequence[int] | None = None) -> None:
        """Compute and cache the listed (default: all) tokens' gradients in the capture's batched
        chunks, cheaper than one VJP per token; a no-op when the trace does not cache them."""
        if self.cache_gradients and self.gradient_fn is not None:
            self._compute_missing(range(self.num_answer_tokens) if tokens is None else tokens)

    def _compute_missing(self, tokens: Sequence[int]) -> dict[int, Tensor]:
        """Gradients of the listed tokens not cached yet, in one batched request (then cached
        if the trace caches)."""
        missing = [t for t in dict.fromkeys(tokens) if t not in self._gradient_cache]
        if not missing:
            return {}
        assert self.gradient_fn is not None
        new = dict(zip(missing, self.gradient_fn(missing), strict=True))
        if self.cache_gradients:
            self._gradient_cache.update(new)
        return new

    def iter_gradients(self, tokens: Sequence[int] | None = None) -> Iterator[tuple[int, Tensor]]:
        """Yield (t, [L, H, N, N]) token by token, so a method holds one token's gradients at a time."""
        for t in range(self.num_answer_tokens) if tokens is None else tokens:
            yield t, self.token_gradients(t)

    def gradients(self) -> Tensor:
        """Every answer token's gradients at once: [T, L, H, N, N]."""
        return self.gradients_for(list(range(self.num_answer_tokens)))
