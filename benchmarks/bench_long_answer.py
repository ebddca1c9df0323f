"""Long answers at real cost: the five methods' overhead over the floor must not grow with T.

At Qwen2.5-VL-7B's attention shape (28 heads, 4 key-value heads, narrow width 224; see
`bench_scale.py`, whose measurements this reuses: each in its own process, working memory
from peak RSS, time as interleaved medians) and a prompt of N ≈ 300 tokens (a 476 px image:
289 visual tokens), the five methods from one capture explain an answer of T tokens, for
each T in ``--answers``. Each row gives time and working memory as ratios to the floor at
the same length (one forward + T plain VJPs; a forward + backward's memory), and those
ratios divided by the first row's (T = 64): the overhead's growth with the answer, which
should stay at or below 1.25.

A second table compares, at ``--batched-at`` (T = 64), the capture's per-chunk VJPs as one
batched backward (``is_grads_batched``, what `xattr.vjp.batched_vjp` does on accelerators)
against the loop of plain VJPs a CPU gets by default: time (interleaved in one process)
and working memory.

The real model has 28 layers; a CPU thread needs ≈ 0.23 s per layer for one VJP at
N ≈ 800, so T = 512 at 28 layers is hours per run. The default is two layers (``--layers``
to change it): heads, N and T are real, and every cost the ratios compare is per layer.

    python benchmarks/bench_long_answer.py            # ~20 min on one thread
    python benchmarks/bench_long_answer.py --quick    # tiny shape, T = 8 and 32: < 1 min
    python benchmarks/bench_long_answer.py --probe 8 --layers 28   # memory only, ~30 min
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from bench_scale import FIVE, build, child  # benchmarks/bench_scale.py

BOUND = 1.25  # the most a ratio to the floor may grow from the first T to the last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="28 for the real model (hours)")
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=224)
    ap.add_argument("--image", type=int, default=476, help="pixels a side (476: N_prompt = 302)")
    ap.add_argument("--answers", default="64,512", help="answer lengths T, comma-separated")
    ap.add_argument("--attention", default="eager", help="eager | sdpa")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--repeats", default="3,1", help="interleaved timed runs (median) per answer length"
    )
    ap.add_argument("--warmup", type=int, default=8, help="answer length of the warm-up run")
    ap.add_argument(
        "--batched-at", type=int, default=64, help="T of the batched VJP check (0: none)"
    )
    ap.add_argument(
        "--probe",
        type=int,
        default=0,
        help="memory only: K > 0 runs the backward passes of the last K answer tokens alone "
        "(the sweep still visits every token on tensors of the real shapes); no time rows",
    )
    ap.add_argument("--quick", action="store_true", help="2 layers, 4 heads, T = 8 and 32")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.heads, args.kv_heads, args.hidden, args.image = 2, 4, 2, 32, 112
        args.answers, args.batched_at = "8,32", 8
    answers = [int(t) for t in args.answers.split(",")]
    repeats = [int(r) for r in args.repeats.split(",")]
    repeats += repeats[-1:] * (len(answers) - len(repeats))
    print(f"L = {args.layers}, H = {args.heads} (kv {args.kv_heads}), width {args.hidden}, "
          f"image {args.image} px, {args.attention}, five methods, {args.threads} threads")  # fmt: skip
    rows, batched = [], None
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), args.layers, args.heads, args.kv_heads, args.hidden, args.image)
        common = {"model": model, "image": args.image, "impl": args.attention,
                  "threads": args.threads, "methods": FIVE}  # fmt: skip
        for T, times in zip(answers, repeats):
            spec = {**common, "T": T, "probe": args.probe}
            floor = child({**spec, "mode": "floor"})
            got = child({**spec, "mode": "capture"})
            if args.probe:  # memory only
                rows.append((T, floor, got, None))
                continue
            timed = child({**spec, "mode": "time", "repeats": times,
                           "warmup": min(args.warmup, T), "also_batched": args.batched_at == T})  # fmt: skip
            rows.append((T, floor, got, timed))
            if args.batched_at == T:
                batched = (T, got, child({**spec, "mode": "capture", "batched": True}), timed)
    _print_rows(rows)
    if batched:
        _print_batched(*batched)


def _print_rows(rows: list) -> None:
    print("| N | T | chunk | time | floor time | ratio | ÷ first | working memory | "
          "floor memory | ratio | ÷ first |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first = None
    for T, floor, got, timed in rows:
        time_ratio = timed["capture"] / timed["floor"] if timed else math.nan  # nan: a probe
        memory_ratio = got["working"] / floor["working"]
        first = first or (time_ratio, memory_ratio)
        times = (
            f"{_s(timed['capture'])} | {_s(timed['floor'])} | {time_ratio:.2f}x | "
            f"{time_ratio / first[0]:.2f}x"
            if timed
            else "— | — | — | —"
        )
        print(
            f"| {got['N']} | {T} | {got['chunk']} | {times} | "
            f"{_mb(got['working'])} | {_mb(floor['working'])} | "
            f"{memory_ratio:.2f}x | {memory_ratio / first[1]:.2f}x |"
        )
    growth = [g for g in (time_ratio / first[0], memory_ratio / first[1]) if not math.isnan(g)]
    verdict = "within" if max(growth) <= BOUND else "OVER"
    names = ("time", "memory")[-len(growth) :]
    said = ", ".join(f"{name} {g:.2f}x" for name, g in zip(names, growth, strict=True))
    print(f"growth of the ratios from T = {rows[0][0]} to T = {rows[-1][0]}: {said} "
          f"({verdict} the {BOUND}x bound)")  # fmt: skip


def _print_batched(T: int, loop: dict, batched: dict, timed: dict) -> None:
    print()
    print("| T | N | chunk | VJPs | time | ratio to floor | working memory |")
    print("|---|---|---|---|---|---|---|")
    for name, got, seconds in (("loop", loop, timed["capture"]), ("batched", batched, timed["batched"])):  # fmt: skip
        print(
            f"| {T} | {got['N']} | {got['chunk']} | {name} | {_s(seconds)} | "
            f"{seconds / timed['floor']:.2f}x | {_mb(got['working'])} |"
        )
    print(f"batched / loop: time {timed['batched'] / timed['capture']:.2f}x, working memory "
          f"{batched['working'] / loop['working']:.2f}x")  # fmt: skip


def _s(seconds: float) -> str:
    return f"{seconds:.3g} s"


def _mb(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


if __name__ == "__main__":
    main()
