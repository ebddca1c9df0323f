"""The dependency lock: write it from a resolved environment, show what moved, read it.

``requirements-lock.txt`` pins every distribution of the environment the suite passed in
(pip and setuptools included, the editable xattr excluded). ``make test-latest`` resolves
the newest versions pyproject.toml's ranges allow into a separate environment, prints how
they differ from the lock (``diff``) and runs the suite there; ``make lock`` writes that
environment's pins over the lock (``write``), only after its suite passed.

Usage: python tools/lock.py diff VENV | write VENV
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"
PASSED = ".xattr-suite-passed"  # written into a venv by `make test-latest` when its suite passed
HEADER = """\
# The exact environment the test suite passed in: every distribution, pip and setuptools
# included (`make setup` installs this file, then xattr itself without build isolation).
# Python {python}, {platform}; torch is the CPU build. Written by `make lock` from the
# environment `make test-latest` resolved and tested; do not edit by hand.
"""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a file of ``name==version`` lines (comments skipped)."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path}:{number}: {line!r} is not pinned as name==version")
        pins[canonical(name.strip())] = version.strip()
    return pins


def frozen(venv: Path) -> list[str]:
    """``pip freeze`` of a virtual environment: every distribution but editable ones."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{venv} is not a virtual environment (no bin/python)")
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    odd = [line for line in lines if "==" not in line]
    if odd:
        raise SystemExit(f"{venv} holds distributions that cannot be pinned: {odd}")
    return sorted(lines, key=lambda line: canonical(line.split("==")[0]))


def moved(locked: dict[str, str], resolved: dict[str, str]) -> list[str]:
    """``name: old -> new`` for each distribution whose version differs (added, gone, moved)."""
    return [
        f"{name}: {locked.get(name, '(not locked)')} -> {resolved.get(name, '(gone)')}"
        for name in sorted(set(locked) | set(resolved))
        if locked.get(name) != resolved.get(name)
    ]


def diff(venv: Path, lock: Path = LOCK) -> int:
    """Print the distributions whose resolved version in ``venv`` differs from the lock."""
    resolved = {canonical(n): v for n, v in (line.split("==") for line in frozen(venv))}
    changes = moved(read_pins(lock) if lock.exists() else {}, resolved)
    print(f"newest versions the ranges allow vs {lock.name}: {len(changes)} moved")
    print("".join(f"  {line}\n" for line in changes), end="")
    return 0


def write(venv: Path, lock: Path = LOCK) -> int:
    """Write the lock from ``venv``, which must hold a passed suite."""
    if not (venv / PASSED).exists():
        raise SystemExit(
            f"{venv} has no passed suite: run `make test-latest` first, so that the lock only "
            "moves to versions the suite passed on"
        )
    python = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    header = HEADER.format(python=python, platform=f"{platform.system()} {platform.machine()}")
    lock.write_text(header + "\n".join(frozen(venv)) + "\n")
    print(f"wrote {lock.name} from {venv}; now `make test` installs it and runs the suite")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("diff", "write"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    command, venv = argv[0], Path(argv[1])
    return diff(venv) if command == "diff" else write(venv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
