"""`model=qwen2_5_vl_32b` (device: auto, i.e. device_map="auto") loads on a plain install."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from PIL import Image

import xattr
from xattr.pipeline import register_resolvers
from xattr.pipeline.run import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_the_32b_config_loads_through_device_map_auto(tmp_path):
    """The paper model's config, with the shipped toy at its path: device_map needs accelerate."""
    register_resolvers()
    toy = xattr.toy.checkpoint("qwen2_5_vl")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train_free_eval",
            overrides=["model=qwen2_5_vl_32b", f"model.path={toy}", "model.dtype=float32"],
        )
    assert cfg.model.device == "auto"
    adapter = instantiate(cfg.model)
    assert adapter.device.type == "cpu"  # no GPU here: accelerate places every weight on the CPU
    trace = adapter.trace(Image.new("RGB", (112, 112), "gray"), "What color is the circle?")
    assert trace.meta["answer_text"]
