"""Faithful to the authors' code: one step of DDNM, DDRM and PiGDM with x̂0 clipping off equals
the authors' update written out line by line (NumPy, float64); DiffPIR's λ in the official
code's units; operators.Dense keeps float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff.priors import Gaussian
from invdiff.solve import Problem, Step
from operators import Dense, Downsampling
from solvers import DDNM, DDRM, DiffPIR, PiGDM

SCHED = invdiff.NoiseSchedule.linear(1000)
ABAR = SCHED.alphas_cumprod
MU, VAR = np.array([0.5, -0.4, 0.9, 0.0, 0.3]), np.array([4.0, 2.0, 3.0, 1.0, 5.0])
#: a wide prior declared as image data in [-1, 1]: x̂0 leaves the range, so clipping would act
PRIOR = Gaussian(MU, var=VAR, schedule=SCHED, data_range=(-1.0, 1.0))
M = np.random.default_rng(3).normal(size=(3, 5))
T, S = 300, 250  # one respaced transition t -> s (original timesteps)


def _step(t: int, s: int) -> Step:
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return Step(t=jnp.asarray(t), s=jnp.asarray(s), abar_t=f32(ABAR[t]), abar_s=f32(ABAR[s]),
                omab_t=f32(1 - ABAR[t]), omab_s=f32(1 - ABAR[s]), beta=f32(1 - ABAR[t] / ABAR[s]),
                log_var_clipped=f32(0.0), up=jnp.asarray(False), index=jnp.asarray(0))


def _inputs(sigma_y: float):
    x = jax.random.normal(jax.random.key(0), (2, 5)) * 1.5
    y = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3)) + 0.1 * sigma_y, jnp.float32)
    key = jax.random.key(7)
    z = np.asarray(jax.random.normal(key, (2, 5), jnp.float32), np.float64)  # the step's one noise draw
    return x, y, key, z


def _ours(solver, x, y, key, sigma_y, x0_range, state=()):
    problem = Problem(model=PRIOR, op=Dense(M), y=y, sigma_y=jnp.asarray(sigma_y, jnp.float32), x0_range=x0_range)
    return np.asarray(jax.jit(solver.step)(problem, _step(T, S), x, state, key)[0], np.float64)


def _network(x):
    """The "network": ε̂ of the Gaussian prior at T (what the authors' ``model(xt, t)`` returns)."""
    return np.asarray(PRIOR.eps(x, jnp.full((x.shape[0],), T, jnp.int32)), np.float64)


def _check(ours, clipped, reference):
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=2e-4)
    assert np.max(np.abs(clipped - reference)) > 1e-2, "clipping must act in this state, or the test proves nothing"


def test_ddnm_without_clipping_is_the_official_ddnm_update():
    """wyhuai/DDNM, functions/svd_ddnm.py, ``ddnm_diffusion`` (σ_y = 0)."""
    x, y, key, z = _inputs(0.0)
    solver = DDNM()
    xt, yy, eta = np.asarray(x, np.float64), np.asarray(y, np.float64), 0.85
    at, at_next = ABAR[T], ABAR[S]
    et = _network(x)
    x0_t = (xt - et * np.sqrt(1 - at)) / np.sqrt(at)
    x0_t_hat = x0_t - (x0_t @ M.T - yy) @ np.linalg.pinv(M).T
    c1 = np.sqrt(1 - at_next) * eta
    c2 = np.sqrt(1 - at_next) * np.sqrt(1 - eta**2)
    xt_next = np.sqrt(at_next) * x0_t_hat + c1 * z + c2 * et
    _check(_ours(solver, x, y, key, 0.0, None), _ours(solver, x, y, key, 0.0, (-1.0, 1.0)), xt_next)


@pytest.mark.parametrize("sigma_0", [0.0, 2.0])
def test_ddrm_without_clipping_is_the_official_ddrm_update(sigma_0):
    """bahjat-kawar/ddrm, functions/denoising.py, ``efficient_generalized_steps`` (one step)."""
    x, y, key, z = _inputs(sigma_0)
    solver = DDRM()
    etaA = etaC = 0.85
    etaB = 1.0
    xt, yy = np.asarray(x, np.float64), np.asarray(y, np.float64)
    u, singulars, vh = np.linalg.svd(M, full_matrices=True)
    Vt, V = (lambda v: v @ vh.T), (lambda v: v @ vh)
    U_t_y = yy @ u
    Sig_inv_U_t_y = U_t_y / singulars
    at, at_next = ABAR[T], ABAR[S]
    et = _network(x)
    x0_t = (xt - et * np.sqrt(1 - at)) / np.sqrt(at)
    sigma_next = np.sqrt(1 - at_next) / np.sqrt(at_next)
    V_t_x0 = Vt(x0_t)
    SVt_x0 = (V_t_x0[:, :3] * singulars)
    cond_before = singulars * sigma_next > sigma_0
    cond_after = singulars * sigma_next < sigma_0
    std_nextC = sigma_next * etaC
    sigma_tilde_nextC = np.sqrt(sigma_next**2 - std_nextC**2)
    std_nextA = sigma_next * etaA
    sigma_tilde_nextA = np.sqrt(sigma_next**2 - std_nextA**2)
    nxt = V_t_x0 + sigma_tilde_nextC * Vt(et) + std_nextC * z                       # missing
    after = V_t_x0[:, :3] + sigma_tilde_nextA * (U_t_y - SVt_x0) / max(sigma_0, 1e-30) + std_nextA * z[:, :3]
    diff_b = np.sqrt(np.maximum(sigma_next**2 - sigma_0**2 / singulars**2 * etaB**2, 0.0))
    before = Sig_inv_U_t_y * etaB + (1 - etaB) * V_t_x0[:, :3] + diff_b * z[:, :3]
    nxt[:, :3] = np.where(cond_after, after, np.where(cond_before, before, nxt[:, :3]))
    xt_next = np.sqrt(at_next) * V(nxt)
    if sigma_0 > 0:
        assert cond_after.any() and cond_before.any(), "both observed cases should occur at σ_0 = 2"
    state = jnp.asarray(False)
    _check(_ours(solver, x, y, key, sigma_0, None, state), _ours(solver, x, y, key, sigma_0, (-1.0, 1.0), state),
           xt_next)


def test_pigdm_without_clipping_is_the_lab_code_update():
    """NVlabs/RED-diff, algos/pgdm.py, ``PGDM.sample`` (awd=True, η = 0, grad_term_weight = 1)."""
    x, y, key, _ = _inputs(0.0)
    solver = PiGDM()
    eta, w = 0.0, 1.0
    xt, y_0 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    alpha_t, alpha_s = ABAR[T], ABAR[S]
    c1 = np.sqrt((1 - alpha_t / alpha_s) * (1 - alpha_s) / (1 - alpha_t)) * eta
    c2 = np.sqrt((1 - alpha_s) - c1**2)
    et = _network(x)
    x0_pred = (xt - np.sqrt(1 - alpha_t) * et) / np.sqrt(alpha_t)
    pinv = np.linalg.pinv(M)
    mat = y_0 @ pinv.T - (x0_pred @ M.T) @ pinv.T
    # grad of Σ mat·x0_pred(x_t) in x_t: x̂0 of N(μ, diag v) is affine with Jacobian diag(√ᾱ v / (ᾱ v + 1 − ᾱ))
    grad_term = mat * np.sqrt(alpha_t) * VAR / (alpha_t * VAR + 1 - alpha_t)
    coeff = np.sqrt(alpha_s) * np.sqrt(alpha_t) * w
    xs = np.sqrt(alpha_s) * x0_pred + c2 * et + grad_term * coeff
    _check(_ours(solver, x, y, key, 0.0, None), _ours(solver, x, y, key, 0.0, (-1.0, 1.0)), xs)


# ---------------------------------------------------------------------------------------
# DiffPIR's λ: the official code's units ([0, 1] data step, σ on the [0, 1] scale)


def test_diffpir_default_lambda_is_the_official_lambda_one():
    """yuanzhi-zhu/DiffPIR, main_ddpir_sisr.py: ρ = λ σ² / σ_k² with σ the [0, 1]-scale noise
    level and σ_k = sqrt(1 − ᾱ) / sqrt(ᾱ); the data step argmin ||y − A x||² + ρ ||x − x0||² in
    [0, 1] image units. One step of ``DiffPIR()`` must give that x0 for the official λ = 1."""
    shape = (4, 4, 1)
    prior = Gaussian(jnp.full(shape, 0.1), var=0.3, schedule=SCHED)
    op = Downsampling(2)
    a = np.asarray(jax.vmap(lambda e: op.A(e[None])[0])(jnp.eye(16).reshape(16, *shape))).reshape(16, -1).T
    sigma_y = 0.1  # model units; the official noise_level_img is 0.05
    x = jax.random.normal(jax.random.key(0), (1,) + shape)
    y = op.A(prior.sample(jax.random.key(1), 1)) + sigma_y * jax.random.normal(jax.random.key(2), (1, 2, 2, 1))
    problem = Problem(model=prior, op=op, y=y, sigma_y=jnp.asarray(sigma_y))

    def ours(solver):
        return np.asarray(jax.jit(solver.step)(problem, _step(T, S), x, (), jax.random.key(3))[2], np.float64)

    # the official update, λ = 1: everything in [0, 1] units
    lambda_, sigma = 1.0, sigma_y / 2
    sigma_k = np.sqrt(1 - ABAR[T]) / np.sqrt(ABAR[T])
    rho = lambda_ * sigma**2 / sigma_k**2
    x0 = np.asarray(prior.eps(x, jnp.full((1,), T, jnp.int32)), np.float64)
    x0 = (np.asarray(x, np.float64) - np.sqrt(1 - ABAR[T]) * x0) / np.sqrt(ABAR[T])
    x0_p = x0.reshape(-1) / 2 + 0.5
    y01 = np.asarray(y, np.float64).reshape(-1) / 2 + 0.5
    x0_p = np.linalg.solve(a.T @ a + rho * np.eye(16), a.T @ y01 + rho * x0_p)
    official = (x0_p * 2 - 1).reshape((1,) + shape)

    assert float(DiffPIR().lam) == 0.25
    np.testing.assert_allclose(ours(DiffPIR()), official, rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(ours(DiffPIR(lam=1.0)) - official)) > 1e-3  # the unconverted λ differs


def test_diffpir_walks_the_official_quadratic_timesteps():
    from invdiff.schedule import quadratic_timesteps

    use = quadratic_timesteps(1000, 100)
    official = [int(s) for s in np.sqrt(np.linspace(0, 1000**2, 100))]
    official[-1] -= 1
    np.testing.assert_array_equal(use, np.sort(999 - np.asarray(official)))
    sol = invdiff.solve(DiffPIR(steps=5), Gaussian(jnp.zeros(2), var=1.0, schedule=SCHED), Dense(np.eye(2)[:1]),
                        jnp.zeros((1, 1)), key=jax.random.key(0), save_every=1)
    np.testing.assert_array_equal(np.asarray(sol.trajectory.t), [999 - 500, 999 - 707, 999 - 866, 0, -1])
    uniform = invdiff.solve(DiffPIR(steps=5, skip_type="uniform"), Gaussian(jnp.zeros(2), var=1.0, schedule=SCHED),
                            Dense(np.eye(2)[:1]), jnp.zeros((1, 1)), key=jax.random.key(0), save_every=1)
    np.testing.assert_array_equal(np.asarray(uniform.trajectory.t), [749, 500, 250, 0, -1])  # guided-diffusion spacing


# ---------------------------------------------------------------------------------------
# operators.Dense keeps its matrix's dtype


def test_dense_keeps_float64_and_its_identities_hold_to_1e_12():
    rng = np.random.default_rng(0)
    worst = 0.0
    with jax.enable_x64(True):  # a context: x64 does not leak into other tests
        for shape in [(4, 7), (9, 5), (6, 6)]:
            op = Dense(rng.normal(size=shape))
            assert op.matrix.dtype == jnp.float64 and op.vt.dtype == jnp.float64
            x, y = jnp.asarray(rng.normal(size=(3, shape[1]))), jnp.asarray(rng.normal(size=(3, shape[0])))
            A, P = op.A, op.pinv
            assert A(x).dtype == jnp.float64 and P(y).dtype == jnp.float64

            def rel(a, b):
                return float(jnp.max(jnp.abs(a - b)) / max(float(jnp.max(jnp.abs(b))), 1.0))

            worst = max(worst,
                        rel(jnp.sum(A(x) * y, 1), jnp.sum(x * op.AT(y), 1)),                  # adjoint
                        rel(A(P(A(x))), A(x)),                                                  # A A+ A = A
                        rel(P(A(P(y))), P(y)),                                                  # A+ A A+ = A+
                        rel(jnp.sum(A(P(y)) * y[::-1], 1), jnp.sum(y * A(P(y[::-1])), 1)),     # A A+ symmetric
                        rel(jnp.sum(P(A(x)) * x[::-1], 1), jnp.sum(x * P(A(x[::-1])), 1)))     # A+ A symmetric
    assert worst < 1e-12, worst
    assert jnp.asarray(1.0).dtype == jnp.float32


def test_dense_keeps_float32_and_makes_integer_matrices_float32():
    assert Dense(np.eye(3, dtype=np.float32)).matrix.dtype == jnp.float32
    assert Dense(np.eye(3, dtype=np.int64)).matrix.dtype == jnp.float32
