"""Dense: y = x @ Mᵀ for an explicit matrix M of shape (m, d), through its SVD.

M = U diag(s) Vᵀ is computed once at construction (``jnp.linalg.svd`` with full U (m×m) and
Vᵀ (d×d)); the spectral space has one input's shape (d,), ``Ut`` zero-pads U ᵀy to d and
``singulars`` holds min(m, d) values padded with zeros to d. The SVD tier then gives
closed-form pinv, prox and Aᵀ(r² A Aᵀ + σ² I)⁻¹ (DDRM, Kawar et al. 2022, Sec. 3; PiGDM,
Song et al. 2023, eq. 8).

Rank deficiency: singular values at or below ``rcond · s_max`` are treated as 0, with
``rcond = max(m, d) · eps`` of the matrix's dtype by default (the cutoff of
``numpy.linalg.matrix_rank`` and ``jnp.linalg.pinv``); pass ``rcond=`` to change it.

Precision: the matrix keeps its floating dtype (float64 stays float64 when
``jax_enable_x64`` is on: the adjoint and Moore–Penrose identities then hold to ~1e-12;
integer matrices become float32). Every map returns its input's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff.operator import SVDOperator, _per_sample

Array = jax.Array


def _concrete(v) -> bool:
    return isinstance(v, (np.ndarray, jax.Array, list, tuple)) and not isinstance(v, jax.core.Tracer)


class Dense(SVDOperator):
    """``Dense(matrix)``: (..., d) -> (..., m), y = x @ matrix.T.

    Leaves: ``matrix`` (m, d), and its SVD ``u`` (m, m), ``s`` (min(m, d), cut off at
    ``rcond · s_max``), ``vt`` (d, d), all computed at construction when not given.
    """

    matrix: Array
    u: Array | None = None
    s: Array | None = None
    vt: Array | None = None
    rcond: float | None = struct.field(pytree_node=False, default=None, kw_only=True)

    def __post_init__(self):
        mat = self.matrix
        if self.u is not None or not (_concrete(mat) or isinstance(mat, jax.core.Tracer)):
            return  # rebuilt by JAX (jit, tree.map, in_axes prefixes) or SVD given explicitly
        if _concrete(mat):
            mat = np.asarray(mat)
            if mat.ndim != 2:
                raise ValueError(f"Dense needs a 2-D matrix (m, d), got shape {mat.shape}")
            if not np.issubdtype(mat.dtype, np.number) or np.iscomplexobj(mat):
                raise TypeError(f"Dense needs a real matrix, got dtype {mat.dtype}")
            if not np.all(np.isfinite(mat)):
                raise ValueError("Dense matrix contains NaN or inf")
            mat = jnp.asarray(mat if np.issubdtype(mat.dtype, np.floating) else mat.astype(np.float32))
        m, d = mat.shape
        u, s, vt = jnp.linalg.svd(mat, full_matrices=True)
        rcond = self.rcond if self.rcond is not None else max(m, d) * float(jnp.finfo(mat.dtype).eps)
        s = jnp.where(s > rcond * jnp.max(s, initial=0.0), s, 0.0)
        object.__setattr__(self, "matrix", mat)
        object.__setattr__(self, "u", u)
        object.__setattr__(self, "s", s)
        object.__setattr__(self, "vt", vt)

    @property
    def m(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def d(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def k(self) -> int:
        return min(self.m, self.d)

    # ---- shapes ------------------------------------------------------------------------
    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(x_shape) != (self.d,):
            raise ValueError(f"Dense with a ({self.m}, {self.d}) matrix takes inputs of shape "
                             f"({self.d},), got x with trailing shape {tuple(x_shape)}")
        return (self.m,)

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(y_shape) != (self.m,):
            raise ValueError(f"Dense with a ({self.m}, {self.d}) matrix gives measurements of shape "
                             f"({self.m},), got y with trailing shape {tuple(y_shape)}")
        return (self.d,)

    def _check(self, v: Array, n: int, what: str) -> None:
        if v.ndim != 2 or v.shape[-1] != n:
            raise ValueError(f"Dense with a ({self.m}, {self.d}) matrix expects {what} of shape "
                             f"(B, {n}), got {tuple(v.shape)}")

    # ---- the map -----------------------------------------------------------------------
    def A(self, x: Array) -> Array:
        self._check(x, self.d, "x")
        return x @ self.matrix.T.astype(x.dtype)

    def AT(self, y: Array) -> Array:
        self._check(y, self.m, "y")
        return y @ self.matrix.astype(y.dtype)

    # ---- spectral maps (spectral shape (d,)) -------------------------------------------
    def Vt(self, x: Array) -> Array:
        self._check(x, self.d, "x")
        return x @ self.vt.T.astype(x.dtype)

    def V(self, xbar: Array) -> Array:
        return xbar @ self.vt.astype(xbar.dtype)

    def Ut(self, y: Array) -> Array:
        self._check(y, self.m, "y")
        ybar = y @ self.u[:, : self.k].astype(y.dtype)
        return jnp.pad(ybar, ((0, 0), (0, self.d - self.k)))

    def U(self, ybar: Array) -> Array:
        return ybar[:, : self.k] @ self.u[:, : self.k].T.astype(ybar.dtype)

    def singulars(self) -> Array:
        return jnp.pad(self.s, (0, self.d - self.k))

    # ---- closed forms through the thin factors: O(m·d) per sample instead of O(d²) -----
    # V w for w supported on the observed spectral coordinates is Aᵀ U (w / s), so pinv, prox
    # and Aᵀ(r² A Aᵀ + σ² I)⁻¹ never apply the full d×d V (d = 800 in the GMM benchmark).
    def _range_V(self, w: Array) -> Array:
        s = self.singulars().astype(w.dtype)
        return self.AT(self.U(jnp.where(s > 0, w / jnp.where(s > 0, s, 1.0), 0.0)))

    def pinv(self, y: Array) -> Array:
        s = self.singulars().astype(y.dtype)
        return self._range_V(jnp.where(s > 0, self.Ut(y) / jnp.where(s > 0, s, 1.0), 0.0))

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        s = self.singulars().astype(z.dtype)
        denom = s * s + _per_sample(rho, z)
        step = s * (self.Ut(y) - self.Ut(self.A(z))) / jnp.where(denom > 0, denom, 1.0)
        return z + self._range_V(jnp.where(s > 0, step, 0.0))

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        s = self.singulars().astype(y.dtype)
        ybar = self.Ut(y)
        denom = _per_sample(r2, ybar) * s * s + _per_sample(s2, ybar)
        return self._range_V(jnp.where(s > 0, s * ybar / jnp.where(denom > 0, denom, 1.0), 0.0))
