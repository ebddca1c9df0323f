"""Memory and time of explanation on Qwen3.5's hybrid attention (Gated DeltaNet + softmax).

The model is a random Qwen3.5 of the real class with the real attention shape and a narrow
width: 32 language layers, every 4th softmax (24 linear); linear layers with 32 value heads
and 16 key heads of head dim 128, softmax layers with 16 query heads and 4 KV heads of head
dim 256; width 128. A linear layer's attention is the exact implicit one, computed on demand
in float64 (`xattr.models.delta_rule.implicit_attention`: one unit-triangular N x N solve per
value head, O(H N^3)) each time the gradient sweep visits the layer, that is once per chunk
of answer tokens.

Each measurement runs in its own process (`bench_scale.measure`): working memory = peak RSS
- RSS after loading, over one run; floor = one teacher-forced forward + one plain VJP per
answer token (`common.floor`); capture = ``xattr.explain`` with the five methods from one
capture. Times are those of the same single runs (after a warm-up on a 64-pixel image
and a one-token answer, before the RSS baseline) unless ``--repeats R`` asks for the
median of R interleaved warm runs (`bench_scale`'s time mode: each row then costs ~R + 2
more captures). The capture's process also counts the implicit attentions it computed and
their seconds. A second table times one linear layer's implicit attention (32 value heads
of dim 128, random q, k, g, beta) against N, with its peak memory.

    python benchmarks/bench_qwen35.py           # ~25 min on one thread (docs/performance.md)
    python benchmarks/bench_qwen35.py --quick   # 4 layers, N ~ 25: ~35 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import bench_scale  # benchmarks/bench_scale.py: one measurement per process
from bench_scale import FIVE
from common import child as common_child
from common import peak, rss

REAL = {  # Qwen3.5's attention shape (text_config of transformers' Qwen3_5Config)
    "text_heads": 16,
    "text_kv_heads": 4,
    "head_dim": 256,
    "linear_key_heads": 16,
    "linear_value_heads": 32,
    "linear_head_dim": 128,
}


def child(spec: dict) -> dict:
    """`measure` in a fresh process."""
    return common_child(__file__, spec)


def measure(spec: dict) -> dict:
    """`bench_scale.measure`, the capture's implicit attentions counted and timed; or one
    layer's implicit attention alone (``mode == "implicit"``)."""
    if spec["mode"] == "implicit":
        return measure_implicit(spec)
    from xattr.models import recording

    calls: dict[int, list] = {}  # N -> [count, seconds]: the warm-up's N is not the row's
    plain = recording.LinearRecord.implicit_attention

    def counted(self, dtype):
        began = time.perf_counter()
        try:
            return plain(self, dtype)
        finally:
            seen = calls.setdefault(int(self.value.shape[2]), [0, 0.0])
            seen[0] += 1
            seen[1] += time.perf_counter() - began

    recording.LinearRecord.implicit_attention = counted
    got = bench_scale.measure(spec)
    count, seconds = calls.get(got["N"], [0, 0.0])
    return got | {"implicit_calls": count, "implicit_s": seconds}


def measure_implicit(spec: dict) -> dict:
    """One layer's implicit attention at ``N``: the first run's working memory (peak RSS over
    the RSS with the inputs made) and the median time of ``repeats`` runs."""
    import torch

    from xattr.models.delta_rule import implicit_attention, prepare_qk

    torch.set_num_threads(spec["threads"])
    gen = torch.Generator().manual_seed(0)
    n, hk, hv, d = spec["N"], spec["key_heads"], spec["value_heads"], spec["head_dim"]
    q, k = prepare_qk(torch.randn(1, n, hk, d, generator=gen),
                      torch.randn(1, n, hk, d, generator=gen), hv)  # fmt: skip
    g = -torch.rand(hv, n, generator=gen).mul(0.2).add(0.01)  # log decays, slow as trained
    beta = torch.rand(hv, n, generator=gen)
    implicit_attention(q[:, :8], k[:, :8], g[:, :8], beta[:, :8])  # load the kernels
    times = []
    base = rss()
    for _ in range(spec["repeats"]):
        began = time.perf_counter()
        out = implicit_attention(q, k, g, beta, out_dtype=torch.float32)  # as the trace asks
        times.append(time.perf_counter() - began)
        if len(times) == 1:
            working = peak() - base
        del out
    return {"seconds": statistics.median(times), "working": working, "output": 4 * hv * n * n}


def build(root: Path, layers: int, shape: dict, hidden: int, image: int) -> str:
    from xattr.toy.build import build_tiny_model

    out = root / f"L{layers}_I{image}"
    if not out.exists():
        build_tiny_model(
            "qwen3_5", out, image_size=image, text_layers=layers, text_hidden=hidden,
            vision_layers=1, vision_hidden=32, vision_heads=2, **shape,
        )  # fmt: skip
    return str(out)


def size(b: float) -> str:
    return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.0f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=32, help="every 4th is softmax")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="4 layers, small images, small N")
    ap.add_argument("--repeats", type=int, default=0,
                    help="interleaved warm timed runs (median); 0: time the memory runs")  # fmt: skip
    ap.add_argument("--rows", default="512:8,512:32,800:8",
                    help="image:T, comma-separated (image 512: N ~ 300; 800: N ~ 650; "
                    "800:32 takes ~25 min on one thread); empty: none")  # fmt: skip
    ap.add_argument("--implicit-n", default="300,650,1300",
                    help="N of the one-layer implicit attention table; empty: none")  # fmt: skip
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if args.quick:
        args.layers, args.rows, args.implicit_n = 4, "64:2,64:8", "128"
    shape = dict(REAL)
    print(f"Qwen3.5 attention shape: {args.layers} layers ({args.layers // 4} softmax), "
          f"linear {shape['linear_value_heads']} value / {shape['linear_key_heads']} key heads "
          f"of dim {shape['linear_head_dim']}, softmax {shape['text_heads']} / "
          f"{shape['text_kv_heads']} heads of dim {shape['head_dim']}; width {args.hidden}, "
          f"eager, {args.threads} threads; "
          + (f"median of {args.repeats} warm runs" if args.repeats else "one run each"))  # fmt: skip
    if args.rows:
        rows(args, shape)
    if args.implicit_n:
        implicit_rows(args, shape)


def rows(args: argparse.Namespace, shape: dict) -> None:
    """The five methods from one capture against the floor, one row per image:T."""
    print()
    print("| N | T | time | floor time | ratio | implicit A | A computed | working memory | "
          "floor memory | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            image, T = (int(x) for x in row.split(":"))
            model = build(Path(tmp), args.layers, shape, args.hidden, image)
            common = {"model": model, "image": image, "T": T, "impl": "eager",
                      "threads": args.threads, "methods": FIVE, "warm_image": 64}  # fmt: skip
            floor = child({**common, "mode": "floor"})
            got = child({**common, "mode": "capture"})
            took, floor_took = got["seconds"], floor["seconds"]
            if args.repeats:
                timed = child({**common, "mode": "time", "repeats": args.repeats})
                took, floor_took = timed["capture"], timed["floor"]
            print(
                f"| {got['N']} | {T} | {took:.1f} s | {floor_took:.1f} s | "
                f"{took / floor_took:.1f}x | {got['implicit_s']:.1f} s | "
                f"{got['implicit_calls']} | {size(got['working'])} | {size(floor['working'])} | "
                f"{got['working'] / floor['working']:.2f}x |",
                flush=True,
            )


def implicit_rows(args: argparse.Namespace, shape: dict) -> None:
    """One linear layer's implicit attention alone, one row per N."""
    print()
    print(f"One linear layer's implicit attention ({shape['linear_value_heads']} value heads, "
          f"{shape['linear_key_heads']} key heads of dim {shape['linear_head_dim']}; float64, "
          "stored float32):")  # fmt: skip
    print()
    print("| N | time | working memory | of which the [H, N, N] output |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.implicit_n.split(",")):
        got = child({"mode": "implicit", "N": n, "threads": args.threads, "repeats": 3,
                     "key_heads": shape["linear_key_heads"],
                     "value_heads": shape["linear_value_heads"],
                     "head_dim": shape["linear_head_dim"]})  # fmt: skip
        print(f"| {n} | {got['seconds']:.2f} s | {size(got['working'])} | {size(got['output'])} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
