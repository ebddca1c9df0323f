"""benchmarks/bench_long_answer.py --quick as a user types it: both tables at a tiny shape,
every cell finite, the chunk sizes and the batched VJP switch really used."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _value(text: str, unit: str) -> float:
    """The number of a cell like '1.23 s' (``unit`` after it), which must be finite."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)" + re.escape(unit), text)
    assert found, f"{text!r} is not a number followed by {unit!r}"
    value = float(found.group(1))
    assert math.isfinite(value)
    return value


def _table(text: str, columns: int) -> list[list[str]]:
    return [
        cells
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
        for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]
        if len(cells) == columns and cells[0].isdigit()
    ]


@pytest.mark.slow
def test_quick_prints_ratios_per_answer_length_and_batched_against_loop():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_long_answer.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _table(done.stdout, 11)
    assert [int(r[1]) for r in rows] == [8, 32], done.stdout
    for n, t, chunk, secs, floor_secs, ratio, growth, mem, floor_mem, mratio, mgrowth in rows:
        assert int(n) > int(t) and 1 <= int(chunk) <= int(t)
        assert _value(secs, " s") > 0 and _value(floor_secs, " s") > 0
        assert _value(mem, " MB") >= 0 and _value(floor_mem, " MB") > 0
        for cell in (ratio, growth, mratio, mgrowth):
            assert _value(cell, "x") >= 0
    assert rows[0][6] == rows[0][10] == "1.00x"  # the first length is the reference
    assert re.search(
        r"growth of the ratios from T = 8 to T = 32: time \S+x, memory \S+x", done.stdout
    )
    batched = _table(done.stdout, 7)
    assert [r[3] for r in batched] == ["loop", "batched"], done.stdout
    for t, n, chunk, _, secs, ratio, mem in batched:
        assert int(t) == 8 and int(n) > 8 and int(chunk) == 8  # one chunk: the whole answer
        assert _value(secs, " s") > 0 and _value(ratio, "x") > 0 and _value(mem, " MB") >= 0
    assert re.search(r"batched / loop: time \S+x, working memory \S+x", done.stdout)


def test_the_memory_probe_skips_the_backward_passes_before_its_last_tokens(monkeypatch):
    """--probe K: chunks wholly before answer token T - K get zeros of the VJP's shape, the
    others the real VJP (here a stand-in that records what it was asked)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_scale

    from xattr import vjp
    from xattr.models import recording

    asked = []

    def real(z, inputs, tokens, batched=None):
        asked.append(list(tokens))
        return [torch.ones(len(tokens), *x.shape) for x in inputs]

    monkeypatch.setattr(vjp, "batched_vjp", real)
    plain = recording.batched_vjp
    z, x = torch.zeros(5), torch.zeros(2, 3)
    with bench_scale.vjp_mode(None, skip_before=3) as sizes:
        early = recording.batched_vjp(z, [x], [0, 1, 2])
        late = recording.batched_vjp(z, [x], [2, 3])
    assert asked == [[2, 3]] and sizes == [3, 2]
    assert early[0].shape == (3, 2, 3) and not early[0].any()
    assert late[0].shape == (2, 2, 3) and late[0].all()
    assert recording.batched_vjp is plain  # put back as it was
