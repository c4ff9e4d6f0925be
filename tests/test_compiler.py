"""invdiff's XLA:CPU options: applied to its own top-level programs only, yielding to the user's
XLA_FLAGS and to INVDIFF_XLA_OPTIONS=0, and never changing what a program computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invdiff import compiler


@pytest.fixture
def fresh(monkeypatch):
    compiler.compiler_options.cache_clear()
    yield monkeypatch
    compiler.compiler_options.cache_clear()


def test_options_on_cpu_yield_to_the_user(fresh):
    fresh.delenv(compiler.ENV, raising=False)
    fresh.setenv("XLA_FLAGS", "")
    assert compiler.compiler_options() == compiler.CPU_OPTIONS
    compiler.compiler_options.cache_clear()
    fresh.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    opts = compiler.compiler_options()
    assert "xla_backend_optimization_level" not in opts and "xla_cpu_experimental_ynn_fusion_type" in opts
    compiler.compiler_options.cache_clear()
    fresh.setenv(compiler.ENV, "0")
    assert compiler.compiler_options() is None


def test_no_options_for_a_jaxlib_that_may_not_know_them(fresh):
    # XLA rejects an option it does not know: older jaxlibs compile with their defaults
    fresh.delenv(compiler.ENV, raising=False)
    fresh.setattr(compiler, "_jaxlib_version", lambda: (0, 9))
    assert compiler.compiler_options() is None


def test_the_wrapped_program_computes_the_same_inside_and_outside_a_trace(fresh):
    fresh.delenv(compiler.ENV, raising=False)

    def f(x, n):
        return jax.nn.silu(jnp.cumsum(x * n, axis=-1)) @ x.T

    wrapped = compiler.jit(f, static_argnames=("n",))
    x = jax.random.normal(jax.random.key(0), (8, 8))
    top = wrapped(x, n=3)  # compiled with the options
    inside = jax.jit(lambda x: wrapped(x, n=3))(x)  # a tracer: the plain jit of the enclosing program
    np.testing.assert_allclose(top, f(x, 3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inside, top, rtol=1e-5, atol=1e-5)
    # ahead-of-time lowering reaches the same program
    np.testing.assert_allclose(wrapped.lower(x, n=3).compile()(x), top, rtol=1e-6, atol=1e-6)


def test_top_level_calls_pause_the_garbage_collector_and_restore_it():
    import gc

    seen = []

    def f(x):
        seen.append(gc.isenabled())  # while tracing
        return x + 1

    wrapped = compiler.jit(f)
    assert gc.isenabled()
    wrapped(jnp.ones(3))
    assert seen == [False] and gc.isenabled()
    with pytest.raises(TypeError):
        wrapped(jnp.ones(3), 2)  # an error while tracing leaves the collector running
    assert gc.isenabled()
    gc.disable()
    try:
        with compiler.gc_paused():
            pass
        assert not gc.isenabled()  # a collector the caller paused stays paused
    finally:
        gc.enable()


def test_preferred_options_follow_the_arrays_they_were_given_for(fresh):
    """``prefer_options``: a top-level program that gets a registered array as an argument
    compiles with the overrides; others keep the usual options; the registry forgets an array
    with its last reference."""
    import gc

    fresh.delenv(compiler.ENV, raising=False)
    fresh.setenv("XLA_FLAGS", "")
    seen = []
    real_jit = jax.jit

    def spy(fun, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real_jit(fun, **kwargs)

    fresh.setattr(compiler.jax, "jit", spy)
    wrapped = compiler.jit(lambda x, y: x * y)
    a, b = jnp.arange(3.0), jnp.ones(3)
    compiler.prefer_options({"w": a}, xla_backend_optimization_level=2)
    np.testing.assert_array_equal(wrapped(b, b), b)
    np.testing.assert_array_equal(wrapped(a, b), a)
    np.testing.assert_array_equal(wrapped(b, a), a)  # the same program: compiled once
    assert seen[1:] == [compiler.CPU_OPTIONS, {**compiler.CPU_OPTIONS, "xla_backend_optimization_level": 2}]
    del a
    gc.collect()
    assert not compiler._PREFERRED
