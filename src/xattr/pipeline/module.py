"""The Lightning test loop: one sample per step, rows on disk at once, the table at epoch end."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from ..archive import RUN_SUBDIR, sample_path, save_sample
from ..data.sample import Sample, SampleError
from ..metrics.stats import ACCURACY
from ..trace import OutOfMemory
from .evaluator import SampleEvaluator, SampleResult
from .results import (
    ResultStore,
    load_rows,
    load_skipped,
    skipped_markdown,
    still_skipped,
    summarize_run,
    warning_counts,
    warnings_markdown,
    write_summary,
)

log = logging.getLogger(__name__)


class ExplainEvalModule(L.LightningModule):
    """Evaluates methods with metrics sample by sample; knows no method or model internals."""

    def __init__(
        self,
        evaluator: SampleEvaluator,
        run_dir: str | Path,
        overlays: int = 3,
        method_limits: dict[str, int] | None = None,
        fingerprints: dict[str, str] | None = None,
        save_explanations: bool = False,
    ) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.fingerprints = fingerprints  # method -> configuration hash stored in its rows
        self.method_limits = dict(method_limits or {})  # method -> first k samples only
        self.run_dir = Path(run_dir)
        self.overlays = overlays
        self.save_explanations = save_explanations  # every sample's explanations, no pickle
        self.summary: dict[str, Any] = {}
        self.markdown = ""
        self._store: ResultStore | None = None
        self._left_out: set[str] = set()  # the dataset's left-out lines, this run
        self._counts = {
            "scored": 0,
            "resumed": 0,
            "skipped": 0,
            "out_of_memory": 0,
            "method_failures": 0,
            "rows_resumed": 0,
            "rows_recomputed": 0,
        }
        self._started = time.perf_counter()

    # the adapter's model is not a submodule: Lightning must not move or re-mode it
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}

    @property
    def store(self) -> ResultStore:
        if self._store is None:
            self._store = ResultStore(
                self.run_dir, rank=self.global_rank, fingerprints=self.fingerprints
            )
        return self._store

    def setup(self, stage: str) -> None:
        """Silence library chatter in this process too (a spawned DDP rank starts afresh)."""
        from .quiet import quiet_libraries

        quiet_libraries()

    def on_test_epoch_start(self) -> None:
        self._started = time.perf_counter()
        # lines the dataset left out (bad JSON, empty question, ...): this run's list only, so
        # a line fixed since an earlier run into the same folder is no longer listed
        dataset = getattr(getattr(self.trainer, "datamodule", None), "dataset", None)
        self._left_out = {key for key, _ in getattr(dataset, "skipped", ())}
        if self.global_rank == 0:
            for key, reason in getattr(dataset, "skipped", ()):
                self.store.skip(key, reason, source="dataset")  # the dataset logged it

    def test_step(self, batch: Sample | SampleError, batch_idx: int) -> None:
        # the dataset index (a non-shuffled distributed sampler deals indices round-robin)
        index = batch_idx * self.trainer.world_size + self.global_rank
        methods = [
            m for m in self.evaluator.methods if index < self.method_limits.get(m, index + 1)
        ]
        if isinstance(batch, SampleError):
            self._skip(batch.sample_id, batch.reason)
            return
        if self.store.is_done(batch.sample_id, methods):
            self._counts["resumed"] += 1
            self._counts["rows_resumed"] += len(methods)
            return
        todo = [m for m in methods if not self.store.done(batch.sample_id, m)]
        self._counts["rows_resumed"] += len(methods) - len(todo)
        try:
            result = self.evaluator.evaluate(batch, todo)
        except OutOfMemory as err:  # too large for this device: recorded, counted, the run goes on
            self._counts["out_of_memory"] += 1
            self._skip(batch.sample_id, str(err))
            return
        except Exception as err:  # one bad sample must not end a long run
            self._skip(batch.sample_id, f"{type(err).__name__}: {err}")
            return
        for row in result.rows:
            self._counts["rows_recomputed"] += self.store.stale(batch.sample_id, row["method"])
            self.store.append(row)
        for method, reason in result.failures.items():
            self._skip(batch.sample_id, reason, method=method)
        self._counts["scored" if result.rows else "skipped"] += 1
        if batch_idx < self.overlays and result.explanations:
            self._save_overlays(batch, result.explanations)
        if self.save_explanations and result.explanations:
            keep_explanations(self.run_dir, batch, result, self.evaluator.answer_mode)

    def _skip(self, sample_id: str, reason: str, method: str | None = None) -> None:
        """Log and record a sample (or one method on it) that could not be evaluated."""
        if method is None:
            log.warning("skipping sample %s: %s", sample_id, reason)
            self._counts["skipped"] += 1
        else:
            log.warning("%s failed on sample %s: %s", method, sample_id, reason)
            self._counts["method_failures"] += 1
        self.store.skip(sample_id, reason, method=method)

    def _save_overlays(self, sample: Sample, explanations: dict[str, Any]) -> None:
        out = self.run_dir / "overlays"
        out.mkdir(exist_ok=True)
        images = sample.load_images()
        for k, image in enumerate(images):
            number = "" if len(images) == 1 else str(k + 1)  # one image: names as always
            tail = number and f"_image{number}"
            image.save(out / f"{sample.sample_id}_image{number}.png")
            for name, expl in explanations.items():
                expl.overlay(image, index=k).save(out / f"{sample.sample_id}_{name}{tail}.png")

    def on_test_epoch_end(self) -> None:
        keys = sorted(self._counts)
        local = torch.tensor([float(self._counts[k]) for k in keys])
        total = self.trainer.strategy.reduce(local, reduce_op="sum")  # every rank's counts
        counts = {k: int(v) for k, v in zip(keys, total.tolist())}
        self.trainer.strategy.barrier()  # every rank's rows are on disk
        elapsed = time.perf_counter() - self._started
        if self.global_rank != 0:
            return
        rows = load_rows(self.run_dir)
        methods = list(self.evaluator.methods)
        skipped = [
            s
            for s in still_skipped(load_skipped(self.run_dir), rows)
            if s.get("method") in (None, *methods)
            and (s.get("source") != "dataset" or s["sample_id"] in self._left_out)
        ]
        # a method that failed on a sample counts as skipped in its row of the table
        failed = [
            {"sample_id": s["sample_id"], "method": s["method"]} for s in skipped if s.get("method")
        ]
        # columns: the metrics some row computed (one no sample could compute is left out)
        metrics = [m for m in [*self.evaluator.metric_names, ACCURACY] if any(m in r for r in rows)]
        table, markdown = summarize_run(rows + failed, metrics=metrics, methods=methods)
        for notes in (warnings_markdown(rows), skipped_markdown(skipped)):
            if notes:
                markdown = f"{markdown}\n\n{notes}"
        scored = {r["sample_id"] for r in rows}
        extra = {
            "samples": len(scored),
            "skipped_samples": len({s["sample_id"] for s in skipped} - scored),
            "method_failures": len(failed),
            "this_session": counts,
            "warnings": warning_counts(rows),
            "seconds": elapsed,
        }
        write_summary(self.run_dir, table, markdown, extra)
        self.summary = {"table": table, **extra}
        self.markdown = markdown
        flat = {
            f"{method}/{metric}": s.mean
            for method, by in table.items()
            for metric, s in by.items()
            if s.n
        }
        for logger in self.loggers:
            logger.log_metrics(flat)
            _log_rich(logger, rows, self.run_dir / "overlays")
            _log_report_pages(logger, self.run_dir)


def keep_explanations(run_dir: Path, sample: Sample, result: SampleResult, source: str) -> Path:
    """``explanations/<sample>.npz`` in the run dir: every method's maps, the image, the question."""
    info = {"sample_id": sample.sample_id, "question": sample.question, "answer": sample.answer,
            "model_answer": result.answer, "answer_source": source}  # fmt: skip
    path = sample_path(run_dir / RUN_SUBDIR, sample.sample_id)
    references = {"human_map": sample.human_map, "mask": sample.mask}  # what it was scored on
    return save_sample(
        path,
        result.explanations,
        sample.load_images() if sample.is_video else sample.prompt_images(),
        info,
        references=references,
    )


def _log_report_pages(logger: Any, run_dir: Path) -> None:
    """W&B: each saved sample's report page (``xattr.report``), as HTML. No bar of its own:
    the test loop's bar is still open, and a second one under it leaves cursor-up codes
    (``[A``) in logs."""
    from ..report.wandb_pages import log_report_pages

    if log_report_pages(logger, run_dir, progress=False):
        log.info("W&B: logged the report pages of the saved samples")


def _log_rich(logger: Any, rows: list[dict[str, Any]], overlay_dir: Path) -> None:
    """Per-sample table and overlay images for loggers that support them (W&B)."""
    if not hasattr(logger, "log_table"):
        return
    columns = sorted({k for r in rows for k in r})
    logger.log_table(
        key="samples", columns=columns, data=[[r.get(c) for c in columns] for r in rows]
    )
    images = sorted(overlay_dir.glob("*.png")) if overlay_dir.exists() else []
    if images:
        logger.log_image(
            key="overlays", images=[str(p) for p in images], caption=[p.stem for p in images]
        )


class XattrProgressBar(TQDMProgressBar):
    """The test bar shows samples/s and the method running now (set as each one starts)."""

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_start(trainer, pl_module)
        evaluator = getattr(pl_module, "evaluator", None)
        if evaluator is not None:
            evaluator.on_method_start = self.show_method

    REDRAW_S = 1.0  # a method label alone redraws the bar at most this often

    def show_method(self, name: str) -> None:
        """Label the bar with the method that is starting; the label is drawn now only when
        the bar has not been drawn for a while (a slow method shows; fast ones do not make
        the bar redraw several times per sample)."""
        try:
            bar = self.test_progress_bar
        except TypeError:  # no test bar (yet)
            return
        if bar.disable:
            return
        now = time.monotonic()
        stale = now - getattr(self, "_drawn_at", 0.0) >= self.REDRAW_S
        bar.set_postfix(method=name, refresh=stale)
        if stale:
            self._drawn_at = now

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = dict(super().get_metrics(trainer, pl_module))
        metrics.pop("v_num", None)
        return metrics
