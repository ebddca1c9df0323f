"""Memory and time of explanation on a video at a real LVLM's attention shape, against the floor.

The model is `bench_scale`'s: a random Qwen2.5-VL of the real class with Qwen2.5-VL-7B's
attention shape and a narrow width (28 layers, 28 heads, 4 kv heads, width 224, eager
attention). The prompt shows an ``xattr.Video`` of F noise frames of ``--frame-size``
pixels a side; the tiny processor's pixel budget is that size squared, so every frame keeps
its size, and two consecutive frames (the temporal patch) make one grid of
``(size / 28)^2`` merged tokens: N ~ (F / 2) * (size / 28)^2 + the text. The default 308 px
gives 121 tokens per frame pair, N ~ 1,000 at F = 16.

Each measurement runs in its own process (`bench_scale.measure`, with the video as what the
prompt shows): working memory = peak RSS - RSS after loading, over one run; time = the median
of ``--repeats`` warm runs, the floor and the capture interleaved; floor = one forward + one
plain VJP per answer token (`common.floor`); capture = the five methods from one capture.
Prints one row per frame count and how time and memory grow with N (the fitted exponent).

    python benchmarks/bench_video.py            # F = 4, 8, 16: ~25 min on one thread
    python benchmarks/bench_video.py --quick    # 4 layers, 4 heads, F = 2, 4: under a minute
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import bench_scale  # benchmarks/bench_scale.py: one measurement per process
import numpy as np
from bench_qwen35 import size
from bench_scale import FIVE, build
from common import child as common_child


def video(spec: dict) -> Any:
    """``spec["frames"]`` seeded noise frames of ``spec["image"]`` pixels a side."""
    import xattr

    s = spec["image"]
    rng = np.random.default_rng(0)
    return xattr.Video(rng.integers(0, 255, (spec["frames"], s, s, 3), dtype=np.uint8))


def measure(spec: dict) -> dict:
    """`bench_scale.measure` with the video of ``spec`` in place of an image."""
    return bench_scale.measure(spec, visual=video)


def child(spec: dict) -> dict:
    """`measure` in a fresh process."""
    return common_child(__file__, spec)


def seconds(t: float) -> str:
    """A time cell: two decimals under 10 s (quick rows stay above zero), one above."""
    return f"{t:.2f} s" if t < 10 else f"{t:.1f} s"


def exponent(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of log y against log x: y ~ x^slope (NaN where a y <= 0)."""
    if min(ys) <= 0:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="4 layers, 4 heads, F = 2, 4")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs (median)")
    ap.add_argument("--frames", default="4,8,16", help="frame counts F, comma-separated")
    ap.add_argument("--frame-size", type=int, default=308, help="pixels a side, a multiple of 28")
    ap.add_argument("--answer", type=int, default=8, help="answer tokens T")
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if args.frame_size % 28:
        ap.error(
            f"--frame-size must be a multiple of 28 (patch 14, merge 2), got {args.frame_size}"
        )
    if args.quick:
        args.layers, args.heads, args.kv_heads, args.hidden, args.frames = 4, 4, 2, 32, "2,4"
    print(f"L = {args.layers}, H = {args.heads} (kv {args.kv_heads}), width {args.hidden}, "
          f"eager, {args.frame_size} px frames ({(args.frame_size // 28) ** 2} tokens a frame "
          f"pair), {args.threads} threads")  # fmt: skip
    print("| F | N | T | time | floor time | ratio | working memory | floor memory | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build(
            Path(tmp), args.layers, args.heads, args.kv_heads, args.hidden, args.frame_size
        )
        for frames in map(int, args.frames.split(",")):
            spec = {"model": model, "image": args.frame_size, "frames": frames,
                    "T": args.answer, "impl": "eager", "threads": args.threads,
                    "methods": FIVE}  # fmt: skip
            floor = child({**spec, "mode": "floor"})
            got = child({**spec, "mode": "capture"})
            timed = child({**spec, "mode": "time", "repeats": args.repeats})
            rows.append((got["N"], timed["capture"], timed["floor"], got["working"]))
            print(
                f"| {frames} | {got['N']} | {args.answer} | {seconds(timed['capture'])} | "
                f"{seconds(timed['floor'])} | {timed['capture'] / timed['floor']:.2f}x | "
                f"{size(got['working'])} | {size(floor['working'])} | "
                f"{got['working'] / floor['working']:.2f}x |",
                flush=True,
            )
    if len(rows) > 1:
        n, took, floor_took, working = (list(c) for c in zip(*rows, strict=True))
        print(
            f"growth from N = {n[0]} to N = {n[-1]} (x{n[-1] / n[0]:.2f}): time "
            f"x{took[-1] / took[0]:.2f}, floor time x{floor_took[-1] / floor_took[0]:.2f}, "
            f"working memory x{working[-1] / working[0]:.2f}; fitted over the rows, time ~ "
            f"N^{exponent(n, took):.2f}, floor time ~ N^{exponent(n, floor_took):.2f}, "
            f"working memory ~ N^{exponent(n, working):.2f}"
        )


if __name__ == "__main__":
    main()
