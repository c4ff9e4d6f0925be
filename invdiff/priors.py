"""Analytic diffusion priors: a Gaussian and a Gaussian mixture with their EXACT ε̂(x_t, t).

These are the oracles of the solver tests and of the GMM posterior benchmark (Cardoso, Janati,
Le Corff, Moulines, "Monte Carlo guided diffusion for Bayesian linear inverse problems",
ICLR 2024, sec. 4.1): the prior is known in closed form, so the noised prior, its score and
the posterior of a linear-Gaussian measurement are exact, and a solver's samples can be
compared with samples of the true posterior.

Maths (VP forward process x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ᾱ_t = ``schedule.alphas_cumprod[t]``):

* prior N(μ, Σ): x_t ~ N(√ᾱ μ, ᾱ Σ + (1 − ᾱ) I), and the MMSE noise prediction is
  ε̂(x_t, t) = E[ε | x_t] = −√(1 − ᾱ) ∇ log p_t(x_t) = √(1 − ᾱ) (ᾱ Σ + (1 − ᾱ) I)⁻¹ (x_t − √ᾱ μ);
* mixture Σ_k w_k N(μ_k, Σ_k): the noised prior is the mixture of the noised components, and
  ε̂ = √(1 − ᾱ) Σ_k r_k(x_t) C_k⁻¹ (x_t − √ᾱ μ_k), C_k = ᾱ Σ_k + (1 − ᾱ) I, with
  responsibilities r_k = softmax_k(log w_k + log N(x_t; √ᾱ μ_k, C_k)) (log-sum-exp stable).

Covariances are kept as eigendecompositions Σ = Q diag(λ) Qᵀ computed once (float64, on the
host) at construction, so ε̂ at any t is two matrix products; isotropic / diagonal covariances
skip Q entirely. All parameters are float32 array leaves; ε̂ is pure jnp and runs under
``jax.jit`` and ``jax.vjp`` inside :func:`invdiff.solve`.

Posteriors (:meth:`Gaussian.posterior`, :meth:`GaussianMixture.posterior`) of
y = A x + σ_y n are computed on the host in float64 with the joint-Gaussian conditioning
formula, which stays valid at σ_y = 0 (then the posterior covariance is singular and its
null directions get exactly zero variance, so samples satisfy A x = y).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff.model import Model
from invdiff.noise import NoiseSchedule
from invdiff.operator import LinearOperator

Array = jax.Array

#: Largest data dimension whose operator :func:`as_matrix` materialises (d x d work).
MAX_DENSE_DIM = 4096
#: Eigenvalues of a posterior covariance below this fraction of the largest are set to 0.
_EIG_RTOL = 1e-10


# ---------------------------------------------------------------------------------------
# helpers


def _leaf(v: Any) -> Any:
    """Turn user numbers into float32 jnp leaves; leave tracers and other leaves untouched
    (flax.struct rebuilds the PyTree through ``__init__`` with arbitrary leaves)."""
    if isinstance(v, (int, float, list, tuple, np.ndarray, np.generic)):
        return jnp.asarray(np.asarray(v, dtype=np.float64), dtype=jnp.float32)
    if isinstance(v, jax.Array) and not isinstance(v, jax.core.Tracer) and not jnp.issubdtype(
            v.dtype, jnp.floating):
        return v.astype(jnp.float32)
    return v


def _concrete(name: str, v: Any) -> np.ndarray:
    if isinstance(v, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete array (build priors and posteriors outside jax.jit)")
    return np.asarray(v, dtype=np.float64)


def _tables(schedule: NoiseSchedule, t: Array, batch: int) -> tuple[Array, Array, Array]:
    """(ᾱ_t, √ᾱ_t, 1 − ᾱ_t) gathered per sample as float32, from float64 tables (so that
    1 − ᾱ keeps its relative precision near t = 0)."""
    abar = schedule.alphas_cumprod
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32).reshape(-1), (batch,))
    return (jnp.asarray(abar, jnp.float32)[t], jnp.asarray(np.sqrt(abar), jnp.float32)[t],
            jnp.asarray(1.0 - abar, jnp.float32)[t])


def _sym_eigh(cov: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a symmetric PSD matrix (float64); tiny/negative eigenvalues -> 0."""
    if not np.allclose(cov, np.swapaxes(cov, -1, -2), rtol=1e-5, atol=1e-8 * max(1.0, np.abs(cov).max())):
        raise ValueError(f"{name} must be symmetric")
    lam, q = np.linalg.eigh(0.5 * (cov + np.swapaxes(cov, -1, -2)))
    top = np.max(np.abs(lam), axis=-1, keepdims=True)
    if np.any(lam < -1e-6 * np.maximum(top, 1e-30)):
        raise ValueError(f"{name} must be positive semi-definite (smallest eigenvalue {lam.min():.3g})")
    lam = np.where(lam < _EIG_RTOL * top, 0.0, lam)
    return lam, q


def as_matrix(op: Any, x_shape: tuple[int, ...]) -> np.ndarray:
    """The dense (m, d) float64 matrix of ``op`` acting on inputs of ``x_shape``.

    ``op`` is an (m, d) array or an invdiff :class:`~invdiff.operator.LinearOperator`; an
    operator is materialised by applying ``op.A`` to the d identity basis vectors (so it must
    be small: d <= ``MAX_DENSE_DIM``). An operator with a ``matrix`` attribute (``Dense``)
    is read directly.
    """
    d = int(np.prod(x_shape))
    if isinstance(op, LinearOperator):
        mat = getattr(op, "matrix", None)
        if mat is not None and np.ndim(mat) == 2 and np.shape(mat)[1] == d:
            return _concrete("operator matrix", mat)
        if d > MAX_DENSE_DIM:
            raise ValueError(f"cannot materialise an operator on {d} inputs (limit MAX_DENSE_DIM="
                             f"{MAX_DENSE_DIM}); exact posteriors need a small problem")
        basis = jnp.eye(d, dtype=jnp.float32).reshape((d,) + tuple(x_shape))
        cols = op.A(basis)
        return np.asarray(cols, dtype=np.float64).reshape(d, -1).T
    a = _concrete("A", op)
    if a.ndim != 2 or a.shape[1] != d:
        raise ValueError(f"A must be a (m, {d}) matrix or an invdiff LinearOperator, got shape {a.shape}")
    return a


def _measurement(y: Any, m: int) -> np.ndarray:
    y = _concrete("y", y)
    if y.size != m:
        raise ValueError(
            f"y must be ONE measurement with {m} entries ((m,), (1, m) or (1, *y_shape)), got shape "
            f"{y.shape}; for a batch of measurements call posterior() once per row"
        )
    return y.reshape(-1)


_SCHEDULES: dict[bytes, NoiseSchedule] = {}


def _canonical(schedule: NoiseSchedule | None) -> NoiseSchedule:
    """One shared instance per distinct betas.

    Workaround: ``NoiseSchedule`` keeps ``betas`` (a NumPy array) as static PyTree metadata, and
    JAX compares metadata with ``==``; two equal schedules that are different objects make a
    jit cache lookup raise ("Exception raised while checking equality of metadata fields").
    Identical objects short-cut the comparison, so priors share one instance per schedule.
    """
    if schedule is None:
        schedule = NoiseSchedule.linear(1000)
    if not isinstance(schedule, NoiseSchedule):
        return schedule  # e.g. a placeholder leaf while JAX rebuilds the tree
    return _SCHEDULES.setdefault(schedule.betas.tobytes(), schedule)


def _sigma(sigma_y: Any) -> float:
    s = float(_concrete("sigma_y", sigma_y))
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"sigma_y must be a finite scalar >= 0, got {sigma_y!r}")
    return s


def _gauss_condition(mu: np.ndarray, cov: np.ndarray, a: np.ndarray, y: np.ndarray,
                     s2: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Condition N(μ, Σ) on y = A x + σ n (joint-Gaussian formula, valid at σ = 0).

    Returns (posterior mean, posterior covariance, log N(y; A μ, A Σ Aᵀ + σ² I)).
    """
    s = a @ cov @ a.T + s2 * np.eye(a.shape[0])
    lam, u = np.linalg.eigh(0.5 * (s + s.T))
    if lam.min() <= 1e-12 * max(lam.max(), 1e-300):
        raise ValueError(
            "A Σ Aᵀ + σ_y² I is singular (A has dependent rows, or the prior puts no mass along "
            "them, and sigma_y = 0): use sigma_y > 0 or remove the redundant rows of A"
        )
    r = y - a @ mu
    s_inv_r = u @ ((u.T @ r) / lam)
    k = cov @ a.T  # Σ Aᵀ
    mean = mu + k @ s_inv_r
    post = cov - k @ (u @ ((u.T @ k.T) / lam[:, None]))
    logn = -0.5 * (r @ s_inv_r + np.sum(np.log(lam)) + a.shape[0] * np.log(2 * np.pi))
    return mean, 0.5 * (post + post.T), float(logn)


# ---------------------------------------------------------------------------------------


class Gaussian(Model):
    """A Gaussian prior N(mean, Σ) with the exact noise prediction of its noised marginals.

    ``Gaussian(mean, cov=None, var=None, schedule=NoiseSchedule.linear(1000))``:

    * ``mean`` has the data shape S: a vector (d,) or an image (H, W, C);
    * ``cov``: a full (d, d) covariance over the flattened data (d = prod(S)), stored as its
      eigendecomposition (``evals``, ``evecs``) computed once in float64;
    * or ``var``: a diagonal covariance, a scalar or an array of shape S (cheap for images);
    * neither: the standard normal (var = 1).

    ε̂(x_t, t) = √(1 − ᾱ) (ᾱ Σ + (1 − ᾱ) I)⁻¹ (x_t − √ᾱ μ) exactly (the MMSE noise prediction,
    Ho et al. 2020's ε-parametrisation; −√(1 − ᾱ) times the score of the noised prior).
    ``var_fn(x, t) -> v`` optionally supplies a learned-range variance interpolation (tests of
    solvers that read one); it is static, like :class:`invdiff.FunctionModel`'s.
    """

    mean: Array
    var: Array | None = None
    evals: Array | None = None
    evecs: Array | None = None
    var_fn: Callable[..., Array] | None = struct.field(pytree_node=False, default=None)

    def __init__(self, mean: Any, cov: Any = None, var: Any = None, schedule: NoiseSchedule | None = None,
                 *, evals: Any = None, evecs: Any = None, var_fn: Callable[..., Array] | None = None,
                 learned_variance: bool | None = None, data_range: tuple[float, float] | None = None):
        schedule = _canonical(schedule)
        if cov is not None:
            if var is not None or evals is not None:
                raise ValueError("give either cov= (full) or var= (diagonal), not both")
            mu = _concrete("mean", mean)
            d = mu.size
            c = _concrete("cov", cov)
            if c.shape != (d, d):
                raise ValueError(f"cov must be ({d}, {d}) for a mean of shape {mu.shape} (d = prod(shape)), "
                                 f"got {c.shape}; use var= for a diagonal covariance")
            lam, q = _sym_eigh(c, "cov")
            evals, evecs = lam, q
        elif var is None and evals is None:
            var = 1.0
        mean = _leaf(mean)
        if hasattr(mean, "shape") and var is not None and np.ndim(var) not in (0,) and \
                tuple(np.shape(var)) != tuple(mean.shape):
            raise ValueError(f"var must be a scalar or have the mean's shape {tuple(mean.shape)}, "
                             f"got {tuple(np.shape(var))}")
        if isinstance(var, (int, float, np.ndarray, np.generic)) and np.any(np.asarray(var) < 0):
            raise ValueError("var must be >= 0")
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", _leaf(var))
        object.__setattr__(self, "evals", _leaf(evals))
        object.__setattr__(self, "evecs", _leaf(evecs))
        object.__setattr__(self, "var_fn", var_fn)
        object.__setattr__(self, "learned_variance", var_fn is not None)
        object.__setattr__(self, "data_range", data_range)

    # ---- shapes ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def cov(self) -> Array:
        """The (d, d) covariance over the flattened data (materialised: small d only)."""
        if self.evals is not None:
            return (self.evecs * self.evals) @ self.evecs.T
        return jnp.diag(jnp.broadcast_to(self.var, self.shape).reshape(-1))

    def check_input(self, x_shape: tuple[int, ...], label: Any = None) -> None:
        super().check_input(x_shape, label)
        if tuple(x_shape[1:]) != self.shape:
            raise ValueError(f"this Gaussian prior lives on shape {self.shape}: x must have shape "
                             f"(B, {', '.join(map(str, self.shape))}), got {tuple(x_shape)}")

    # ---- the model ---------------------------------------------------------------------
    def eps(self, x: Array, t: Array, label: Array | None = None) -> Array:
        """Exact ε̂(x_t, t) = √(1 − ᾱ) (ᾱ Σ + (1 − ᾱ) I)⁻¹ (x_t − √ᾱ μ); x of shape (B, *S)."""
        b = x.shape[0]
        abar, sab, oma = _tables(self.schedule, t, b)
        if self.evals is not None:
            xf = x.reshape(b, -1).astype(jnp.float32)
            diff = xf - sab[:, None] * self.mean.reshape(1, -1)
            z = diff @ self.evecs
            c = abar[:, None] * self.evals[None] + oma[:, None]
            return ((z * (jnp.sqrt(oma)[:, None] / c)) @ self.evecs.T).reshape(x.shape).astype(x.dtype)
        bshape = (b,) + (1,) * (x.ndim - 1)
        abar, sab, oma = abar.reshape(bshape), sab.reshape(bshape), oma.reshape(bshape)
        diff = x - sab * self.mean[None]
        return (jnp.sqrt(oma) * diff / (abar * self.var + oma)).astype(x.dtype)

    def eps_and_v(self, x: Array, t: Array, label: Array | None = None) -> tuple[Array, Array | None]:
        eps = self.eps(x, t, label)
        return eps, (None if self.var_fn is None else self.var_fn(x, t))

    # ---- sampling and posteriors -------------------------------------------------------
    def sample(self, key: Array, n: int) -> Array:
        """n independent draws, shape (n, *S)."""
        z = jax.random.normal(key, (n, self.dim), jnp.float32)
        if self.evals is not None:
            x = (z * jnp.sqrt(jnp.maximum(self.evals, 0.0))) @ self.evecs.T
            return self.mean[None] + x.reshape((n,) + self.shape)
        return self.mean[None] + jnp.sqrt(self.var) * z.reshape((n,) + self.shape)

    def _cov64(self) -> np.ndarray:
        if self.evals is not None:
            q, lam = _concrete("evecs", self.evecs), _concrete("evals", self.evals)
            return (q * lam) @ q.T
        return np.diag(np.broadcast_to(_concrete("var", self.var), self.shape).reshape(-1))

    def posterior(self, A: Any, y: Any, sigma_y: float = 0.0) -> Gaussian:
        """The exact posterior of x given y = A x + σ_y n, n ~ N(0, I), as a :class:`Gaussian`.

        ``A``: an (m, d) matrix or a small invdiff LinearOperator (materialised, see
        :func:`as_matrix`); ``y``: ONE measurement, (m,) or (1, m). μ_post = μ + Σ Aᵀ S⁻¹
        (y − A μ), Σ_post = Σ − Σ Aᵀ S⁻¹ A Σ with S = A Σ Aᵀ + σ² I (joint-Gaussian
        conditioning), computed in float64; at σ_y = 0 Σ_post is singular and samples satisfy
        A x = y. Same schedule, so the posterior is itself a usable exact prior.
        """
        a = as_matrix(A, self.shape)
        yv = _measurement(y, a.shape[0])
        mu = _concrete("mean", self.mean).reshape(-1)
        mean, cov, _ = _gauss_condition(mu, self._cov64(), a, yv, _sigma(sigma_y) ** 2)
        lam, q = _sym_eigh(cov, "posterior covariance")
        return Gaussian(mean.reshape(self.shape), schedule=self.schedule, evals=lam, evecs=q)


class GaussianMixture(Model):
    """A Gaussian-mixture prior Σ_k w_k N(μ_k, Σ_k) on vectors, with its exact ε̂(x_t, t).

    ``GaussianMixture(weights, means, covs=1.0, schedule=NoiseSchedule.linear(1000))``:
    ``weights`` (K,) (normalised here), ``means`` (K, d), ``covs`` a scalar or (K,) for
    isotropic components σ_k² I (the cheap path: the MCGdiff benchmark uses unit covariances),
    or (K, d, d) full covariances (eigendecomposed once, float64).

    ε̂ = √(1 − ᾱ) Σ_k r_k(x_t) C_k⁻¹ (x_t − √ᾱ μ_k), C_k = ᾱ Σ_k + (1 − ᾱ) I, r_k the
    responsibilities of the noised mixture, i.e. −√(1 − ᾱ) ∇ log p_t(x_t), computed with a
    log-sum-exp. Internally a covariance is ``var`` (K,) or (``evals`` (K, d), ``evecs``
    (K, d, d) or one shared (d, d) basis — what posteriors of isotropic mixtures produce).
    """

    weights: Array
    means: Array
    var: Array | None = None
    evals: Array | None = None
    evecs: Array | None = None

    def __init__(self, weights: Any, means: Any, covs: Any = None, schedule: NoiseSchedule | None = None,
                 *, var: Any = None, evals: Any = None, evecs: Any = None,
                 learned_variance: bool | None = None, data_range: tuple[float, float] | None = None):
        schedule = _canonical(schedule)
        if covs is not None or (var is None and evals is None):
            mu = _concrete("means", means)
            if mu.ndim != 2:
                raise ValueError(f"means must have shape (K, d), got {mu.shape}")
            k, d = mu.shape
            w = _concrete("weights", weights)
            if w.shape != (k,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
                raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {w}")
            weights = w / w.sum()
            c = _concrete("covs", 1.0 if covs is None else covs)
            if c.ndim == 0 or c.shape == (k,):
                if np.any(c < 0):
                    raise ValueError("isotropic covariances must be >= 0")
                var = np.broadcast_to(c, (k,))
            elif c.shape == (k, d, d):
                evals, evecs = _sym_eigh(c, "covs")
            else:
                raise ValueError(f"covs must be a scalar, ({k},) or ({k}, {d}, {d}), got {c.shape}")
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "weights", _leaf(weights))
        object.__setattr__(self, "means", _leaf(means))
        object.__setattr__(self, "var", _leaf(var))
        object.__setattr__(self, "evals", _leaf(evals))
        object.__setattr__(self, "evecs", _leaf(evecs))
        object.__setattr__(self, "learned_variance", False)
        object.__setattr__(self, "data_range", data_range)

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def mean(self) -> Array:
        """The mixture mean Σ_k w_k μ_k, shape (d,)."""
        return self.weights @ self.means

    @property
    def covs(self) -> Array:
        """The component covariances, (K, d, d) (materialised: small d only)."""
        if self.var is not None:
            return self.var[:, None, None] * jnp.eye(self.dim)[None]
        q = self.evecs if self.evecs.ndim == 3 else jnp.broadcast_to(self.evecs, (self.num_components,)
                                                                      + self.evecs.shape)
        return jnp.einsum("kij,kj,klj->kil", q, self.evals, q)

    def check_input(self, x_shape: tuple[int, ...], label: Any = None) -> None:
        super().check_input(x_shape, label)
        if len(x_shape) != 2 or x_shape[1] != self.dim:
            raise ValueError(f"this mixture lives on vectors of dimension {self.dim}: x must have shape "
                             f"(B, {self.dim}), got {tuple(x_shape)}")

    def _noised_terms(self, x: Array, abar: Array, sab: Array, oma: Array) -> tuple[Array, Array]:
        """Per component: log w_k + log N(x; √ᾱ μ_k, C_k) (B, K) and C_k⁻¹(x − √ᾱ μ_k) (B, K, d),
        given per-sample ᾱ, √ᾱ and 1 − ᾱ of shape (B,)."""
        d = x.shape[1]
        diff = x[:, None, :] - sab[:, None, None] * self.means[None]           # (B, K, d)
        if self.var is not None:
            c = abar[:, None] * self.var[None] + oma[:, None]                   # (B, K)
            quad = jnp.sum(diff * diff, axis=-1) / c
            logdet = d * jnp.log(c)
            sol = diff / c[..., None]
        else:
            c = abar[:, None, None] * self.evals[None] + oma[:, None, None]     # (B, K, d)
            if self.evecs.ndim == 2:
                z = diff @ self.evecs
                sol_z = z / c
                sol = sol_z @ self.evecs.T
            else:
                z = jnp.einsum("bkd,kde->bke", diff, self.evecs)
                sol_z = z / c
                sol = jnp.einsum("bke,kde->bkd", sol_z, self.evecs)
            quad = jnp.sum(z * sol_z, axis=-1)
            logdet = jnp.sum(jnp.log(c), axis=-1)
        logp = jnp.log(self.weights)[None] - 0.5 * (quad + logdet + d * jnp.log(2 * jnp.pi))
        return logp, sol

    def eps(self, x: Array, t: Array, label: Array | None = None) -> Array:
        """Exact ε̂(x_t, t) of the noised mixture; x of shape (B, d) (or (d,) with a scalar t)."""
        squeeze = x.ndim == 1
        xb = (x[None] if squeeze else x).astype(jnp.float32)
        abar, sab, oma = _tables(self.schedule, t, xb.shape[0])
        logp, sol = self._noised_terms(xb, abar, sab, oma)
        r = jax.nn.softmax(logp, axis=-1)
        out = jnp.sqrt(oma)[:, None] * jnp.einsum("bk,bkd->bd", r, sol)
        out = out.astype(x.dtype)
        return out[0] if squeeze else out

    def log_prob(self, x: Array, t: Array | None = None) -> Array:
        """log p_t(x) of the noised mixture (the clean prior when t is None), shape (B,)."""
        xb = x.astype(jnp.float32)
        if t is None:
            one = jnp.ones((xb.shape[0],), jnp.float32)
            logp, _ = self._noised_terms(xb, one, one, 0.0 * one)
        else:
            logp, _ = self._noised_terms(xb, *_tables(self.schedule, t, xb.shape[0]))
        return jax.nn.logsumexp(logp, axis=-1)

    def sample(self, key: Array, n: int) -> Array:
        """n independent draws, shape (n, d)."""
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
        z = jax.random.normal(kz, (n, self.dim), jnp.float32)
        if self.var is not None:
            return self.means[comp] + jnp.sqrt(self.var)[comp][:, None] * z
        scaled = z * jnp.sqrt(jnp.maximum(self.evals[comp], 0.0))
        if self.evecs.ndim == 2:
            return self.means[comp] + scaled @ self.evecs.T
        return self.means[comp] + jnp.einsum("nij,nj->ni", self.evecs[comp], scaled)

    def posterior(self, A: Any, y: Any, sigma_y: float = 0.0) -> GaussianMixture:
        """The exact posterior of x given y = A x + σ_y n, as a :class:`GaussianMixture`.

        Weights ∝ w_k N(y; A μ_k, A Σ_k Aᵀ + σ² I); each component is the Gaussian posterior
        of N(μ_k, Σ_k) (joint-Gaussian conditioning, float64, valid at σ_y = 0: then samples
        satisfy A x = y). ``A``: (m, d) matrix or small LinearOperator; ``y``: ONE measurement,
        (m,) or (1, m). For isotropic components the posterior covariances share the right
        singular basis of A, so d = 800 stays cheap.
        """
        a = as_matrix(A, (self.dim,))
        m, d = a.shape
        yv = _measurement(y, m)
        s2 = _sigma(sigma_y) ** 2
        w = _concrete("weights", self.weights)
        mu = _concrete("means", self.means)
        k = mu.shape[0]
        with np.errstate(divide="ignore"):
            logw = np.log(w)
        if self.var is not None:
            v = _concrete("var", self.var)
            u, sing, vh = np.linalg.svd(a, full_matrices=True)   # vh (d, d): rows = right basis
            sing_m = np.zeros(m)
            sing_m[: sing.size] = sing
            sd = np.zeros(d)
            sd[: min(m, d)] = sing[: min(m, d)]
            means_p, evals_p, logn = np.empty((k, d)), np.empty((k, d)), np.empty(k)
            for i in range(k):
                lam_s = v[i] * sing_m**2 + s2                                # eigenvalues of S_k
                if lam_s.min() <= 1e-12 * max(lam_s.max(), 1e-300):
                    raise ValueError("A Σ_k Aᵀ + σ_y² I is singular (A has dependent rows and sigma_y = 0"
                                     ", or a component has zero variance): use sigma_y > 0")
                r = yv - a @ mu[i]
                rb = u.T @ r
                means_p[i] = mu[i] + v[i] * (a.T @ (u @ (rb / lam_s)))
                denom = v[i] * sd**2 + s2
                evals_p[i] = np.where(denom > 0, v[i] * s2 / np.where(denom > 0, denom, 1.0), v[i])
                logn[i] = -0.5 * (np.sum(rb**2 / lam_s) + np.sum(np.log(lam_s)) + m * np.log(2 * np.pi))
            evals_p = np.where(evals_p < _EIG_RTOL * evals_p.max(axis=-1, keepdims=True), 0.0, evals_p)
            evecs_p = vh.T
        else:
            q = _concrete("evecs", self.evecs)
            lam = _concrete("evals", self.evals)
            qs = np.broadcast_to(q, (k, d, d)) if q.ndim == 2 else q
            means_p, evals_p, logn = np.empty((k, d)), np.empty((k, d)), np.empty(k)
            evecs_p = np.empty((k, d, d))
            for i in range(k):
                cov = (qs[i] * lam[i]) @ qs[i].T
                means_p[i], post, logn[i] = _gauss_condition(mu[i], cov, a, yv, s2)
                evals_p[i], evecs_p[i] = _sym_eigh(post, "posterior covariance")
        logit = logw + logn
        wp = np.exp(logit - np.max(logit))
        return GaussianMixture(wp / wp.sum(), means_p, schedule=self.schedule, evals=evals_p, evecs=evecs_p)


# ---------------------------------------------------------------------------------------
# The MCGdiff Gaussian-mixture benchmark problem


class GMMProblem(NamedTuple):
    """A linear inverse problem with a Gaussian-mixture prior: y = A x_true + sigma_y n."""

    prior: GaussianMixture
    A: Array
    y: Array
    x_true: Array
    sigma_y: float


def mcg_gmm_means(d: int) -> np.ndarray:
    """The 25 means (8i, 8j, 8i, 8j, …) ∈ R^d, i, j ∈ {−2, …, 2} (MCGdiff, sec. 4.1)."""
    if d < 1:
        raise ValueError("d must be >= 1")
    grid = [(8.0 * i, 8.0 * j) for i in range(-2, 3) for j in range(-2, 3)]
    return np.array([np.resize(np.array(p), d) for p in grid], dtype=np.float64)


def mcg_gmm_problem(key: Array, d: int = 8, dy: int = 2, sigma_y: float | None = None,
                    schedule: NoiseSchedule | None = None) -> GMMProblem:
    """The Gaussian-mixture experiment of MCGdiff (Cardoso et al., ICLR 2024, sec. 4.1).

    Prior: 25 unit-covariance components with means (8i, 8j, 8i, 8j, …) repeated to
    dimension d for i, j ∈ {−2, −1, 0, 1, 2}, weights w ∝ g², g ~ N(0, I₂₅) (as in the
    authors' reference script ``scripts/viz_gaussian.py``). A = U diag(s) V[:dy] with U, V
    Haar-distributed (the singular vectors of a Gaussian matrix) and s sorted uniform draws
    in [0, 1]. ``sigma_y``: the measurement noise std; None follows the reference script,
    σ_y = u · max(s), u ~ U[0, 1]; give a float to fix it. x_true ~ prior, y = A x_true + σ_y n.
    """
    if dy < 1 or dy > d:
        raise ValueError(f"need 1 <= dy <= d, got dy={dy}, d={d}")
    kw, ka, ks, kx, kn, kv = jax.random.split(key, 6)
    g = np.asarray(jax.random.normal(kw, (25,)), dtype=np.float64)
    w = g**2 + 1e-12
    prior = GaussianMixture(w / w.sum(), mcg_gmm_means(d), 1.0, schedule=schedule)
    u, _, vh = np.linalg.svd(np.asarray(jax.random.normal(ka, (dy, d)), np.float64), full_matrices=True)
    s = np.sort(np.asarray(jax.random.uniform(ks, (dy,)), np.float64))[::-1]
    a = u @ (s[:, None] * vh[:dy])
    if sigma_y is None:
        sigma_y = float(jax.random.uniform(kv, ())) * float(s.max())
    sigma_y = _sigma(sigma_y)
    x = prior.sample(kx, 1)[0]
    y = jnp.asarray(a, jnp.float32) @ x + sigma_y * jax.random.normal(kn, (dy,))
    return GMMProblem(prior=prior, A=jnp.asarray(a, jnp.float32), y=y, x_true=x, sigma_y=sigma_y)


__all__ = ["GMMProblem", "Gaussian", "GaussianMixture", "as_matrix", "mcg_gmm_means", "mcg_gmm_problem"]
