"""DDNM and DDNM+ (Wang, Yu, Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
Null-Space Model", ICLR 2023, Alg. 1 and Alg. 2 / eq. 17-19)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff import rng
from invdiff.operator import Composed, LinearOperator, PartialIsometry, SVDOperator
from invdiff.schedule import repaint_schedule
from invdiff.solve import Problem, Solver, Step, denoise

Array = jax.Array


# ---------------------------------------------------------------------------------------
# DDNM+'s noise-aware data weight (eq. 18), shared with MCG's noisy projection.


def _bcast(s: Array, x: Array) -> Array:
    s = jnp.asarray(s, x.dtype)
    if s.ndim == 1 and x.ndim > 1 and s.shape[0] == x.shape[0]:
        return s.reshape((-1,) + (1,) * (x.ndim - 1))
    return s


def _range_singular(op: LinearOperator) -> Array | float:
    """The (uniform) non-zero singular value of A when known without an SVD, else 1.

    A partial isometry (A Aᵀ A = c A) has all its non-zero singular values equal to sqrt(c), so
    A⁺ n has standard deviation σ_y / sqrt(c) in the range. For an operator that knows neither
    its SVD nor c we fall back to the paper's simplification A⁺ n ~ N(0, σ_y²) (s = 1).
    """
    if isinstance(op, PartialIsometry) or (isinstance(op, Composed) and op.c_value is not None):
        return jnp.sqrt(jnp.asarray(op.c(), jnp.float32))
    return 1.0


def data_weight(a: Array, sigma_s: Array, sigma_y: Array, s: Array | float = 1.0) -> Array:
    """DDNM+'s λ_t (Wang et al. 2023, eq. 18), per singular value s of A.

    The correction λ A⁺(y - A x̂0) brings the noise a λ σ_y / s into x_s (a = the coefficient of
    x0 in the step); λ = 1 while that stays within the step's noise level σ_s, else
    λ = s σ_s / (a σ_y) so that it equals σ_s. With σ_y = 0, λ = 1 exactly (plain DDNM).
    """
    s = jnp.asarray(s)
    s_safe = jnp.where(s > 0, s, 1.0)
    noise = a * sigma_y / s_safe
    lam = jnp.where(sigma_s >= noise, 1.0, sigma_s / jnp.where(noise > 0, noise, 1.0))
    return jnp.where(s > 0, lam, 1.0)


def noise_keep(a: Array, sigma_s: Array, sigma_y: Array, lam: Array, s: Array | float = 1.0) -> Array:
    """The factor sqrt(σ_s² - (a λ σ_y / s)²) / σ_s on the step's own noise (eq. 19: Φ_t =
    σ_t² - (a_t λ_t σ_y)²), so the total noise in the range of A stays σ_s. 1 where no
    measurement noise enters (σ_y = 0, or s = 0: the null space)."""
    s = jnp.asarray(s)
    y_noise = jnp.where(s > 0, a * lam * sigma_y / jnp.where(s > 0, s, 1.0), 0.0)
    ratio = y_noise / jnp.where(sigma_s > 0, sigma_s, 1.0)
    keep = jnp.sqrt(jnp.maximum(1.0 - ratio**2, 0.0))
    # λ < 1 means the measurement noise fills the whole budget: exactly 0 (float32 would leave
    # sqrt(1 - 0.99999994²) ≈ 3e-4 of it).
    return jnp.where(y_noise > 0, jnp.where(lam < 1.0, 0.0, keep), 1.0)


def weighted_correction(op: LinearOperator, v: Array, a: Array, sigma_s: Array, sigma_y: Array) -> Array:
    """λ ⊙ v for v in the range of Aᵀ (e.g. v = A⁺ r): per singular value through the SVD when the
    operator has one, else with the uniform singular value of :func:`_range_singular`."""
    if isinstance(op, SVDOperator):
        s = op.singulars()
        return op.V(data_weight(a, sigma_s, sigma_y, s) * op.Vt(v))
    s = _bcast(_range_singular(op), v)
    return data_weight(a, sigma_s, sigma_y, s) * v


def scaled_noise(op: LinearOperator, noise: Array, a: Array, sigma_s: Array, sigma_y: Array) -> Array:
    """``noise`` with its range-of-A part scaled by :func:`noise_keep`; the null-space part (no
    measurement noise there) is left as it is. Exactly ``noise`` when σ_y = 0."""
    if isinstance(op, SVDOperator):
        s = op.singulars()
        lam = data_weight(a, sigma_s, sigma_y, s)
        k = noise_keep(a, sigma_s, sigma_y, lam, s)
        return noise + op.V((k - 1.0) * op.Vt(noise))
    s = _bcast(_range_singular(op), noise)
    lam = data_weight(a, sigma_s, sigma_y, s)
    k = noise_keep(a, sigma_s, sigma_y, lam, s)
    return noise + (k - 1.0) * op.pinv(op.A(noise))


# ---------------------------------------------------------------------------------------


class DDNM(Solver):
    """DDNM (Wang et al. 2023, Alg. 1); DDNM+ (Alg. 2, eq. 17-19) whenever σ_y > 0.

    Per down transition t -> s, with ε̂ and x̂0 = x0|t from the network (official code's ``et``)::

        x0  = x̂0 - Σ A⁺ (A x̂0 - y)                    eq. 17 (Σ = I: DDNM's range-null decomposition)
        x_s = sqrt(ᾱ_s) x0 + c1 z + c2 ε̂,  c1 = sqrt(1-ᾱ_s) η,  c2 = sqrt(1-ᾱ_s) sqrt(1-η²)

    (DDNM's own DDIM-like parametrisation, as the official ``ddnm_diffusion``.) With σ_y > 0
    (DDNM+): a = sqrt(ᾱ_s), σ_s = sqrt(1 - ᾱ_s) (as the official code) and Σ = λ per singular
    value s of A, λ = 1 if σ_s >= a σ_y / s else s σ_s / (a σ_y) (eq. 18); the noise c1 z + c2 ε̂
    in the range of A is scaled by sqrt(1 - (a λ σ_y / (s σ_s))²) so that, with the measurement
    noise a λ A⁺n, the total stays σ_s (eq. 19, Φ_t = σ_t² - (a_t λ_t σ_y)²); the null space
    keeps DDNM's noise, as the official SVD code does for zero singular values. s comes from the
    operator's SVD (``SVDOperator``), else sqrt(c) for a partial isometry, else 1 (the paper's
    simplification A⁺n ~ N(0, σ_y² I)). We do not copy the official code's simplified-path
    ``sqrt(1 - ᾱ²)``; and, unlike the official SVD code, we keep η's split of the range noise
    (scaled) instead of dropping ε̂ there, so that σ_y -> 0 is continuous and σ_y = 0 is exactly
    DDNM: the switch is data (σ_y is traced), one compiled program for both.

    Time travel (Alg. 2): ``travel_length`` / ``travel_repeat`` set the same jump walk as RePaint
    (``jump_length`` / ``jump_n_sample`` are accepted as synonyms). The up-steps re-noise x_s
    with the forward chain (the driver's generic resampling); the official code instead
    re-noises its last x0|t. Defaults: ``travel_length=1``, ``travel_repeat=1`` (no travel, as in
    the official README commands), ``steps=100``, ``eta=0.85``: NFE 100, no VJP.
    """

    steps: int = struct.field(pytree_node=False, default=100, kw_only=True)
    eta: Array = struct.field(default_factory=lambda: jnp.asarray(0.85))
    travel_length: int = struct.field(pytree_node=False, default=1, kw_only=True)
    travel_repeat: int = struct.field(pytree_node=False, default=1, kw_only=True)

    def walk(self) -> np.ndarray:
        travel = (self.travel_length, self.travel_repeat)
        jump = (self.jump_length, self.jump_n_sample)
        if travel != (1, 1) and jump != (1, 1) and travel != jump:
            raise ValueError(
                f"DDNM got travel_length/travel_repeat={travel} and jump_length/jump_n_sample={jump}: "
                "they name the same time-travel walk; set only travel_length and travel_repeat"
            )
        length, repeat = travel if travel != (1, 1) else jump
        return repaint_schedule(self.steps, length, repeat)

    def step(self, problem: Problem, tr: Step, x: Array, state: Any, key: Array):
        eps, x0t, _ = denoise(problem, x, tr)
        op = problem.op
        a = jnp.sqrt(tr.abar_s)
        sigma_s = tr.sigma_s
        sigma_y = problem.sigma_y.astype(x.dtype)
        x0 = x0t - weighted_correction(op, op.pinv(op.A(x0t) - problem.y), a, sigma_s, sigma_y)
        eta = jnp.asarray(self.eta, x.dtype)
        z = rng.normal(key, x.shape, x.dtype)
        noise = sigma_s * (eta * z + jnp.sqrt(1.0 - eta**2) * eps)
        return a * x0 + scaled_noise(op, noise, a, sigma_s, sigma_y), state, x0t
