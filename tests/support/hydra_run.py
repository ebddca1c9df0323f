"""Compose train_free_eval's real config for a tiny model, a few synthetic samples, tmp folders."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_run(tmp: Path, model_dir: Path, *overrides: str, samples: int = 4) -> DictConfig:
    """The job config as ``@hydra.main`` hands it over, output in ``tmp/run``."""
    from xattr.pipeline import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train_free_eval",
            return_hydra_config=True,
            overrides=[
                f"model.path={model_dir}",
                f"paths.root_dir={tmp}",
                f"paths.data_dir={tmp / 'data'}",
                f"paths.output_dir={tmp / 'run'}",
                f"data.dataset.n={samples}",
                "overlays=1",
                *overrides,
            ],
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
