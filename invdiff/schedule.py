"""Step schedules as data.

A solve walks a list of *respaced indices* (K-1, …, 0, -1 for a K-step chain; -1 is the
clean image). Consecutive entries differ by exactly one: a step down is a reverse
diffusion step (one network call), a step up re-noises with the forward chain and calls no
network. :func:`transitions` turns such a walk into per-transition arrays (original
timesteps and ᾱ coefficients, computed in float64) that the compiled loop consumes as data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import struct

from invdiff.noise import NoiseSchedule


def repaint_schedule(t_T: int = 250, jump_length: int = 10, jump_n_sample: int = 10) -> np.ndarray:
    """RePaint's resampling walk (Lugmayr et al. 2022, Alg. 1; the official ``get_schedule_jump``).

    Starts at ``t_T - 1`` and walks down to -1. At every jump point (the multiples of
    ``jump_length`` in [0, t_T - jump_length)) the walk goes back up ``jump_length`` steps,
    ``jump_n_sample - 1`` times. 250/10/10 gives 4571 entries: 4570 transitions, 2410 down.
    ``jump_length=1, jump_n_sample=1`` is the plain walk. DDNM's time travel
    (travel_length, travel_repeat) is the same walk.
    """
    if t_T < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(
            f"repaint_schedule needs t_T >= 1, jump_length >= 1 and jump_n_sample >= 1; got "
            f"t_T={t_T}, jump_length={jump_length}, jump_n_sample={jump_n_sample}"
        )
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t = t_T
    ts = []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return np.asarray(ts, dtype=np.int64)


def plain_walk(steps: int) -> np.ndarray:
    """The walk K-1, K-2, …, 0, -1 of a K-step chain."""
    return np.arange(steps - 1, -2, -1, dtype=np.int64)


@struct.dataclass
class Transitions:
    """Per-transition data of a walk; leaves are arrays of shape (L,).

    ``t`` / ``s``: original timesteps at the start and end of each transition (-1 = clean).
    ``abar_t`` / ``abar_s``: ᾱ there; ``omab_t`` / ``omab_s``: 1 - ᾱ and ``beta``: β' = 1 - ᾱ_t/ᾱ_s,
    all computed in float64 (float32 loses digits near t = 0). ``log_var_clipped``: guided-diffusion's clipped log
    posterior variance of the respaced chain (used with learned-range variance).
    ``up``: True where the walk goes up (re-noise, no network call).
    """

    t: np.ndarray
    s: np.ndarray
    abar_t: np.ndarray
    abar_s: np.ndarray
    omab_t: np.ndarray
    omab_s: np.ndarray
    beta: np.ndarray
    log_var_clipped: np.ndarray
    up: np.ndarray

    def __len__(self) -> int:
        return int(np.shape(self.t)[0])

    @property
    def num_down(self) -> int:
        return int(np.sum(~np.asarray(self.up)))

    def __getitem__(self, idx) -> Transitions:
        return Transitions(*(np.asarray(a)[idx] for a in self.arrays()))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.t, self.s, self.abar_t, self.abar_s, self.omab_t, self.omab_s, self.beta,
                self.log_var_clipped, self.up)


def respaced_timesteps(schedule: NoiseSchedule, steps: int | str) -> np.ndarray:
    """The original timesteps a ``steps``-step chain keeps (guided-diffusion's space_timesteps)."""
    use, _ = schedule.respace(str(steps) if isinstance(steps, int) else steps)
    return use


def quadratic_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The original timesteps of DiffPIR's ``skip_type='quad'`` (the official code's
    ``seq = sqrt(linspace(0, T², K))``, walked as T - 1 - seq): dense near t = 0, sparse near T.
    Ascending, like ``space_timesteps``; raises ValueError when K is too large for distinct steps."""
    seq = np.sqrt(np.linspace(0, num_timesteps**2, steps)).astype(np.int64)
    seq[-1] -= 1
    use = np.sort(num_timesteps - 1 - seq)
    if steps < 2 or np.any(np.diff(use) <= 0):
        raise ValueError(f"quadratic spacing needs 2 <= steps and distinct timesteps; {steps} steps over "
                         f"{num_timesteps} repeat some: use fewer steps or even spacing")
    return use


def transitions(schedule: NoiseSchedule, steps: int | str, walk: Sequence[int] | None = None,
                use: np.ndarray | None = None) -> Transitions:
    """Per-transition coefficients for ``walk`` (respaced indices) on a ``steps``-step chain.

    ``walk`` defaults to the plain walk K-1 … -1. Every consecutive pair must differ by one,
    and entries must lie in [-1, K-1]. ``use``: the kept original timesteps, ascending (default:
    guided-diffusion's evenly spaced respacing of ``steps``; see ``Solver.timesteps``).
    """
    if use is None:
        use, respaced = schedule.respace(str(steps) if isinstance(steps, int) else steps)
    else:
        use = np.asarray(use, dtype=np.int64)
        abar = schedule.alphas_cumprod[use]
        respaced = NoiseSchedule(betas=1.0 - abar / np.append(1.0, abar[:-1]))
    k = use.shape[0]
    walk = plain_walk(k) if walk is None else np.asarray(walk, dtype=np.int64)
    if walk.ndim != 1 or walk.size < 2:
        raise ValueError("a walk needs at least two respaced indices (e.g. [K-1, …, -1])")
    if np.any(np.abs(np.diff(walk)) != 1):
        raise ValueError("consecutive entries of a walk must differ by exactly one")
    if walk.min() < -1 or walk.max() > k - 1:
        raise ValueError(f"walk entries must lie in [-1, {k - 1}] for a {k}-step chain; got "
                         f"[{walk.min()}, {walk.max()}]")
    abar_ext = np.append(schedule.alphas_cumprod[use], 1.0)  # index -1 -> 1.0
    omab_ext = np.append(1.0 - schedule.alphas_cumprod[use], 0.0)
    orig_ext = np.append(use, -1)
    logvar = respaced.posterior_log_variance_clipped
    frm, to = walk[:-1], walk[1:]
    up = to > frm
    # A down transition i -> i-1 uses the respaced chain's step i; up transitions carry the
    # values of the step they undo (unused by the re-noising itself).
    step_idx = np.where(up, to, frm)
    return Transitions(
        t=orig_ext[frm].astype(np.int32),
        s=orig_ext[to].astype(np.int32),
        abar_t=abar_ext[frm],
        abar_s=abar_ext[to],
        omab_t=omab_ext[frm],
        omab_s=omab_ext[to],
        # down: β' of the step; up: β of the forward step that is re-applied
        beta=np.where(up, 1.0 - abar_ext[to] / abar_ext[frm], 1.0 - abar_ext[frm] / abar_ext[to]),
        log_var_clipped=logvar[step_idx],
        up=up,
    )
