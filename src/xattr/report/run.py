"""``xattr report RUN_DIR``: an index page for a finished run and a page per saved sample.

The index holds the run's method x metric table (summary.json, or the rows when the run
stopped before writing it), its warnings and skips, and every sample with its answer and
scores; a sample whose explanations were saved (``save_explanations=true``, read with
`xattr.archive`) links to its own report page under ``samples/``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..archive import RUN_SUBDIR, SavedSample, load_sample, saved_samples
from ..metrics.stats import column_header, split_columns
from ..pipeline.results import load_rows, load_skipped, read_summary, summarize_run
from .data import page_data
from .html import Table, render_index, render_page

_NOT_METRICS = {"sample_id", "method", "answer", "warnings", "attribute_s", "capture_s"}


def build_run_report(
    run_dir: str | Path, out: str | Path | None = None, progress: bool = True
) -> Path:
    """Write ``<out>/index.html`` and ``<out>/samples/<id>.html``; returns the index's path.

    ``out`` defaults to ``<run_dir>/report``; ``progress`` shows a bar over the samples.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    rows = load_rows(run)
    saved = saved_samples(run / RUN_SUBDIR)
    if not rows and not saved:
        raise FileNotFoundError(
            f"no results (samples*.jsonl) and no saved explanations in run directory {run}"
        )
    target = Path(out) if out is not None else run / "report"
    pages = target / "samples"
    pages.mkdir(parents=True, exist_ok=True)
    by_sample = _rows_by_sample(rows)
    questions: dict[str, str] = {}
    links: dict[str, str] = {}
    unreadable: list[str] = []
    stems = [p.stem for p in saved]
    for i, path in enumerate(tqdm(saved, desc="report pages", unit="sample", disable=not progress)):
        nav = [("index", "../index.html")]
        nav += [("← previous", f"{stems[i - 1]}.html")] if i > 0 else []
        nav += [("next →", f"{stems[i + 1]}.html")] if i + 1 < len(stems) else []
        try:
            sample = load_sample(path)
            sample_id = str(sample.info.get("sample_id", path.stem))
            html = sample_page(sample, by_sample.get(sample_id, []), nav, source=path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # one bad file
            unreadable.append(f"{path.name}: {type(err).__name__}: {err}")
            continue
        (pages / f"{path.stem}.html").write_text(html, encoding="utf-8")
        questions[sample_id] = str(sample.info.get("question", ""))
        links[sample_id] = f"samples/{path.stem}.html"
    index = target / "index.html"
    index.write_text(
        render_index(
            f"xattr run {run.name}",
            results_table(run, rows),
            samples_table(by_sample, questions, links),
            notes=run_notes(run)
            + [f"unreadable saved sample {u}" for u in unreadable]
            + ([NO_PAGES] if not saved else []),
            subtitle=f"{run.resolve()} · {len(by_sample)} samples · {len(saved)} report pages",
        ),
        encoding="utf-8",
    )
    return index


NO_PAGES = (
    "no per-sample pages: this run kept no explanations; run it again into a new run "
    "directory with save_explanations=true to get one page per sample"
)


def sample_page(
    sample: SavedSample,
    rows: Sequence[dict[str, Any]] = (),
    nav: Sequence[tuple[str, str]] = (),
    source: Path | None = None,
) -> str:
    """The report page of one saved sample, with its scores (``rows``) and links (``nav``)."""
    info = sample.info
    images = sample.prompt_images()  # one image, or the list of a prompt of several
    if images is None:
        raise ValueError(f"{source or 'saved sample'}: no image saved with the explanations")
    sample_id = str(info.get("sample_id", source.stem if source else ""))
    question = str(info.get("question", ""))
    page = page_data(
        sample.explanations,
        images,
        question,
        title=f"{sample_id}: {question}" if sample_id else question,
        model=info.get("model"),
        answer=info.get("model_answer"),
        answer_source=info.get("answer_source"),
        references=sample.references,
    )
    tables = [("Scores of this sample", scores_table(rows))] if rows else []
    return render_page(page, nav=nav, tables=tables)


def results_table(run: Path, rows: Sequence[dict[str, Any]]) -> Table:
    """Method x metric: ``mean ± SEM (n)`` from summary.json, or from the rows without one."""
    if (run / "summary.json").exists():
        table = read_summary(run)["table"]
    else:
        table, _ = summarize_run(rows, metrics=metric_columns(rows))
    found: dict[str, None] = {}
    for by_metric in table.values():
        found.update(dict.fromkeys(by_metric))
    scores, other = split_columns(list(found))
    metrics = [*scores, *other]  # the scores first, then accuracy and costs
    body = [
        [method, *(by[m].format() if m in by else "" for m in metrics)]
        for method, by in table.items()
    ]
    return ["method", *(column_header(m) for m in metrics)], body


def samples_table(
    by_sample: dict[str, list[dict[str, Any]]], questions: dict[str, str], links: dict[str, str]
) -> Table:
    """One row per sample: id (a link when it has a page), question, answer, correct, first metric."""
    ids = sorted(set(by_sample) | set(links))
    rows = [r for rs in by_sample.values() for r in rs]
    metric = next(iter(metric_columns(rows)), None)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    body = []
    for sid in ids:
        scored = {r["method"]: r for r in by_sample.get(sid, [])}
        first = next(iter(scored.values()), {})
        cells: list[Any] = [(sid, links[sid]) if sid in links else sid]
        cells += [questions.get(sid, ""), first.get("answer", ""), first.get("correct")]
        cells += [_number(scored.get(m, {}).get(metric)) for m in methods] if metric else []
        body.append(cells)
    columns = ["sample", "question", "answer", "correct"]
    columns += [f"{m}: {column_header(metric)}" for m in methods] if metric else []
    return columns, body


def scores_table(rows: Sequence[dict[str, Any]]) -> Table:
    """One sample's rows: method x every metric."""
    metrics = metric_columns(rows)
    return ["method", *map(column_header, metrics)], [
        [r["method"], *(_number(r.get(m)) for m in metrics)] for r in rows
    ]


def run_notes(run: Path) -> list[str]:
    """Warnings counted in summary.json and the skipped samples, one line each."""
    notes = []
    if (run / "summary.json").exists():
        for method, by_text in read_summary(run).get("warnings", {}).items():
            notes += [f"{method}: {n} samples: {text}" for text, n in by_text.items()]
    skipped = load_skipped(run)
    if skipped:
        shown = "; ".join(f"{s['sample_id']}: {s['reason']}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        notes.append(f"{len(skipped)} samples skipped: {shown}{more}")
    return notes


def metric_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The numeric columns of the rows, in first-seen order, that are metrics."""
    cols: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in _NOT_METRICS and _number(value) is not None:
                cols.setdefault(key, None)
    return list(cols)


def _rows_by_sample(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["sample_id"]), []).append(row)
    return out


def _number(value: Any) -> Any:
    """A metric cell: numbers as they are (NaN shows as n/a), anything else left empty."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
