"""Row-vector propagation vs the full matrix recursion (SPEC §6), on random causal maps.

Prints, per sequence length N, the time of one row ``R[p, :]`` by the row-vector form
(``v <- v + lam (v @ A)``, top layer first) and by the matrix recursion
(``R <- R + lam A @ R`` then read row p), checks they agree, and prints the speed-up.
Run: ``python benchmarks/bench_propagation.py [--layers 8] [--sizes 256 1024 2048]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from xattr.methods.propagation import propagate_residual


def causal_maps(L: int, N: int, seed: int = 0) -> list[torch.Tensor]:
    """L random row-stochastic lower-triangular [N, N] float32 maps."""
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    return [
        torch.softmax(torch.randn(N, N, generator=g).masked_fill(~causal, float("-inf")), dim=-1)
        for _ in range(L)
    ]


def matrix_row(maps: list[torch.Tensor], weights: torch.Tensor, p: int) -> torch.Tensor:
    """The O(L N^3) form: R = I; R <- R + lam_l A_l @ R (input to output); row p."""
    R = torch.eye(maps[0].shape[0])
    for A, w in zip(maps, weights):
        R = R + w * (A @ R)
    return R[p]


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, L = {args.layers}"
    )
    print(f"{'N':>6} {'row-vector':>12} {'matrix':>12} {'speed-up':>10} {'max |diff|':>11}")
    for N in args.sizes:
        maps = causal_maps(args.layers, N, seed=N)
        weights = torch.softmax(torch.randn(args.layers), dim=0)
        p = N - 1
        row = propagate_residual(maps, p, weights)
        ref = matrix_row(maps, weights, p)
        diff = float((row - ref).abs().max())
        assert torch.allclose(row, ref, rtol=1e-4, atol=1e-6), f"row-vector != matrix at N={N}"
        t_row = best_of(lambda: propagate_residual(maps, p, weights), repeats=20)  # noqa: B023
        t_mat = best_of(lambda: matrix_row(maps, weights, p), repeats=1 if N >= 2048 else 3)  # noqa: B023
        print(
            f"{N:>6} {t_row * 1e3:>10.2f}ms {t_mat * 1e3:>10.1f}ms {t_mat / t_row:>9.0f}x {diff:>11.2e}"
        )


if __name__ == "__main__":
    main()
