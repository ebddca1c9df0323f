"""Where a model goes and in what precision: ``device`` and ``dtype`` checked by name.

Both are checked before any weight loads, and a bad value is one sentence naming it, the
accepted values and the nearest one: a CPU-only machine asked for ``cuda`` says so, and
``fp33`` is not looked up as an attribute of torch.
"""

from __future__ import annotations

import re

import torch

from ..registry import did_you_mean

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DEVICES = "auto (the GPUs when there are some, else the CPU), cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


class PlacementError(ValueError):
    """A device or dtype this machine or torch cannot give (named in the message)."""


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name (``bfloat16``, ``bf16``, ...) or a dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_ALIASES.get(str(dtype), str(dtype)).removeprefix("torch.")
    if name not in DTYPES:
        names = [*DTYPES, *DTYPE_ALIASES]
        raise PlacementError(
            f"unknown dtype {dtype!r}: expected one of {', '.join(names)}{did_you_mean(str(dtype), names)}"
        )
    return DTYPES[name]


def check_device(device: str | torch.device) -> str:
    """``device`` as a string, refused when it is no device name or this machine lacks it."""
    text = str(device)
    if text == "auto":
        return text
    match = _DEVICE.fullmatch(text)
    if match is None:
        names = ["auto", "cpu", "cuda", "mps"]
        raise PlacementError(
            f"unknown device {text!r}: expected {DEVICES}{did_you_mean(text, names)}"
        )
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PlacementError(
                f"device {text!r}: this torch ({torch.__version__}) sees no CUDA GPU on this "
                "machine; use device=auto (the GPUs when there are some, else the CPU) or cpu"
            )
        if index is not None and int(index) >= count:
            raise PlacementError(f"device {text!r}: this machine has {count} CUDA GPU(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PlacementError(f"device {text!r}: MPS is not available on this machine; use cpu")
    return text
