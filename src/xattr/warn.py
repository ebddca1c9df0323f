"""Warnings that name the user's line: the first frame outside the xattr package.

Python prints a warning with the source line it points at; pointed at xattr's own
``warnings.warn(...)`` call, that line is noise. (Python 3.12's ``skip_file_prefixes``
does the same; xattr supports 3.10.)
"""

from __future__ import annotations

import os
import sys
import warnings

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# frames of decorators that wrap xattr functions (torch.no_grad(), contextlib): not the user's
WRAPPER_FILES = (
    os.path.join("torch", "utils", "_contextlib.py"),
    os.path.join("torch", "autograd", "grad_mode.py"),
    os.sep + "contextlib.py",
)


def _skipped(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(PACKAGE_DIR) or path.endswith(WRAPPER_FILES)


def outside_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the caller) of the first frame outside
    xattr and the decorators wrapping its functions."""
    frame, level = sys._getframe(2), 2  # 2: the caller of outside_stacklevel's caller
    while frame is not None and _skipped(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointed at the user's code."""
    warnings.warn(message, category, stacklevel=outside_stacklevel())
