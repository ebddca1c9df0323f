"""Relevance propagation shared by every attention-graph method (SPEC §2 step 7, §3, §6).

Only row p_t of the relevance matrix is ever read, so the recursions are run as a row
vector from the top layer down, at O(L N^2) instead of the O(L N^3) matrix form:

    residual form  R = prod_l (I + lam_l A_l)    ->  v <- v + lam_l * (v @ A_l),  l = L..1
    product form   R = A_L @ ... @ A_1           ->  v <- v @ A_l,                l = L..1

Causality makes every entry past p_t irrelevant, so callers may pass maps cropped to
``[:p+1, :p+1]``; the result is then the row cropped to ``p+1`` entries. A list of
positions propagates several rows at once through shared maps (rollout, raw attention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def one_hot_row(position: int, size: int, like: Tensor) -> Tensor:
    """e_position as a row vector [size] with ``like``'s dtype and device."""
    v = torch.zeros(size, dtype=like.dtype, device=like.device)
    v[position] = 1.0
    return v


def one_hot_rows(positions: int | Sequence[int], size: int, like: Tensor) -> Tensor:
    """e_p for one position ([size]) or a stack of them ([k, size]), like ``like``."""
    if isinstance(positions, Tensor):
        positions = positions.tolist()
    if isinstance(positions, int):
        return one_hot_row(positions, size, like)
    rows = torch.zeros(len(positions), size, dtype=like.dtype, device=like.device)
    rows[torch.arange(len(positions)), torch.as_tensor(list(positions), dtype=torch.long)] = 1.0
    return rows


def propagate_residual(
    maps: Sequence[Tensor],
    position: int | Sequence[int],
    weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Row(s) ``position`` of prod_{l=L..1} (I + w_l maps[l]), maps input-to-output: [N] or [k, N]."""
    _require_maps(maps)
    v: Tensor | None = None
    for layer in range(len(maps) - 1, -1, -1):
        w = 1.0 if weights is None else weights[layer]
        m = maps[layer]
        v = one_hot_rows(position, m.shape[-1], m) if v is None else v.to(m.device)
        v = v + w * (v @ m)
    assert v is not None
    return v


def propagate_product(maps: Sequence[Tensor], position: int | Sequence[int]) -> Tensor:
    """Row(s) ``position`` of maps[L-1] @ ... @ maps[0] (attention rollout): [N] or [k, N]."""
    _require_maps(maps)
    v: Tensor | None = None
    for layer in range(len(maps) - 1, -1, -1):
        m = maps[layer]
        v = (one_hot_rows(position, m.shape[-1], m) if v is None else v.to(m.device)) @ m
    assert v is not None
    return v


class LayerMaps(Sequence[Tensor]):
    """Layer maps built on demand, so a propagation holds one [N, N] map at a time."""

    def __init__(self, layers: Sequence[int], build: Callable[[int], Tensor]) -> None:
        self.layers = list(layers)
        self.build = build

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]
        return self.build(self.layers[index])


def _require_maps(maps: Sequence[Tensor]) -> None:
    if len(maps) == 0:
        raise ValueError("nothing to propagate through: the layer list is empty")


def row_normalize(m: Tensor, eps: float = 0.0) -> Tensor:
    """Divide each row by its sum; rows that sum to 0 stay 0."""
    sums = m.sum(dim=-1, keepdim=True)
    return torch.where(
        sums > eps, m / sums.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m)
    )


def row_normalize_(m: Tensor) -> Tensor:
    """`row_normalize` in place (no allocation of an [N, N] map); returns ``m``."""
    sums = m.sum(dim=-1, keepdim=True)
    return m.div_(sums.clamp_min_(torch.finfo(m.dtype).tiny))  # zero rows: 0 / tiny = 0


def is_layer_subset(layers: object) -> bool:
    """Whether ``layers`` is a valid layer-subset spec (see `select_layers`), any model size."""
    if layers is None or layers == "all":
        return True
    if isinstance(layers, bool):
        return False
    if isinstance(layers, float):
        return 0.0 < layers <= 1.0
    if isinstance(layers, int):
        return layers >= 1
    return isinstance(layers, (list, tuple)) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in layers
    )


is_layer_subset.rule = "must be all, a fraction, a count or a list"  # type: ignore[attr-defined]


def select_layers(
    num_layers: int,
    layers: str | int | float | Sequence[int] | None = "all",
) -> list[int]:
    """Resolve a layer subset to 0-based indices in input-to-output order.

    ``"all"``/None: every layer; a float in (0, 1]: the last fraction of layers (rounded
    up); an int k >= 1: the last k layers; a list: explicit 0-based indices (negative
    counts from the top). An empty selection is an error.
    """
    if layers is None or layers == "all":
        chosen = list(range(num_layers))
    elif isinstance(layers, bool):
        raise ValueError(f"layer subset must not be a bool, got {layers!r}")
    elif isinstance(layers, float):
        if not 0.0 < layers <= 1.0:
            raise ValueError(f"layer fraction must be in (0, 1], got {layers}")
        k = max(1, int(-(-layers * num_layers // 1)))  # ceil
        chosen = list(range(num_layers - k, num_layers))
    elif isinstance(layers, int):
        if layers < 1:
            raise ValueError(f"last-k layer count must be >= 1, got {layers}")
        chosen = list(range(max(0, num_layers - layers), num_layers))
    else:
        chosen = []
        for layer in layers:
            idx = int(layer) + num_layers if int(layer) < 0 else int(layer)
            if not 0 <= idx < num_layers:
                raise ValueError(f"layer {layer} out of range for a model with {num_layers} layers")
            chosen.append(idx)
        chosen = sorted(set(chosen))
    if not chosen:
        raise ValueError(f"layer subset {layers!r} selects no layer of {num_layers}")
    return chosen
