"""DPS, diffusion posterior sampling (Chung, Kim, Mccann, Klasky, Ye, ICLR 2023, Alg. 1)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from invdiff.solve import Problem, Solver, Step, ancestral_step, denoise_vjp, residual_norm_descent

Array = jax.Array


class DPS(Solver):
    """DPS (Chung et al., ICLR 2023, Alg. 1): a DDPM ancestral step from x_t, then

        x_s ← x_s - scale · ∇_{x_t} ||y - A x̂0(x_t)||

    with the unsquared norm of the official code (Alg. 1's ζ_i = ζ' / ||y - A x̂0|| applied to
    the squared norm is the same step with scale = 2ζ'). The norm is taken per sample (the
    official code takes one norm over the whole batch, coupling the samples). The ancestral
    step uses the model's learned-range variance when it has one, else β̃. x̂0 is clipped
    to the model's data range like in every solver (the gradient is the unclipped x̂0's).

    Defaults: 1000 steps, scale = 0.5 (the paper's FFHQ/ImageNet inpainting setting; use 0.3
    for super-resolution). Cost per step: 1 network evaluation and 1 vector-Jacobian
    product. The noise level σ_y does not enter the update (the paper absorbs it in scale).
    """

    steps: int = struct.field(pytree_node=False, default=1000, kw_only=True)
    scale: Array = struct.field(default_factory=lambda: jnp.asarray(0.5))

    vjp_per_step = 1

    def step(self, problem: Problem, tr: Step, x: Array, state: Any, key: Array) -> tuple[Array, Any, Array]:
        _, x0, v, vjp = denoise_vjp(problem, x, tr)
        descent = residual_norm_descent(problem, x0, vjp)
        x_s = ancestral_step(x, x0, tr, v, key)
        return x_s + jnp.asarray(self.scale, x.dtype) * descent, state, x0
