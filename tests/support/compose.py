"""The real train_free_eval config composed in-process with a tiny model and tmp folders."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from xattr.pipeline import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_run(
    tmp: Path, model_dir: Path, *overrides: str, samples: int = 4, overlays: int = 2
) -> DictConfig:
    """The real config with a tiny model, ``samples`` synthetic samples and tmp output folders,
    as ``@hydra.main`` hands it over (the job config only), output in ``tmp/run``."""
    register_resolvers()
    synthetic = not any(o.startswith("data=") for o in overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train_free_eval",
            return_hydra_config=True,
            overrides=[
                f"model.path={model_dir}",
                f"paths.root_dir={tmp}",
                f"paths.data_dir={tmp / 'data'}",
                f"paths.output_dir={tmp / 'run'}",
                *([f"data.dataset.n={samples}"] if synthetic else []),
                f"overlays={overlays}",
                *overrides,
            ],
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it over: the job config only
    return cfg
