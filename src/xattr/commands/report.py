"""``xattr report RUN_DIR``: the run's index page and a page per sample with saved explanations."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xattr report``."""
    p = sub.add_parser(
        "report",
        help="HTML index of a finished run (results, samples, a page per saved sample)",
        description=__doc__,
    )
    p.add_argument("run", help="a Hydra run directory of train_free_eval.py")
    p.add_argument("--out", help="output folder (default: <run>/report)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the report; exit code 2 when the run directory holds nothing to show."""
    from ..report import build_run_report
    from ..report.run import NO_PAGES

    try:
        index = build_run_report(args.run, args.out, progress=not args.no_progress)
    except FileNotFoundError as err:
        print(f"xattr report: {err}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    if not any((index.parent / "samples").glob("*.html")):
        print(f"note:   {NO_PAGES}")
    return 0
