"""Zero-shot solvers for linear inverse problems with diffusion priors: one file per paper.

Every solver is an immutable PyTree run by :func:`invdiff.solve`; all take ``steps=`` and
default to their paper's settings. ``SOLVERS`` is the explicit registry (lower-case names) the
command line and the benchmarks use.
"""

from solvers.ddim import DDIM
from solvers.ddnm import DDNM
from solvers.ddpm import DDPM
from solvers.ddrm import DDRM
from solvers.diffpir import DiffPIR
from solvers.dps import DPS
from solvers.ilvr import ILVR
from solvers.mcg import MCG
from solvers.pigdm import PiGDM
from solvers.repaint import RePaint

#: The six paper solvers first, then the baselines.
SOLVERS = {
    "repaint": RePaint,
    "ilvr": ILVR,
    "ddnm": DDNM,
    "mcg": MCG,
    "pigdm": PiGDM,
    "diffpir": DiffPIR,
    "dps": DPS,
    "ddrm": DDRM,
    "ddpm": DDPM,
    "ddim": DDIM,
}


def get(name: str) -> type:
    """The solver class registered under ``name`` (case-insensitive)."""
    try:
        return SOLVERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}: choose one of {', '.join(SOLVERS)}") from None


__all__ = ["DDIM", "DDNM", "DDPM", "DDRM", "DPS", "ILVR", "MCG", "SOLVERS", "DiffPIR", "PiGDM", "RePaint", "get"]
