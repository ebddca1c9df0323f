"""What a row depends on, so a rerun into a finished run directory never reuses stale rows.

A row of method m is valid for a run when it was scored under the same method config of m,
model, data (except ``limit``, which only picks samples), metrics, answer mode and seed.
Each row carries the short hash of that configuration; ``fingerprints.json`` in the run
directory holds the current run's configurations, so a resumed run can name what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

FINGERPRINTS_FILE = "fingerprints.json"


def row_configs(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Per method, everything its rows' values depend on (resolved plain containers)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("limit", None)
    shared = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": data,
        "metrics": OmegaConf.to_container(cfg.metrics, resolve=True),
        "answer": cfg.get("answer", "generated"),
        "seed": cfg.get("seed", 0),
    }
    explain = OmegaConf.to_container(cfg.explain, resolve=True) if "explain" in cfg else {}
    if any(v not in (None, False) for v in explain.values()):  # defaults: old hashes kept
        shared["explain"] = explain
    return {
        name: {"method": {name: OmegaConf.to_container(mcfg, resolve=True)}, **shared}
        for name, mcfg in cfg.method.items()
    }


def fingerprint(config: dict[str, Any]) -> str:
    """A short stable hash of a configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs (dotted keys, ``+``/``-`` for added/removed)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{path}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{path}: {old[key]!r} -> (absent)")
            else:
                out.extend(changes(old[key], new[key], path))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def read_fingerprints(run_dir: str | Path) -> dict[str, dict[str, Any]] | None:
    """``{method: {"fingerprint", "config"}}`` recorded in a run directory, None if absent."""
    path = Path(run_dir) / FINGERPRINTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_fingerprints(run_dir: str | Path, configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Record the current run's configurations; returns ``{method: fingerprint}``."""
    record = {m: {"fingerprint": fingerprint(c), "config": c} for m, c in configs.items()}
    (Path(run_dir) / FINGERPRINTS_FILE).write_text(json.dumps(record, indent=2, default=str))
    return {m: r["fingerprint"] for m, r in record.items()}
