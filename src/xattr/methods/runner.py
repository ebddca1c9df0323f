"""Several methods on one trace: one shared sweep over the gradients, then each method's result."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence

from ..explanation import Explanation
from ..trace import OUT_OF_MEMORY, OutOfMemory, Trace, free_accelerator_memory
from .base import AttributionWarning, Attributor
from .sweep import GradientConsumer, StreamingAttributor, SweepReport, consumers_of, run_sweep
from .variants import instantiate


def refuse_twins(names: Sequence[str]) -> None:
    """A list of methods is keyed by name: two of one name would silently become one."""
    if len(set(names)) < len(names):
        raise ValueError(
            f"two methods would be named alike in {list(names)}; pass {{name: method}} to keep both"
        )


def explain_all(
    trace: Trace,
    methods: Mapping[str, Attributor] | Sequence[str | Attributor],
    *,
    on_method: Callable[[str], None] | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
    budget: int | None = None,
) -> dict[str, Explanation]:
    """Every method's explanation of ``trace``, by name, equal to separate ``explain`` calls.

    Each answer token's gradients are computed once, in one sweep that every streaming
    method consumes; the other methods run after it. ``on_method(name)`` is called as each
    method's result is built (e.g. to label a progress bar). Without ``on_error`` the first
    failure is raised; with it, a failed method is reported there and left out of the
    result while the others go on. The texts of a method's `AttributionWarning`s are kept
    in its ``meta["warnings"]`` (and shown as usual). ``methods`` is ``{name: method}`` or a
    list of names (registered methods or variants, at their defaults) and instances.
    """
    if not isinstance(methods, Mapping):
        names = [m.name if isinstance(m, Attributor) else m for m in methods]
        refuse_twins(names)
        methods = {
            name: m if isinstance(m, Attributor) else instantiate(m)
            for name, m in zip(names, methods, strict=True)
        }

    def fail(name: str, err: Exception) -> None:
        if isinstance(err, OUT_OF_MEMORY) and not isinstance(err, OutOfMemory):
            free_accelerator_memory()
            raise OutOfMemory(trace.seq_len, trace.num_answer_tokens) from err
        if on_error is None or isinstance(err, OutOfMemory):  # too large: no method can run
            raise err
        on_error(name, err)

    ready: dict[str, Attributor] = {}
    for name, method in methods.items():
        try:
            method.check_trace(trace)
            ready[name] = method
        except Exception as err:
            fail(name, err)
    consumers: dict[int, GradientConsumer] = {}
    for name, method in ready.items():
        try:
            consumers.update(consumers_of([method], trace))
        except Exception as err:  # e.g. a layer subset the model does not have
            fail(name, err)
    report, shared = SweepReport(), 0.0
    if consumers:
        began = time.perf_counter()
        try:
            report = run_sweep(trace, list(consumers.values()), budget=budget)
        except OUT_OF_MEMORY as err:  # the sample is too large: say how large, for every method
            free_accelerator_memory()
            raise OutOfMemory(trace.seq_len, trace.num_answer_tokens) from err
        except Exception as err:  # non-finite gradients: every streaming method fails
            report = SweepReport(failures={id(c): err for c in consumers.values()})
        shared = time.perf_counter() - began
    out = {}
    for name, method in ready.items():
        if on_method is not None:
            on_method(name)
        consumer = consumers.get(id(method))
        if consumer is None and method_streams(method):
            continue  # its consumer could not be built: reported above
        began = time.perf_counter()
        try:
            if consumer is not None and id(consumer) in report.failures:
                raise report.failures[id(consumer)]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                expl = consumer.result() if consumer is not None else method.attribute(trace)
        except Exception as err:
            fail(name, err)
            continue
        seconds = time.perf_counter() - began + report.seconds.get(id(consumer), 0.0)
        notes = []
        for w in caught:  # kept with the result, then shown as usual
            if issubclass(w.category, AttributionWarning) and str(w.message) not in notes:
                notes.append(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        expl.meta["warnings"] = notes
        if consumer is not None:
            expl.timings["shared_sweep_s"] = shared
        out[name] = method.finish(expl, trace, seconds)
    return out


def method_streams(method: Attributor) -> bool:
    """Whether ``method`` consumes the shared sweep with its current settings."""
    return isinstance(method, StreamingAttributor) and method.streams()
