"""A name -> class registry shared by methods, model adapters and metrics.

Plugins register with a decorator inside the package, or from a third-party package
through an entry-point group (``xattr.methods``, ``xattr.models``, ``xattr.metrics``)
whose entries point at the registered class.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(value: str, names: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the name nearest ``value``, or "" when none is near."""
    close = difflib.get_close_matches(value, list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class UnknownNameError(KeyError):
    """An unknown plugin name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to plugin classes, loading entry points on first lookup."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (a second owner of a name is an error)."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} name {name!r} is already registered")
            self._items[name] = obj
            if getattr(obj, "name", None) in (None, ""):
                try:
                    obj.name = name  # type: ignore[attr-defined]
                except (AttributeError, TypeError):
                    pass
            return obj

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            obj = ep.load()
            self._items.setdefault(ep.name, obj)

    def available(self) -> list[str]:
        """Sorted names of everything registered."""
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, plugin) pairs of everything registered, sorted by name."""
        self._load_entry_points()
        return sorted(self._items.items())

    def get_class(self, name: str) -> T:
        """The plugin registered as ``name``; an unknown name lists the known ones."""
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.available()) or "(none)"
            hint = did_you_mean(str(name), self.available())
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items
