"""The compiled driver: schedules as data, resampling, trace counting, bad input."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff.operator import LinearFunction
from invdiff.schedule import transitions
from invdiff.solve import trace_count
from solvers import DDIM, DDPM

SCHED = invdiff.NoiseSchedule.linear(1000)
_ABAR = jnp.asarray(SCHED.alphas_cumprod, jnp.float32)
MU, VAR = 0.5, 0.25  # N(MU, VAR I) data


def gauss_eps(x, t):
    """Exact ε̂ of the noised N(MU, VAR I) prior: x_t ~ N(√ᾱ MU, ᾱ VAR + 1 - ᾱ)."""
    a = _ABAR[t].reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * VAR + 1 - a)


MODEL = invdiff.FunctionModel(gauss_eps, schedule=SCHED)
FIRST = LinearFunction(lambda x: x[:, :1], in_shape=(3,))


def test_repaint_schedule_paper_setting():
    w = invdiff.repaint_schedule(250, 10, 10)
    assert w[0] == 249 and w[-1] == -1
    assert np.all(np.abs(np.diff(w)) == 1)
    assert len(w) - 1 == 4570 and int(np.sum(np.diff(w) < 0)) == 2410
    np.testing.assert_array_equal(invdiff.repaint_schedule(5, 1, 1), [4, 3, 2, 1, 0, -1])


def test_transitions_use_original_timesteps_and_go_up_without_network():
    tr = transitions(SCHED, 250, invdiff.repaint_schedule(250, 10, 10))
    assert tr.num_down == 2410 and len(tr) == 4570
    assert tr.t[0] == 999 and tr.s[-1] == -1
    up = np.asarray(tr.up)
    np.testing.assert_array_equal(tr.t[up] < tr.s[up], True)
    with pytest.raises(ValueError, match="differ by exactly one"):
        transitions(SCHED, 10, [9, 7, -1])


def chain_moments(solver, steps):
    """Exact mean and variance of the discrete reverse chain for the N(MU, VAR) prior.

    With an exact Gaussian ε̂, x̂0 is affine in x_t and every step is linear-Gaussian, so the
    sampler's output law is Gaussian with moments we can propagate in float64.
    """
    tr = transitions(SCHED, steps)
    m, v = 0.0, 1.0
    for a, a_s, beta in zip(tr.abar_t, tr.abar_s, tr.beta):
        k = np.sqrt(1 - a) / (a * VAR + 1 - a)  # ε̂ = k (x - √a MU)
        e0, e1 = -k * np.sqrt(a) * MU, k  # ε̂ = e0 + e1 x
        x0_0, x0_1 = -np.sqrt(1 - a) * e0 / np.sqrt(a), (1 - np.sqrt(1 - a) * e1) / np.sqrt(a)
        if isinstance(solver, DDPM):
            c1, c2 = np.sqrt(a_s) * beta / (1 - a), np.sqrt(1 - beta) * (1 - a_s) / (1 - a)
            lin, off, noise = c1 * x0_1 + c2, c1 * x0_0, (1 - a_s) / (1 - a) * beta
        else:
            eta = float(solver.eta)
            sig2 = eta**2 * (1 - a_s) / (1 - a) * beta
            d = np.sqrt(max(1 - a_s - sig2, 0.0))
            lin, off, noise = np.sqrt(a_s) * x0_1 + d * e1, np.sqrt(a_s) * x0_0 + d * e0, sig2
        if a_s == 1.0:
            noise = 0.0 if isinstance(solver, DDPM) else noise
        m, v = lin * m + off, lin**2 * v + noise
    return m, v


@pytest.mark.parametrize("solver", [DDPM(steps=50), DDIM(steps=50), DDIM(steps=50, eta=jnp.asarray(1.0))],
                         ids=["ddpm", "ddim0", "ddim1"])
def test_unconditional_samplers_have_the_chains_exact_moments(solver):
    n = 20000
    sol = invdiff.solve(solver, MODEL, FIRST, jnp.zeros((n, 1)), key=jax.random.key(0))
    x = np.asarray(sol.x, np.float64)
    assert sol.nfe == solver.steps
    m, v = chain_moments(solver, solver.steps)
    se_m, se_v = np.sqrt(v / n), v * np.sqrt(2 / n)  # standard errors per coordinate
    np.testing.assert_allclose(x.mean(axis=0), m, atol=5 * se_m)
    np.testing.assert_allclose(x.var(axis=0), v, atol=5 * se_v)
    np.testing.assert_allclose(np.cov(x.T)[~np.eye(3, dtype=bool)], 0.0, atol=5 * se_v)


def test_fine_chains_sample_the_prior():
    for solver in (DDPM(steps=1000), DDIM(steps=1000), DDIM(steps=1000, eta=jnp.asarray(1.0))):
        m, v = chain_moments(solver, 1000)
        np.testing.assert_allclose([m, v], [MU, VAR], rtol=0.02)  # 1000 steps: < 2% bias


def test_same_key_same_result_and_no_recompilation():
    solver = DDIM(steps=10, eta=jnp.asarray(0.5))
    y = jnp.zeros((8, 1))
    a = invdiff.solve(solver, MODEL, FIRST, y, key=jax.random.key(3)).x
    n = trace_count()
    b = invdiff.solve(solver, MODEL, FIRST, y, key=jax.random.key(3)).x
    np.testing.assert_array_equal(a, b)
    c = invdiff.solve(solver.replace(eta=jnp.asarray(0.9)), MODEL, FIRST, y + 1, key=jax.random.key(4)).x
    assert not np.allclose(a, c)
    assert trace_count() == n, "a new key, y or eta must not recompile"
    invdiff.solve(DDIM(steps=11), MODEL, FIRST, y, key=jax.random.key(3))
    assert trace_count() == n + 1, "a new number of steps is a new program"


def test_precompile_in_a_thread_leaves_solve_nothing_to_compile():
    compiles = []

    def listen(event: str, secs: float, **kw) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    solver = DDIM(steps=9, eta=jnp.asarray(0.3))
    y = jnp.zeros((5, 1))
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        n = trace_count()
        worker = threading.Thread(target=invdiff.precompile, args=(solver, MODEL, FIRST, y),
                                  kwargs=dict(key=jax.random.key(0), sigma_y=0.1))
        worker.start()
        worker.join()
        assert trace_count() == n + 1 and compiles, "precompile compiles the walk"
        # other values (y, key, sigma_y, eta) are the same program
        other = dict(solver=solver.replace(eta=jnp.asarray(0.6)), y=y + 1, key=jax.random.key(1))
        done = len(compiles)
        x = invdiff.solve(other["solver"], MODEL, FIRST, other["y"], key=other["key"], sigma_y=0.2).x
        assert np.all(np.isfinite(np.asarray(x)))
        assert trace_count() == n + 1 and len(compiles) == done, "solve found the program compiled"
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    with pytest.raises(ValueError, match="sigma_y must be a finite scalar"):  # checked like solve
        invdiff.precompile(solver, MODEL, FIRST, y, key=jax.random.key(0), sigma_y=-1.0)
    assert trace_count() == n + 1


def test_resampling_composes_with_any_solver():
    solver = DDIM(steps=20, jump_length=5, jump_n_sample=3)
    sol = invdiff.solve(solver, MODEL, FIRST, jnp.zeros((2, 1)), key=jax.random.key(0))
    walk = solver.walk()
    assert sol.nfe == int(np.sum(np.diff(walk) < 0)) > 20
    assert np.all(np.isfinite(sol.x))


def test_saved_states_and_restart_from_a_checkpoint():
    solver = DDIM(steps=12)
    y = jnp.zeros((3, 1))
    full = invdiff.solve(solver, MODEL, FIRST, y, key=jax.random.key(1), save_every=4)
    traj = full.trajectory
    assert traj.x.shape == (3, 3, 3) and traj.x0hat.shape == (3, 3, 3)
    np.testing.assert_array_equal(traj.position, [3, 7, 11])
    np.testing.assert_allclose(traj.x[-1], full.x)
    # DDIM(η=0) is deterministic: restarting from the state saved at respaced index 7 (after
    # 4 transitions from 11) reproduces the end of the run.
    idx = int(np.flatnonzero(solver.walk() == 7)[0])
    assert idx == 4
    resumed = invdiff.solve(solver, MODEL, FIRST, y, key=jax.random.key(9), x_init=traj.x[0], start_step=7)
    np.testing.assert_allclose(resumed.x, full.x, rtol=1e-5, atol=1e-5)
    assert resumed.nfe == 8


def test_sdedit_partial_noising():
    x0 = jnp.full((2, 3), 0.5)
    xt = invdiff.noised(x0, MODEL, steps=10, start_step=3, key=jax.random.key(0))
    sol = invdiff.solve(DDIM(steps=10), MODEL, FIRST, jnp.zeros((2, 1)), key=jax.random.key(0),
                        x_init=xt, start_step=3)
    assert sol.nfe == 4 and sol.x.shape == (2, 3)


def test_learned_variance_is_used_by_ancestral_steps():
    def var_fn(x, t):  # v = +1: variance β', v = -1: the clipped posterior variance β̃
        return jnp.ones_like(x)

    big = invdiff.FunctionModel(gauss_eps, schedule=SCHED, var_fn=var_fn)
    small = invdiff.FunctionModel(gauss_eps, schedule=SCHED, var_fn=lambda x, t: -jnp.ones_like(x))
    y = jnp.zeros((20000, 1))
    walk = [9, 8]  # one transition, from the most-noisy step of a 10-step chain
    xi = jnp.zeros((20000, 3))
    kw = dict(key=jax.random.key(0), x_init=xi, start_step=9, walk=walk)
    v_big = float(np.var(invdiff.solve(DDPM(steps=10), big, FIRST, y, **kw).x))
    v_small = float(np.var(invdiff.solve(DDPM(steps=10), small, FIRST, y, **kw).x))
    tr = transitions(SCHED, 10)
    np.testing.assert_allclose(v_big, tr.beta[0], rtol=0.03)
    np.testing.assert_allclose(v_small, np.exp(tr.log_var_clipped[0]), rtol=0.03)


def test_progress_callback_counts_transitions_from_inside_the_loop():
    seen = []
    invdiff.solve(DDIM(steps=6), MODEL, FIRST, jnp.zeros((1, 1)), key=jax.random.key(0),
                  progress=lambda n: seen.append(n))
    assert seen == list(range(1, 7))
    # a long walk reports about 100 times, ends at its length, and a new callback reuses the program
    before = trace_count()
    seen.clear()
    invdiff.solve(DDIM(steps=250), MODEL, FIRST, jnp.zeros((1, 1)), key=jax.random.key(0),
                  progress=lambda n: seen.append(n))
    assert seen[-1] == 250 and 100 <= len(seen) <= 130 and seen == sorted(seen)
    other = []
    invdiff.solve(DDIM(steps=250), MODEL, FIRST, jnp.zeros((1, 1)), key=jax.random.key(1),
                  progress=other.append)
    assert other == seen and trace_count() == before + 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(y=jnp.zeros((2, 2))), "measurements of shape"),
        (dict(y=jnp.zeros((1,))), "batch dimension"),
        (dict(y=jnp.array([[np.nan]])), "NaN"),
        (dict(sigma_y=-0.1), "sigma_y"),
        (dict(sigma_y=float("inf")), "sigma_y"),
        (dict(label=jnp.zeros(2, jnp.int32)), "not class-conditional"),
        (dict(start_step=3), "x_init"),
    ],
)
def test_bad_input_is_refused_before_compiling(kwargs, match):
    args = dict(y=jnp.zeros((2, 1)), key=jax.random.key(0))
    args.update(kwargs)
    y = args.pop("y")
    n = trace_count()
    with pytest.raises((ValueError, TypeError), match=match):
        invdiff.solve(DDIM(steps=4), MODEL, FIRST, y, **args)
    assert trace_count() == n


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="Solver"):
        invdiff.solve(DDIM, MODEL, FIRST, jnp.zeros((1, 1)), key=jax.random.key(0))
    with pytest.raises(TypeError, match="LinearOperator"):
        invdiff.solve(DDIM(), MODEL, lambda x: x, jnp.zeros((1, 1)), key=jax.random.key(0))


def test_x0_is_clipped_to_the_models_data_range():
    wild = invdiff.FunctionModel(lambda x, t: jnp.zeros_like(x), schedule=SCHED, data_range=(-1.0, 1.0))
    y = jnp.zeros((4, 1))
    clipped = invdiff.solve(DDIM(steps=5), wild, FIRST, y, key=jax.random.key(0)).x
    assert float(jnp.max(jnp.abs(clipped))) <= 1.0 + 1e-6  # DDIM's last step returns x̂0
    free = invdiff.solve(DDIM(steps=5), wild, FIRST, y, key=jax.random.key(0), clip_x0=False).x
    assert float(jnp.max(jnp.abs(free))) > 10.0  # ε̂ = 0 blows x̂0 up by 1/sqrt(ᾱ_T)
    narrow = invdiff.solve(DDIM(steps=5), wild, FIRST, y, key=jax.random.key(0), clip_x0=(-0.5, 0.5)).x
    assert float(jnp.max(jnp.abs(narrow))) <= 0.5 + 1e-6
