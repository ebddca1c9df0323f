"""Orchestration: Hydra config -> Lightning test loop -> rows, tables, logs. No method internals."""

from .run import ConfigError, register_resolvers, run

__all__ = ["ConfigError", "register_resolvers", "run"]
