"""GLIMPSE end to end vs the bare cost of its inputs, on a tiny model of the real class.

bare  = one teacher-forced forward pass keeping attentions in the graph + one
        ``torch.autograd.grad`` per answer token (what any gradient method must pay)
bare batched = the same forward + one batched VJP over all T tokens (``is_grads_batched``),
        the cheapest way to get the same gradients, which the capture also uses
full  = ``adapter.trace(...)`` + ``glimpse.explain(trace)`` (capture, per-token gradients,
        the whole method)

Prints full / bare (target <= 1.3x). Uses the shipped toy checkpoint when present, else a
random tiny Qwen2.5-VL-class model; ``--answer-tokens`` sets T.

    python benchmarks/bench_glimpse_overhead.py [--answer-tokens 8] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import xattr
from xattr.toy.build import build_tiny_model

QUESTION = "What color is the circle?"


def _adapter(tmp: str):
    try:
        return xattr.models.load("qwen2_5_vl", xattr.toy.checkpoint("qwen2_5_vl")), "toy checkpoint"
    except FileNotFoundError:
        return xattr.models.load(
            "qwen2_5_vl", build_tiny_model("qwen2_5_vl", tmp, seed=0)
        ), "random tiny"


def bare_cost(adapter, image, answer_ids, batched: bool = False) -> float:
    """Forward with attentions in the graph, then one plain VJP per answer token (or one batched)."""
    start = time.perf_counter()
    inputs = adapter.full_inputs(adapter.prepare(image, QUESTION), answer_ids)
    store = []
    hooks = [
        m.register_forward_hook(lambda _m, _a, out: store.append(out[1]))
        for m in adapter.attention_modules()
    ]
    hooks.append(
        adapter.model.get_input_embeddings().register_forward_hook(
            lambda _m, _a, out: out.detach().requires_grad_(True)
        )
    )
    try:
        logits = adapter.model(**inputs, use_cache=False).logits[0]
    finally:
        for h in hooks:
            h.remove()
    n_prompt = inputs["input_ids"].shape[1] - answer_ids.numel()
    if batched:
        T = answer_ids.numel()
        z = logits[torch.arange(n_prompt - 1, n_prompt - 1 + T), answer_ids]  # [T]
        torch.autograd.grad(z, store, grad_outputs=torch.eye(T), is_grads_batched=True)
    else:
        for t, y in enumerate(answer_ids.tolist()):
            torch.autograd.grad(logits[n_prompt + t - 1, y], store, retain_graph=True)
    return time.perf_counter() - start


def full_cost(adapter, image, answer_ids) -> float:
    start = time.perf_counter()
    trace = adapter.trace(image, QUESTION, answer_ids)
    xattr.methods.get("glimpse").explain(trace)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        adapter, kind = _adapter(tmp)
        image = Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
        )
        words = ["red", "circle", "left", "of", "the", "blue", "square", "and", "green"]
        answer_ids = adapter.encode_answer(" ".join(words[: args.answer_tokens]))
        for _ in range(3):  # warm-up
            bare_cost(adapter, image, answer_ids)
            full_cost(adapter, image, answer_ids)
        bare, batched, full = [], [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit all
            bare.append(bare_cost(adapter, image, answer_ids))
            batched.append(bare_cost(adapter, image, answer_ids, batched=True))
            full.append(full_cost(adapter, image, answer_ids))
    b, bb, f = statistics.median(bare), statistics.median(batched), statistics.median(full)
    print(f"model: {kind}, T = {answer_ids.numel()}, threads = {torch.get_num_threads()}")
    print(f"bare forward + {answer_ids.numel()} VJPs: {b * 1e3:8.2f} ms (median of {args.repeats})")
    print(f"bare forward + 1 batched VJP: {bb * 1e3:8.2f} ms")
    print(f"GLIMPSE end to end:          {f * 1e3:8.2f} ms")
    print(f"ratio full / bare: {f / b:.2f}x  (target <= 1.3x)")
    print(f"ratio full / bare batched: {f / bb:.2f}x")


if __name__ == "__main__":
    main()
