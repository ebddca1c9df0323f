"""Per-sample results on disk: append-only JSONL per process, resume, aggregation, summary files."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..metrics import stats

SAMPLES_GLOB = "samples*.jsonl"
SKIPPED_FILE = "skipped.jsonl"
SKIPPED_SHOWN = 5  # reasons listed under the table (all of them are in skipped.jsonl)

log = logging.getLogger(__name__)


class ResultStore:
    """Rows ``{sample_id, method, <metric>: value, ...}`` written as they are scored.

    Each process appends to its own ``samples.rank<k>.jsonl`` and flushes after every
    row, so an interrupted run loses at most the sample in flight; rerunning into the
    same directory skips every (sample, method) pair already present.
    """

    def __init__(
        self, run_dir: str | Path, rank: int = 0, fingerprints: dict[str, str] | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.samples_path = self.run_dir / f"samples.rank{rank}.jsonl"
        self.fingerprints = fingerprints  # method -> the configuration its rows must carry
        every = {(r["sample_id"], r["method"]) for r in load_rows(self.run_dir, fingerprints={})}
        self._done = {
            (r["sample_id"], r["method"]) for r in load_rows(self.run_dir, fingerprints or {})
        }
        # pairs whose only rows were written under another configuration: recomputed, not reused
        self._stale = every - self._done
        self._skipped = {
            (r["sample_id"], r.get("method")) for r in _read_jsonl(self.run_dir / SKIPPED_FILE)
        }

    def is_done(self, sample_id: str, methods: Iterable[str]) -> bool:
        """True when every listed method already has a row for this sample."""
        return all((sample_id, m) in self._done for m in methods)

    def done(self, sample_id: str, method: str) -> bool:
        """True when this method has a row for this sample under the current configuration."""
        return (sample_id, method) in self._done

    def stale(self, sample_id: str, method: str) -> bool:
        """True when the only row for this pair was scored under another configuration."""
        return (sample_id, method) in self._stale

    def append(self, row: dict[str, Any]) -> None:
        """Write one row now (flushed), so nothing scored is lost on interruption."""
        if self.fingerprints:
            row = {**row, "config": self.fingerprints[row["method"]]}
        _append_jsonl(self.samples_path, row)
        self._done.add((row["sample_id"], row["method"]))

    def skip(
        self, sample_id: str, reason: str, method: str | None = None, source: str | None = None
    ) -> None:
        """Record a sample (or one method on it) that could not be evaluated, with its reason
        (``source="dataset"``: a line the dataset left out, never a sample)."""
        if (sample_id, method) in self._skipped:
            return
        self._skipped.add((sample_id, method))
        entry = {"sample_id": sample_id, "reason": reason, "rank": self.rank}
        if method is not None:
            entry["method"] = method
        if source is not None:
            entry["source"] = source
        _append_jsonl(self.run_dir / SKIPPED_FILE, entry)


def load_rows(
    run_dir: str | Path, fingerprints: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every valid row of a run, one per (sample, method): the first written wins.

    Valid: scored under the run's current configuration (``fingerprints``, by default the
    run's ``fingerprints.json``; a run without one keeps every row). ``fingerprints={}``
    keeps every row, stale ones included.
    """
    if fingerprints is None:
        from .fingerprint import read_fingerprints

        recorded = read_fingerprints(run_dir)
        fingerprints = {m: r["fingerprint"] for m, r in (recorded or {}).items()}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(Path(run_dir).glob(SAMPLES_GLOB)):
        for row in _read_jsonl(path):
            if _current(row, fingerprints):
                rows.setdefault((row["sample_id"], row["method"]), row)
    return sorted(rows.values(), key=lambda r: (r["method"], r["sample_id"]))


def _current(row: dict[str, Any], fingerprints: dict[str, str] | None) -> bool:
    """Whether ``row`` was scored under ``fingerprints`` (always, when there are none)."""
    return not fingerprints or row.get("config") == fingerprints.get(row["method"])


def load_skipped(run_dir: str | Path) -> list[dict[str, Any]]:
    """Samples skipped in a run, with their reasons (``method`` set: that method only)."""
    return _read_jsonl(Path(run_dir) / SKIPPED_FILE)


def still_skipped(
    skipped: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The skipped entries that no row has since made good (a rerun that scored them)."""
    scored = {(r["sample_id"], r["method"]) for r in rows}
    sampled = {r["sample_id"] for r in rows}
    return [
        s
        for s in skipped
        if (
            (s["sample_id"], s["method"]) not in scored
            if s.get("method")
            else s["sample_id"] not in sampled
        )
    ]


def skipped_markdown(skipped: Sequence[dict[str, Any]]) -> str:
    """ "Skipped ..." with the counts and the first reasons; empty when nothing was skipped."""
    if not skipped:
        return ""
    whole = [s for s in skipped if not s.get("method")]
    parts = [f"{len(whole)} sample{'s' * (len(whole) != 1)}"] if whole else []
    if by_method := len(skipped) - len(whole):
        parts.append(f"{by_method} (sample, method) pair{'s' * (by_method != 1)}")
    lines = [f"Skipped {' and '.join(parts)} ({SKIPPED_FILE}):", ""]
    for s in skipped[:SKIPPED_SHOWN]:
        who = f"sample {s['sample_id']}" + (f", {s['method']}" if s.get("method") else "")
        lines.append(f"- {who}: {s['reason']}")
    if len(skipped) > SKIPPED_SHOWN:
        lines.append(f"- ... and {len(skipped) - SKIPPED_SHOWN} more")
    return "\n".join(lines)


def summarize_run(
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> tuple[dict[str, dict[str, stats.Summary]], str]:
    """Method x metric summaries and the markdown table for a run's rows."""
    table = stats.summary_table(rows, metrics=metrics, methods=methods)
    return table, stats.results_tables(rows, metrics=metrics, methods=methods)


def warning_counts(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{method: {warning text: number of samples}}`` from the rows' ``warnings`` lists."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        for text in row.get("warnings") or []:
            by_text = counts.setdefault(row["method"], {})
            by_text[text] = by_text.get(text, 0) + 1
    return counts


def warnings_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """ "Method warnings:" and one line per (method, warning) with how many of the method's
    samples raised it; empty when no method warned."""
    counts = warning_counts(rows)
    if not counts:
        return ""
    per_method: dict[str, int] = {}
    for row in rows:
        per_method[row["method"]] = per_method.get(row["method"], 0) + 1
    lines = ["Method warnings:", ""]
    for method, by_text in counts.items():
        for text, n in sorted(by_text.items(), key=lambda kv: -kv[1]):
            lines.append(f"- {method}: {n} of {per_method[method]} samples: {text}")
    return "\n".join(lines)


def write_summary(
    run_dir: str | Path,
    table: dict[str, dict[str, stats.Summary]],
    markdown: str,
    extra: dict[str, Any],
) -> None:
    """summary.json (every statistic) and results.md (the table) in the run directory."""
    out = Path(run_dir)
    summary = {
        method: {metric: _summary_dict(s) for metric, s in by_metric.items()}
        for method, by_metric in table.items()
    }
    (out / "summary.json").write_text(json.dumps({"summary": summary, **extra}, indent=2))
    (out / "results.md").write_text(markdown + "\n")


def _summary_dict(s: stats.Summary) -> dict[str, float | int | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in vars(s).items()}


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row, default=_json_default) + "\n")
        fh.flush()


_WARNED_LINES: set[tuple[str, int, str]] = set()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; an invalid line (e.g. cut off by an interruption) is logged, once."""
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            key = (str(path), lineno, line)
            if key not in _WARNED_LINES:
                _WARNED_LINES.add(key)
                log.warning("%s:%d: invalid JSON line ignored (%s)", path, lineno, err)
    return rows


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """summary.json as written by `write_summary`, with the table as `stats.Summary` objects."""
    data = json.loads((Path(run_dir) / "summary.json").read_text())
    table = {
        method: {
            metric: stats.Summary(**{k: math.nan if v is None else v for k, v in values.items()})
            for metric, values in by_metric.items()
        }
        for method, by_metric in data.pop("summary").items()
    }
    return {"table": table, **data}
