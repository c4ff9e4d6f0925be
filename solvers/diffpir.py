"""DiffPIR, denoising diffusion models for plug-and-play image restoration
(Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool, CVPR Workshops 2023, Alg. 1)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from invdiff.noise import eps_from_x0
from invdiff.solve import Problem, Solver, Step, denoise

Array = jax.Array


def data_rho(lam: Array, sigma_y: Array, abar_t: Array, omab_t: Array) -> Array:
    """ρ_t = λ σ_n² / σ̄_t² with σ̄_t² = (1 - ᾱ_t) / ᾱ_t (DiffPIR, Alg. 1 and eq. 13)."""
    return lam * jnp.square(sigma_y) * abar_t / omab_t


class DiffPIR(Solver):
    """DiffPIR (Zhu et al., CVPRW 2023, Alg. 1). Per step t -> s:

        x0^(t) = x̂0(x_t)                                                  (denoiser)
        x0     = argmin_x ||y - A x||² + ρ_t ||x - x0^(t)||²  = op.prox     (data step)
        ε̂'     = (x_t - sqrt(ᾱ_t) x0) / sqrt(1 - ᾱ_t)
        x_s    = sqrt(ᾱ_s) x0 + sqrt(1 - ᾱ_s) (sqrt(1 - ζ) ε̂' + sqrt(ζ) z)

    with ρ_t = λ σ_n² / σ̄_t², σ̄_t = sqrt((1 - ᾱ_t) / ᾱ_t) the noise level of x_t / sqrt(ᾱ_t)
    (ρ_t uses the current step t, as the paper and the official code). σ_n = σ_y in model
    units ([-1, 1] images), the units σ̄_t is measured in; at σ_y = 0, ρ_t = 0 and the data
    step is the hard projection onto {A x = y} nearest x0^(t). The data step is applied at
    every step including the last (Alg. 1; the official code skips it on the last step and
    clamps σ_n ≥ 0.001).

    Units: the official code solves the data step in [0, 1] image units with σ_n on the
    [0, 1] scale while σ̄_t is on the model's [-1, 1] scale, so its ρ_t is ¼ of the paper's
    (consistent) formula used here; its λ corresponds to λ / 4 here.

    Defaults: 100 steps (the paper uses 20 NFE for inpainting and 100 for SR and
    deblurring), λ = 7 (deepinv's default; the paper sweeps 2-12), ζ = 0.3 (the paper uses
    0.1-0.3 for SR and deblurring and 1.0 for inpainting). Cost per step: 1 network
    evaluation, no vector-Jacobian product.
    """

    steps: int = struct.field(pytree_node=False, default=100, kw_only=True)
    lam: Array = struct.field(default_factory=lambda: jnp.asarray(7.0))
    zeta: Array = struct.field(default_factory=lambda: jnp.asarray(0.3))

    def step(self, problem: Problem, tr: Step, x: Array, state: Any, key: Array) -> tuple[Array, Any, Array]:
        _, x0_t, _ = denoise(problem, x, tr)
        rho = data_rho(jnp.asarray(self.lam, x.dtype), problem.sigma_y.astype(x.dtype), tr.abar_t, tr.omab_t)
        x0 = problem.op.prox(x0_t, problem.y, rho)
        eps = eps_from_x0(x, x0, tr.abar_t, tr.omab_t)
        zeta = jnp.asarray(self.zeta, x.dtype)
        z = jax.random.normal(key, x.shape, x.dtype)
        x_s = jnp.sqrt(tr.abar_s) * x0 + jnp.sqrt(tr.omab_s) * (
            jnp.sqrt(1.0 - zeta) * eps + jnp.sqrt(zeta) * z)
        return x_s, state, x0
