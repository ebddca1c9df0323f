"""Sanity check: model-parameter randomisation (Adebayo et al., 2018), SPEC §7.

An explanation that reflects what the model computed must change when the model does. The
top language-model decoder layers are re-initialised, cascading from the output downwards
(step ``k`` randomises the top ``k`` layers; ``cascade=False`` randomises only the ``k``-th
layer from the top, the "independent" variant), the same answer is teacher-forced through
the randomised model, the method explains it again, and the visual map is compared with
the original one.

Definition: per step, ``rho_k = Spearman(S_original, S_randomised_k)`` on the token grid
(Pearson correlation of average ranks, ``xattr.metrics.get("spearman", grid=None)``).
Range [-1, 1]. Better: **lower** — a map that stays rank-identical (``rho`` near 1) after
the layers that produced the answer were destroyed does not depend on them. A constant
map (e.g. a method that ignores the model, or a map that is all zero) has no ranking:
NaN with a :class:`~xattr.metrics.MetricUndefinedWarning`, counted as skipped.

Re-initialisation follows the usual transformers scheme with a fixed seed: weights of
linear (and any other non-norm) parameters ~ N(0, initializer_range) (the text config's,
0.02 when absent), biases 0, normalisation weights 1 and their biases 0. Every layer draws
from its own generator seeded by ``(seed, layer index)``, so a layer gets the same weights
in every step and in both variants. The user's model is modified in place only for the
duration of the call: the touched layers' parameters and buffers are saved (on the CPU)
first and copied back afterwards, even on error, so the model ends bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import capture
from ..images import ImageLike, load_image
from ._base import METRICS


def parameter_randomisation(
    adapter: Any,
    image: ImageLike,
    question: str,
    method: Any,
    *,
    answer: str | Sequence[int] | torch.Tensor | None = None,
    layers: int | Sequence[int] | None = None,
    cascade: bool = True,
    seed: int = 0,
    return_maps: bool = False,
) -> list[dict[str, Any]]:
    """Spearman correlation between the original map and the map after each randomisation step.

    ``method`` is an ``Attributor`` or a registered method name. ``answer`` is teacher-forced
    (None: the original model's greedy answer, then teacher-forced in every step).
    ``layers``: which steps ``k`` to run — None for every ``k = 1..L`` (``L`` decoder
    layers), an int ``n`` for ``k = 1..n``, or a sequence of ``k`` values. One row per step:

    - ``step`` (0-based), ``k`` (the step's ``k``), ``cascade``;
    - ``layers``: indices (0 = first decoder layer) re-initialised in this step;
    - ``fraction_randomised``: ``len(layers) / L``;
    - ``spearman``: rank correlation with the original map (NaN + warning when undefined);
    - ``answer_logprob`` / ``original_answer_logprob``: mean log-probability of the answer
      tokens under the randomised / original model (shows the model did change);
    - with ``return_maps``, ``map`` (the randomised map) and ``original`` (numpy arrays).

    Cost: one capture (plus the method) per step, on top of the original explanation.
    """
    from .. import methods as methods_lib

    if isinstance(method, str):
        method = methods_lib.get(method)
    blocks = decoder_layers(adapter)
    n_layers = len(blocks)
    steps = _steps(layers, n_layers)
    image = load_image(image)
    spearman = METRICS.get_class("spearman")(grid=None)

    original_trace = _capture(adapter, image, question, answer, method)
    answer_ids = original_trace.input_ids[original_trace.answer_positions]
    original = _visual(method.explain(original_trace))
    original_logprob = _answer_logprob(original_trace)
    del original_trace

    touched = sorted({i for k in steps for i in _layers_for(k, n_layers, cascade)})
    saved = {i: _snapshot(blocks[i]) for i in touched}
    std = _init_std(adapter)
    rows: list[dict[str, Any]] = []
    randomised: set[int] = set()
    try:
        for step, k in enumerate(steps):
            wanted = set(_layers_for(k, n_layers, cascade))
            for i in sorted(randomised - wanted):  # independent variant: undo the last layer
                _restore(blocks[i], saved[i])
            for i in sorted(wanted - randomised):
                _reinitialise(blocks[i], std, _layer_seed(seed, i))
            randomised = wanted
            trace = _capture(adapter, image, question, answer_ids, method)
            new = _visual(method.explain(trace))
            row: dict[str, Any] = {
                "step": step,
                "k": k,
                "cascade": cascade,
                "layers": sorted(wanted),
                "fraction_randomised": len(wanted) / n_layers,
                "spearman": float(spearman(new, original)),
                "answer_logprob": _answer_logprob(trace),
                "original_answer_logprob": original_logprob,
            }
            del trace  # free its graph before the next capture
            if return_maps:
                row.update(map=new, original=original)
            rows.append(row)
    finally:
        for i in touched:
            _restore(blocks[i], saved[i])
    return rows


def decoder_layers(adapter: Any) -> nn.ModuleList | list[nn.Module]:
    """The language model's decoder layers, input to output."""
    layers = getattr(
        getattr(getattr(adapter.model, "model", None), "language_model", None), "layers", None
    )
    if layers is None:
        parents = {id(m) for m in adapter.attention_modules()}
        owners = [m for m in adapter.model.modules() if any(id(c) in parents for c in m.children())]
        if len(owners) != len(parents):
            raise ValueError(
                f"cannot find the decoder layers of {type(adapter.model).__name__}: expected "
                "model.model.language_model.layers or one parent per attention module"
            )
        return owners
    return layers


def _steps(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        steps = list(range(1, n_layers + 1))
    elif isinstance(layers, (int, np.integer)):
        steps = list(range(1, int(layers) + 1))
    else:
        steps = [int(k) for k in layers]
    if not steps:
        raise ValueError("no randomisation step requested (layers is empty or 0)")
    bad = [k for k in steps if not 1 <= k <= n_layers]
    if bad:
        raise ValueError(f"steps {bad} out of range: the model has {n_layers} decoder layers")
    return steps


def _layers_for(k: int, n_layers: int, cascade: bool) -> list[int]:
    """Layer indices randomised at step ``k``: the top ``k`` (cascade) or the ``k``-th from the top."""
    return list(range(n_layers - k, n_layers)) if cascade else [n_layers - k]


def _layer_seed(seed: int, layer: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(layer)]).generate_state(1)[0])


def _init_std(adapter: Any) -> float:
    config = adapter.model.config
    text = getattr(config, "text_config", None) or config
    std = getattr(text, "initializer_range", None) or getattr(config, "initializer_range", None)
    return float(std or 0.02)


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "Norm" in name


@torch.no_grad()
def _reinitialise(layer: nn.Module, std: float, seed: int) -> None:
    """Re-initialise every parameter of ``layer`` in place (draws on the CPU, device-independent)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for module in layer.modules():
        norm = _is_norm(module)
        for name, param in module.named_parameters(recurse=False):
            if norm:
                param.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias" or name.endswith("_bias"):
                param.zero_()
            else:
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
                param.copy_(noise.to(dtype=param.dtype, device=param.device))


def _snapshot(layer: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the layer's parameters and buffers."""
    state = {f"p:{n}": p.detach().to("cpu", copy=True) for n, p in layer.named_parameters()}
    state.update({f"b:{n}": b.detach().to("cpu", copy=True) for n, b in layer.named_buffers()})
    return state


@torch.no_grad()
def _restore(layer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in layer.named_parameters():
        param.copy_(state[f"p:{name}"])
    for name, buf in layer.named_buffers():
        buf.copy_(state[f"b:{name}"])


def _capture(adapter: Any, image: Any, question: str, answer: Any, method: Any) -> Any:
    """The trace ``method`` needs (the same capture `xattr.explain` makes)."""
    return capture(adapter, image, question, answer, {method.name: method})[0]


def _visual(expl: Any) -> np.ndarray:
    return expl.visual.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def _answer_logprob(trace: Any) -> float:
    """Mean log-probability of the teacher-forced answer tokens under the captured model."""
    return float(torch.log(trace.confidences.double()).mean())
