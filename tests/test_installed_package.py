"""xattr as a user who installs the wheel meets it: a fresh virtual environment, a folder
outside the repository, the console scripts and ``python -m xattr.eval`` with the configs
that ship inside the package."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from xattr.data.synthetic import generate_synthetic

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What color is the triangle?"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel; its dependencies are this environment's
    (a .pth line, so nothing is downloaded), xattr itself only from the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = tmp.glob("xattr-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (purelib,) = venv.glob("lib/python*/site-packages")
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q"]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True)
    return venv


def _run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XATTR_LOCK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    if args[0].startswith("-"):  # python -m / -c
        command = [str(venv / "bin" / "python"), *args]
    else:  # a console script
        command = [str(venv / "bin" / args[0]), *args[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_installed_package_runs_outside_the_repository(installed, tmp_path):
    where = _run(installed, ["xattr", "--version"], tmp_path)
    assert where.returncode == 0 and where.stdout.startswith("xattr 0.1.0 (transformers ")
    located = _run(installed, ["-c", "import xattr; print(xattr.__file__)"], tmp_path)
    assert located.stdout.startswith(str(installed)), located  # the wheel, not the checkout

    image = tmp_path / "shapes.png"
    next(s for s in generate_synthetic(8, seed=3) if s.question == QUESTION).load_image().save(
        image
    )
    # a conf/model name is found in the installed package (it was "none" outside a checkout)
    conf = _run(installed, ["xattr", "explain", str(image), QUESTION, "--model", "qwen2_5_vl_7b",
                            "--device", "cpu"], tmp_path)  # fmt: skip
    assert conf.returncode == 2 and "unknown model" not in conf.stderr
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in conf.stderr  # it went on to load the conf's hub id

    # a conf/model name that loads here: the shipped toy's config, read from the package
    done = _run(installed, ["xattr", "explain", str(image), QUESTION, "--model", "toy_llava",
                            "--method", "rollout"], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "explanations" / "shapes" / "rollout.png").is_file()

    args = ["method=[rollout]", "metrics=agreement", "data.limit=2"]
    for entry in (["xattr-eval", *args], ["-m", "xattr.eval", *args]):
        run = _run(installed, entry, tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "| rollout |" in run.stdout
