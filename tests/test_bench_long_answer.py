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
