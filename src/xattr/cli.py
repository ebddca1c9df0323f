"""The ``xattr`` command: explain an answer, report and compare finished runs, list plugins."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .commands import add_commands
from .pipeline.results import load_rows


def compare_rows(run_dirs: Sequence[str | Path]) -> list[dict]:
    """Rows of several runs, each method labelled ``<run>:<method>`` when names would clash."""
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"run directory not found: {d}")
        if not any(d.glob("samples*.jsonl")):
            raise FileNotFoundError(f"no results (samples*.jsonl) in run directory {d}")
    labels = _labels(dirs)
    rows = []
    for d, label in zip(dirs, labels):
        for row in load_rows(d):
            rows.append(
                {**row, "method": f"{label}:{row['method']}" if len(dirs) > 1 else row["method"]}
            )
    return rows


def _labels(dirs: list[Path]) -> list[str]:
    """Shortest distinguishing names: the folder name, or parent/name when names repeat."""
    overrides = [_overrides(d) for d in dirs]
    if all(overrides) and len(set(overrides)) == len(overrides):
        return overrides  # multirun jobs: label by what the sweep changed
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.parent.name}/{d.name}" for d in dirs]


def _overrides(run_dir: Path) -> str:
    """The job's command-line overrides (Hydra's .hydra/overrides.yaml), as ``a=1,b=2``."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    from omegaconf import OmegaConf

    return ",".join(str(o) for o in OmegaConf.load(path) if not str(o).startswith("hydra."))


def compare(run_dirs: Sequence[str | Path], metrics: Sequence[str] | None = None) -> str:
    """A markdown method x metric table across runs (mean ± SEM, n)."""
    from .metrics import stats

    rows = compare_rows(run_dirs)
    if metrics is None:
        metrics = _metric_columns(rows)
    return stats.results_table(rows, metrics=list(metrics))


_NOT_METRICS = {"sample_id", "method", "answer", "attribute_s", "capture_s"}


def _metric_columns(rows: list[dict]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if (
                key not in _NOT_METRICS
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                cols.setdefault(key, None)
    return list(cols)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xattr`` console script."""
    parser = argparse.ArgumentParser(prog="xattr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_cmp = sub.add_parser("compare", help="method x metric table across run directories")
    p_cmp.add_argument("runs", nargs="+", help="Hydra run directories (or multirun job folders)")
    p_cmp.add_argument("--metrics", nargs="*", help="columns (default: every metric found)")
    sub.add_parser("list", help="registered methods, model families and metrics")
    add_commands(sub)  # explain, report
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):
        return args.handler(args)
    if args.command == "compare":
        try:
            print(compare(args.runs, args.metrics))
        except FileNotFoundError as err:
            print(f"xattr compare: {err}", file=sys.stderr)
            return 2
    elif args.command == "list":
        from . import methods, metrics, models

        print("methods:", ", ".join(methods.available()))
        print("models: ", ", ".join(models.available()))
        print("metrics:", ", ".join(metrics.available()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
