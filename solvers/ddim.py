"""DDIM(η) sampling (Song, Meng, Ermon, ICLR 2021, eq. 12); ignores the measurement."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from invdiff import rng
from invdiff.noise import ddim_step
from invdiff.solve import Problem, Solver, Step, denoise


class DDIM(Solver):
    """Unconditional DDIM(η) sampling; η = 0 is deterministic, η = 1 matches DDPM's marginals.

    Ignores y: it samples the prior. Defaults: 50 steps, η = 0.
    """

    steps: int = struct.field(pytree_node=False, default=50, kw_only=True)
    eta: jax.Array = struct.field(default_factory=lambda: jnp.asarray(0.0))

    def step(self, problem: Problem, tr: Step, x: jax.Array, state: Any, key: jax.Array):
        eps, x0, _ = denoise(problem, x, tr)
        z = rng.normal(key, x.shape, x.dtype)
        return ddim_step(x0, eps, tr.abar_t, tr.abar_s, jnp.asarray(self.eta, x.dtype), z,
                      tr.omab_t, tr.omab_s, tr.beta), state, x0
