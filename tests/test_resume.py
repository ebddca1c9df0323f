"""Rerunning into a finished run directory: rows scored under another configuration are
recomputed (and the console names the change), identical ones are resumed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from support.compose import compose_run
from xattr.pipeline import run
from xattr.pipeline.results import load_rows

BASE = ("method=[glimpse,rollout]", "metrics=agreement")


@pytest.fixture()
def model_dir(tiny_model_dir):
    return tiny_model_dir("qwen2_5_vl")


def _table(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["summary"]


def test_changed_hyperparameter_recomputes_that_methods_rows(tmp_path, model_dir, caplog, capsys):
    run(compose_run(tmp_path / "a", model_dir, *BASE))
    before = _table(tmp_path / "a" / "run")
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        again = run(compose_run(tmp_path / "a", model_dir, *BASE, "method.glimpse.tau_head=5.0"))
    assert "method.glimpse.tau_head: 0.5 -> 5.0" in caplog.text
    session = again["this_session"]
    assert (session["rows_recomputed"], session["rows_resumed"]) == (4, 4)  # glimpse / rollout
    assert "Resumed 4 rows already in" in capsys.readouterr().out

    fresh = run(compose_run(tmp_path / "b", model_dir, *BASE, "method.glimpse.tau_head=5.0"))
    after = _table(tmp_path / "a" / "run")
    assert after == _table(tmp_path / "b" / "run") and fresh["samples"] == 4
    assert after["glimpse"]["nss"] != before["glimpse"]["nss"]  # the change shows in the table
    assert after["rollout"] == before["rollout"]
    rows = load_rows(tmp_path / "a" / "run")  # what `xattr compare` reads: current rows only
    assert len(rows) == 8


def test_identical_rerun_resumes_and_limit_only_picks_samples(tmp_path, model_dir):
    run(compose_run(tmp_path, model_dir, *BASE))
    same = run(compose_run(tmp_path, model_dir, *BASE))["this_session"]
    assert (same["scored"], same["rows_resumed"], same["rows_recomputed"]) == (0, 8, 0)
    fewer = run(compose_run(tmp_path, model_dir, *BASE, "data.limit=2"))["this_session"]
    assert (fewer["rows_resumed"], fewer["rows_recomputed"]) == (4, 0)


@pytest.mark.parametrize(
    "change",
    ["metrics.map.nss.percentile=80", "answer=given", "+model.max_new_tokens=3", "seed=1"],
)
def test_metric_answer_model_or_seed_change_recomputes_every_row(tmp_path, model_dir, change):
    small = (*BASE, "data.dataset.n=2")
    run(compose_run(tmp_path, model_dir, *small))
    session = run(compose_run(tmp_path, model_dir, *small, change))["this_session"]
    assert (session["rows_resumed"], session["rows_recomputed"]) == (0, 4)
