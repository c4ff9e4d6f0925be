"""Downsampling by f x f average pooling (super-resolution).

A: (..., H, W, C) -> (..., H/f, W/f, C), the mean of each f x f block. Per block
A = (1/f²) 1ᵀ, so A Aᵀ = (1/f²) I: a partial isometry with c = 1/f², Aᵀ = nearest
upsampling / f², A⁺ = nearest upsampling (DDNM, Wang et al. 2023, Sec. 3.3; ILVR, Choi et
al. 2021, eq. 5 with φ = A⁺A).

SVD: per block and channel an orthonormal f²×f² basis Q whose first vector is uniform
(1/f); A = U diag(s) Vᵀ with s = 1/f on that vector and 0 elsewhere. The spectral space is
(H/f, W/f, f·f, C): the coefficients of each block and channel in Q, the first being the
scaled block mean; ``singulars()`` has shape (f·f, 1) so that it broadcasts without knowing
C. (It is not one input's shape: the singular values would then depend on H and W.)
"""

from __future__ import annotations

import operator as _operator

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff.operator import PartialIsometry, SVDOperator

Array = jax.Array


def _block_basis(f: int) -> np.ndarray:
    """An orthonormal f²×f² matrix whose first column is the uniform vector 1/f."""
    n = f * f
    start = np.eye(n)
    start[:, 0] = 1.0
    q, _ = np.linalg.qr(start)
    q *= np.sign(q[0, 0])
    return q.astype(np.float32)


class Downsampling(PartialIsometry, SVDOperator):
    """``Downsampling(factor)``: f x f average pooling of (B, H, W, C) images; f is static."""

    factor: int = struct.field(pytree_node=False)

    def __post_init__(self):
        f = self.factor
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
            if isinstance(f, float) and float(f).is_integer():
                f = int(f)
            else:
                raise TypeError(f"Downsampling factor must be a positive integer, got {f!r}")
        if f < 1:
            raise ValueError(f"Downsampling factor must be a positive integer, got {f}")
        object.__setattr__(self, "factor", _operator.index(f))

    def c(self) -> float:
        return 1.0 / (self.factor * self.factor)

    def coisometry_c(self) -> float:
        return self.c()

    def separable_factors(self, x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The 1-D averaging matrices (H/f, H) and (W/f, W): pooling is separable."""
        self._check_image(tuple(x_shape))
        f = self.factor
        return tuple(np.kron(np.eye(n // f), np.full((1, f), 1.0 / f)) for n in x_shape[:2])

    # ---- shapes ------------------------------------------------------------------------
    def _check_image(self, shape: tuple[int, ...]) -> None:
        f = self.factor
        if len(shape) != 3:
            raise ValueError(f"Downsampling expects images (H, W, C), got trailing shape {tuple(shape)}")
        h, w, _ = shape
        if h % f or w % f:
            raise ValueError(f"factor {f} does not divide the image size {h}x{w}; crop or pad the "
                             f"image to a multiple of {f}")

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_image(tuple(x_shape))
        h, w, c = x_shape
        return (h // self.factor, w // self.factor, c)

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(y_shape) != 3:
            raise ValueError(f"Downsampling gives images (h, w, C), got y with trailing shape "
                             f"{tuple(y_shape)}")
        h, w, c = y_shape
        return (h * self.factor, w * self.factor, c)

    # ---- the map -----------------------------------------------------------------------
    def _blocks(self, x: Array) -> Array:
        """(B, H, W, C) -> (B, H/f, W/f, f·f, C)."""
        self._check_image(tuple(x.shape[1:]))
        f = self.factor
        b, h, w, c = x.shape
        x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h // f, w // f, f * f, c)

    def _unblocks(self, blocks: Array) -> Array:
        """(B, h, w, f·f, C) -> (B, h·f, w·f, C)."""
        f = self.factor
        b, h, w, _, c = blocks.shape
        x = blocks.reshape(b, h, w, f, f, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h * f, w * f, c)

    def _upsample(self, y: Array) -> Array:
        self.x_shape(tuple(y.shape[1:]))
        f = self.factor
        return jnp.repeat(jnp.repeat(y, f, axis=1), f, axis=2)

    def A(self, x: Array) -> Array:
        return jnp.mean(self._blocks(x), axis=3)

    def AT(self, y: Array) -> Array:
        return self._upsample(y) / (self.factor * self.factor)

    def pinv(self, y: Array) -> Array:
        return self._upsample(y)

    # ---- the SVD view ------------------------------------------------------------------
    def Vt(self, x: Array) -> Array:
        blocks = self._blocks(x)
        q = jnp.asarray(_block_basis(self.factor), x.dtype)
        return jnp.einsum("bhwpc,pk->bhwkc", blocks, q)

    def V(self, xbar: Array) -> Array:
        q = jnp.asarray(_block_basis(self.factor), xbar.dtype)
        return self._unblocks(jnp.einsum("bhwkc,pk->bhwpc", xbar, q))

    def Ut(self, y: Array) -> Array:
        self.x_shape(tuple(y.shape[1:]))
        return jnp.pad(y[:, :, :, None, :], [(0, 0)] * 3 + [(0, self.factor**2 - 1), (0, 0)])

    def U(self, ybar: Array) -> Array:
        return ybar[:, :, :, 0, :]

    def singulars(self) -> Array:
        s = np.zeros((self.factor**2, 1), np.float32)
        s[0] = 1.0 / self.factor
        return jnp.asarray(s)

