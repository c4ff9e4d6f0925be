"""Particle samplers (MCGdiff, TDS): resampling, the B·N batch, and the exact posterior.

The posterior checks use MCGdiff's Gaussian mixture (Cardoso et al., ICLR 2024, sec. 4.1) in
d = 8 with dy = 1, 2 and 4 measurements. Every problem is posed with a 4 × 8 matrix whose last
4 − dy rows are zero (and y = 0 there), which leaves the posterior unchanged and lets one
compiled program per solver serve every dy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff import smc
from invdiff.metrics import sliced_wasserstein
from invdiff.operator import LinearFunction
from invdiff.priors import Gaussian, mcg_gmm_problem
from invdiff.solve import trace_count
from operators import Dense, Inpainting
from solvers import DDNM, TDS, MCGdiff

SCHED = invdiff.NoiseSchedule.linear(1000)

# ---------------------------------------------------------------------------------------
# Resampling and log-weights


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_resampling_copies_particles_in_proportion_to_their_weights(scheme):
    w = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    log_w = jnp.log(jnp.asarray(np.tile(w, (400, 1)), jnp.float32))
    anc = np.asarray(jax.jit(smc.ancestors, static_argnums=2)(jax.random.key(0), smc.normalize(log_w), scheme))
    counts = np.stack([np.bincount(a, minlength=5) for a in anc])
    np.testing.assert_allclose(counts.mean(0) / 5, w, atol=0.02)
    assert counts[:, 4].max() == 0  # a zero weight is never picked
    if scheme == "systematic":  # at most one away from N·w in every row
        assert np.all(np.abs(counts - 5 * w) < 1.0 + 1e-6)


def test_log_weights_stay_finite_far_beyond_float32_exponents():
    log_w = jnp.asarray([[-1e6, -1e6 + 1.0, -1e6 - 50.0, -3e6], [2e4, 2e4, 2e4, 2e4]], jnp.float32)
    lw = jax.jit(smc.normalize)(log_w)
    assert np.all(np.isfinite(np.asarray(lw))) and np.all(np.asarray(lw) <= 0)
    np.testing.assert_allclose(np.exp(np.asarray(lw)).sum(1), 1.0, rtol=1e-6)
    e = np.asarray(smc.ess(lw))
    np.testing.assert_allclose(e[1], 4.0, rtol=1e-5)
    assert 1.0 < e[0] < 2.0  # two particles share the weight unequally
    anc, new = jax.jit(smc.maybe_resample, static_argnums=3)(jax.random.key(1), lw, jnp.float32(0.5), "systematic")
    np.testing.assert_array_equal(np.asarray(anc[1]), np.arange(4))  # ESS = N: no resampling
    assert set(np.asarray(anc[0]).tolist()) <= {0, 1} and np.allclose(np.asarray(new[0]), -np.log(4))


def test_gather_and_final_selection_stay_within_each_measurement():
    anc = jnp.asarray([[1, 1, 0], [2, 0, 2]], jnp.int32)
    rows = jnp.arange(6.0)[:, None]
    np.testing.assert_array_equal(np.asarray(smc.gather(rows, anc))[:, 0], [1, 1, 0, 5, 3, 5])
    # slot 0 of the final selection is a draw from the weights
    log_w = jnp.log(jnp.asarray(np.tile([0.7, 0.2, 0.1], (3000, 1)), jnp.float32))
    first = np.asarray(jax.jit(smc.select_first, static_argnums=2)(jax.random.key(2), log_w, "systematic"))[:, 0]
    np.testing.assert_allclose(np.bincount(first, minlength=3) / 3000, [0.7, 0.2, 0.1], atol=0.03)


# ---------------------------------------------------------------------------------------
# Through invdiff.solve: shapes, cost, per-sample operators, resampling walks, errors

IMG = (8, 8, 3)
IMG_PRIOR = Gaussian(jnp.full(IMG, 0.2), var=0.25, schedule=SCHED)


@pytest.mark.parametrize("cls", [MCGdiff, TDS])
def test_each_measurement_keeps_its_own_mask_and_particles_come_back(cls):
    masks = jnp.stack([jnp.ones(IMG[:2] + (1,)).at[:4].set(0.0), jnp.ones(IMG[:2] + (1,)).at[:, 5:].set(0.0)])
    op = Inpainting(masks)
    x_true = IMG_PRIOR.sample(jax.random.key(1), 2)
    y = op.A(x_true)
    solver = cls(steps=4, particles=3, jump_length=2, jump_n_sample=2)  # a resampling walk
    sol = invdiff.solve(solver, IMG_PRIOR, op, y, key=jax.random.key(0))
    assert sol.x.shape == (2,) + IMG and sol.particles.shape == (2, 3) + IMG
    np.testing.assert_array_equal(sol.x, sol.particles[:, 0])
    assert sol.nfe == 3 * 6 and sol.vjp == (3 * 6 if cls is TDS else 0)  # 6 down steps, N = 3 each
    for n in range(3):  # noiseless: every particle of measurement b fits y_b through mask b
        np.testing.assert_allclose(op.A(sol.particles[:, n]), y, atol=1e-4)


def test_mcgdiff_refuses_an_operator_without_svd_and_bad_settings_before_compiling():
    op = LinearFunction(lambda x: x[:, :4], in_shape=(8,))
    prior = Gaussian(jnp.zeros(8), var=1.0, schedule=SCHED)
    n = trace_count()
    with pytest.raises(TypeError, match="MCGdiff needs an operator with an SVD.*TDS"):
        invdiff.solve(MCGdiff(steps=3), prior, op, jnp.zeros((1, 4)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="resampling='stratified' is not known"):
        invdiff.solve(TDS(steps=3, resampling="stratified"), prior, op, jnp.zeros((1, 4)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="particles must be a positive integer"):
        invdiff.solve(TDS(steps=3, particles=0), prior, op, jnp.zeros((1, 4)), key=jax.random.key(0))
    assert trace_count() == n


# ---------------------------------------------------------------------------------------
# The exact posterior (MCGdiff's Gaussian mixture, d = 8)

N_SAMPLES = 128
PROBLEMS = [(1, 0), (2, 0), (4, 0), (1, 1)]  # (dy, seed)
SIGMA_Y = 0.5


def _padded(dy: int, seed: int):
    prob = mcg_gmm_problem(jax.random.key(100 + seed), d=8, dy=dy, sigma_y=SIGMA_Y, schedule=SCHED)
    a = np.zeros((4, 8), np.float32)
    a[:dy] = np.asarray(prob.A)
    y = np.zeros(4, np.float32)
    y[:dy] = np.asarray(prob.y)
    exact = prob.prior.posterior(prob.A, prob.y, SIGMA_Y)
    return prob.prior, Dense(a), jnp.broadcast_to(jnp.asarray(y), (N_SAMPLES, 4)), exact


@pytest.fixture(scope="module")
def gmm():
    """Per problem: the SW of other exact sample sets (the floor, mean of 2) and of each solver's
    samples to the exact samples, each averaged over 2 sliced-Wasserstein keys; returned as
    ratios to the floor."""
    solvers = {"DDNM": DDNM(), "MCGdiff-2": MCGdiff(particles=2), "MCGdiff-many": MCGdiff(particles=64),
               "TDS-2": TDS(particles=2), "TDS-many": TDS(particles=32)}
    rows: dict[str, list[float]] = {k: [] for k in ["floor", *solvers]}
    for i, (dy, seed) in enumerate(PROBLEMS):
        prior, op, y, exact = _padded(dy, seed)
        ref = exact.sample(jax.random.key(10 + i), N_SAMPLES)

        def sw(x, _ref=ref):
            return float(np.mean([sliced_wasserstein(x, _ref, jax.random.key(k)) for k in (0, 1)]))

        rows["floor"].append(np.mean([sw(exact.sample(jax.random.key(20 + 10 * j + i), N_SAMPLES)) for j in (0, 1)]))
        for name, solver in solvers.items():
            x = invdiff.solve(solver, prior, op, y, key=jax.random.key(30 + i), sigma_y=SIGMA_Y).x
            rows[name].append(sw(x))
    floor = np.asarray(rows.pop("floor"))
    return {k: np.asarray(v) / floor for k, v in rows.items()}


def _show(gmm) -> str:
    return "; ".join(f"{k}: " + ", ".join(f"{v:.2f}" for v in r) for k, r in gmm.items())


@pytest.mark.parametrize("name", ["MCGdiff", "TDS"])
def test_enough_particles_reach_the_exact_posterior_where_ddnm_is_far_off(gmm, name):
    assert gmm["DDNM"].mean() > 3, _show(gmm)  # the problems are hard for a projection method
    assert gmm[f"{name}-many"].mean() <= 2, _show(gmm)  # within 2x of the exact-vs-exact floor


@pytest.mark.parametrize("name", ["MCGdiff", "TDS"])
def test_error_falls_as_the_number_of_particles_grows(gmm, name):
    few, many = gmm[f"{name}-2"], gmm[f"{name}-many"]
    assert many.mean() < 0.5 * few.mean(), _show(gmm)
    assert np.sum(many < few) >= len(PROBLEMS) - 1, _show(gmm)
