"""Memory and time of explanation at a real LVLM's attention shape, against the floor.

The model is a random Qwen2.5-VL of the real class with many layers and heads but a narrow
width (``--layers 28 --heads 28 --kv-heads 4 --hidden 224``: Qwen2.5-VL-7B's attention shape),
so the attention tensors are as large as the real model's while the matrices are not.
Every measurement runs in its own process, so that its peak RSS is its own:

- working memory = peak RSS - RSS after the model is loaded, over one run;
- time = the median of ``--repeats`` runs, the floor and the capture interleaved in one
  process after a warm-up (so that other load on the machine hits both alike);
- floor = one teacher-forced forward (same attention implementation) and one plain VJP of
  every answer token's logit into the input embeddings: the time any gradient method must
  pay; its peak is a plain forward + backward, the memory floor;
- capture = ``xattr.explain(adapter, image, question, method=[...], answer=...)``: one
  capture, every method, each token's gradients streamed once.

Prints one row per (L, H, N, T, attention implementation, methods) with the ratios to the
floor measured in the same run. Defaults reproduce the README's table:

    python benchmarks/bench_scale.py                 # ~10 min on 2 cores
    python benchmarks/bench_scale.py --quick         # 8 layers, 8 heads: a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import QUESTION, peak, rss  # benchmarks/common.py
from common import answer as make_answer
from common import child as common_child
from common import floor as common_floor
from PIL import Image

FIVE = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam"]


@contextlib.contextmanager
def vjp_mode(batched: bool | None, skip_before: int = 0) -> Iterator[list[int]]:
    """The capture's chunk VJPs one batched backward (True), a loop of plain ones (False), or
    the library's choice (None: batched on accelerators only); yields the chunk sizes seen.

    ``skip_before``: chunks wholly before this answer token get zeros of the VJP's shape
    instead of the VJP (the memory probe: the sweep still runs every token, at every block
    size, on tensors of the real shapes; only the backward passes are skipped)."""
    import torch

    from xattr import vjp
    from xattr.models import recording

    sizes: list[int] = []

    def counted(z, inputs, tokens, batched_=None):
        sizes.append(len(tokens))
        if max(tokens) < skip_before:
            return [torch.zeros(len(tokens), *x.shape, dtype=x.dtype) for x in inputs]
        return vjp.batched_vjp(z, inputs, tokens, batched if batched is not None else batched_)

    before = recording.batched_vjp
    recording.batched_vjp = counted  # the name the captured gradient source calls
    try:
        yield sizes
    finally:
        recording.batched_vjp = before
    assert sizes or batched is None, "the capture never called recording.batched_vjp: stale"


def picture(size: int) -> Image.Image:
    """A square RGB noise image of ``size`` pixels a side (seeded: the same every run)."""
    return Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    )


def measure(spec: dict, visual: Callable[[dict], Any] | None = None) -> dict:
    """One measurement in this process (see the module docstring): seconds and bytes.

    ``visual``: what the prompt shows, made from the spec (default: `picture` of
    ``spec["image"]``; `bench_video` passes a video). Optional keys: ``batched``
    (`vjp_mode`), ``probe`` (K: memory only, the backward passes of the last K answer tokens
    alone; `vjp_mode`'s ``skip_before``), ``warmup`` (the warm-up's answer length, the
    measured one's by default), ``also_batched`` (time mode: also time the capture with
    batched VJPs, interleaved with the others)."""
    import torch

    import xattr

    torch.set_num_threads(spec["threads"])
    adapter = xattr.models.load(spec["model"], attn_implementation=spec["impl"])
    image = visual(spec) if visual else picture(spec["image"])
    answer = make_answer(spec["T"])
    answer_ids = adapter.encode_answer(answer)
    chunks: list[int] = []

    skip = max(0, spec["T"] - spec["probe"]) if spec.get("probe") else 0

    def floor(image: Any = image, text: str = answer) -> None:
        common_floor(adapter, image, QUESTION, adapter.encode_answer(text), skip_before=skip)

    def capture(
        image: Any = image, text: str = answer, batched: bool | None = spec.get("batched")
    ) -> None:
        with vjp_mode(batched, skip) as seen:
            xattr.explain(adapter, image, QUESTION, method=list(spec["methods"]), answer=text)
        chunks[:] = seen

    n = adapter.prepare(image, QUESTION).prompt_ids.numel() + answer_ids.numel()
    if spec["mode"] == "time":  # all interleaved, so load on the machine hits them alike
        runs = {"floor": floor, "capture": capture}
        if spec.get("also_batched"):
            runs["batched"] = lambda text=answer: capture(text=text, batched=True)
        warm = make_answer(spec.get("warmup") or spec["T"])
        for fn in runs.values():
            fn(text=warm)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(spec["repeats"]):
            for name, fn in runs.items():
                began = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - began)
        return {k: statistics.median(v) for k, v in times.items()} | {"N": n}
    run = floor if spec["mode"] == "floor" else capture
    if spec.get("warm_image"):  # warm the code paths on a small image, a one-token answer
        run(image=picture(spec["warm_image"]), text=make_answer(1))
    base = rss()
    began = time.perf_counter()
    run()  # the peak of one run, over the RSS after loading (and its time, cold unless warmed)
    seconds = time.perf_counter() - began
    return {"working": peak() - base, "seconds": seconds, "N": n, "chunk": max(chunks, default=0)}


def child(spec: dict) -> dict:
    """`measure` in a fresh process."""
    return common_child(__file__, spec)


def build(root: Path, layers: int, heads: int, kv: int, hidden: int, image: int) -> str:
    from xattr.toy.build import build_tiny_model

    out = root / f"L{layers}_H{heads}_D{hidden}_I{image}"
    if not out.exists():
        build_tiny_model(
            "qwen2_5_vl", out, image_size=image, text_layers=layers, text_heads=heads,
            text_kv_heads=kv, text_hidden=hidden, vision_layers=1, vision_hidden=32, vision_heads=2,
        )  # fmt: skip
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="8 layers and 8 heads")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs (median)")
    ap.add_argument(
        "--rows",
        default="448:8:eager:five,448:24:eager:five,448:24:eager:glimpse,448:8:sdpa:five,"
        "448:24:sdpa:five,1008:8:sdpa:glimpse",
        help="image:T:implementation:methods (five | glimpse | a +-joined list), comma-separated",
    )
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if args.quick:
        args.layers, args.heads, args.kv_heads, args.hidden = 8, 8, 2, 64
    print(f"L = {args.layers}, H = {args.heads} (kv {args.kv_heads}), width {args.hidden}, "
          f"{args.threads} threads")  # fmt: skip
    print("| N | T | attention | methods | time | floor time | ratio | working memory | "
          "floor memory | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            image, T, impl, which = row.split(":")
            model = build(
                Path(tmp), args.layers, args.heads, args.kv_heads, args.hidden, int(image)
            )
            methods = FIVE if which == "five" else which.split("+")
            common = {"model": model, "image": int(image), "T": int(T), "impl": impl,
                      "threads": args.threads}  # fmt: skip
            common["methods"] = methods
            floor = child({**common, "mode": "floor"})
            got = child({**common, "mode": "capture"})
            timed = child({**common, "mode": "time", "repeats": args.repeats})
            print(
                f"| {got['N']} | {T} | {impl} | {which} | {timed['capture']:.1f} s | "
                f"{timed['floor']:.1f} s | {timed['capture'] / timed['floor']:.2f}x | "
                f"{got['working'] / 2**30:.2f} GB | {floor['working'] / 2**30:.2f} GB | "
                f"{got['working'] / floor['working']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
