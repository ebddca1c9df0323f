"""Subcommands of the ``xattr`` console script that see explanations: ``explain`` and ``report``.

`add_commands` registers them on the script's subparsers; each sets ``handler``, which
`xattr.cli.main` calls with the parsed arguments and whose return value is the exit code.
"""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``xattr explain`` and ``xattr report``."""
    from .explain import add_parser as add_explain
    from .report import add_parser as add_report

    add_explain(sub)
    add_report(sub)
