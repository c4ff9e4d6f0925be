"""RePaint (Lugmayr, Danelljan, Romero, Yu, Timofte, Van Gool, CVPR 2022, Alg. 1)."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

from invdiff import rng
from invdiff.solve import Problem, Solver, Step, ancestral_step, denoise, project_to_measurement


class RePaint(Solver):
    """RePaint: DDPM ancestral steps with the known part replaced by the noised measurement.

    Per down transition t -> s (Lugmayr et al. 2022, Alg. 1, lines 4-8, written for any
    operator instead of a mask)::

        x_u = ancestral step from x_t        (learned-range variance if the model reports v, else β̃)
        y_s = sqrt(ᾱ_s) y + sqrt(1 - ᾱ_s) A z  (y itself at the last step, s = -1)
        x_s = x_u + A⁺ (y_s - A x_u)          (for a mask m: m * y_s + (1 - m) * x_u)

    Order: the measurement is injected *after* each reverse step, so the walk ends exactly on
    A x = y. The official code injects it just before each network call instead; both orders
    are equivalent up to where the first/last injection falls. Resampling (Alg. 1, lines
    9-10: go back up ``jump_length`` steps ``jump_n_sample - 1`` times) is the driver's generic
    up-step, so ``nfe`` counts only the down steps.

    RePaint is a noiseless method: with ``sigma_y > 0`` the noisy y is injected as it is (no
    noise handling), so the result fits the noise exactly.

    Defaults (paper): ``steps=250``, ``jump_length=10``, ``jump_n_sample=10`` — 4570
    transitions of which 2410 go down: NFE 2410. One network call and no VJP per down step.
    """

    steps: int = struct.field(pytree_node=False, default=250, kw_only=True)
    jump_length: int = struct.field(pytree_node=False, default=10, kw_only=True)
    jump_n_sample: int = struct.field(pytree_node=False, default=10, kw_only=True)

    def step(self, problem: Problem, tr: Step, x: jax.Array, state: Any, key: jax.Array):
        k_step, k_meas = rng.split(key)
        _, x0, v = denoise(problem, x, tr)
        x_u = ancestral_step(x, x0, tr, v, k_step)
        return project_to_measurement(problem, x_u, tr, k_meas), state, x0
