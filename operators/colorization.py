"""Colorization: the grey image is the mean of the three colour channels.

A: (..., H, W, 3) -> (..., H, W, 1), A x = (x_r + x_g + x_b) / 3. Per pixel A = (1/3) 1ᵀ, so
A Aᵀ = (1/3) I: a partial isometry with c = 1/3, Aᵀ y = broadcast(y) / 3, A⁺ y = broadcast(y)
(DDNM, Wang et al. 2023, Sec. 3.3; DDRM, Kawar et al. 2022, App. A).

Definition note: this is the *channel mean*. Other repositories use rec601 luma weights
(0.299, 0.587, 0.114) or an orthogonal colour transform, so colorization PSNRs are only
comparable between methods run under one definition.

SVD: per pixel the orthonormal basis v1 = (1, 1, 1)/√3, v2 = (1, -1, 0)/√2,
v3 = (1, 1, -2)/√6; A = U diag(s) Vᵀ with s = (1/√3, 0, 0) and U = 1 on component 0. The
spectral space is (H, W, 3); ``Ut`` puts y into component 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.operator import LinearOperator, PartialIsometry, SVDOperator

Array = jax.Array

#: Columns: the per-pixel orthonormal basis (v1, v2, v3) of the colour space.
_BASIS = np.stack([np.ones(3) / np.sqrt(3.0),
                   np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0),
                   np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0)], axis=1).astype(np.float32)


class Colorization(PartialIsometry, SVDOperator):
    """``Colorization()``: (..., H, W, 3) -> (..., H, W, 1), the mean of the three channels.

    Partial isometry with c = 1/3 (closed-form pinv, prox, Aᵀ(r² A Aᵀ + σ² I)⁻¹) and an SVD
    operator (spectral shape (H, W, 3), singular values (1/√3, 0, 0)).
    """

    def c(self) -> float:
        return 1.0 / 3.0

    def coisometry_c(self) -> float:
        return 1.0 / 3.0

    def composed_c(self, inner: LinearOperator) -> float | None:
        """The channel mean after a mask shared across channels is a partial isometry, c = 1/3:
        with P/3 = AᵀA (P the per-pixel channel-averaging projector), P commutes with diag(m), so
        A diag(m) (A diag(m))ᵀ A diag(m) = A (P/3) m m = A m / 3."""
        from operators.inpainting import Inpainting

        if isinstance(inner, Inpainting) and inner.shared_across_channels():
            return 1.0 / 3.0
        return None

    @staticmethod
    def _check(v: Array, channels: int, what: str) -> None:
        if v.ndim < 2 or v.shape[-1] != channels:
            raise ValueError(f"Colorization expects {what} with {channels} channel(s) in the last "
                             f"axis, (B, H, W, {channels}); got shape {tuple(v.shape)}")

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(x_shape) < 1 or x_shape[-1] != 3:
            raise ValueError(f"Colorization takes RGB inputs (H, W, 3), got {tuple(x_shape)}")
        return tuple(x_shape[:-1]) + (1,)

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(y_shape) < 1 or y_shape[-1] != 1:
            raise ValueError(f"Colorization gives grey measurements (H, W, 1), got y with trailing "
                             f"shape {tuple(y_shape)}")
        return tuple(y_shape[:-1]) + (3,)

    def A(self, x: Array) -> Array:
        self._check(x, 3, "x")
        return jnp.mean(x, axis=-1, keepdims=True)

    def AT(self, y: Array) -> Array:
        self._check(y, 1, "y")
        return jnp.broadcast_to(y, y.shape[:-1] + (3,)) / 3.0

    def pinv(self, y: Array) -> Array:
        self._check(y, 1, "y")
        return jnp.broadcast_to(y, y.shape[:-1] + (3,))

    # ---- the SVD view ------------------------------------------------------------------
    def Vt(self, x: Array) -> Array:
        self._check(x, 3, "x")
        return x @ jnp.asarray(_BASIS, x.dtype)

    def V(self, xbar: Array) -> Array:
        return xbar @ jnp.asarray(_BASIS, xbar.dtype).T

    def Ut(self, y: Array) -> Array:
        self._check(y, 1, "y")
        return jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, 2)])

    def U(self, ybar: Array) -> Array:
        return ybar[..., :1]

    def singulars(self) -> Array:
        return jnp.asarray([1.0 / np.sqrt(3.0), 0.0, 0.0], jnp.float32)
