"""The `Attributor` interface every attribution method implements, and its registry."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from ..explanation import Explanation
from ..registry import Registry
from ..trace import Trace

METHODS: Registry[type[Attributor]] = Registry("method", "xattr.methods")


@dataclass(frozen=True)
class Needs:
    """What a method needs captured, so the framework captures only that."""

    attentions: bool = True
    gradients: bool = False
    hidden_states: bool = False
    model: bool = False  # extra forward passes through the adapter (perturbation methods)


class Attributor(ABC):
    """An attribution method: a (mostly pure) function from a `Trace` to an `Explanation`.

    Subclasses set ``name`` and ``needs``, take their hyper-parameters as keyword
    arguments in ``__init__`` (call ``super().__init__(**hparams)`` to record them), and
    implement ``attribute``. ``explain`` adds timing and provenance.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()

    def __init__(self, **hparams: Any) -> None:
        self.hparams: dict[str, Any] = dict(hparams)
        policy = hparams.get("token_policy")
        if policy is not None:  # a policy may need more captured (model passes, gradients)
            from .selection import policy_needs

            self.needs = policy_needs(type(self).needs, policy)

    @abstractmethod
    def attribute(self, trace: Trace) -> Explanation:
        """Compute the explanation of ``trace``."""

    def explain(self, trace: Trace) -> Explanation:
        """Run the method, checking its needs and recording hyper-parameters and wall time."""
        if self.needs.gradients:
            trace.require_gradients(self.name)
        start = time.perf_counter()
        expl = self.attribute(trace)
        expl.timings.setdefault("attribute_s", time.perf_counter() - start)
        expl.hparams = {**self.hparams, **expl.hparams}
        expl.method = self.name
        if trace.meta.get("image_region") is not None:  # where the grid sits on the image
            expl.meta.setdefault("image_region", tuple(trace.meta["image_region"]))
        return expl

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def register(name: str):
    """Class decorator: register an `Attributor` subclass under ``name``."""

    def decorator(cls: type[Attributor]) -> type[Attributor]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator
