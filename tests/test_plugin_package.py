"""A method shipped by another package (entry points ``xattr.methods`` and ``xattr.conf``) runs
from train_free_eval.py like a built-in one; the README's "Add a method" code is the plugin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from xattr.pipeline.results import load_rows

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PKG = "my_xattr_plugin"


def _readme_block(heading: str, lang: str) -> str:
    section = README[README.index(heading) :]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _plugin(where: Path) -> Path:
    """The package as `pip install` would lay it out: code, its conf/, a dist-info with entry points."""
    code = _readme_block("Add a method\n", "python")
    code = code.replace("from ..", "from xattr.").replace("from .", "from xattr.methods.")
    pkg = where / PKG
    (pkg / "conf" / "method").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gradient_norm.py").write_text(code)
    (pkg / "conf" / "__init__.py").write_text("")
    yaml = _readme_block("Add a method\n", "yaml")
    (pkg / "conf" / "method" / "gradient_norm.yaml").write_text(yaml)
    info = where / f"{PKG}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[xattr.methods]\ngradient_norm = {PKG}.gradient_norm:GradientNorm\n\n"
        f"[xattr.conf]\n{PKG} = {PKG}.conf\n"
    )
    return where


def test_plugin_method_and_its_config_run_from_train_free_eval(tmp_path):
    site = _plugin(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        str(ROOT / "train_free_eval.py"),
        "method=[glimpse,gradient_norm]",
        "metrics=agreement",
        "data.dataset.n=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = load_rows(tmp_path / "run")
    assert sorted(r["method"] for r in rows) == ["glimpse"] * 2 + ["gradient_norm"] * 2
    assert "| gradient_norm |" in done.stdout


def test_readme_method_snippet_is_ruff_clean(tmp_path):
    """Pasted into src/xattr/methods/, the snippet passes `make test`'s ruff steps."""
    code = _readme_block("Add a method\n", "python")
    target = "src/xattr/methods/gradient_norm.py"
    ruff = [sys.executable, "-m", "ruff"]
    formatted = subprocess.run(
        [*ruff, "format", "--stdin-filename", target, "-"],
        input=code,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert formatted.returncode == 0 and formatted.stdout == code
    checked = subprocess.run(
        [*ruff, "check", "--stdin-filename", target, "-"],
        input=code,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stdout
