"""GLIMPSE alone vs all five methods sharing one sweep over a trace's gradients (reuse, don't redo).

A random causal trace (default N = 1024, L = 8, H = 8, T = 4, float32) with its gradients in
memory. Times GLIMPSE alone, all five methods (GLIMPSE, TMME, rollout, raw attention,
Grad-CAM) through one shared sweep (`xattr.methods.explain_all`), and the same five run one
after the other (each its own sweep), and prints the ratios (target: all five shared <=
1.5x GLIMPSE alone). Best of ``--repeats`` interleaved runs; ``--threads 1`` gives steadier
numbers on a busy machine.
Run: ``python benchmarks/bench_methods_shared_trace.py [--N 1024 --L 8 --H 8 --T 4]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import xattr
from xattr import methods

ALL = ("glimpse", "tmme", "rollout", "raw_attention", "gradcam")


def random_trace(N: int, L: int, H: int, T: int, seed: int = 0) -> xattr.Trace:
    """Causal softmax attentions, random gradients (rows past p_t zero), a 16 x 16 image."""
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    attn = [
        torch.softmax(torch.randn(H, N, N, generator=g).masked_fill(~causal, float("-inf")), dim=-1)
        for _ in range(L)
    ]
    grads = torch.randn(T, L, H, N, N, generator=g)
    answer = list(range(N - T, N))
    for t, s in enumerate(answer):
        grads[t, :, :, s:] = 0.0
    side = 16 if N > 300 else 4
    return xattr.Trace.from_tensors(
        attn,
        grads,
        visual_index=range(5, 5 + side * side),
        prompt_index=range(5 + side * side, N - T),
        answer_positions=answer,
        grid=(side, side),
        confidences=torch.rand(T, generator=g),
    )


def run_once(trace: xattr.Trace, names: tuple[str, ...], share: bool) -> dict[str, float]:
    """Wall time of the methods on ``trace``: one shared sweep, or each method on its own."""
    trace.memo.clear()
    if share:
        start = time.perf_counter()
        methods.explain_all(trace, {name: methods.get(name) for name in names})
        return {"together": time.perf_counter() - start}
    times = {}
    for name in names:
        start = time.perf_counter()
        methods.get(name).explain(trace)
        times[name] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=1024)
    parser.add_argument("--L", type=int, default=8)
    parser.add_argument("--H", type=int, default=8)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    trace = random_trace(args.N, args.L, args.H, args.T)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; "
        f"N={args.N} L={args.L} H={args.H} T={args.T}; gradients in memory; "
        f"best of {args.repeats} interleaved runs"
    )
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "shared": [], "unshared": []}
    run_once(trace, ALL, share=True)  # warm-up
    for _ in range(args.repeats):  # interleaved, so a busy machine hits all settings alike
        runs["alone"].append(run_once(trace, ("glimpse",), share=True))
        runs["shared"].append(run_once(trace, ALL, share=True))
        runs["unshared"].append(run_once(trace, ALL, share=False))
    best = {k: min(v, key=lambda r: sum(r.values())) for k, v in runs.items()}
    alone = sum(best["alone"].values())
    print(f"GLIMPSE alone:                {alone:7.3f} s")
    for key, label in (("shared", "one shared sweep "), ("unshared", "one sweep each   ")):
        total = sum(best[key].values())
        detail = ", ".join(f"{k} {v:.3f}" for k, v in best[key].items())
        print(f"all five, {label}:   {total:7.3f} s = {total / alone:.2f}x GLIMPSE  ({detail})")


if __name__ == "__main__":
    main()
