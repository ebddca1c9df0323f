"""Orchestration: Hydra config -> Lightning test loop -> rows, tables, logs. No method internals."""

from .run import register_resolvers, run

__all__ = ["register_resolvers", "run"]
