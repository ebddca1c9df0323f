"""Fetch the wheels a lent GPU machine needs to run xattr's device checks, at the locked versions.

The device image has its own PyTorch (CUDA) and an older transformers; it cannot reach a
registry. This downloads, for CPython 3.12 on manylinux x86-64, the locked versions of the
packages xattr imports there that the image lacks or has at other versions (`DEVICE_NEEDS`),
into ``.whl/`` (git-ignored), to be carried to the machine and installed beside its torch:

    python tools/device_wheels.py
    # on the device, in the repository root (the run's command):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/gpu_check.py --full
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what `import xattr` and the device checks import, beyond the device image's own packages
# (PyAV is left out: only video files import it, and its 36 MB would pass the 64 MiB a run
# may carry)
DEVICE_NEEDS = (
    "transformers", "huggingface_hub", "tokenizers", "httpx2", "httpcore2", "truststore",
    "kernels", "tomlkit", "hf-xet", "typer",
)  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def locked(names: tuple[str, ...]) -> list[str]:
    """``name==version`` of each of ``names`` in requirements-lock.txt."""
    norm = lambda s: s.lower().replace("_", "-")  # noqa: E731
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[norm(name)] = f"{name}=={version.strip()}"
    missing = [n for n in names if norm(n) not in pins]
    if missing:
        raise SystemExit(f"not in requirements-lock.txt: {', '.join(missing)}")
    return [pins[norm(n)] for n in names]


def main() -> int:
    out = ROOT / ".whl"
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(out),
               *locked(DEVICE_NEEDS)]  # fmt: skip
    subprocess.run(command, check=True)
    size = sum(p.stat().st_size for p in out.glob("*.whl")) / 2**20
    print(f"{len(list(out.glob('*.whl')))} wheels, {size:.0f} MiB in {out.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
