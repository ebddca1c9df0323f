"""docs/make_figure.py with its defaults redraws a figure laid out like the shipped one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from xattr.data.cached import synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "docs" / "default_run.png"
# the shipped figure's columns, read off the picture: image, mask, then these overlays
SHIPPED_METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "dexar"]


def test_default_methods_give_the_shipped_figure_size(tmp_path):
    data = {"root": str(tmp_path / "data"), "n": 4, "seed": 12345, "split": "val"}
    dataset = synthetic_dataset(**data)
    run = tmp_path / "run"
    (run / "overlays").mkdir(parents=True)
    OmegaConf.save({"data": {"dataset": data}}, run / "config.yaml")
    for i in range(4):  # the shipped figure's four rows
        for method in SHIPPED_METHODS:  # a run that saved exactly the shipped methods' overlays
            Image.new("RGB", (112, 112)).save(
                run / "overlays" / f"{dataset[i].sample_id}_{method}.png"
            )
    out = tmp_path / "figure.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_figure.py"), str(run), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Image.open(out).size == Image.open(SHIPPED).size
