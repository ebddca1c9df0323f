"""benchmarks/bench_video.py --quick as a user types it: a row per frame count at 4 layers and
4 heads, every cell a finite positive number, N growing with the frames as the pairs say."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _value(text: str, *units: str) -> float:
    """The number of a cell like '1.23 s' (one of ``units`` after it): finite and positive."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?) ?(" + "|".join(map(re.escape, units)) + ")", text)
    assert found, f"{text!r} is not a number followed by one of {units}"
    value = float(found.group(1))
    assert math.isfinite(value) and value > 0, text
    return value


@pytest.mark.slow
def test_quick_prints_a_row_per_frame_count_with_n_growing_by_the_frame_pairs():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_video.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny shapes: threads only add contention
        timeout=600,  # a guard, not a target: the benchmark prints its times
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "L = 4, H = 4 (kv 2)" in done.stdout
    assert "308 px frames (121 tokens a frame pair)" in done.stdout  # (308 / 28)^2
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in done.stdout.splitlines()
        if re.match(r"\| \d", line)
    ]
    assert [(len(r), int(r[0])) for r in rows] == [(9, 2), (9, 4)], done.stdout
    for _, n, t, took, floor, ratio, mem, floor_mem, mem_ratio in rows:
        assert int(t) == 8 and int(n) > int(t)
        for cell in (took, floor):
            _value(cell, "s")
        for cell in (ratio, mem_ratio):
            _value(cell, "x")
        for cell in (mem, floor_mem):
            _value(cell, "MB", "GB")
    # F = 2 is one frame pair, F = 4 two: the prompt gains exactly one pair's 121 tokens
    assert int(rows[1][1]) - int(rows[0][1]) == 121, done.stdout
    assert re.search(r"growth from N = \d+ to N = \d+ .*time ~ N\^-?\d", done.stdout)
