"""The ``xattr`` command: explain an answer, report and compare finished runs (tables and
paired tests), list plugins."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .commands import add_commands
from .pipeline.results import SAMPLES_GLOB, load_rows


def run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named by ``paths``: a sweep folder stands for its jobs, and entries that
    are not runs (``multirun.yaml`` beside the jobs of ``<sweep>/*``) are left out."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"run directory not found: {p}")
        if not p.is_dir():
            continue  # multirun.yaml and other files a shell glob picks up
        if any(p.glob(SAMPLES_GLOB)):
            dirs.append(p)
        elif jobs := _jobs(p):
            dirs.extend(jobs)
        else:
            raise FileNotFoundError(f"no results (samples*.jsonl) in run directory {p}")
    if not dirs:
        raise FileNotFoundError(f"no run directory among {', '.join(map(str, paths))}")
    if all(d.name.isdigit() for d in dirs):  # multirun jobs: 0, 1, 2, ..., 10, not 0, 1, 10
        dirs.sort(key=lambda d: (str(d.parent), int(d.name)))
    return dirs


def _jobs(sweep: Path) -> list[Path]:
    """A sweep folder's job directories (numbered sub-directories with results)."""
    return [d for d in sweep.iterdir() if d.name.isdigit() and any(d.glob(SAMPLES_GLOB))]


def compare_rows(paths: Sequence[str | Path]) -> list[dict]:
    """Rows of several runs, each method labelled ``<run>:<method>`` when there are several runs."""
    dirs = run_dirs(paths)
    rows = []
    for d, label in zip(dirs, labels(dirs)):
        for row in load_rows(d):
            rows.append(
                {**row, "method": f"{label}:{row['method']}" if len(dirs) > 1 else row["method"]}
            )
    return rows


def labels(dirs: Sequence[Path]) -> list[str]:
    """Shortest distinguishing names: the overrides that differ between the runs (multirun
    jobs), else the folder name, else parent/name."""
    overrides = [_overrides(d) for d in dirs]
    varying = sorted({k for o in overrides for k in o if len({x.get(k) for x in overrides}) > 1})
    if varying:
        by_overrides = [",".join(f"{k}={o[k]}" for k in varying if k in o) for o in overrides]
        if len(set(by_overrides)) == len(dirs):
            return by_overrides
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.parent.name}/{d.name}" for d in dirs]


def _overrides(run_dir: Path) -> dict[str, str]:
    """The job's command-line overrides (Hydra's .hydra/overrides.yaml) as ``{key: value}``."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    pairs = (str(o).split("=", 1) for o in OmegaConf.load(path) if not str(o).startswith("hydra"))
    return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}


def compare(paths: Sequence[str | Path], metrics: Sequence[str] | None = None) -> str:
    """A markdown method x metric table across runs (mean ± SEM, n)."""
    from .metrics import stats

    rows = compare_rows(paths)
    return stats.results_tables(rows, metrics=_check_metrics(rows, metrics))


def _check_metrics(rows: list[dict], metrics: Sequence[str] | None) -> list[str]:
    """The requested metric columns (default: all found); unknown names are an error."""
    known = _metric_columns(rows)
    if not metrics:
        return known
    if unknown := [m for m in metrics if m not in known]:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return list(metrics)


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


def paired(
    paths: Sequence[str | Path],
    methods: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
) -> str:
    """Paired tests on shared sample ids: mean difference a - b, its paired-bootstrap 95% CI and
    the Wilcoxon signed-rank p-value (`xattr.metrics.paired_comparison`), per metric.

    One run and two methods: method a vs method b. Two runs: each method both hold (or,
    with two methods given, run 1's first vs run 2's second).
    """
    from .metrics import paired_comparison, stats

    dirs = run_dirs(paths)
    rows = {d: load_rows(d) for d in dirs}
    names = labels(dirs)
    sides = _pairs(dirs, names, rows, list(methods))
    requested = _check_metrics([r for rs in rows.values() for r in rs], metrics)
    lines = [
        "| a − b | metric | mean difference | 95% CI | Wilcoxon p | n |",
        "|---|---|---|---|---|---|",
    ]
    for (label_a, a), (label_b, b) in sides:
        by_id = {r["sample_id"]: r for r in b}
        shared = [(r, by_id[r["sample_id"]]) for r in a if r["sample_id"] in by_id]
        # by default the scores both sides computed (not accuracy or costs); named columns
        # are shown either way
        both = set(_metric_columns(a)) & set(_metric_columns(b))
        default = [m for m in stats.split_columns(requested)[0] if m in both]
        for metric in requested if metrics else default:
            res = paired_comparison(
                [ra.get(metric, math.nan) for ra, _ in shared],
                [rb.get(metric, math.nan) for _, rb in shared],
            )
            n = f"{res.n}" + (f" (skipped {res.skipped})" if res.skipped else "")
            if res.n == 0:  # no sample with both scores finite
                cells = "n/a | n/a | n/a"
            else:
                ci = "n/a" if math.isnan(res.ci_low) else f"[{res.ci_low:+.3f}, {res.ci_high:+.3f}]"
                cells = f"{res.mean_diff:+.3f} | {ci} | {res.p_value:.3g}"
            lines.append(f"| {label_a} − {label_b} | {metric} | {cells} | {n} |")
    return "\n".join(lines)


def _pairs(
    dirs: list[Path], names: list[str], rows: dict[Path, list[dict]], methods: list[str]
) -> list[tuple[tuple[str, list[dict]], tuple[str, list[dict]]]]:
    """The (label, rows) sides to compare, from the runs and the methods named."""

    def side(i: int, method: str) -> tuple[str, list[dict]]:
        picked = [r for r in rows[dirs[i]] if r["method"] == method]
        if not picked:
            have = sorted({r["method"] for r in rows[dirs[i]]})
            raise ValueError(f"no method {method!r} in {dirs[i]}; it has: {', '.join(have)}")
        return (f"{names[i]}:{method}" if len(dirs) > 1 else method), picked

    if methods and len(methods) != 2:
        raise ValueError(f"--paired takes two methods (a b) or none, got {len(methods)}")
    if len(dirs) == 1:
        if not methods:
            raise ValueError("--paired on one run needs two of its methods: --paired A B")
        return [(side(0, methods[0]), side(0, methods[1]))]
    if len(dirs) != 2:
        raise ValueError(f"--paired compares two runs (or two methods of one), got {len(dirs)}")
    if methods:
        return [(side(0, methods[0]), side(1, methods[1]))]
    found = [sorted({r["method"] for r in rows[d]}) for d in dirs]
    common = [m for m in found[0] if m in found[1]]
    if not common and len(found[0]) == len(found[1]) == 1:
        return [(side(0, found[0][0]), side(1, found[1][0]))]
    if not common:
        raise ValueError("the two runs share no method; name one of each: --paired A B")
    return [(side(0, m), side(1, m)) for m in common]


def describe_method(name: str) -> str:
    """A method's hyper-parameters: name, default, valid values and what each is for."""
    from . import methods
    from .methods.base import rule_of

    cls, variant = methods.resolve(name)
    lines = [f"{name} ({cls.__module__}.{cls.__qualname__}): {(cls.__doc__ or '').strip()}"]
    defaults = cls.defaults()
    if variant is not None:
        changed = ", ".join(f"{k}={v!r}" for k, v in variant.overrides.items())
        lines.append(f"  a variant of {variant.base} ({variant.source.name}): {changed}")
        defaults.update(variant.overrides)
    for f in cls.hparam_fields():
        default = defaults[f.name]
        choices = f.metadata.get("choices")
        known = ""
        if choices is not None:
            names = choices.available() if hasattr(choices, "available") else list(choices)
            known = " | ".join(str(c) for c in names)
        rule = rule_of(f)
        doc = f.metadata.get("doc") or ""
        detail = "; ".join(x for x in (known, rule, doc) if x)
        lines.append(f"  {f.name} = {default!r}" + (f"  ({detail})" if detail else ""))
    return "\n".join(lines)


def catalogue() -> str:
    """What ``xattr list`` prints: methods and their variants, model configs and families,
    metrics (a model-in-the-loop metric with the columns it writes)."""
    from . import methods, metrics, models
    from .commands.model_spec import conf_names

    variants = [f"{v.name} ({v.base})" for v in methods.variants().values()]
    lines = [
        "methods:         " + ", ".join(methods.available()),
        "method variants: " + ", ".join(variants),
        "model configs:   " + ", ".join(conf_names()),
        "model families:  " + ", ".join(models.available()),
        "metrics:         " + ", ".join(metrics.available()),
    ]
    for name, columns in metrics.model_metric_columns().items():
        lines.append(f"  {name} writes the columns: {', '.join(columns)}")
    return "\n".join(lines)


def package_version() -> str:
    """xattr's version, with the transformers and torch it runs on."""
    from importlib.metadata import version

    from . import __version__

    return f"{__version__} (transformers {version('transformers')}, torch {version('torch')})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xattr`` console script."""
    parser = argparse.ArgumentParser(prog="xattr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"xattr {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_cmp = sub.add_parser("compare", help="method x metric table across run directories")
    p_cmp.add_argument("runs", nargs="+", help="run directories, multirun jobs or a sweep folder")
    p_cmp.add_argument("--metrics", nargs="*", help="columns (default: every metric found)")
    p_cmp.add_argument(
        "--paired",
        nargs="*",
        metavar="METHOD",
        help="paired tests on shared samples: two runs (same methods), or two METHODs",
    )
    p_list = sub.add_parser("list", help="registered methods, model families and metrics")
    p_list.add_argument("--method", help="print this method's hyper-parameters and defaults")
    p_list.add_argument(
        "--families", action="store_true", help="the model families' table (Markdown)"
    )
    add_commands(sub)  # explain, report
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):
        return args.handler(args)
    if args.command == "compare":
        try:
            if args.paired is None:
                print(compare(args.runs, args.metrics))
            else:
                print(paired(args.runs, args.paired, args.metrics))
        except (FileNotFoundError, ValueError) as err:
            print(f"xattr compare: {err}", file=sys.stderr)
            return 2
    elif args.command == "list" and args.method:
        try:
            print(describe_method(args.method))
        except KeyError as err:
            print(f"xattr list: {err}", file=sys.stderr)
            return 2
    elif args.command == "list" and args.families:
        from .commands.families import family_table

        print(family_table())
    elif args.command == "list":
        print(catalogue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
