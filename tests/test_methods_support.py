"""Attention that is not causal: a bidirectional image block (Gemma 3, PaliGemma's prefix) and
sliding windows. Every method works over the real support, checked on hand-built traces."""

from __future__ import annotations

import pytest
import torch

import xattr
from support.reference import (
    close,
    glimpse_reference,
    gradcam_reference,
    random_causal_attentions,
    raw_attention_reference,
    rollout_reference,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
    tmme_reference,
)
from xattr import methods

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from support.reference

N, L, H, T = 20, 3, 2, 3
GRID = (2, 3)
VISUAL = list(range(2, 8))  # one image block
PROMPT = [9, 10, 11, 12, 13, 14, 15, 16]
ANSWER = [17, 18, 19]


def bidirectional_image_block() -> torch.Tensor:
    """Causal, except that the image's tokens see each other both ways: bool [N, N]."""
    support = torch.ones(N, N, dtype=torch.bool).tril()
    block = torch.tensor(VISUAL)
    support[block[:, None], block[None, :]] = True
    return support


def sliding_window(width: int = 5) -> torch.Tensor:
    """Causal within the last ``width`` positions: bool [N, N]."""
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    return (j <= i) & (i - j < width)


def _trace(support: torch.Tensor, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    attn = random_causal_attentions(L, H, N, g, support)
    grads = torch.randn(T, L, H, N, N, generator=g, dtype=torch.float64) + 0.3
    for t, s in enumerate(ANSWER):
        grads[t, :, :, s:, :] = 0.0  # rows past p_t
    conf = (0.2 + 0.8 * torch.rand(T, generator=g, dtype=torch.float64)).tolist()
    trace = xattr.Trace.from_tensors(
        list(attn), grads, visual_index=VISUAL, prompt_index=PROMPT, answer_positions=ANSWER,
        grid=GRID, confidences=conf, support=support,
    )  # fmt: skip
    return trace, attn, grads, conf


@pytest.mark.parametrize("make", [bidirectional_image_block, sliding_window])
def test_every_method_follows_the_real_support(make):
    support = make()
    trace, attn, grads, conf = _trace(support)
    lay = {"visual_index": VISUAL, "prompt_index": PROMPT, "answer_positions": ANSWER}
    ref = glimpse_reference(attn, grads, confidences=conf, supports=[support] * L, **lay)
    expl = methods.get("glimpse", token_policy="all").explain(trace)
    close(expl.visual.flatten(), ref["visual"])
    close(expl.meta["head_weights"], ref["head_weights"])
    for name, rows in (
        ("tmme", tmme_reference(attn, grads, answer_positions=ANSWER)),
        ("rollout", rollout_reference(attn, answer_positions=ANSWER)[0]),
        ("raw_attention", raw_attention_reference(attn, answer_positions=ANSWER)),
        (
            "gradcam",
            gradcam_reference(attn, grads, answer_positions=ANSWER, supports=[support] * L),
        ),
    ):
        got = methods.get(name, token_policy="all").explain(trace)
        close(got.visual.flatten(), torch.stack([r[VISUAL] for r in rows]).mean(0))


def test_the_support_changes_the_gradient_sums():
    """The causal default would give other head weights on a bidirectional trace (not vacuous)."""
    support = bidirectional_image_block()
    trace, attn, grads, conf = _trace(support, seed=3)
    causal = xattr.Trace.from_tensors(
        list(attn), grads, visual_index=VISUAL, prompt_index=PROMPT, answer_positions=ANSWER,
        grid=GRID, confidences=conf,
    )  # fmt: skip
    a = methods.get("glimpse").explain(trace).meta["head_weights"]
    b = methods.get("glimpse").explain(causal).meta["head_weights"]
    assert not torch.allclose(a, b)
    assert trace.support(0)[VISUAL[0], VISUAL[-1]] and causal.support(0) is None


def test_the_sweep_keeps_the_support_blocks_of_one_block_size_only(monkeypatch):
    """One-token chunks grow n by one each: the support cache must not keep every n's block
    (measured: 0.7 GB over a 512-token answer at N ~ 800 before it dropped them)."""
    from support.reference import random_trace
    from xattr.methods import sweep

    trace, *_ = random_trace(N=40, L=2, H=2, T=12, grid=(2, 2))
    sizes: list[int] = []
    real = sweep._support

    def watched(trace, layer, n, like, cache):
        block = real(trace, layer, n, like, cache)
        sizes.append(len({k[1] for k in cache if k != "n"}))  # distinct block sizes held
        return block

    monkeypatch.setattr(sweep, "_support", watched)
    xattr.methods.explain_all(trace, ["glimpse"], budget=1)  # one token per chunk
    assert len(sizes) == 2 * 12 and max(sizes) == 1


def test_the_sweep_trims_the_heap_once_per_chunk_on_a_cpu(monkeypatch):
    """Freed heap pages go back to the OS after every chunk (`xattr.heap`): a long answer's
    RSS then follows its live tensors (docs/performance.md, "Long answers")."""
    from xattr import heap
    from xattr.methods import sweep

    assert heap.trim_heap() in (True, False)  # callable here, whatever the C library
    calls = []
    monkeypatch.setattr(sweep, "trim_heap", lambda: calls.append(1) or True)
    trace, *_ = _trace(sliding_window())
    monkeypatch.setenv("XATTR_GRADIENT_MEMORY", "1")  # one answer token per chunk
    methods.get("glimpse").attribute(trace)
    assert len(calls) == T
