"""The evaluation entry point, installed as ``xattr-eval`` and run as ``python -m xattr.eval``.

Evaluate attribution methods on one model and one dataset, training-free::

    xattr-eval                                           # embedded default
    xattr-eval method=[glimpse,tmme] data.limit=20 logger=wandb
    xattr-eval -m experiment=glimpse_ablation            # the paper's Table 3

The configs ship inside the package (``xattr/conf``, the repository's ``conf/``), so this
runs from an installed wheel as from a checkout; ``train_free_eval.py`` in the repository
calls this same function.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .pipeline import ConfigError, register_resolvers, run

register_resolvers()
CONF = Path(__file__).resolve().parent / "conf"  # a folder path: no package needed inside it


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="train_free_eval")
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
