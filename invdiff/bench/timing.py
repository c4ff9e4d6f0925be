"""Where and how long: compile-time accounting through :mod:`jax.monitoring`, and the machine.

``compile_seconds`` of a call is the wall time JAX spends tracing, lowering and compiling
during it, measured with :mod:`jax.monitoring` listeners (events ``/jax/core/compile/*``; the
union of their time spans, so nested traces are not counted twice) — without running the
call twice. JAX's persistent compilation cache (switched on by ``import invdiff``) makes it
small when an earlier process compiled the same program: a cache hit counts only the time to
read the executable back.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

import jax

#: jax.monitoring events that time tracing, lowering and XLA compilation (a persistent-cache hit is
#: timed inside the backend event, as the time to read the executable back).
COMPILE_EVENTS: tuple[str, ...] = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)

# ---------------------------------------------------------------------------------------
# Compile-time accounting through jax.monitoring.

_LOCK = threading.Lock()
_ACTIVE: list[CompileClock] = []
_REGISTERED = {"done": False, "spans": False}


class CompileClock:
    """Accumulates the compile-related jax.monitoring events recorded while it is active.

    ``seconds`` is the length of the union of the events' time spans (nested traces of inner
    jitted functions overlap their outer trace and count once); on a JAX without time-span
    events it falls back to the sum of the event durations.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.durations = 0.0
        self.events = 0

    @property
    def seconds(self) -> float:
        if not self.spans:
            return self.durations
        total, cur_a, cur_b = 0.0, None, None
        for a, b in sorted(self.spans):
            if cur_b is None or a > cur_b:
                if cur_b is not None:
                    total += cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        if cur_b is not None:
            total += cur_b - cur_a
        return total


def _on_duration(event: str, duration: float, **kwargs: Any) -> None:
    if event in COMPILE_EVENTS:
        with _LOCK:
            for clock in _ACTIVE:
                clock.durations += float(duration)
                clock.events += 1


def _on_span(event: str, start: float, end: float, **kwargs: Any) -> None:
    if event in COMPILE_EVENTS:
        with _LOCK:
            for clock in _ACTIVE:
                clock.spans.append((float(start), float(end)))


def _register_listeners() -> None:
    """Register the module's listeners once (older JAX cannot unregister them); they only write
    into the currently active clocks, so they cost nothing outside :func:`compile_clock`."""
    with _LOCK:
        if _REGISTERED["done"]:
            return
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        register_span = getattr(jax.monitoring, "register_event_time_span_listener", None)
        if register_span is not None:
            register_span(_on_span)
            _REGISTERED["spans"] = True
        _REGISTERED["done"] = True


@contextlib.contextmanager
def compile_clock() -> Iterator[CompileClock]:
    """``with compile_clock() as c: ...`` — then ``c.seconds`` is the time JAX spent tracing,
    lowering and compiling in the block (any thread of this process), in seconds."""
    _register_listeners()
    clock = CompileClock()
    with _LOCK:
        _ACTIVE.append(clock)
    try:
        yield clock
    finally:
        with _LOCK:
            _ACTIVE.remove(clock)


def cpu_name() -> str:
    """The CPU's model name, with what tells machines of one name apart: x86 family and model
    (e.g. AMD EPYC family 25 model 1 is Zen 3, model 17 Zen 4) and the widest vector ISA."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            fields: dict[str, str] = {}
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
    except OSError:
        fields = {}
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("features", "")).split())
    extra = []
    if "cpu family" in fields and "model" in fields:
        extra.append(f"family {fields['cpu family']} model {fields['model']}")
    extra += [isa for f, isa in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON")) if f in flags][:1]
    return f"{name} ({', '.join(extra)})" if extra else name


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: OS, CPU, accelerator (``device_kind``), versions, cache."""
    import jaxlib

    import invdiff

    _register_listeners()
    dev = jax.devices()[0]
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "backend": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", "?"),
        "invdiff": invdiff.__version__,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
        "compile_timing": "jax.monitoring time spans" if _REGISTERED["spans"] else "jax.monitoring durations",
    }
    if dev.platform == "cpu":
        info["machine"] = f"CPU: {info['cpu']} ({info['cpu_count']} cores), {info['platform']}"
    else:
        info["machine"] = (f"{info['local_device_count']} x {dev.device_kind} ({dev.platform}); host CPU "
                           f"{info['cpu']} ({info['cpu_count']} cores), {info['platform']}")
    return info


__all__ = ["COMPILE_EVENTS", "CompileClock", "compile_clock", "cpu_name", "machine_info"]
