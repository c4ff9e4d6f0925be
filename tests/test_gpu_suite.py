"""benchmarks/gpu_suite.py compiles every solve program ahead of time (in threads), so that its
timed calls never compile: the mechanism it rests on, checked on an analytic problem."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import invdiff
from invdiff.operator import LinearFunction
from invdiff.solve import trace_count
from solvers import DDNM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_suite  # noqa: E402


def test_ahead_of_time_compile_fills_the_jit_cache_of_solve():
    sched = invdiff.NoiseSchedule.linear(1000)
    model = invdiff.FunctionModel(lambda x, t: 0.1 * x, schedule=sched)
    op = LinearFunction(lambda x: x[:, :2], in_shape=(5,))
    y = jnp.ones((3, 2))
    args = (DDNM(steps=4), model, op, y)
    info = gpu_suite.compile_all({"ddnm": lambda: gpu_suite.lower_solve(*args, key=jax.random.key(1))}, workers=2)
    assert info["ddnm"]["compile_s"] > 0 and info["ddnm"]["lower_s"] > 0
    before = trace_count()
    sol = invdiff.solve(*args, key=jax.random.key(2))  # another key: same program
    assert trace_count() == before and sol.x.shape == (3, 5)
