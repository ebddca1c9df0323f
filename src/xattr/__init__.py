"""xattr: explain what a vision-language model looks at when it answers."""

from __future__ import annotations

from . import data, images, methods, metrics, models, toy
from .api import explain
from .explanation import Explanation
from .trace import Trace, TraceError
from .video import Video

__all__ = [
    "Explanation",
    "Trace",
    "TraceError",
    "Video",
    "data",
    "explain",
    "images",
    "methods",
    "metrics",
    "models",
    "toy",
]
__version__ = "0.1.0"
