"""Degradation operators, one file each, and mask generators.

``Inpainting``, ``Colorization``, ``Downsampling`` (average pooling), ``BicubicDownsampling``,
``CompressedSensing``, ``Dense`` and the circular ``Blur`` are
:class:`~invdiff.operator.SVDOperator` subclasses (closed-form pinv, prox and the spectral maps
DDRM needs); inpainting, colorization, average pooling and compressed sensing are also partial
isometries (A Aᵀ A = c A). ``Blur`` with a reflect or valid boundary is matrix-free (conjugate
gradients). ``compose`` is :func:`invdiff.compose` (the same function), which recognises the
compositions that stay partial isometries or separable SVDs.
"""

from invdiff.operator import compose
from operators import masks
from operators.bicubic import BicubicDownsampling
from operators.blur import Blur
from operators.colorization import Colorization
from operators.compressed_sensing import CompressedSensing
from operators.dense import Dense
from operators.downsampling import Downsampling
from operators.inpainting import Inpainting

__all__ = ["BicubicDownsampling", "Blur", "Colorization", "CompressedSensing", "Dense", "Downsampling", "Inpainting",
           "compose", "masks"]
