"""xattr: explain what a vision-language model looks at when it answers."""

from __future__ import annotations

from . import methods
from .explanation import Explanation
from .trace import Trace, TraceError

__all__ = ["Explanation", "Trace", "TraceError", "methods"]
__version__ = "0.1.0"
