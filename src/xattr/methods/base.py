"""The `Attributor` interface every attribution method implements, and its registry.

A method is a class with a name and its hyper-parameters as annotated fields::

    class GradientNorm(Attributor, name="gradient_norm"):
        requires = Needs(gradients=True)
        layer: int = hparam(-1, doc="which layer's gradient to read")

        def attribute(self, trace): ...

Subclasses become keyword-only dataclasses: the fields are the hyper-parameters, declared
once. Their defaults, validation (``choices``, ``check``), the ``hparams`` dict and what the
method ``needs`` captured (``requires`` widened by the chosen token policy or variant) are
all derived from these declarations; ``name=...`` registers the class.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..explanation import Explanation
from ..registry import Registry
from ..trace import Trace

METHODS: Registry[type[Attributor]] = Registry("method", "xattr.methods")


class AttributionWarning(UserWarning):
    """A method fell back to a documented default, or its result is degenerate (all zero)."""


@dataclass(frozen=True)
class Needs:
    """What a method needs captured, so the framework captures only that."""

    attentions: bool = True
    gradients: bool = False
    hidden_states: bool = False
    model: bool = False  # extra forward passes through the adapter (perturbation methods)

    def __or__(self, other: Needs) -> Needs:
        return Needs(**{f: getattr(self, f) or getattr(other, f) for f in _NEED_FIELDS})


_NEED_FIELDS = tuple(f.name for f in dataclasses.fields(Needs))


def plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra configs) to plain lists and dicts, so hparams stay JSON-able."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


def hparam(
    default: Any,
    *,
    choices: Any = None,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
    needs: Callable[[Any], Needs | None] | None = None,
    doc: str = "",
) -> Any:
    """Declare a hyper-parameter: its default, what values are valid and what it needs.

    ``choices``: a collection of valid values (a registry or mapping works too). ``check``:
    a predicate, with ``rule`` the sentence an error prints (e.g. "must be > 0"; `positive`
    and `non_negative` carry their own). ``needs``:
    value -> the extra `Needs` that value brings (e.g. a token policy that runs the model).
    """
    metadata = {"choices": choices, "check": check, "rule": rule, "needs": needs, "doc": doc}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: plain(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive(value: Any) -> bool:
    return value > 0


def non_negative(value: Any) -> bool:
    return value >= 0


def unit_interval(value: Any) -> bool:
    return 0.0 <= value <= 1.0


positive.rule = "must be > 0"  # type: ignore[attr-defined]  # the sentence an error prints
non_negative.rule = "must be >= 0"  # type: ignore[attr-defined]
unit_interval.rule = "must be in [0, 1]"  # type: ignore[attr-defined]


def rule_of(f: dataclasses.Field) -> str:
    """The sentence that says what values a hyper-parameter accepts ("" when anything goes)."""
    return f.metadata.get("rule") or getattr(f.metadata.get("check"), "rule", "")


class Attributor(ABC):
    """An attribution method: a (mostly pure) function from a `Trace` to an `Explanation`.

    Implement ``attribute``; ``explain`` adds the checks, timing and provenance. Methods
    that consume per-token gradients implement `methods.sweep.StreamingAttributor` instead,
    so that several of them share one pass over each token's gradients.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[Needs] = Needs()  # what the method needs whatever its settings
    # whether it explains any differentiable z_t the trace's gradients follow (a contrast
    # of two logits, `xattr.targets.contrast`), not only the answer's own logits
    contrastive: ClassVar[bool] = False
    _manual_init: ClassVar[bool] = False

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class with its own __init__ (and subclasses that add no field) keeps it.
        manual = "__init__" in cls.__dict__ or (
            any(getattr(b, "_manual_init", False) for b in cls.__mro__[1:])
            and not inspect.get_annotations(cls)
        )
        cls._manual_init = manual
        if not manual:
            dataclass(kw_only=True, repr=False, eq=False)(cls)
        if name is not None:
            cls.name = name
            METHODS.register(name)(cls)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = plain(getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            _validate(type(self).name or type(self).__name__, f, value)
        self.validate()

    def validate(self) -> None:
        """Rules between hyper-parameters (one field's own rules are in its `hparam`)."""

    @classmethod
    def hparam_fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every hyper-parameter's default value."""
        return {f.name: getattr(cls(), f.name) for f in cls.hparam_fields()}

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyper-parameters of this instance, by name."""
        return {f.name: getattr(self, f.name) for f in self.hparam_fields()}

    @property
    def needs(self) -> Needs:
        """``requires``, widened by what the chosen settings need (token policy, variant)."""
        needs = type(self).requires
        for f in self.hparam_fields():
            extra = f.metadata.get("needs")
            widened = extra(getattr(self, f.name)) if extra is not None else None
            if widened is not None:
                needs = needs | widened
        return needs

    @abstractmethod
    def attribute(self, trace: Trace) -> Explanation:
        """Compute the explanation of ``trace``."""

    def explain(self, trace: Trace) -> Explanation:
        """Run the method, checking its needs and recording hyper-parameters and wall time."""
        self.check_trace(trace)
        start = time.perf_counter()
        expl = self.attribute(trace)
        return self.finish(expl, trace, time.perf_counter() - start)

    def check_trace(self, trace: Trace) -> None:
        """Raise a clear error when ``trace`` lacks what this method needs."""
        if self.needs.gradients:
            trace.require_gradients(self.name)

    def finish(self, expl: Explanation, trace: Trace, seconds: float) -> Explanation:
        """Record timing, hyper-parameters, the method name and where the grid sits."""
        expl.timings.setdefault("attribute_s", seconds)
        expl.hparams = {**self.hparams, **expl.hparams}
        expl.method = self.name
        return expl

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def _validate(method: str, f: dataclasses.Field, value: Any) -> None:
    """Apply one field's declared rules; the error names the method, field and valid values."""
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        known = ", ".join(repr(c) for c in _names(choices))
        kind = getattr(choices, "kind", f.name)
        where = "" if kind == f.name else f" ({f.name})"
        raise ValueError(f"{method}: unknown {kind} {value!r}{where}; known: {known}")
    check = f.metadata.get("check")
    if check is not None and not _passes(check, value):
        raise ValueError(f"{method}: {f.name} {rule_of(f) or 'is invalid'}, got {value!r}")


def _passes(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except (TypeError, ValueError):
        return False


def _names(choices: Any) -> list[Any]:
    if hasattr(choices, "available"):
        return list(choices.available())
    return list(choices)
