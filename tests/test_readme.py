"""The README's "Add a method" example runs as written against the real interfaces."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import xattr

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str, lang: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_add_a_method_example_registers_and_explains():
    code = _block_after("## Add a method", "python")
    code = code.replace("from ..", "from xattr.").replace("from .base", "from xattr.methods.base")
    code = code.replace("from .tokens", "from xattr.methods.tokens")
    namespace: dict = {}
    if "gradient_norm" not in xattr.methods.available():
        exec(compile(code, "README:add-a-method", "exec"), namespace)
    assert "gradient_norm" in xattr.methods.available()

    g = torch.Generator().manual_seed(0)
    n, layers, heads = 9, 2, 2
    mask = torch.ones(n, n).tril().bool()
    attn = torch.softmax(
        torch.randn(layers, heads, n, n, generator=g).masked_fill(~mask, -torch.inf), -1
    )
    grads = torch.randn(2, layers, heads, n, n, generator=g)
    trace = xattr.Trace.from_tensors(
        list(attn), grads, visual_index=[1, 2, 3, 4], prompt_index=[5, 6],
        answer_positions=[7, 8], grid=(2, 2), tokens=[f"w{i}" for i in range(n)],
    )  # fmt: skip
    expl = xattr.methods.get("gradient_norm").explain(trace)
    # by hand: the norm over heads of the last layer's gradient row p_t at V, averaged over
    # tokens, on each token's causal block (entries past p_t are outside it)
    rows = []
    for t, p in enumerate([6, 7]):
        block = grads[t, -1, :, : p + 1, : p + 1].norm(dim=0)  # [p+1, p+1]
        rows.append(block[p, [1, 2, 3, 4]])
    torch.testing.assert_close(expl.visual, torch.stack(rows).mean(0).view(2, 2))
    assert expl.method == "gradient_norm" and expl.hparams["layer"] == -1
