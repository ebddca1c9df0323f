"""Row-vector propagation equals the matrix recursions it replaces (SPEC §6)."""

from __future__ import annotations

import pytest
import torch

from support.reference import (
    random_causal_attentions,
    rownorm,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
)
from xattr.methods.propagation import (
    propagate_product,
    propagate_residual,
    row_normalize,
    select_layers,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from support.reference


def maps_and_weights(L: int, N: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    maps = list(random_causal_attentions(L, 1, N, g)[:, 0])  # L x [N, N] lower triangular
    weights = torch.rand(L, generator=g, dtype=torch.float64)
    return maps, weights


def residual_matrix(maps, weights):
    R = torch.eye(maps[0].shape[0], dtype=maps[0].dtype)
    for A, w in zip(maps, weights):
        R = R + w * A @ R  # input to output
    return R


def product_matrix(maps):
    R = torch.eye(maps[0].shape[0], dtype=maps[0].dtype)
    for A in maps:
        R = A @ R
    return R


@pytest.mark.parametrize(("L", "N"), [(1, 5), (3, 16), (6, 33)])
def test_row_vector_residual_equals_matrix_recursion_for_every_row(L, N):
    maps, weights = maps_and_weights(L, N, seed=L * N)
    R = residual_matrix(maps, weights)
    for p in range(N):
        torch.testing.assert_close(
            propagate_residual(maps, p, weights), R[p], rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(propagate_residual(maps, 2), residual_matrix(maps, [1.0] * L)[2])


@pytest.mark.parametrize(("L", "N"), [(1, 5), (3, 16), (6, 33)])
def test_row_vector_product_equals_matrix_product(L, N):
    maps, _ = maps_and_weights(L, N, seed=L + N)
    R = product_matrix(maps)
    rows = propagate_product(maps, list(range(N)))  # all rows at once
    torch.testing.assert_close(rows, R, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [0, 4, 11, 19])
def test_cropped_maps_give_the_cropped_row(p):
    maps, weights = maps_and_weights(4, 20, seed=p)
    R = residual_matrix(maps, weights)
    cropped = [m[: p + 1, : p + 1].clone() for m in maps]
    row = propagate_residual(cropped, p, weights)
    assert row.shape == (p + 1,)
    torch.testing.assert_close(row, R[p, : p + 1], rtol=1e-12, atol=1e-12)
    assert torch.equal(R[p, p + 1 :], torch.zeros(20 - p - 1, dtype=R.dtype))  # causality
    torch.testing.assert_close(
        propagate_product(cropped, [p])[0], product_matrix(maps)[p, : p + 1], rtol=1e-12, atol=1e-12
    )


def test_batched_positions_equal_single_rows():
    maps, weights = maps_and_weights(3, 12, seed=7)
    rows = propagate_residual(maps, [3, 7, 11], weights)
    for k, p in enumerate([3, 7, 11]):
        torch.testing.assert_close(rows[k], propagate_residual(maps, p, weights))
    torch.testing.assert_close(propagate_residual(maps, torch.tensor([3, 7]), weights), rows[:2])


def test_row_normalize_keeps_zero_rows_zero():
    m = torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(row_normalize(m), rownorm(m))
    assert torch.equal(row_normalize(m)[1], torch.zeros(2, dtype=torch.float64))


def test_empty_map_list_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        propagate_residual([], 0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", [0, 1, 2, 3, 4]),
        (None, [0, 1, 2, 3, 4]),
        (0.6, [2, 3, 4]),
        (0.3, [3, 4]),
        (1.0, [0, 1, 2, 3, 4]),
        (2, [3, 4]),
        (12, [0, 1, 2, 3, 4]),
        ([4, -5, 2], [0, 2, 4]),
    ],
)
def test_select_layers(spec, expected):
    assert select_layers(5, spec) == expected


@pytest.mark.parametrize("spec", [[], 0, 0.0, 1.5, True, [7]])
def test_select_layers_rejects_empty_or_bad_subsets(spec):
    with pytest.raises(ValueError):
        select_layers(5, spec)
