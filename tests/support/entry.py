"""The evaluation entry point as a user runs it: ``python train_free_eval.py ARGS`` in a folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = str(Path(__file__).resolve().parents[2] / "train_free_eval.py")


def run_entry_point(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the script with ``args`` in ``cwd`` (W&B offline, no other W&B setting inherited)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**base, "WANDB_MODE": "offline", **(env or {})},
        timeout=600,
    )
