"""Library chatter a run does not need, silenced once per process (the run and each DDP rank).

A run prints the progress bar, the table and warnings that matter. Not: Lightning's
start-up INFO lines (printed twice, by its own handler and Hydra's) and its LitLogger tip,
the pytree ``LeafSpec`` deprecation inside Lightning, the DistributedSampler advice (the
pipeline merges rows by sample id, so padded duplicates are harmless), transformers'
weight-loading bars, and wandb's banner and its "anonymous" notice (the run prints one line
saying where its W&B run is instead).
"""

from __future__ import annotations

import logging
import os
import warnings

WARNING_FILTERS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Using `DistributedSampler` with the dataloaders",
)
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def quiet_libraries() -> None:
    """Raise library log levels, filter known-harmless warnings, turn off loading bars."""
    for pattern in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if logging.getLogger().handlers:  # under Hydra: its handler alone prints (once)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
    os.environ.setdefault("WANDB_SILENT", "true")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def quiet_logger(logger: object) -> object:
    """Drop the ``anonymous=None`` Lightning's WandbLogger passes on (wandb warns at any value)."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger
