"""Degradation operators, one file each, and mask generators.

``Inpainting``, ``Colorization``, ``Downsampling`` and ``Dense`` are
:class:`~invdiff.operator.SVDOperator` subclasses (closed-form pinv, prox and the spectral
maps DDRM needs); the first three are also partial isometries (A Aᵀ A = c A).
``compose`` recognises the compositions that stay partial isometries.
"""

from operators import masks
from operators.colorization import Colorization
from operators.composed import compose
from operators.dense import Dense
from operators.downsampling import Downsampling
from operators.inpainting import Inpainting

__all__ = ["Inpainting", "Colorization", "Downsampling", "Dense", "compose", "masks"]
