"""Vector-Jacobian products of several scalars at once: one backward pass for a chunk.

``z`` is a vector of scalars in an autograd graph (e.g. the answer tokens' logits z_t);
the gradients of ``z[t]`` for a few ``t`` with respect to some tensors of the graph come
from one batched backward (one-hot cotangents, ``is_grads_batched``), or from a plain loop
of `torch.autograd.grad` where an operation has no batching rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor


def batched_vjp(
    z: Tensor, inputs: Sequence[Tensor], tokens: Sequence[int], batched: bool | None = None
) -> list[Tensor]:
    """``d z[t] / d x`` for t in ``tokens`` and each x in ``inputs``: one [c, *x.shape] per x.

    ``batched``: one batched backward (None: on accelerators, where it pays; on a CPU a
    loop of single backward passes is as fast and holds less). Inputs ``z`` does not depend
    on get zeros. Runs with gradients enabled even inside an outer ``no_grad`` (a Lightning
    test loop).
    """
    tokens = list(tokens)
    if batched is None:
        batched = z.device.type != "cpu"
    with torch.enable_grad():
        if batched and len(tokens) > 1:
            cotangent = torch.zeros(len(tokens), z.numel(), dtype=z.dtype, device=z.device)
            cotangent[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
            try:
                grads = torch.autograd.grad(
                    z,
                    list(inputs),
                    grad_outputs=cotangent,
                    retain_graph=True,
                    is_grads_batched=True,
                    allow_unused=True,
                )
                return [_or_zeros(g, x, len(tokens)) for g, x in zip(grads, inputs, strict=True)]
            except RuntimeError as err:  # an op without a batching rule: plain loop
                warnings.warn(f"batched VJP failed ({err}); falling back to a loop", stacklevel=2)
        per_token = [
            torch.autograd.grad(z[t], list(inputs), retain_graph=True, allow_unused=True)
            for t in tokens
        ]
    return [torch.stack([_or_zeros(g[i], x) for g in per_token]) for i, x in enumerate(inputs)]


def _or_zeros(g: Tensor | None, x: Tensor, batch: int | None = None) -> Tensor:
    """The gradient, or zeros shaped like ``x`` (with a leading batch axis if given) when unused."""
    if g is not None:
        return g.detach()
    shape = x.shape if batch is None else (batch, *x.shape)
    return torch.zeros(shape, dtype=x.dtype, device=x.device)
