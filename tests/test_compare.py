"""`xattr compare` on what users pass it: a sweep's `*` glob, the sweep folder, bad metric
names, and paired tests between two runs or two methods of one run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from xattr.cli import main

TAUS = [0.05 * (i + 1) for i in range(12)]  # 12 jobs: the shell's glob sorts 0, 1, 10, 11, 2


def _write_run(run_dir: Path, rows: list[dict], overrides: list[str] | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "samples.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run_dir


def _sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "multiruns" / "2026-11-22_12-00-00"
    for i, tau in enumerate(TAUS):
        rows = [{"sample_id": str(s), "method": "glimpse", "nss": i + s / 10} for s in range(3)]
        shared = ["method=[glimpse]", "data.limit=3"]
        _write_run(sweep / str(i), rows, [shared[0], f"method.glimpse.tau_head={tau}", shared[1]])
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def _table_labels(out: str) -> list[str]:
    return [line.split("|")[1].strip() for line in out.splitlines()[2:]]


def test_sweep_glob_and_sweep_folder_give_one_numerically_ordered_table(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    globbed = sorted(str(p) for p in sweep.glob("*"))  # what `<sweep>/*` expands to
    assert main(["compare", *globbed]) == 0
    out = capsys.readouterr().out
    expected = [f"method.glimpse.tau_head={tau}:glimpse" for tau in TAUS]
    assert _table_labels(out) == expected  # only the varying override, jobs 0..11 in order
    rows = out.splitlines()[2:]
    assert "| 11.100 ± " in rows[11] and "(n=3)" in rows[11]  # job 11's mean nss (11 + 0.1)
    assert main(["compare", str(sweep)]) == 0
    assert capsys.readouterr().out == out


def test_unknown_metric_is_an_error_that_lists_the_known_ones(tmp_path, capsys):
    run = _write_run(tmp_path / "r", [{"sample_id": "1", "method": "m", "nss": 1.0, "cc": 0.5}])
    assert main(["compare", str(run), "--metrics", "nss", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric(s) nosuch; known: nss, cc" in err
    assert main(["compare", str(run), "--metrics", "cc"]) == 0
    assert "| m | 0.500 (n=1) |" in capsys.readouterr().out


def test_paired_two_runs_on_their_shared_samples(tmp_path, capsys):
    a_nss, b_nss = [1.0, 2.0, 3.5, 4.0, 6.0, 9.0], [0.0, 1.5, 2.0, 4.0, 4.0]
    a = _write_run(
        tmp_path / "run_a",
        [{"sample_id": str(i), "method": "glimpse", "nss": v} for i, v in enumerate(a_nss)],
    )
    b = _write_run(
        tmp_path / "run_b",
        [{"sample_id": str(i), "method": "glimpse", "nss": v} for i, v in enumerate(b_nss)],
    )
    assert main(["compare", str(a), str(b), "--paired"]) == 0
    out = capsys.readouterr().out
    d = np.array(a_nss[:5]) - np.array(b_nss)  # sample 5 is only in run A
    p = stats.wilcoxon(d).pvalue
    line = next(x for x in out.splitlines() if "| nss |" in x)
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[0] == "run_a:glimpse − run_b:glimpse"
    assert cells[2] == f"{d.mean():+.3f}" and cells[4] == f"{p:.3g}" and cells[5] == "5"
    low, high = (float(x) for x in cells[3].strip("[]").split(","))
    assert low <= d.mean() <= high and low < high


def test_paired_two_methods_of_one_run(tmp_path, capsys):
    rows = [{"sample_id": str(i), "method": "glimpse", "nss": float(i)} for i in range(4)]
    rows += [{"sample_id": str(i), "method": "tmme", "nss": i - 0.5} for i in range(4)]
    run = _write_run(tmp_path / "run", rows)
    assert main(["compare", str(run), "--paired", "glimpse", "tmme"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "| nss |" in x)
    assert line.startswith("| glimpse − tmme | nss | +0.500 | [+0.500, +0.500] |")
    assert main(["compare", str(run), "--paired", "glimpse", "nosuch"]) == 2
    assert "no method 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--paired"], ["--paired", "glimpse"]])
def test_paired_needs_two_sides(tmp_path, capsys, args):
    run = _write_run(tmp_path / "run", [{"sample_id": "1", "method": "glimpse", "nss": 1.0}])
    assert main(["compare", str(run), *args]) == 2
    assert "--paired" in capsys.readouterr().err


def test_paired_shows_the_metrics_both_runs_computed(tmp_path, capsys):
    a = _write_run(
        tmp_path / "a",
        [{"sample_id": str(i), "method": "m", "nss": i, "cc": 0.5 * i} for i in range(3)],
    )
    b = _write_run(
        tmp_path / "b", [{"sample_id": str(i), "method": "m", "nss": 1} for i in range(3)]
    )
    assert main(["compare", str(a), str(b), "--paired"]) == 0
    metrics = [line.split("|")[2].strip() for line in capsys.readouterr().out.splitlines()[2:]]
    assert metrics == ["nss"]  # cc exists in run a only: no pairs, no row


def test_accuracy_and_costs_are_compared_apart_and_not_tested_by_default(tmp_path, capsys):
    rows = [
        {"sample_id": str(i), "method": "m", "nss": float(i), "correct": i % 2,
         "faithfulness_passes": 11}
        for i in range(4)
    ]  # fmt: skip
    a = _write_run(tmp_path / "a", rows)
    b = _write_run(tmp_path / "b", [{**r, "nss": r["nss"] + 1} for r in rows])
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| method | nss ↑ |"
    assert "Accuracy and costs (not scores of the maps):" in out
    assert main(["compare", str(a), str(b), "--paired"]) == 0
    metrics = [line.split("|")[2].strip() for line in capsys.readouterr().out.splitlines()[2:]]
    assert metrics == ["nss"]  # accuracy and a cost are no score to test
    assert main(["compare", str(a), str(b), "--paired", "--metrics", "correct"]) == 0
    assert "| correct |" in capsys.readouterr().out  # named, it is shown
