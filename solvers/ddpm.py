"""Plain DDPM ancestral sampling (Ho et al., NeurIPS 2020, Alg. 2); ignores the measurement."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

from invdiff.solve import Problem, Solver, Step, ancestral_step, denoise


class DDPM(Solver):
    """Unconditional ancestral sampling: x_s ~ N(μ̃(x_t, x̂0), σ²), σ² learned-range or β̃.

    Ignores y: it samples the prior. Default: 1000 steps (the training chain).
    """

    steps: int = struct.field(pytree_node=False, default=1000, kw_only=True)

    def step(self, problem: Problem, tr: Step, x: jax.Array, state: Any, key: jax.Array):
        _, x0, v = denoise(problem, x, tr)
        return ancestral_step(x, x0, tr, v, key), state, x0
