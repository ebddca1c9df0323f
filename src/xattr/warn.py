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


def outside_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the caller) of the first frame outside xattr."""
    frame, level = sys._getframe(2), 2  # 2: the caller of outside_stacklevel's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointed at the user's code."""
    warnings.warn(message, category, stacklevel=outside_stacklevel())
