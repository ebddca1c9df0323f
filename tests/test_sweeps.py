"""Sweeps and experiments as users type them: `python train_free_eval.py -m ...` from a fresh
directory, no `hydra.sweep.dir`, the default output layout under ./logs/. (The README's own
sweeps, `-m experiment=glimpse_ablation` and the 27-job one, run in tests/test_readme.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from support.entry import run_entry_point
from support.wandb_log import run_info
from xattr.pipeline.results import load_rows

# appended to every command: few samples (a small synthetic set, written under ./data)
SMALL = ["data.dataset.n=2", "data.limit=1"]


def _run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = run_entry_point(cwd, *args, *SMALL, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _only(pattern: str, cwd: Path) -> Path:
    found = sorted(cwd.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_sweep_without_sweep_dir_writes_under_logs(tmp_path, launcher):
    """The README's sweep; submitit's local executor is the SLURM launcher's code path."""
    _run(
        tmp_path,
        "-m",
        f"hydra/launcher={launcher}",
        "method=[glimpse]",
        "method.glimpse.tau_head=0.25,0.5",
        "metrics=agreement",
    )
    sweep = _only("logs/train_free_eval/multiruns/*", tmp_path)
    jobs = _jobs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    for job, tau in zip(jobs, (0.25, 0.5)):
        assert [r["method"] for r in load_rows(job)] == ["glimpse"]
        assert OmegaConf.load(job / "config.yaml").method.glimpse.tau_head == tau


def test_experiment_keeps_its_task_name_and_wandb_group_and_tags(tmp_path):
    _run(tmp_path, "experiment=glimpse_table2", "logger=wandb", env={"WANDB_API_KEY": ""})
    run_dir = _only("logs/glimpse_table2/runs/*", tmp_path)
    assert not (tmp_path / "logs" / "train_free_eval").exists()
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.task_name == "glimpse_table2" and list(cfg.tags) == ["table2"]
    assert set(cfg.method) == {
        "glimpse",
        "raw_attention",
        "rollout",
        "gradcam",
        "tmme",
        "tmme_last12",
    }
    info = run_info(_only("wandb/offline-run-*", run_dir))
    assert info["group"] == "glimpse_table2" and info["tags"] == ["table2"]
    assert info["project"] == "xattr"
