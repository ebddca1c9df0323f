"""What one run prints: the progress bar, the table and warnings that matter, no library chatter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.entry import run_entry_point

NOISE = (
    "GPU available",  # Lightning's start-up INFO lines (they were printed twice)
    "TPU available",
    "litlogger",  # Lightning's LitLogger tip
    "LeafSpec",  # torch's pytree deprecation inside Lightning
    "Loading weights",  # transformers' weight-loading bar
    "anonymous setting",  # wandb's notice about a setting Lightning passes
    "Find logs at",  # wandb's closing banner (a relative, garbled path)
    "wandb: ",
    "DistributedSampler",  # Lightning's advice for trainer.test on several devices
)


def _console(tmp_path: Path, *overrides: str) -> str:
    done = run_entry_point(tmp_path, "data.limit=2", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _assert_quiet(out: str) -> None:
    found = [n for n in NOISE if n in out]
    assert not found, f"{found} in:\n{out[-4000:]}"
    assert "Testing DataLoader 0: 100%" in out  # the progress bar


def test_default_run_prints_the_table_and_no_library_chatter(tmp_path):
    out = _console(tmp_path, "logger=many")
    _assert_quiet(out)
    for method in ("glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar", "igos_fast"):
        assert f"| {method} |" in out
    assert "W&B run (offline): " in out and "wandb sync " in out  # one line instead of a banner
    assert "Method warnings:" in out  # the warnings that matter stay
    # one bar, redrawn about once per sample (not once per method), and log lines never
    # inside a bar's line: 2 samples, 7 methods
    draws = [piece for piece in re.split(r"[\r\n]", out) if "Testing DataLoader" in piece]
    assert len(draws) <= 12, len(draws)
    assert not [piece for piece in draws if "WARNING" in piece or "INFO" in piece]


@pytest.mark.slow
def test_ddp_run_has_no_sampler_advice_or_start_up_lines(tmp_path):
    out = _console(tmp_path, "trainer=ddp_cpu", "method=[rollout]", "metrics=agreement")
    _assert_quiet(out)
    assert "| rollout |" in out
