"""Zero-shot solvers for linear inverse problems with diffusion priors: one file per paper.

Every solver is an immutable PyTree run by :func:`invdiff.solve`.
"""

from solvers.ddim import DDIM
from solvers.ddpm import DDPM

__all__ = ["DDIM", "DDPM"]
