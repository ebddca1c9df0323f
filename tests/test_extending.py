"""The README's "Add a method" and "Add a model adapter" sections, followed literally in a
copy of the repository: the files they show are written at the paths they name, nothing
else is edited, and the project's own tests and entry point then pick them up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PATH_COMMENT = re.compile(r"^# ((?:src|conf)/\S+\.(?:py|yaml))(?:\s.*)?$", re.M)

pytestmark = pytest.mark.slow


def readme_files() -> dict[str, str]:
    """``{path: text}`` of every README code block that names its file in a first comment."""
    files = {}
    for block in re.findall(r"^```(?:python|yaml)\n(.*?)^```", README, re.S | re.M):
        head = block.splitlines()[:2]
        for line in head:
            match = PATH_COMMENT.match(line)
            if match:
                files[match.group(1)] = block
    return files


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The repository's files (as git sees them) in a fresh folder, plus the README's files."""
    out = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        src = ROOT / name
        if src.is_symlink():  # src/xattr/conf -> ../../conf, as a clone has it
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).symlink_to(os.readlink(src))
        elif src.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(src.read_bytes())
    for name, text in readme_files().items():
        assert not (out / name).exists(), f"{name} already exists: the README would not add it"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return out


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd / "src"), "WANDB_MODE": "offline"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def test_the_readme_names_the_files_of_both_sections():
    assert set(readme_files()) == {
        "src/xattr/methods/gradient_norm.py",
        "conf/method/gradient_norm.yaml",
        "src/xattr/models/vipllava.py",
        "conf/model/vip_llava_7b.yaml",
        "src/xattr/toy/tiny/vipllava.py",
    }


def test_the_new_family_passes_every_family_test_in_the_copy(copy):
    done = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_families.py", "tests/test_capture.py", "-k", "vipllava"],
        copy,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= 7 and "failed" not in done.stdout  # every family test ran on vipllava
    listed = _run([sys.executable, "-c", "import xattr; print(xattr.models.available())"], copy)
    assert "'vipllava'" in listed.stdout


def test_the_new_model_config_composes(copy):
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from xattr.pipeline import register_resolvers\n"
        "register_resolvers()\n"
        f"with initialize_config_dir(config_dir={str(copy / 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('train_free_eval', overrides=['model=vip_llava_7b'])\n"
        "print(cfg.model.path)\n"
    )
    done = _run([sys.executable, "-c", code], copy)
    assert done.returncode == 0 and "llava-hf/vip-llava-7b-hf" in done.stdout, done.stderr[-2000:]


def test_the_new_method_runs_from_the_entry_point_in_the_copy(copy):
    done = _run(
        [sys.executable, "train_free_eval.py", "method=[glimpse,gradient_norm]",
         "method.gradient_norm.layer=-2", "data.limit=2", "metrics=agreement"],
        copy,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert re.search(r"^\| gradient_norm \| [-\d.]+ ±", done.stdout, re.M), done.stdout[-2000:]
