"""Evaluate attribution methods on one model and one dataset, training-free.

python train_free_eval.py                                   # embedded default
python train_free_eval.py method=[glimpse,tmme] data.limit=20 logger=wandb
python train_free_eval.py -m experiment=glimpse_ablation    # the paper's Table 3
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from xattr.pipeline import ConfigError, register_resolvers, run

register_resolvers()
log = logging.getLogger("train_free_eval")


@hydra.main(version_base="1.3", config_path="conf", config_name="train_free_eval")
def main(cfg: DictConfig) -> float | None:
    """Compose, run, and return the metric a sweeper optimises (``optimized_metric``).

    A configured value that cannot run is one line on stderr and exit status 2."""
    try:
        summary = run(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    key = cfg.get("optimized_metric")
    if not key or not summary:
        return None
    method, metric = key.split("/", 1)
    return summary["table"][method][metric].mean


if __name__ == "__main__":
    main()
