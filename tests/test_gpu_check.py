"""benchmarks/gpu_check.py --full as a user types it, with --smoke: the real-size path at tiny
shapes (scaled-down 7B and 32B configurations, bf16, on whatever device there is)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(\d+(?:\.\d+)?)"


def _value(text: str, unit: str) -> float:
    """The number of a cell like '1.23 s' (``unit`` after it), which must be finite."""
    found = re.fullmatch(NUMBER + re.escape(unit), text)
    assert found, f"{text!r} is not a number followed by {unit!r}"
    value = float(found.group(1))
    assert math.isfinite(value)
    return value


def test_full_smoke_prints_a_finite_row_per_model_and_attention():
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--full", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny shapes: threads only add contention
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| Qwen2.5-VL-")
    ]
    assert [(r[0], r[3]) for r in rows] == [
        (f"Qwen2.5-VL-{name}", impl) for name in ("7B", "32B") for impl in ("eager", "sdpa")
    ], done.stdout
    for model, n, t, _, weights, peak, floor_peak, seconds, floor, ratio, maps in rows:
        assert int(t) == 8 and int(n) > int(t)
        assert _value(weights, " MB") > 0  # the smoke shapes: well under a GB
        for cell in (peak, floor_peak):  # CUDA memory, or n/a on the CPU
            assert cell == "n/a (no CUDA)" or _value(cell, " GB") > 0
        assert _value(seconds, " s") > 0 and _value(floor, " s") > 0
        assert _value(ratio, "x") > 0
        assert maps == "7 finite", f"{model}: {maps}"  # six methods and the reduced iGOS
