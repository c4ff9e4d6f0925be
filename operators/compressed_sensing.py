"""Compressed sensing: a random subset of the coefficients of an orthonormal fast transform.

``CompressedSensing(ratio, key, shape)`` for images of ``shape`` = (H, W, C): every channel is
flattened (row-major) to n = H·W values, transformed by an orthonormal T, and the m =
round(ratio · n) coefficients at ``perm[:m]`` are kept, ``perm`` a random permutation of the n
indices drawn from ``key`` (one subset for all channels and samples, as DDNM's
``WalshHadamardCS``, Wang et al. 2023, whose CS experiments keep a random subset of the
Walsh–Hadamard coefficients of the whole image). y has shape (B, m, C): not an image.

T is the Walsh–Hadamard transform of the n values (Sylvester order, scaled by 1/√n so that it
is orthonormal and its own inverse) when n is a power of two, as in DDNM; otherwise the 2-D
orthonormal DCT-II over (H, W) (``transform="dct"`` forces it). Both cost O(n log n) per
channel, never a dense matrix.

A = S T with S the row selection, so A Aᵀ = S T Tᵀ Sᵀ = I: a partial isometry with c = 1,
Aᵀ = A⁺ = T⁻¹ Sᵀ (zero-fill, inverse transform), prox and Aᵀ(r² A Aᵀ + σ² I)⁻¹ = Aᵀ / (r² + σ²)
in closed form. SVD: V = T⁻¹ with the coefficients in ``perm`` order (spectral shape (n, C)),
U = I, singular values 1 on the first m and 0 elsewhere. ``perm`` is an array leaf: a new key
does not recompile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.fft import dctn, idctn

from invdiff.operator import PartialIsometry, SVDOperator

Array = jax.Array

TRANSFORMS = ("hadamard", "dct")


def walsh_hadamard(v: Array) -> Array:
    """The orthonormal Walsh–Hadamard transform (Sylvester order) along axis 1 of (B, n, C); n = 2^k.

    log2(n) butterfly stages, O(n log n); the transform is symmetric and its own inverse.
    """
    b, n, c = v.shape
    h = 1
    while h < n:
        v = v.reshape(b, n // (2 * h), 2, h, c)
        v = jnp.stack([v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]], axis=2)
        h *= 2
    return v.reshape(b, n, c) / jnp.sqrt(jnp.asarray(n, v.dtype))


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class CompressedSensing(PartialIsometry, SVDOperator):
    """``CompressedSensing(ratio, key, shape)``: (B, H, W, C) -> (B, m, C), m = round(ratio · H · W).

    ``ratio`` in (0, 1]; ``key`` a ``jax.random.key`` (or an int seed) that fixes the subset;
    ``shape`` = (H, W, C). ``transform`` is ``"hadamard"`` (needs H·W a power of two), ``"dct"``,
    or ``None`` (default: Hadamard when H·W is a power of two, else DCT).
    """

    perm: Array
    shape: tuple[int, int, int] = struct.field(pytree_node=False)
    m: int = struct.field(pytree_node=False)
    transform: str = struct.field(pytree_node=False)

    def __init__(self, ratio: float | None = None, key: Array | int | None = None,
                 shape: tuple[int, int, int] | None = None, *, transform: str | None = None,
                 perm: Array | None = None, m: int | None = None):
        if m is not None:  # rebuilt by JAX (jit, tree.map) or .replace: the fields as they are
            for name, value in (("perm", perm), ("shape", shape), ("m", m), ("transform", transform)):
                object.__setattr__(self, name, value)
            return
        if shape is None or len(tuple(shape)) != 3:
            raise ValueError(f"CompressedSensing needs the image shape (H, W, C), got {shape!r}")
        h, w, c = (int(s) for s in shape)
        n = h * w
        if ratio is None or not np.isfinite(ratio) or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"CompressedSensing ratio must be in (0, 1] (the fraction of coefficients kept), "
                             f"got {ratio!r}")
        m = int(round(float(ratio) * n))
        if m < 1:
            raise ValueError(f"ratio {ratio} keeps no coefficient of a {h}x{w} image; use a ratio >= {1 / n:.3g}")
        if transform is None:
            transform = "hadamard" if _is_power_of_two(n) else "dct"
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")
        if transform == "hadamard" and not _is_power_of_two(n):
            raise ValueError(f"the Walsh–Hadamard transform needs H·W a power of two, got {h}x{w} = {n}; "
                             f"use transform='dct' or crop/pad the image")
        if key is None:
            raise ValueError("CompressedSensing needs a key (jax.random.key or an int seed) to draw the subset")
        if isinstance(key, (int, np.integer)):
            key = jax.random.key(int(key))
        object.__setattr__(self, "perm", jax.random.permutation(key, n).astype(jnp.int32))
        object.__setattr__(self, "shape", (h, w, c))
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "transform", transform)

    @property
    def ratio(self) -> float:
        """The fraction of coefficients kept, m / (H·W)."""
        return self.m / (self.shape[0] * self.shape[1])

    def c(self) -> float:
        return 1.0

    def coisometry_c(self) -> float:
        return 1.0

    # ---- shapes ------------------------------------------------------------------------
    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(x_shape) != tuple(self.shape):
            raise ValueError(f"this CompressedSensing was built for images of shape {tuple(self.shape)}, got "
                             f"{tuple(x_shape)}")
        return (self.m, self.shape[2])

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(y_shape) != (self.m, self.shape[2]):
            raise ValueError(f"this CompressedSensing gives measurements of shape {(self.m, self.shape[2])}, got "
                             f"y with trailing shape {tuple(y_shape)}")
        return tuple(self.shape)

    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.shape)

    # ---- the transform -----------------------------------------------------------------
    def _forward(self, x: Array) -> Array:
        """(B, H, W, C) -> (B, n, C): T applied to every channel."""
        self.y_shape(tuple(x.shape[1:]))
        b, h, w, c = x.shape
        if self.transform == "hadamard":
            return walsh_hadamard(x.reshape(b, h * w, c))
        return dctn(x, type=2, axes=(1, 2), norm="ortho").reshape(b, h * w, c)

    def _inverse(self, coeffs: Array) -> Array:
        """(B, n, C) -> (B, H, W, C): T⁻¹ = Tᵀ."""
        b = coeffs.shape[0]
        h, w, c = self.shape
        if self.transform == "hadamard":
            return walsh_hadamard(coeffs).reshape(b, h, w, c)
        return idctn(coeffs.reshape(b, h, w, c), type=2, axes=(1, 2), norm="ortho")

    def _check_y(self, y: Array) -> None:
        self.x_shape(tuple(y.shape[1:]))

    # ---- the partial isometry ----------------------------------------------------------
    def A(self, x: Array) -> Array:
        return self._forward(x)[:, self.perm[: self.m]]

    def AT(self, y: Array) -> Array:
        self._check_y(y)
        n = self.shape[0] * self.shape[1]
        coeffs = jnp.zeros((y.shape[0], n, y.shape[2]), y.dtype).at[:, self.perm[: self.m]].set(y)
        return self._inverse(coeffs)

    # ---- the SVD view (spectral shape (n, C), coefficients in perm order) ---------------
    def Vt(self, x: Array) -> Array:
        return self._forward(x)[:, self.perm]

    def V(self, xbar: Array) -> Array:
        return self._inverse(jnp.zeros_like(xbar).at[:, self.perm].set(xbar))

    def Ut(self, y: Array) -> Array:
        self._check_y(y)
        n = self.shape[0] * self.shape[1]
        return jnp.pad(y, ((0, 0), (0, n - self.m), (0, 0)))

    def U(self, ybar: Array) -> Array:
        return ybar[:, : self.m]

    def singulars(self) -> Array:
        n = self.shape[0] * self.shape[1]
        return jnp.asarray((np.arange(n) < self.m).astype(np.float32)[:, None])

