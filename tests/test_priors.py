"""Analytic priors: exact ε̂ of the noised prior, sampling, exact posteriors, the MCGdiff problem.

Every reference here is computed by an independent route: ε̂ against autodiff of a log-density
written with jax.scipy, posteriors against the information form and against self-normalised
importance sampling from the prior.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal as mvn

import invdiff
from invdiff.noise import q_sample
from invdiff.priors import Gaussian, GaussianMixture, mcg_gmm_means, mcg_gmm_problem

SCHED = invdiff.NoiseSchedule.linear(1000)
ABAR = SCHED.alphas_cumprod
TIMES = [0, 37, 400, 999]


def _spd(rng: np.random.Generator, d: int, jitter: float = 0.2) -> np.ndarray:
    m = rng.normal(size=(d, d))
    return m @ m.T / d + jitter * np.eye(d)


@jax.jit
def _gauss_logpdf_grad(x, a, mu, cov):
    """∇ log N(x; √a μ, a Σ + (1 − a) I), per row of x, by autodiff of jax.scipy's log-pdf."""
    d = mu.shape[0]
    return jax.vmap(jax.grad(lambda z: mvn.logpdf(z, jnp.sqrt(a) * mu, a * cov + (1 - a) * jnp.eye(d))))(x)


@jax.jit
def _mixture_logpdf_grad(x, a, w, means, covs):
    return jax.vmap(jax.grad(lambda z: _mixture_logpdf(w, means, covs, a)(z)))(x)


def _eps_ref(grad: np.ndarray, t: int) -> np.ndarray:
    """ε̂ = −√(1 − ᾱ) ∇ log p_t."""
    return -np.sqrt(1 - ABAR[t]) * np.asarray(grad)


# ---------------------------------------------------------------------------------------
# ε̂ of the noised prior


@pytest.mark.parametrize("t", TIMES)
def test_gaussian_eps_is_the_noised_score_full_cov(t):
    rng = np.random.default_rng(t)
    d = 3
    mu, cov = rng.normal(size=d), _spd(rng, d)
    prior = Gaussian(mu, cov)
    x = rng.normal(size=(5, d)) * 2
    a = ABAR[t]
    ref = _eps_ref(_gauss_logpdf_grad(x, a, mu, cov), t)
    got = prior.eps(jnp.asarray(x, jnp.float32), jnp.full((5,), t, jnp.int32))
    np.testing.assert_allclose(got, ref, atol=2e-5)


@pytest.mark.parametrize("t", TIMES)
def test_gaussian_eps_diagonal_var_on_images(t):
    rng = np.random.default_rng(10 + t)
    shape = (4, 3, 2)
    mu, var = rng.normal(size=shape), rng.uniform(0.1, 2.0, size=shape)
    prior = Gaussian(mu, var=var)
    x = rng.normal(size=(2,) + shape)
    a = ABAR[t]
    cov = np.diag(var.reshape(-1))
    ref = _eps_ref(_gauss_logpdf_grad(x.reshape(2, -1), a, mu.reshape(-1), cov), t).reshape(x.shape)
    got = prior.eps(jnp.asarray(x, jnp.float32), jnp.full((2,), t, jnp.int32))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, ref, atol=2e-5)


def _mixture_logpdf(w, means, covs, a):
    d = means.shape[1]

    def logpdf(z):
        comps = [jnp.log(w[k]) + mvn.logpdf(z, jnp.sqrt(a) * means[k], a * covs[k] + (1 - a) * jnp.eye(d))
                 for k in range(len(w))]
        return jax.scipy.special.logsumexp(jnp.stack(comps))

    return logpdf


@pytest.mark.parametrize("kind", ["full", "scalar", "per_component"])
@pytest.mark.parametrize("t", TIMES)
def test_mixture_eps_is_the_noised_score(kind, t):
    rng = np.random.default_rng(100 + t)
    k, d = 4, 3
    w = rng.uniform(0.2, 1.0, size=k)
    w /= w.sum()
    means = rng.normal(size=(k, d)) * 3
    if kind == "full":
        arg = np.stack([_spd(rng, d) for _ in range(k)])
        covs = arg
    elif kind == "scalar":
        arg = 0.7
        covs = np.stack([0.7 * np.eye(d)] * k)
    else:
        arg = rng.uniform(0.3, 2.0, size=k)
        covs = arg[:, None, None] * np.eye(d)[None]
    prior = GaussianMixture(w, means, arg)
    np.testing.assert_allclose(prior.covs, covs, atol=1e-5)
    x = rng.normal(size=(6, d)) * 4
    ref = _eps_ref(_mixture_logpdf_grad(x, ABAR[t], w, means, covs), t)
    got = prior.eps(jnp.asarray(x, jnp.float32), jnp.full((6,), t, jnp.int32))
    np.testing.assert_allclose(got, ref, atol=5e-5)


def test_mixture_eps_is_finite_far_from_every_component():
    prior = GaussianMixture(np.ones(3), np.eye(3) * 5, 1e-2)
    x = jnp.full((2, 3), 1e4)
    for t in (0, 999):
        e = prior.eps(x, jnp.full((2,), t, jnp.int32))
        assert bool(jnp.all(jnp.isfinite(e)))


def test_mixture_log_prob_matches_scipy_form():
    rng = np.random.default_rng(3)
    w, means = np.array([0.3, 0.7]), rng.normal(size=(2, 2))
    covs = np.stack([_spd(rng, 2), _spd(rng, 2)])
    prior = GaussianMixture(w, means, covs)
    x = rng.normal(size=(4, 2))
    for t in (None, 250):
        a = 1.0 if t is None else ABAR[t]
        ref = jax.jit(jax.vmap(_mixture_logpdf(w, means, covs, a)))(jnp.asarray(x, jnp.float32))
        got = prior.log_prob(jnp.asarray(x, jnp.float32), None if t is None else jnp.full((4,), t))
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_priors_are_pytrees_under_jit_and_vjp_without_recompiling():
    rng = np.random.default_rng(0)
    traces = []

    @jax.jit
    def f(model, x):
        traces.append(1)
        out, vjp = jax.vjp(lambda z: model.eps(z, jnp.full((x.shape[0],), 10, jnp.int32)), x)
        return out, vjp(jnp.ones_like(out))[0]

    x = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    p1 = GaussianMixture(np.ones(2), rng.normal(size=(2, 3)), 1.0)
    p2 = GaussianMixture(np.ones(2), rng.normal(size=(2, 3)), 1.0)
    e1, g1 = f(p1, x)
    e2, _ = f(p2, x)
    assert len(traces) == 1  # new means are new leaves, not a new program
    np.testing.assert_allclose(e1, p1.eps(x, jnp.full((2,), 10)), atol=1e-6)
    assert not np.allclose(e1, e2)
    assert g1.shape == x.shape and bool(jnp.all(jnp.isfinite(g1)))
    g = Gaussian(np.zeros(3), _spd(rng, 3))
    assert f(g, x)[0].shape == x.shape


def test_check_input_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        GaussianMixture(np.ones(2), np.zeros((2, 3))).check_input((4, 5))
    with pytest.raises(ValueError, match="shape"):
        Gaussian(np.zeros((2, 2, 1))).check_input((4, 2, 2, 3))
    with pytest.raises(ValueError, match="label"):
        Gaussian(np.zeros(2)).check_input((4, 2), label=jnp.zeros(4, jnp.int32))


def test_bad_parameters_are_refused_with_the_problem_named():
    with pytest.raises(ValueError, match="cov must be"):
        Gaussian(np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="semi-definite"):
        Gaussian(np.zeros(2), np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(np.array([1.0, -1.0]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="covs must be"):
        GaussianMixture(np.ones(2), np.zeros((2, 3)), np.ones((2, 2, 2)))


# ---------------------------------------------------------------------------------------
# sampling


def test_noised_gaussian_samples_have_the_analytic_moments():
    rng = np.random.default_rng(1)
    d, n, t = 3, 40_000, 300
    mu, cov = rng.normal(size=d), _spd(rng, d)
    prior = Gaussian(mu, cov)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = prior.sample(k1, n)
    xt = np.asarray(q_sample(x0, jax.random.normal(k2, x0.shape), ABAR[t]), np.float64)
    a = ABAR[t]
    cov_t = a * cov + (1 - a) * np.eye(d)
    se = np.sqrt(np.diag(cov_t) / n)
    np.testing.assert_array_less(np.abs(xt.mean(0) - np.sqrt(a) * mu), 5 * se)
    np.testing.assert_allclose(np.cov(xt.T), cov_t, atol=6 * np.sqrt(2 / n) * np.max(np.diag(cov_t)))


def test_mixture_samples_have_the_mixture_moments():
    rng = np.random.default_rng(2)
    w = np.array([0.2, 0.5, 0.3])
    means = rng.normal(size=(3, 2)) * 3
    covs = np.stack([_spd(rng, 2) for _ in range(3)])
    n = 60_000
    mean = w @ means
    second = np.einsum("k,kij->ij", w, covs + means[:, :, None] * means[:, None, :])
    cov = second - np.outer(mean, mean)
    for arg, c in ((covs, cov), (0.5, None)):
        prior = GaussianMixture(w, means, arg)
        xs = np.asarray(prior.sample(jax.random.key(1), n), np.float64)
        if c is None:
            c = 0.5 * np.eye(2) + np.einsum("k,ki,kj->ij", w, means, means) - np.outer(mean, mean)
        np.testing.assert_array_less(np.abs(xs.mean(0) - mean), 5 * np.sqrt(np.diag(c) / n))
        np.testing.assert_allclose(np.cov(xs.T), c, rtol=0.05, atol=0.05)
        np.testing.assert_allclose(prior.mean, mean, atol=1e-5)


# ---------------------------------------------------------------------------------------
# exact posteriors


def test_gaussian_posterior_equals_the_information_form():
    rng = np.random.default_rng(4)
    d, m, s = 4, 2, 0.3
    mu, cov, a = rng.normal(size=d), _spd(rng, d), rng.normal(size=(m, d))
    y = rng.normal(size=m)
    post = Gaussian(mu, cov).posterior(a, y, s)
    prec = np.linalg.inv(cov) + a.T @ a / s**2
    cov_ref = np.linalg.inv(prec)
    mean_ref = cov_ref @ (np.linalg.solve(cov, mu) + a.T @ y / s**2)
    np.testing.assert_allclose(post.mean, mean_ref, atol=1e-5)
    np.testing.assert_allclose(post.cov, cov_ref, atol=1e-5)


def test_gaussian_posterior_accepts_operators_and_image_shapes():
    rng = np.random.default_rng(5)
    shape = (2, 2, 1)
    mu, var = rng.normal(size=shape), rng.uniform(0.5, 1.5, size=shape)
    mask = np.array([1.0, 0.0, 1.0, 1.0]).reshape(shape)
    op = invdiff.LinearFunction(lambda x: x * jnp.asarray(mask), in_shape=shape)
    y = (rng.normal(size=shape) * mask)[None]
    post = Gaussian(mu, var=var).posterior(op, y, 0.1)
    dense = Gaussian(mu, var=var).posterior(np.diag(mask.reshape(-1)), y.reshape(-1), 0.1)
    assert post.mean.shape == shape
    np.testing.assert_allclose(post.mean, dense.mean, atol=1e-5)
    # unobserved pixel keeps its prior marginal; observed ones shrink to (1/v + 1/σ²)⁻¹
    np.testing.assert_allclose(post.mean.reshape(-1)[1], mu.reshape(-1)[1], atol=1e-6)
    v = var.reshape(-1)
    np.testing.assert_allclose(np.diag(post.cov), np.where(mask.reshape(-1) > 0, 1 / (1 / v + 100), v),
                               rtol=1e-5)


def test_posterior_takes_one_measurement_and_says_so():
    with pytest.raises(ValueError, match="once per row"):
        Gaussian(np.zeros(2)).posterior(np.eye(2), np.zeros((3, 2)), 0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        Gaussian(np.zeros(2)).posterior(np.eye(2), np.zeros(2), -1.0)


def _snis(prior_w, means, chols, a, y, s, n, seed):
    """Self-normalised importance sampling from the prior: posterior mean and weights."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(prior_w), size=n, p=prior_w)
    z = rng.normal(size=(n, means.shape[1]))
    x = means[comp] + np.einsum("nij,nj->ni", chols[comp], z)
    logl = -0.5 * np.sum((x @ a.T - y) ** 2, axis=1) / s**2
    w = np.exp(logl - logl.max())
    w /= w.sum()
    ess = 1.0 / np.sum(w**2)
    post_w = np.bincount(comp, weights=w, minlength=len(prior_w))
    return w @ x, post_w, x, w, ess


@pytest.mark.parametrize("kind", ["full", "iso"])
def test_mixture_posterior_matches_importance_sampling(kind):
    rng = np.random.default_rng(6)
    k, d, s = 3, 2, 0.8
    w = np.array([0.5, 0.3, 0.2])
    means = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 3.0]])
    covs = np.stack([_spd(rng, d) for _ in range(k)]) if kind == "full" else np.stack([np.eye(d)] * k)
    prior = GaussianMixture(w, means, covs if kind == "full" else 1.0)
    a = np.array([[1.0, 0.5]])
    y = np.array([0.7])
    post = prior.posterior(a, y, s)
    n = 200_000
    mean_is, w_is, x, iw, ess = _snis(w, means, np.linalg.cholesky(covs), a, y, s, n, seed=7)
    # Monte Carlo standard errors of self-normalised estimators (delta method)
    se_mean = np.sqrt(np.sum(iw[:, None] ** 2 * (x - mean_is) ** 2, axis=0))
    np.testing.assert_array_less(np.abs(np.asarray(post.mean) - mean_is), 5 * se_mean + 1e-4)
    np.testing.assert_allclose(np.asarray(post.weights), w_is, atol=5 * np.sqrt(0.25 / ess) + 1e-4)
    assert post.weights.shape == (k,) and post.means.shape == (k, d) and post.covs.shape == (k, d, d)
    xs = np.asarray(post.sample(jax.random.key(0), 40_000), np.float64)
    np.testing.assert_allclose(xs.mean(0), np.asarray(post.mean), atol=0.05)


def test_isotropic_mixture_posterior_equals_the_full_covariance_route():
    rng = np.random.default_rng(8)
    k, d, m = 3, 4, 2
    w, means, var = rng.uniform(0.2, 1, size=k), rng.normal(size=(k, d)) * 2, rng.uniform(0.5, 2, size=k)
    a, y = rng.normal(size=(m, d)), rng.normal(size=m)
    for s in (0.5, 0.0):
        iso = GaussianMixture(w, means, var).posterior(a, y, s)
        full = GaussianMixture(w, means, var[:, None, None] * np.eye(d)).posterior(a, y, s)
        np.testing.assert_allclose(iso.weights, full.weights, atol=1e-5)
        np.testing.assert_allclose(iso.means, full.means, atol=1e-4)
        np.testing.assert_allclose(iso.covs, full.covs, atol=1e-4)


def test_noiseless_posteriors_satisfy_the_measurement_and_are_the_small_noise_limit():
    rng = np.random.default_rng(9)
    d, m = 4, 2
    a = rng.normal(size=(m, d))
    y = rng.normal(size=m) * 3
    priors = [Gaussian(rng.normal(size=d), _spd(rng, d)),
              GaussianMixture(np.ones(3), rng.normal(size=(3, d)) * 3, 1.0),
              GaussianMixture(np.ones(3), rng.normal(size=(3, d)) * 3, np.stack([_spd(rng, d)] * 3))]
    for prior in priors:
        post0 = prior.posterior(a, y, 0.0)
        xs = np.asarray(post0.sample(jax.random.key(2), 500), np.float64)
        np.testing.assert_allclose(xs @ a.T, np.broadcast_to(y, (500, m)), atol=1e-4)
        assert np.std(xs @ np.linalg.svd(a)[2][m:].T) > 0.1  # the null space is still random
        near = prior.posterior(a, y, 1e-4)
        np.testing.assert_allclose(near.mean, post0.mean, atol=1e-3)


def test_noiseless_posterior_with_dependent_rows_is_refused():
    a = np.array([[1.0, 0.0], [2.0, 0.0]])
    with pytest.raises(ValueError, match="sigma_y > 0"):
        Gaussian(np.zeros(2)).posterior(a, np.zeros(2), 0.0)


def test_posterior_through_a_dense_operator_matches_the_matrix():
    operators = pytest.importorskip("operators")
    rng = np.random.default_rng(11)
    a = rng.normal(size=(2, 3))
    prior = GaussianMixture(np.ones(2), rng.normal(size=(2, 3)), 1.0)
    y = rng.normal(size=2)
    via_op = prior.posterior(operators.Dense(jnp.asarray(a, jnp.float32)), y[None], 0.2)
    via_fn = prior.posterior(invdiff.LinearFunction(lambda x: x @ jnp.asarray(a, jnp.float32).T, (3,)), y, 0.2)
    direct = prior.posterior(a, y, 0.2)
    for p in (via_op, via_fn):
        np.testing.assert_allclose(p.means, direct.means, atol=1e-4)
        np.testing.assert_allclose(p.weights, direct.weights, atol=1e-4)


# ---------------------------------------------------------------------------------------
# the MCGdiff benchmark problem and an end-to-end run


def test_mcg_gmm_problem_follows_the_paper_setup():
    prob = mcg_gmm_problem(jax.random.key(0), d=6, dy=2)
    prior = prob.prior
    assert prior.means.shape == (25, 6) and prior.weights.shape == (25,)
    np.testing.assert_allclose(float(prior.weights.sum()), 1.0, atol=1e-6)
    np.testing.assert_allclose(prior.covs, np.broadcast_to(np.eye(6), (25, 6, 6)))
    grid = {(8 * i, 8 * j) for i in range(-2, 3) for j in range(-2, 3)}
    assert {tuple(mu[:2]) for mu in np.asarray(prior.means)} == grid
    np.testing.assert_array_equal(mcg_gmm_means(5)[:, 4], mcg_gmm_means(5)[:, 0])  # (8i, 8j, 8i, 8j, 8i)
    s = np.linalg.svd(np.asarray(prob.A, np.float64), compute_uv=False)
    assert prob.A.shape == (2, 6) and np.all((s >= 0) & (s <= 1))
    assert prob.y.shape == (2,) and prob.x_true.shape == (6,) and prob.sigma_y >= 0
    resid = np.asarray(prob.y) - np.asarray(prob.A) @ np.asarray(prob.x_true)
    assert np.all(np.abs(resid) <= 6 * prob.sigma_y + 1e-5)
    again = mcg_gmm_problem(jax.random.key(0), d=6, dy=2)
    np.testing.assert_array_equal(again.y, prob.y)
    assert mcg_gmm_problem(jax.random.key(0), d=6, dy=2, sigma_y=0.05).sigma_y == 0.05


def test_ddpm_with_the_exact_gaussian_score_samples_the_prior():
    solvers = pytest.importorskip("solvers")
    rng = np.random.default_rng(12)
    mu, cov = np.array([1.0, -0.5]), _spd(rng, 2)
    prior = Gaussian(mu, cov)
    n = 4000
    op = invdiff.LinearFunction(lambda x: x[..., :1], (2,))
    sol = invdiff.solve(solvers.DDPM(steps=100), prior, op, jnp.zeros((n, 1)), key=jax.random.key(0))
    xs = np.asarray(sol.x, np.float64)
    np.testing.assert_allclose(xs.mean(0), mu, atol=0.1)
    np.testing.assert_allclose(np.cov(xs.T), cov, atol=0.15)
