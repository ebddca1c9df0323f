"""What the scale benchmarks share: the question, the words an answer of T tokens is made of,
the floor any gradient method pays, and one measurement per process (its peak RSS its own)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

QUESTION = "what color is the circle?"
WORDS = [
    "red",
    "circle",
    "left",
    "of",
    "the",
    "blue",
    "square",
    "and",
    "green",
    "star",
    "near",
    "a",
    "small",
    "yellow",
    "triangle",
]


def answer(length: int) -> str:
    """A teacher-forced answer of ``length`` words (tokens, for the tiny word-level tokenizer)."""
    return " ".join((WORDS * (1 + length // len(WORDS)))[:length])


def floor(adapter: Any, image: Any, question: str, answer_ids: Any, skip_before: int = 0) -> None:
    """The floor: one teacher-forced forward (the adapter's attention implementation) and one
    plain VJP of every answer token's logit into the input embeddings, the graph kept between
    them: the time any gradient method must pay; its peak is a plain forward + backward.
    ``skip_before``: no VJP for the answer tokens before it (a memory probe)."""
    import torch

    inputs = adapter.full_inputs(adapter.prepare(image, question), answer_ids)
    emb = adapter.model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_(True))
    seen: list = []
    grab = emb.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.enable_grad():
            logits = adapter.model(**inputs, use_cache=False).logits[0]
    finally:
        handle.remove()
        grab.remove()
    embeds = seen[-1]
    n_prompt = inputs["input_ids"].shape[1] - answer_ids.numel()
    for t, y in enumerate(answer_ids.tolist()):
        if t < skip_before:
            continue
        torch.autograd.grad(logits[n_prompt + t - 1, y], embeds, retain_graph=True)


def rss() -> int:
    """Resident set size of this process now, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak() -> int:
    """Peak resident set size of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(script: str, spec: dict) -> dict:
    """``script --measure SPEC`` in a fresh process (so that its peak RSS is its own): the JSON
    object on the last line it prints."""
    out = subprocess.run(
        [sys.executable, script, "--measure", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
