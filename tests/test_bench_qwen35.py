"""benchmarks/bench_qwen35.py --quick as a user types it: Qwen3.5's real head shapes at 4
layers and N ~ 25, each measurement in its own process, within a minute."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(\d+(?:\.\d+)?)"


def _value(text: str, *units: str) -> float:
    """The number of a cell like '1.23 s' (one of ``units`` after it), finite."""
    found = re.fullmatch(NUMBER + " ?(" + "|".join(map(re.escape, units)) + ")", text)
    assert found, f"{text!r} is not a number followed by one of {units}"
    value = float(found.group(1))
    assert math.isfinite(value)
    return value


def _rows(stdout: str, width: int) -> list[list[str]]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in stdout.splitlines()
        if re.match(r"\| \d", line)
    ]
    return [r for r in rows if len(r) == width]


@pytest.mark.slow
def test_quick_prints_a_row_per_answer_length_and_the_implicit_attention():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_qwen35.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny shapes: threads only add contention
        timeout=600,  # a guard, not a target: benchmarks print their times
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 layers (1 softmax), linear 32 value / 16 key heads of dim 128" in done.stdout
    rows = _rows(done.stdout, 10)
    assert [int(r[1]) for r in rows] == [2, 8], done.stdout
    for n, t, took_s, floor_s, ratio, implicit_s, calls, mem, floor_mem, mem_ratio in rows:
        assert int(n) > int(t)
        assert _value(took_s, "s") > 0 and _value(floor_s, "s") > 0
        assert _value(implicit_s, "s") >= 0
        assert _value(ratio, "x") > 0 and _value(mem_ratio, "x") > 0
        assert int(calls) == 3  # each of the 3 linear layers' A computed once, then kept
        assert _value(mem, "MB", "GB") > 0 and _value(floor_mem, "MB", "GB") > 0
    (implicit,) = _rows(done.stdout, 4)
    assert int(implicit[0]) == 128
    assert _value(implicit[1], "s") > 0 and _value(implicit[2], "MB", "GB") > 0
