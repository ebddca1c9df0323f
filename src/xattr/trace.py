"""The captured record of one answer: attentions, index sets and streamed gradients.

A `Trace` is what every attribution method consumes. It follows the conventions of
docs/math.md: one sequence of length N with index sets V (visual), P (question text) and G
(answer); answer token t sits at position s_t and is predicted at p_t = s_t - 1;
``G_t[l, h] = d z_t / d A[l, h]`` with z_t the logit of y_t at p_t, one gradient per answer
token.

Gradients are never all held: a `GradientSource` produces them for a chunk of answer tokens
at a time, one layer at a time (`methods.sweep` consumes them as they come). A captured
trace recomputes each layer's ``G`` from the gradient of its attention output
(``o = A V`` so ``dz/dA = (dz/do) V^T``); a trace built from tensors slices them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .layout import Grid, LayoutError, VisualLayout, as_grids

# What computes a layer's token mixing; `Trace.attentions[l]` is its [H_l, N, N] either way:
# SOFTMAX: softmax attention (full, or windowed through its support); LINEAR: a linear-
# attention layer's implicit attention (Gated DeltaNet: signed, rows not normalised; see
# docs/math.md); CROSS: cross-attention to tokens outside the sequence.
SOFTMAX, LINEAR, CROSS = "softmax", "linear", "cross"
LAYER_KINDS = (SOFTMAX, LINEAR, CROSS)

# Computes the gradients of the answer-token logits listed by index: -> [k, L, H, N, N]
GradientFn = Callable[[Sequence[int]], Tensor]


class TraceError(ValueError):
    """A trace that cannot support what was asked of it (missing gradients, bad shapes)."""


class OutOfMemory(MemoryError):
    """A sample too large for the device: says how large (sequence and answer length)."""

    def __init__(self, n_tokens: int, n_answer: int | str) -> None:
        super().__init__(f"out of memory ({n_tokens} tokens, {n_answer} answer tokens)")
        self.n_tokens, self.n_answer = n_tokens, n_answer


OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)  # a CPU or an accelerator ran out


def free_accelerator_memory() -> None:
    """Release cached accelerator memory after an out-of-memory error, so the next sample can run."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------- gradient sources
class GradientChunk(ABC):
    """The gradients of a few answer tokens, handed out one layer at a time."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = list(tokens)

    @abstractmethod
    def layer(self, layer: int, n: int, out: Tensor | None = None) -> Tensor:
        """``d z_t / d A[layer]`` for the chunk's tokens on the block ``[:n, :n]``: [c, H, n, n].

        With ``out`` (a buffer of that shape, the caller's to overwrite) the result is written
        there and ``out`` is returned, so a sweep reuses one buffer for every layer.
        """

    @abstractmethod
    def finite(self, layer: int) -> Tensor:
        """[c] bool on the layer's device: each token's gradient at ``layer`` is finite (no sync)."""


class GradientSource(ABC):
    """Produces ``d z_t / d A`` for chunks of answer tokens (see the module docstring)."""

    @abstractmethod
    def chunk(self, tokens: Sequence[int], layers: Sequence[int]) -> GradientChunk:
        """Prepare the gradients of ``tokens`` at ``layers`` (one backward pass, or a slice)."""

    def bytes_per_token(self, layers: Sequence[int]) -> int:
        """Memory a chunk holds per token before any layer is asked for (e.g. dz/do)."""
        return 0

    def with_logits(self, logits: Tensor) -> GradientSource:
        """The same source for other z_t [T] in the capture's graph (a contrast of logits)."""
        raise TraceError(
            f"{type(self).__name__} holds fixed gradients; a contrast needs a captured trace"
        )


class _TensorChunk(GradientChunk):
    def __init__(self, grads: Tensor, tokens: Sequence[int]) -> None:
        super().__init__(tokens)
        self.grads = grads[list(tokens)]  # [c, L, H, N, N]

    def layer(self, layer: int, n: int, out: Tensor | None = None) -> Tensor:
        block = self.grads[:, layer, :, :n, :n]
        return block if out is None else out.copy_(block)

    def finite(self, layer: int) -> Tensor:
        acc = torch.float64 if self.grads.dtype == torch.float64 else torch.float32
        return torch.isfinite(self.grads[:, layer].sum(dim=(1, 2, 3), dtype=acc))


class TensorGradients(GradientSource):
    """Gradients given as one tensor [T, L, H, N, N] (e.g. from your own capture code)."""

    def __init__(self, grads: Tensor) -> None:
        self.grads = grads

    def chunk(self, tokens: Sequence[int], layers: Sequence[int]) -> GradientChunk:
        return _TensorChunk(self.grads, tokens)


class FunctionGradients(GradientSource):
    """Gradients from a function ``tokens -> [k, L, H, N, N]`` (computed per chunk, not kept)."""

    def __init__(self, fn: GradientFn) -> None:
        self.fn = fn

    def chunk(self, tokens: Sequence[int], layers: Sequence[int]) -> GradientChunk:
        return _TensorChunk(self.fn(list(tokens)), range(len(tokens)))


@dataclass
class ModelContext:
    """What produced a captured trace, for methods and policies that run the model again."""

    adapter: Any
    image: Any  # the PIL image as given to the processor
    question: str


def pad_heads(values: Tensor, heads: int, dim: int, fill: float = 0.0) -> Tensor:
    """``values`` with its head axis ``dim`` padded to ``heads`` (layers with fewer heads)."""
    missing = heads - values.shape[dim]
    if missing <= 0:
        return values
    shape = list(values.shape)
    shape[dim] = missing
    return torch.cat([values, values.new_full(shape, fill)], dim=dim)


# --------------------------------------------------------------------------- trace
def _at(strings: list[str] | None, positions: Tensor) -> list[str]:
    """The strings at ``positions`` (``<p>`` placeholders when a trace has no token strings)."""
    if strings is None:
        return [f"<{int(p)}>" for p in positions]
    return [strings[int(p)] for p in positions]


@dataclass
class Trace:
    """Attentions, index sets, confidences and per-answer-token gradients of one answer."""

    attentions: Sequence[Tensor]  # L x [H, N, N] (a lazy sequence for recomputing captures)
    visual_index: Tensor | None = None  # [|V|] positions of visual tokens (from `layout`)
    prompt_index: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    answer_positions: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    grids: Sequence[Grid | tuple[int, int]] = ()  # the token grids; afterwards their (rows, cols)
    confidences: Tensor = field(default_factory=lambda: torch.zeros(0))  # [T] at p_t
    input_ids: Tensor | None = None  # [N]
    tokens: list[str] | None = None  # N token pieces, as the tokenizer stores them ("Ġred")
    texts: list[str] | None = None  # N display texts (" red"; `models.token_text`), else tokens
    answer_source: str = "given"  # "given" (teacher-forced) or "generated" (greedy)
    hidden_states: list[Tensor] | None = None  # L+1 x [N, D] (embeddings, then each layer)
    readout: Callable[[Tensor], Tensor] | None = None  # hidden [.., D] -> logits
    meta: dict[str, Any] = field(default_factory=dict)
    gradient_source: GradientSource | None = field(default=None, repr=False)
    gradient_fn: GradientFn | None = field(default=None, repr=False)  # a source, as a function
    # Tensors in the autograd graph of the captured pass, for methods that differentiate
    # other quantities (DEX-AR's logit lens, Grad-CAM on hidden states), each with the
    # forward's batch axis of 1: "outputs" / "values" L x attention outputs [1, N, H, d] and
    # values [1, Hkv, N, d], "hidden_states" L+1 x [1, N, D], "logits" [T] (z_t).
    graph: dict[str, Any] | None = field(default=None, repr=False)
    layout: VisualLayout | None = None
    # Per layer: what computes it (`LAYER_KINDS`; None: softmax everywhere).
    layer_kinds: list[str] | None = None
    # Per layer: where a row may attend, bool [N, N] (None: causal, j <= i).
    supports: Sequence[Tensor | None] | None = field(default=None, repr=False)
    context: ModelContext | None = field(default=None, repr=False)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)  # derived results, per trace
    # The answer tokens being explained (`xattr.targets`): [T] bool, None for all of them.
    target: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.layout is None:
            if self.visual_index is None:
                raise TraceError("a trace needs visual_index and grids, or a layout")
            try:
                self.layout = VisualLayout(self.visual_index, as_grids(self.grids))
            except LayoutError as err:
                raise TraceError(str(err)) from None
        self.visual_index = self.layout.positions
        self.grids = [g.shape for g in self.layout.grids]  # (rows, cols) each; boxes: `layout`
        if self.texts is None:
            self.texts = self.tokens
        if self.gradient_source is None and self.gradient_fn is not None:
            self.gradient_source = FunctionGradients(self.gradient_fn)
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
        grid: tuple[int, int] | Sequence[tuple[int, int] | Grid],
        confidences: Tensor | Sequence[float] | None = None,
        tokens: list[str] | None = None,
        texts: list[str] | None = None,
        support: Tensor | Sequence[Tensor | None] | None = None,
    ) -> Trace:
        """A trace from plain tensors: attentions L x [H, N, N], gradients [T, L, H, N, N].

        ``support`` is where rows may attend (bool [N, N] for every layer, or one per layer);
        the default is causal (j <= i). ``tokens`` are the pieces, ``texts`` what each shows
        (default: the pieces).
        """
        attn = [a.detach() for a in attentions]
        answer_positions = torch.as_tensor(answer_positions, dtype=torch.long)
        n_tokens = int(answer_positions.numel())
        if confidences is None:
            confidences = torch.ones(n_tokens)
        source = None
        if gradients is not None:
            grads = gradients.detach()
            expected = (n_tokens, len(attn), *attn[0].shape) if attn else None
            if tuple(grads.shape) != expected:
                raise TraceError(
                    f"gradients have shape {tuple(grads.shape)}, expected [T, L, H, N, N] = {expected}"
                )
            source = TensorGradients(grads)
        supports = None
        if support is not None:
            if isinstance(support, Tensor):
                supports = [support.bool()] * len(attn)
            else:
                supports = [None if s is None else s.bool() for s in support]
        return cls(
            attentions=attn,
            visual_index=torch.as_tensor(visual_index, dtype=torch.long),
            prompt_index=torch.as_tensor(prompt_index, dtype=torch.long),
            answer_positions=answer_positions,
            grids=as_grids(grid),  # type: ignore[arg-type]
            confidences=torch.as_tensor(confidences, dtype=torch.float32),
            tokens=tokens,
            texts=texts,
            gradient_source=source,
            supports=supports,
        )

    def _validate(self) -> None:
        if len(self.attentions) == 0:
            raise TraceError("trace has no attention layers")
        heads = getattr(self.attentions, "layer_heads", None)  # a lazy sequence knows them
        if heads is None:  # plain tensors: check every layer
            first = tuple(self.attentions[0].shape)
            heads = []
            for layer, a in enumerate(self.attentions):
                shape = tuple(a.shape)
                if len(shape) != 3 or shape[1] != shape[2] or shape[1:] != first[1:]:
                    raise TraceError(
                        f"layer {layer} attention has shape {shape}, expected [H, N, N] with "
                        f"N = {first[-1]}"
                    )
                heads.append(shape[0])
            n_tokens = first[-1]
        else:
            n_tokens = int(self.attentions.seq_len)
        self._layer_heads, self._seq_len = [int(h) for h in heads], int(n_tokens)
        if self.layer_kinds is None:
            self.layer_kinds = [SOFTMAX] * len(self.attentions)
        unknown = sorted(set(self.layer_kinds) - set(LAYER_KINDS))
        if unknown or len(self.layer_kinds) != len(self.attentions):
            raise TraceError(
                f"layer_kinds must name one of {LAYER_KINDS} for each of the "
                f"{len(self.attentions)} layers, got {self.layer_kinds}"
            )
        n = self._seq_len
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
        for name, strings in (("tokens", self.tokens), ("texts", self.texts)):
            if strings is not None and len(strings) != n:
                raise TraceError(f"{len(strings)} {name} for a sequence of {n} tokens")
        if self.supports is not None and len(self.supports) != len(self.attentions):
            raise TraceError(
                f"{len(self.supports)} support masks for {len(self.attentions)} layers"
            )

    # ------------------------------------------------------------------- properties
    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        """The most heads any layer has (layers may differ: Qwen3.5's linear layers)."""
        return max(self._layer_heads)

    def layer_heads(self, layer: int) -> int:
        """Heads of ``layer``: H_l of its attention [H_l, N, N]."""
        return self._layer_heads[layer]

    def layers_of_kind(self, kinds: Sequence[str]) -> list[int]:
        """The layers whose kind is in ``kinds``, ascending."""
        assert self.layer_kinds is not None
        return [layer for layer, kind in enumerate(self.layer_kinds) if kind in kinds]

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def num_answer_tokens(self) -> int:
        return int(self.answer_positions.numel())

    @property
    def predicting_positions(self) -> Tensor:
        """p_t = s_t - 1: the row every per-token relevance is read at."""
        return self.answer_positions - 1

    @property
    def grid(self) -> tuple[int, int]:
        """The (rows, cols) of the first token grid."""
        return self.layout.grids[0].shape

    @property
    def device(self) -> torch.device:
        """Where the attention tensors live (the first layer's device for sharded models)."""
        device = getattr(self.attentions, "device", None)
        return device if device is not None else self.attentions[0].device

    @property
    def dtype(self) -> torch.dtype:
        dtype = getattr(self.attentions, "dtype", None)
        return dtype if dtype is not None else self.attentions[0].dtype

    @property
    def answer_tokens(self) -> list[str]:
        """Each answer token's display text: joined, they are the answer."""
        return _at(self.texts, self.answer_positions)

    @property
    def answer_pieces(self) -> list[str]:
        """Each answer token as the tokenizer stores it (``Ġred``, ``▁red``, byte pieces)."""
        return _at(self.tokens, self.answer_positions)

    @property
    def prompt_tokens(self) -> list[str]:
        """The question's tokens' display texts."""
        return _at(self.texts, self.prompt_index)

    @property
    def prompt_pieces(self) -> list[str]:
        return _at(self.tokens, self.prompt_index)

    def attention_stack(self) -> Tensor:
        """All attentions as one detached tensor [L, H, N, N] (memory: one all-layer copy)."""
        return torch.stack([a.detach() for a in self.attentions])

    def support(self, layer: int) -> Tensor | None:
        """Bool [N, N]: where rows of ``layer`` may attend; None means causal (j <= i)."""
        return None if self.supports is None else self.supports[layer]

    # -------------------------------------------------------------------- gradients
    @property
    def has_gradients(self) -> bool:
        return self.gradient_source is not None

    def require_gradients(self, method: str) -> None:
        """Raise a clear error when a gradient method gets a trace without gradients."""
        if not self.has_gradients:
            raise TraceError(
                f"method {method!r} needs per-token gradients but this trace was captured "
                "without them (capture with gradients=True, or pass gradients to from_tensors)"
            )

    def _source(self) -> GradientSource:
        if self.gradient_source is None:
            raise TraceError("trace has no gradients")
        return self.gradient_source

    def gradients_for(self, tokens: Sequence[int]) -> Tensor:
        """Full gradients of the listed answer tokens, [k, L, H, N, N] (memory-hungry: for
        inspection and tests; methods stream them through `methods.sweep`)."""
        for t in tokens:
            if not 0 <= t < self.num_answer_tokens:
                raise TraceError(f"answer token {t} out of range (T = {self.num_answer_tokens})")
        layers = list(range(self.num_layers))
        chunk = self._source().chunk(list(tokens), layers)
        grads = [chunk.layer(layer, self.seq_len) for layer in layers]  # [k, H_l, N, N] each
        heads = self.num_heads  # layers with fewer heads (hybrid models): zeros past their own
        return torch.stack([pad_heads(g, heads, 1) for g in grads], dim=1)

    def token_gradients(self, t: int) -> Tensor:
        """d z_t / d A for answer token t: [L, H, N, N] (computed on each call, not kept)."""
        return self.gradients_for([t])[0]

    def iter_gradients(self, tokens: Sequence[int] | None = None) -> Iterator[tuple[int, Tensor]]:
        """Yield (t, [L, H, N, N]) token by token, so one token's gradients are held at a time."""
        for t in range(self.num_answer_tokens) if tokens is None else tokens:
            yield t, self.token_gradients(t)

    def gradients(self) -> Tensor:
        """Every answer token's gradients at once: [T, L, H, N, N]."""
        return self.gradients_for(list(range(self.num_answer_tokens)))
