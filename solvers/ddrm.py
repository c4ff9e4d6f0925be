"""DDRM, denoising diffusion restoration models (Kawar, Elad, Ermon, Song, NeurIPS 2022)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from invdiff import rng
from invdiff.operator import SVDOperator
from invdiff.schedule import respaced_timesteps
from invdiff.solve import Problem, Solver, Step, denoise

Array = jax.Array


def _ve_sigma(abar: Array, omab: Array) -> Array:
    """σ of the variance-exploding variable x / sqrt(ᾱ) = x0 + σ ε: sqrt((1 - ᾱ) / ᾱ)."""
    return jnp.sqrt(omab / abar)


class DDRM(Solver):
    """DDRM (Kawar, Elad, Ermon, Song, NeurIPS 2022, eq. 7-8 and App. C): sampling in the
    spectral space of A = U diag(s) Vᵀ.

    With x̄ = Vᵀ x, ȳ = s⁻¹ Uᵀ y where s > 0, and the variance-exploding view
    x_t / sqrt(ᾱ_t) = x0 + σ_t ε, σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), each spectral component of
    the next state (at σ_s, for the step t -> s) is drawn as (x̄θ = Vᵀ x̂0, ε̄ = Vᵀ ε̂):

    * s = 0 (unobserved):          x̄θ + sqrt(1 - η²) σ_s ε̄ + η σ_s z
    * s > 0, σ_s < σ_y / s:        x̄θ + sqrt(1 - η²) σ_s (ȳ - x̄θ) / (σ_y / s) + η σ_s z
    * s > 0, σ_s ≥ σ_y / s:        (1 - η_b) x̄θ + η_b ȳ + sqrt(σ_s² - η_b² σ_y² / s²) z

    and x_s = sqrt(ᾱ_s) V(x̄_s). (ε̄ equals the paper's (x̄_t - x̄θ) / σ_t exactly.) At σ_y = 0
    every observed component is in the last case, so the result satisfies A x = y exactly.

    Initialisation (App. C): x_T / sqrt(ᾱ_T) has spectral components ȳ + sqrt(σ_T² - σ_y²/s²) z
    where σ_T ≥ σ_y / s, and σ_T z elsewhere. The driver draws x_T ~ N(0, I) and calls
    :meth:`init`; the state is a flag that makes the first step replace x by this
    initialisation (built from the same noise), provided the walk starts at the top of the
    chain (a partial solve from a user's ``x_init`` keeps it).

    Needs an :class:`~invdiff.operator.SVDOperator` (``Vt``, ``V``, ``Ut``, ``U``,
    ``singulars``); :meth:`check` refuses any other operator before compiling.

    Defaults (the paper's): 20 steps, η = 0.85, η_b = 1. The official code strides the
    chain as 0, 50, …, 950; ours keeps guided-diffusion's evenly spaced 0 … 999. Cost per
    step: 1 network evaluation, no vector-Jacobian product. σ_y is in model units ([-1, 1]
    images); the official code doubles its [0, 1]-scale ``sigma_0`` for the same reason.
    """

    steps: int = struct.field(pytree_node=False, default=20, kw_only=True)
    eta: Array = struct.field(default_factory=lambda: jnp.asarray(0.85))
    eta_b: Array = struct.field(default_factory=lambda: jnp.asarray(1.0))

    def check(self, problem: Problem) -> None:
        if not isinstance(problem.op, SVDOperator):
            name = type(problem.op).__name__
            raise TypeError(
                f"DDRM needs an operator with an SVD (invdiff.operator.SVDOperator); {name} has none: "
                "use another solver (e.g. PiGDM, DiffPIR, DPS) or give the operator "
                "Vt/V/Ut/U/singulars by subclassing SVDOperator"
            )

    def init(self, problem: Problem, x: Array, key: Array) -> Array:
        # True until the first down step has consumed it (see the class docstring).
        return jnp.asarray(True)

    # ---- spectral helpers ----------------------------------------------------------------
    @staticmethod
    def _spectral(problem: Problem, like: Array) -> tuple[Array, Array, Array]:
        """(s, observed, ȳ) broadcast to the spectral shape of ``like``."""
        op = problem.op
        s = jnp.broadcast_to(op.singulars().astype(like.dtype), like.shape)
        observed = s > 0
        s_safe = jnp.where(observed, s, 1.0)
        ybar = jnp.where(observed, op.Ut(problem.y).astype(like.dtype) / s_safe, 0.0)
        return s_safe, observed, ybar

    def _initial(self, problem: Problem, x: Array, abar_T: Array, omab_T: Array) -> Array:
        op = problem.op
        zbar = op.Vt(x)
        s, observed, ybar = self._spectral(problem, zbar)
        sigma_T = _ve_sigma(abar_T, omab_T)
        sy = problem.sigma_y.astype(x.dtype)
        informative = observed & (sigma_T * s >= sy)
        rest = jnp.sqrt(jnp.maximum(sigma_T**2 - jnp.square(sy / s), 0.0))
        xbar = jnp.where(informative, ybar + rest * zbar, sigma_T * zbar)
        return jnp.sqrt(abar_T) * op.V(xbar)

    def step(self, problem: Problem, tr: Step, x: Array, state: Array,
             key: Array) -> tuple[Array, Array, Array]:
        op = problem.op
        top = int(respaced_timesteps(problem.model.schedule, self.steps)[-1])
        first = state & (tr.t == top)
        x = jnp.where(first, self._initial(problem, x, tr.abar_t, tr.omab_t), x)

        eps, x0, _ = denoise(problem, x, tr)
        xbar0 = op.Vt(x0)
        ebar = op.Vt(eps)
        s, observed, ybar = self._spectral(problem, xbar0)
        z = rng.normal(key, xbar0.shape, xbar0.dtype)

        eta = jnp.asarray(self.eta, x.dtype)
        eta_b = jnp.asarray(self.eta_b, x.dtype)
        sy = problem.sigma_y.astype(x.dtype)
        sigma_s = _ve_sigma(tr.abar_s, tr.omab_s)
        keep = jnp.sqrt(jnp.maximum(1.0 - eta**2, 0.0)) * sigma_s

        unobserved = xbar0 + keep * ebar + eta * sigma_s * z
        noisier_than_y = sigma_s * s >= sy
        sy_safe = jnp.where(sy > 0, sy, 1.0)
        less_noisy = xbar0 + keep * s * (ybar - xbar0) / sy_safe + eta * sigma_s * z
        noisier = ((1.0 - eta_b) * xbar0 + eta_b * ybar
                   + jnp.sqrt(jnp.maximum(sigma_s**2 - jnp.square(eta_b * sy / s), 0.0)) * z)
        xbar_s = jnp.where(observed, jnp.where(noisier_than_y, noisier, less_noisy), unobserved)
        return jnp.sqrt(tr.abar_s) * op.V(xbar_s), jnp.asarray(False), x0
