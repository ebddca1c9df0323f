"""The dependency lock: it pins every dependency inside pyproject.toml's ranges, the lower
bounds are the locked (tested) versions, `make test` runs in exactly the locked environment,
and tools/lock.py reports drift and refuses to lock an untested environment."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SPEC = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
lock_tool = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lock_tool)
LOCKED = lock_tool.read_pins(lock_tool.LOCK)


def _requirements() -> list[Requirement]:
    """The package's dependencies and its dev extra: what `make setup` installs."""
    project = PYPROJECT["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


@pytest.mark.parametrize("req", _requirements(), ids=str)
def test_each_dependency_is_locked_inside_its_range_at_its_lower_bound(req):
    name = lock_tool.canonical(req.name)
    assert name in LOCKED, f"{req.name} is a dependency but requirements-lock.txt lacks it"
    locked = Version(LOCKED[name])
    assert req.specifier.contains(locked, prereleases=True), f"{req} excludes the locked {locked}"
    lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert lower == [Version(locked.public)], (
        f"{req}: the lower bound must be the locked (tested) version {locked.public}; "
        "raise it in pyproject.toml when the lock moves"
    )


def test_the_lock_holds_torch_cpu_and_the_build_tools():
    """torch is the CPU build pip finds on disk; pip and every build requirement are pinned
    too, since xattr itself is installed without build isolation."""
    assert LOCKED["torch"].endswith("+cpu")
    assert "pip" in LOCKED
    for req in map(Requirement, PYPROJECT["build-system"]["requires"]):  # no isolation
        name = lock_tool.canonical(req.name)
        assert name in LOCKED and req.specifier.contains(Version(LOCKED[name])), req


@pytest.mark.skipif(
    "XATTR_LOCK" not in os.environ,
    reason="run by `make test`, which installs the lock and names it in XATTR_LOCK",
)
def test_the_running_environment_is_exactly_the_lock():
    """Nothing installed by hand, nothing missing, nothing at another version."""
    installed = {
        lock_tool.canonical(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if lock_tool.canonical(d.metadata["Name"]) != "xattr"
    }
    locked = lock_tool.read_pins(ROOT / os.environ["XATTR_LOCK"])
    assert lock_tool.moved(locked, installed) == []


# ---------------------------------------------------------------- tools/lock.py
def _fake_venv(tmp_path: Path, frozen: str) -> Path:
    """A folder whose bin/python answers ``pip freeze`` with ``frozen`` (and a version)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "if sys.argv[1:3] == ['-m', 'pip']:\n"
        f"    print({frozen!r}, end='')\n"
        "else:\n"
        "    print('3.11.7')\n"
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return venv


def test_diff_lists_what_moved_was_added_and_is_gone(tmp_path, capsys):
    lock = tmp_path / "lock.txt"
    lock.write_text("# header\nTransformers==5.23.0\nnumpy==2.4.6\nold-thing==1.0\n")
    venv = _fake_venv(tmp_path, "transformers==5.25.0\nnumpy==2.4.6\nnew_thing==0.1\n")
    assert lock_tool.diff(venv, lock) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "newest versions the ranges allow vs lock.txt: 3 moved",
        "  new-thing: (not locked) -> 0.1",
        "  old-thing: 1.0 -> (gone)",
        "  transformers: 5.23.0 -> 5.25.0",
    ]


def test_write_refuses_an_environment_whose_suite_has_not_passed(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.4.6\n")
    venv = _fake_venv(tmp_path, "numpy==2.5.0\nAccelerate==1.16.0\n")
    with pytest.raises(SystemExit, match="make test-latest"):
        lock_tool.write(venv, lock)
    assert lock.read_text() == "numpy==2.4.6\n"
    (venv / lock_tool.PASSED).touch()
    lock_tool.write(venv, lock)
    text = lock.read_text()
    assert "Python 3.11.7" in text
    assert lock_tool.read_pins(lock) == {"accelerate": "1.16.0", "numpy": "2.5.0"}
    assert text.splitlines()[-2:] == ["Accelerate==1.16.0", "numpy==2.5.0"]  # sorted by name


def test_an_unpinned_line_is_named(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.4.6\ntorch>=2.13\n")
    with pytest.raises(ValueError, match=r"lock.txt:2: 'torch>=2.13' is not pinned"):
        lock_tool.read_pins(lock)
