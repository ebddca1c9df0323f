"""What a run does and says when things go wrong: one method failing, every sample failing,
broken JSONL lines, metrics no sample could compute, skipped samples under the table."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from support.compose import compose_run
from xattr.pipeline import run
from xattr.pipeline.results import load_rows, load_skipped

ROOT = Path(__file__).resolve().parents[1]
FAST = ("method=[glimpse,rollout]", "metrics=agreement")


@pytest.fixture()
def model_dir(tiny_model_dir):
    return tiny_model_dir("qwen2_5_vl")


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _jsonl_folder(root: Path, n: int, images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "questions.jsonl").open("w") as fh:
        for i in range(n):
            if images:
                Image.new("RGB", (56, 56), (40 * i, 90, 200)).save(root / f"{i}.png")
            fh.write(json.dumps({"id": f"q{i}", "image": f"{i}.png", "question": "What?"}) + "\n")
    return root


def test_one_methods_failure_is_recorded_for_that_method_only(
    tmp_path, model_dir, monkeypatch, capsys
):
    from xattr.methods.rollout import Rollout

    def broken(self, trace):
        raise RuntimeError("rollout broke")

    monkeypatch.setattr(Rollout, "attribute", broken)
    summary = run(compose_run(tmp_path, model_dir, *FAST))
    out = tmp_path / "run"
    rows = load_rows(out)
    assert sorted(r["method"] for r in rows) == ["glimpse"] * 4  # glimpse kept every sample
    skipped = load_skipped(out)
    assert len(skipped) == 4 and {s["method"] for s in skipped} == {"rollout"}
    assert all(s["reason"] == "RuntimeError: rollout broke" for s in skipped)
    table = _summary(out)["summary"]
    assert (table["rollout"]["nss"]["n"], table["rollout"]["nss"]["skipped"]) == (0, 4)
    assert table["glimpse"]["nss"]["n"] + table["glimpse"]["nss"]["skipped"] == 4
    assert summary["samples"] == 4 and summary["skipped_samples"] == 0
    assert summary["method_failures"] == 4
    printed = capsys.readouterr().out
    assert "Skipped 4 (sample, method) pairs (skipped.jsonl):" in printed
    assert ", rollout: RuntimeError: rollout broke" in printed


def test_skipped_samples_are_listed_under_the_table(tmp_path, model_dir, capsys):
    cfg = compose_run(tmp_path, model_dir, *FAST)
    from hydra.utils import instantiate

    _ = instantiate(cfg.data).dataset  # writes the synthetic files
    images = sorted((Path(cfg.data.dataset.root) / "val2014").glob("*.jpg"))
    images[1].write_bytes(b"not a jpeg")
    run(cfg)
    printed = capsys.readouterr().out
    table_at = printed.index("| method |")
    listed = printed.index("Skipped 1 sample (skipped.jsonl):")
    assert listed > table_at
    assert (
        f"- sample {load_skipped(tmp_path / 'run')[0]['sample_id']}: cannot read image" in printed
    )


def test_a_run_where_every_sample_failed_exits_non_zero(tmp_path):
    data = _jsonl_folder(tmp_path / "mine", 2, images=False)  # every image is missing
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train_free_eval.py"),
            "data=jsonl",
            f"data.dataset.root={data}",
            "method=[glimpse]",
            "metrics=agreement",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert done.returncode != 0
    assert "every sample failed (2 skipped)" in done.stdout + done.stderr
    assert "Skipped 2 samples" in done.stdout and "image not found" in done.stdout


def test_invalid_jsonl_lines_are_logged_with_file_and_line(tmp_path, caplog):
    from xattr.data import JsonlDataset

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "samples.rank0.jsonl"
    path.write_text(
        json.dumps({"sample_id": "1", "method": "m", "nss": 1.0}) + '\n{"sample_id": "2", "met\n'
    )
    with caplog.at_level(logging.WARNING):
        assert [r["sample_id"] for r in load_rows(run_dir)] == ["1"]
    assert f"{path}:2: invalid JSON line ignored" in caplog.text

    data = _jsonl_folder(tmp_path / "mine", 2)
    with (data / "questions.jsonl").open("a") as fh:
        fh.write("{not json\n" + json.dumps({"id": "q9", "image": "0.png"}) + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(JsonlDataset(data)) == 2
    assert f"{data / 'questions.jsonl'}:3: invalid JSON" in caplog.text
    assert f"{data / 'questions.jsonl'}:4: missing required key(s) ['question']" in caplog.text


def test_lines_the_dataset_left_out_are_in_skipped_jsonl_and_under_the_table(tmp_path, model_dir):
    """An empty question and a repeated id, as a user's JSONL has them: each is a skipped
    entry naming its line, listed with the run's other skips."""
    data = _jsonl_folder(tmp_path / "mine", 2)
    with (data / "questions.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "q5", "image": "0.png", "question": ""}) + "\n")
        fh.write(json.dumps({"id": "q0", "image": "1.png", "question": "Again?"}) + "\n")
    run(compose_run(tmp_path, model_dir, "data=jsonl", f"data.dataset.root={data}", *FAST))
    skipped = {s["sample_id"]: s["reason"] for s in load_skipped(tmp_path / "run")}
    assert skipped == {
        "line 3": "empty value(s) for ['question']",
        "q0 (line 4)": "duplicate id 'q0' (first on line 1)",
    }
    assert "Skipped 2 samples" in (tmp_path / "run" / "results.md").read_text()
    assert {r["sample_id"] for r in load_rows(tmp_path / "run")} == {"q0", "q1"}
    # the user fixes line 3 and runs again into the same folder: it is no longer listed
    lines = (data / "questions.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"id": "q5", "image": "0.png", "question": "Fixed?"})
    (data / "questions.jsonl").write_text("\n".join(lines) + "\n")
    summary = run(
        compose_run(tmp_path, model_dir, "data=jsonl", f"data.dataset.root={data}", *FAST)
    )
    assert summary["skipped_samples"] == 1
    assert "Skipped 1 sample" in (tmp_path / "run" / "results.md").read_text()


def test_metrics_no_sample_could_compute_are_not_columns(tmp_path, model_dir):
    """A folder without maps, masks or answers: map metrics and accuracy are not 'skipped'."""
    data = _jsonl_folder(tmp_path / "mine", 2)
    run(
        compose_run(
            tmp_path, model_dir, "data=jsonl", f"data.dataset.root={data}", "method=[rollout]"
        )
    )
    header = (tmp_path / "run" / "results.md").read_text().splitlines()[0]
    assert header.startswith("| method | deletion_auc ↓ |")
    for never in ("nss", "spearman", "pointing_game", "correct"):
        assert never not in header
