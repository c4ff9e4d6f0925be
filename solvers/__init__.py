"""Zero-shot solvers for linear inverse problems with diffusion priors: one file per paper.

Every solver is an immutable PyTree run by :func:`invdiff.solve`; all take ``steps=`` and
default to their paper's settings. ``SOLVERS`` is the explicit registry (lower-case names) the
command line and the benchmarks use.
"""

from invdiff.solve import Solver
from solvers.ddim import DDIM
from solvers.ddnm import DDNM
from solvers.ddpm import DDPM
from solvers.ddrm import DDRM
from solvers.diffpir import DiffPIR
from solvers.dps import DPS
from solvers.ilvr import ILVR
from solvers.mcg import MCG
from solvers.mcgdiff import MCGdiff
from solvers.pigdm import PiGDM
from solvers.repaint import RePaint
from solvers.tds import TDS

#: The paper solvers first, then the particle samplers, then the baselines.
SOLVERS = {
    "repaint": RePaint,
    "ilvr": ILVR,
    "ddnm": DDNM,
    "mcg": MCG,
    "pigdm": PiGDM,
    "diffpir": DiffPIR,
    "dps": DPS,
    "ddrm": DDRM,
    "mcgdiff": MCGdiff,
    "tds": TDS,
    "ddpm": DDPM,
    "ddim": DDIM,
}


def get(name: str) -> type:
    """The solver class registered under ``name`` (case-insensitive)."""
    try:
        return SOLVERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}: choose one of {', '.join(SOLVERS)}") from None


#: RePaint-style resampling for short walks (``invdiff demo``'s CPU preset), used by :func:`make`
#: when ``steps`` is at most twice the paper's jump length, where the paper's jumps would dominate.
SHORT_RESAMPLING: dict[str, int] = {"jump_length": 5, "jump_n_sample": 2}

#: Particles per measurement that :func:`make` gives the particle samplers (MCGdiff, TDS) when
#: ``steps`` is given (the CPU preset: N network calls per step).
PRESET_PARTICLES = 4


def make(name: str, steps: int | None = None) -> Solver:
    """The solver ``name`` at its paper's settings (``steps=None``) or with ``steps`` respaced steps.

    A solver that resamples by default (RePaint: ``jump_length`` 10) switches to
    :data:`SHORT_RESAMPLING` when ``steps`` is at most twice its default jump length. A particle
    sampler gets :data:`PRESET_PARTICLES` particles (its paper's default without ``steps``).
    """
    cls = get(name)
    if steps is None:
        return cls()
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    kw = {"steps": int(steps)}
    if cls().jump_length > 1 and steps <= 2 * cls().jump_length:
        kw.update(SHORT_RESAMPLING)
    if cls().particle_count() > 1:
        kw["particles"] = PRESET_PARTICLES
    return cls(**kw)


__all__ = ["DDIM", "DDNM", "DDPM", "DDRM", "DPS", "ILVR", "MCG", "SOLVERS", "TDS", "DiffPIR", "MCGdiff", "PiGDM",
           "RePaint", "get", "make"]
