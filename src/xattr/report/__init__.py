"""Interactive HTML reports of explanations: one self-contained page per answer, an index per run.

`report_html` / `write_report` make the page for ``{method: Explanation}`` of one image (or a
list of several, shown side by side) and question; `build_run_report` makes ``report/`` for a finished run (its results table and a
page per sample whose explanations were saved with ``save_explanations=true``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..explanation import Explanation
from .data import page_data
from .html import render_page


def report_html(
    explanations: Mapping[str, Explanation],
    image: Image.Image | Sequence[Image.Image],
    question: str,
    **page: Any,
) -> str:
    """The report page for one answer (keywords: ``title``, ``model``) as an HTML string."""
    return render_page(page_data(explanations, image, question, **page))


def write_report(
    path: str | Path,
    explanations: Mapping[str, Explanation],
    image: Image.Image | Sequence[Image.Image],
    question: str,
    **page: Any,
) -> Path:
    """Write `report_html` to ``path`` (one file, opens from disk)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(explanations, image, question, **page), encoding="utf-8")
    return out


def build_run_report(run_dir: str | Path, out: str | Path | None = None, **kwargs: Any) -> Path:
    """The run's ``report/index.html`` and its sample pages (see `xattr.report.run`)."""
    from .run import build_run_report as build

    return build(run_dir, out, **kwargs)


__all__ = ["build_run_report", "page_data", "render_page", "report_html", "write_report"]
