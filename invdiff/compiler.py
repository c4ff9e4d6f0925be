"""XLA options for invdiff's own compiled programs (the ``solve`` loop, the ADM network).

On CPU, invdiff compiles its programs with four XLA:CPU options that differ from the
defaults of jax 0.10:

* ``xla_cpu_experimental_ynn_fusion_type`` += ``ELTWISE``: element-wise work (GroupNorm,
  SiLU, residual adds, the solvers' arithmetic) runs in YNNPACK, like the convolutions, dots and
  reductions already do by default, instead of being compiled to one LLVM kernel per fused
  shape. Compilation of the bundled model's forward took 30-40 % less CPU time, its forward ran
  5-10 % faster and its forward + VJP as fast.
* ``xla_backend_optimization_level=1`` (LLVM -O1 instead of -O2 for the kernels still
  generated): a further 10-20 % less compile time, no measurable run-time change.
* ``xla_cpu_emitter_verification_level=0``: XLA:CPU does not re-verify the MLIR its fusion
  emitters generate for each kernel (a consistency check of XLA itself). A 3-step loop over the
  bundled model compiled in 1.78 s instead of 1.97 s (medians of 6), the same program.
* ``xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE``: XLA:CPU's own preset for compile time
  over run time (it runs fewer HLO optimisation passes). RePaint's and DPS's programs on the
  bundled model compiled ~10 % faster, DDNM's ~2 % (``benchmarks/compile_time.py``, 4 rounds);
  the network's forward and forward + VJP ran as fast (one process, alternating).

Figures and commands: README, "Performance". Results change in the last float32 digits
(relative 3e-7 on the bundled model's output).

The options are passed only with a jaxlib known to have them (0.10 or later): XLA rejects an
option it does not know, and older jaxlibs compile with their defaults.

The options apply only to programs invdiff compiles itself at the top level (``solve``, and
``ADMModel.raw`` / ``eps`` called outside a transformation); inside a user's own ``jax.jit``
the user's options hold. Options the user sets in ``XLA_FLAGS`` win. ``INVDIFF_XLA_OPTIONS=0``
turns all of this off.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax

ENV = "INVDIFF_XLA_OPTIONS"

YNN_TYPES = ("INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION", "REDUCE", "ELTWISE")


def ynn_fusion_types(*types: str) -> str:
    """The value of ``xla_cpu_experimental_ynn_fusion_type`` for these :data:`YNN_TYPES`."""
    return ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in types)


#: XLA:CPU options used for invdiff's programs (see the module docstring).
CPU_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": ynn_fusion_types(*YNN_TYPES),
    "xla_backend_optimization_level": 1,
    "xla_cpu_emitter_verification_level": 0,
    "xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_COMPILE",
}

#: the oldest jaxlib (major, minor) whose XLA knows every option of :data:`CPU_OPTIONS`
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in jax.lib.__version__.split(".")[:2])


def enabled() -> bool:
    """False when ``INVDIFF_XLA_OPTIONS`` is 0/false/off/no."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


@functools.cache
def compiler_options(overrides: tuple[tuple[str, Any], ...] = ()) -> dict[str, Any] | None:
    """The options for the default backend: :data:`CPU_OPTIONS` updated by ``overrides`` ((name,
    value) pairs, see :func:`prefer_options`) on CPU, minus any the user set in ``XLA_FLAGS``;
    None elsewhere, when turned off, or with a jaxlib older than :data:`MIN_JAXLIB`. Read once, at
    the first compilation."""
    if not enabled() or jax.default_backend() != "cpu" or _jaxlib_version() < MIN_JAXLIB:
        return None
    user = os.environ.get("XLA_FLAGS", "")
    opts = {k: v for k, v in {**CPU_OPTIONS, **dict(overrides)}.items() if f"--{k}" not in user}
    return opts or None


#: id(array) -> (weak reference to it, option overrides): see prefer_options
_PREFERRED: dict[int, tuple[weakref.ref, tuple[tuple[str, Any], ...]]] = {}


def prefer_options(tree: Any, **overrides: Any) -> None:
    """Make the programs of :func:`jit` that get any array of ``tree`` as an argument, at the top
    level, compile with :data:`CPU_OPTIONS` updated by ``overrides``: for data whose programs
    run faster with other options than the rest (``ADMModel.with_prepared``'s Winograd
    kernels). Held by weak reference: forgotten with the arrays. Options in ``XLA_FLAGS`` still
    win; :func:`enabled` still turns everything off."""
    items = tuple(sorted(overrides.items()))

    def forget(ref: weakref.ref, key: int) -> None:
        if _PREFERRED.get(key, (None,))[0] is ref:
            _PREFERRED.pop(key, None)

    for a in jax.tree.leaves(tree):
        _PREFERRED[id(a)] = (weakref.ref(a, functools.partial(forget, key=id(a))), items)


def _overrides(leaves: list) -> tuple[tuple[str, Any], ...]:
    if not _PREFERRED:
        return ()
    found: set = set()
    for a in leaves:
        entry = _PREFERRED.get(id(a))
        if entry is not None and entry[0]() is a:
            found.update(entry[1])
    return tuple(sorted(found))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (if it was running). Tracing and lowering a
    program allocate ~10^6 short-lived objects, which trigger full collections over the whole
    heap of jax, flax and numpy: 20-30 % of DDNM's trace time on the bundled model. The
    collector runs again as soon as the call returns."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def jit(fun: Callable, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` compiled with :func:`compiler_options` when called at the
    top level. JAX refuses compiler options on a jit inside another transformation, so a call
    with traced arguments goes to a plain ``jax.jit`` (the enclosing program's options hold).
    Not inline: under an eager ``jax.vmap`` or ``jax.grad`` the body would then run op by op
    (the studies' checkpointed runs took 10 s longer each). Under ``jax.vjp`` inside a jit,
    inlining traced a process's first DPS program 0.25-0.5 s faster (each custom VJP traced once
    instead of twice), but then every further program with a network VJP traced the network
    again (0.4-0.6 s on the bundled model), where the nested jit's trace and linearization are
    reused (0.03 s). Top-level calls run with the garbage collector paused (:func:`gc_paused`)."""
    plain = jax.jit(fun, **jit_kwargs)
    top: dict[tuple, Callable] = {}

    def top_level(leaves: list) -> Callable:
        overrides = _overrides(leaves)
        opts = compiler_options(overrides)
        if opts is None:
            return plain
        if overrides not in top:
            top[overrides] = jax.jit(fun, compiler_options=opts, **jit_kwargs)
        return top[overrides]

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        leaves = jax.tree.leaves((args, kwargs))
        if any(isinstance(a, jax.core.Tracer) for a in leaves):
            return plain(*args, **kwargs)
        with gc_paused():
            return top_level(leaves)(*args, **kwargs)

    def lower(*args: Any, **kwargs: Any) -> Any:
        # ahead-of-time lowering of the top-level program: compiling it fills the cache call uses
        with gc_paused():
            return top_level(jax.tree.leaves((args, kwargs))).lower(*args, **kwargs)

    call.lower = lower  # type: ignore[attr-defined]
    return call
