"""Per-sample report pages for Weights & Biases: one ``reports`` table of ``wandb.Html`` cells."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..archive import RUN_SUBDIR, load_sample, saved_samples
from ..pipeline.results import load_rows
from .run import sample_page


def log_report_pages(logger: Any, run_dir: str | Path, progress: bool = False) -> int:
    """Log every saved sample's report page to a W&B logger; returns how many were logged.

    Other loggers, and runs without saved explanations, log nothing.
    """
    if type(logger).__name__ != "WandbLogger":
        return 0
    saved = saved_samples(Path(run_dir) / RUN_SUBDIR)
    if not saved:
        return 0
    import wandb

    by_sample: dict[str, list[dict[str, Any]]] = {}
    for row in load_rows(run_dir):
        by_sample.setdefault(str(row["sample_id"]), []).append(row)
    table = wandb.Table(columns=["sample_id", "question", "answer", "report"])
    for path in tqdm(saved, desc="W&B report pages", unit="sample", disable=not progress):
        sample = load_sample(path)
        sample_id = str(sample.info.get("sample_id", path.stem))
        rows = by_sample.get(sample_id, [])
        html = sample_page(sample, rows, source=path)
        answer = rows[0].get("answer", "") if rows else ""
        page = wandb.Html(html, inject=False, data_is_not_path=True)
        table.add_data(sample_id, sample.info.get("question", ""), answer, page)
    logger.experiment.log({"reports": table})
    return len(saved)
