"""Bicubic anti-aliased downsampling by an integer factor: the "SR x4 bicubic" of DDRM, DDNM and DPS.

A: (..., H, W, C) -> (..., H/f, W/f, C), channel by channel Y = M_H X M_Wᵀ with the 1-D
matrices of ``torch.nn.functional.interpolate(x, scale_factor=1/f, mode="bicubic",
antialias=True)`` (``align_corners=False``), which are also those of PIL's ``Image.resize(...,
BICUBIC)``: output pixel i is centred at c = f (i + 1/2) and weighs input pixel j by
k((j + 1/2 - c) / f), k the Keys cubic with a = -0.5 stretched by f (support 4f taps), the
taps clipped to the image and renormalised to sum 1 at the borders. ``tests/data/bicubic_torch.npz``
holds torch's numbers (written by ``tests/data/make_bicubic_reference.py``) and the tests match
them to float32 round-off.

Not MATLAB's ``imresize``: that one extends the image by symmetric reflection at the borders
(as DDRM's ``SRConv``, whose interior weights equal these), so the outermost 2f pixels differ.

The map is separable, so its SVD is the Kronecker product of the two 1-D SVDs (DDRM's
``SRConv``, Kawar et al. 2022, App. B): see :class:`invdiff.operator.Separable`. The 1-D
matrices and their SVDs depend only on (f, H, W) and are computed once per size (numpy,
float64) and folded into the compiled program as constants. A, Aᵀ, A⁺, prox and
Aᵀ(r² A Aᵀ + σ² I)⁻¹ work for any divisible image size; ``singulars()`` (DDRM, DDNM's noise
weights) needs the size, which :meth:`BicubicDownsampling.bind` records (``invdiff.solve``
does it) or ``shape=(H, W)`` gives.
"""

from __future__ import annotations

import functools
import operator as _operator

import jax
import numpy as np
from flax import struct

from invdiff.operator import Separable, SVDOperator

Array = jax.Array

#: The Keys cubic's parameter in torch's antialiased bicubic, PIL and DDRM.
KEYS_A = -0.5


def keys_cubic(t: np.ndarray, a: float = KEYS_A) -> np.ndarray:
    """Keys' cubic convolution kernel (1981) with parameter ``a``; support |t| < 2."""
    t = np.abs(np.asarray(t, np.float64))
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(size: int, factor: int) -> np.ndarray:
    """The (size / factor, size) matrix of torch's antialiased bicubic downsampling, float64."""
    out = size // factor
    m = np.zeros((out, size))
    support = 2.0 * factor  # interp_size / 2 · scale
    for i in range(out):
        center = factor * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size)
        j = np.arange(lo, hi)
        w = keys_cubic((j - center + 0.5) / factor)
        m[i, lo:hi] = w / w.sum()
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=16)
def _separable(h: int, w: int, factor: int) -> Separable:
    return Separable(bicubic_matrix(h, factor), bicubic_matrix(w, factor))


class BicubicDownsampling(SVDOperator):
    """``BicubicDownsampling(factor)``: (B, H, W, C) -> (B, H/f, W/f, C), torch's antialiased bicubic.

    ``factor`` is a static positive integer that must divide H and W. ``shape=(H, W)`` (optional;
    :meth:`bind` sets it) fixes the image size, which only ``singulars()`` needs. SVD tier: the
    spectral space is (H, W, C) (see :class:`invdiff.operator.Separable`).
    """

    factor: int = struct.field(pytree_node=False)
    shape: tuple[int, int] | None = struct.field(pytree_node=False, default=None, kw_only=True)

    def __post_init__(self):
        f = self.factor
        if isinstance(f, float) and float(f).is_integer():
            f = int(f)
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
            raise TypeError(f"BicubicDownsampling factor must be a positive integer, got {f!r}")
        if f < 1:
            raise ValueError(f"BicubicDownsampling factor must be a positive integer, got {f}")
        object.__setattr__(self, "factor", _operator.index(f))
        if self.shape is not None:
            shape = tuple(int(s) for s in self.shape[:2])
            self._check_size(*shape)
            object.__setattr__(self, "shape", shape)

    # ---- shapes ------------------------------------------------------------------------
    def _check_size(self, h: int, w: int) -> None:
        f = self.factor
        if h % f or w % f or h < f or w < f:
            raise ValueError(f"bicubic factor {f} does not divide the image size {h}x{w}; crop or pad the "
                             f"image to a multiple of {f}")
        if self.shape is not None and (h, w) != tuple(self.shape):
            raise ValueError(f"this BicubicDownsampling was built for {self.shape[0]}x{self.shape[1]} images, "
                             f"got {h}x{w}")

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(x_shape) != 3:
            raise ValueError(f"BicubicDownsampling expects images (H, W, C), got trailing shape {tuple(x_shape)}")
        h, w, c = x_shape
        self._check_size(h, w)
        return (h // self.factor, w // self.factor, c)

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(y_shape) != 3:
            raise ValueError(f"BicubicDownsampling gives images (h, w, C), got y with trailing shape "
                             f"{tuple(y_shape)}")
        h, w, c = y_shape
        x = (h * self.factor, w * self.factor, c)
        self._check_size(*x[:2])
        return x

    def bind(self, x_shape: tuple[int, ...]) -> BicubicDownsampling:
        self.y_shape(tuple(x_shape))
        return self if self.shape is not None else self.replace(shape=tuple(x_shape[:2]))

    def separable_factors(self, x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        h, w, _ = x_shape
        self.y_shape(tuple(x_shape))
        return bicubic_matrix(h, self.factor), bicubic_matrix(w, self.factor)

    def _op(self, x_shape: tuple[int, ...]) -> Separable:
        """The separable operator for inputs of ``x_shape`` (cached per size)."""
        h, w, _ = x_shape
        self.y_shape(tuple(x_shape))
        return _separable(h, w, self.factor)

    def _op_y(self, y: Array) -> Separable:
        return self._op(self.x_shape(tuple(y.shape[1:])))

    # ---- the map and its closed forms (all through the Kronecker SVD) ------------------
    def A(self, x: Array) -> Array:
        return self._op(tuple(x.shape[1:])).A(x)

    def AT(self, y: Array) -> Array:
        return self._op_y(y).AT(y)

    def pinv(self, y: Array) -> Array:
        return self._op_y(y).pinv(y)

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        return self._op(tuple(z.shape[1:])).prox(z, y, rho)

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        return self._op_y(y).AT_gram_inv(y, r2, s2)

    def Vt(self, x: Array) -> Array:
        return self._op(tuple(x.shape[1:])).Vt(x)

    def V(self, xbar: Array) -> Array:
        return self._op(tuple(xbar.shape[1:])).V(xbar)

    def Ut(self, y: Array) -> Array:
        return self._op_y(y).Ut(y)

    def U(self, ybar: Array) -> Array:
        return self._op(tuple(ybar.shape[1:])).U(ybar)

    def singulars(self) -> Array:
        if self.shape is None:
            raise ValueError(f"BicubicDownsampling({self.factor}).singulars() depends on the image size: build it "
                             f"with shape=(H, W) or call .bind((H, W, C)) first (invdiff.solve does)")
        h, w = self.shape
        return _separable(h, w, self.factor).singulars()

