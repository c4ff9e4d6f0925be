"""The operator contract — A, AT, pinv, prox — and its reusable tiers.

Every operator acts on batched arrays: ``x`` has shape (B, *x_shape) and ``y = A(x)`` shape
(B, *y_shape). Operators are PyTrees (flax.struct): masks and matrices are array leaves
(a new mask never recompiles), shapes and factors are static fields.

Tiers (subclass the one that fits; a new degradation is one file):

* :class:`LinearOperator` / :class:`MatrixFree` — write only ``A`` (and ``in_shape``);
  ``AT`` comes from ``jax.linear_transpose``, ``pinv`` and ``prox`` from conjugate gradients
  (relative tolerance ``CG_TOL``, at most ``CG_MAXITER`` iterations; both documented below).
* :class:`PartialIsometry` — A Aᵀ A = c A: closed-form ``pinv = Aᵀ / c`` and ``prox``.
* :class:`SVDOperator` — A = U diag(s) Vᵀ: closed-form ``pinv``, ``prox`` and
  Aᵀ (r² A Aᵀ + σ² I)⁻¹, the spectral maps DDRM needs.
* :class:`Separable` — images mapped channel by channel as X ↦ M_h X M_wᵀ: its SVD is the
  Kronecker product of the two 1-D SVDs (DDRM's ``SRConv`` and ``Deblurring``).

Structure hooks. Operators declare what they know about themselves through optional methods
that :func:`compose` reads: :meth:`LinearOperator.coisometry_c` (A Aᵀ = c I),
:meth:`~LinearOperator.partial_isometry_c` (A Aᵀ A = c A), :meth:`~LinearOperator.composed_c`
(a rule for ``self ∘ inner``), :meth:`~LinearOperator.separable_factors` (the 1-D matrices M_h,
M_w), :meth:`~LinearOperator.input_shape` and :meth:`~LinearOperator.bind` (operators whose
singular values depend on the image size learn it there; :func:`invdiff.solve` binds every
operator to the shape of its inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

#: Conjugate gradients stop when every sample's residual is below CG_TOL · ||b|| …
CG_TOL = 1e-6
#: … or after CG_MAXITER iterations (float32 rarely improves past ~1e-6 relative).
CG_MAXITER = 256


def _bdot(a: Array, b: Array) -> Array:
    """Per-sample inner products: sums over every axis but the first (the batch)."""
    return jnp.sum(a * b, axis=tuple(range(1, a.ndim)))


def _per_sample(v: Array, like: Array) -> Array:
    """Reshape a scalar or a (B,) array so it broadcasts against ``like`` of shape (B, ...)."""
    v = jnp.asarray(v, dtype=like.dtype)
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)) if v.ndim else v


def cg(matvec: Callable[[Array], Array], b: Array, x0: Array | None = None,
       tol: float = CG_TOL, maxiter: int = CG_MAXITER) -> Array:
    """Batched conjugate gradients for a symmetric positive (semi-)definite ``matvec``.

    Every sample of the batch (first axis) is an independent system; the loop stops when all
    residuals are below ``tol · ||b||`` or after ``maxiter`` iterations. On a consistent
    singular system started at 0 it returns the minimum-norm solution.
    """
    x = jnp.zeros_like(b) if x0 is None else x0
    r = b - matvec(x)
    p = r
    rs = _bdot(r, r)
    thresh = (tol**2) * jnp.maximum(_bdot(b, b), jnp.finfo(b.dtype).tiny)

    def cond(state):
        i, _, _, _, rs = state
        return (i < maxiter) & jnp.any(rs > thresh)

    def body(state):
        i, x, r, p, rs = state
        ap = matvec(p)
        pap = _bdot(p, ap)
        active = rs > thresh
        alpha = jnp.where(active & (pap > 0), rs / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = x + _per_sample(alpha, x) * p
        r = r - _per_sample(alpha, r) * ap
        rs_new = _bdot(r, r)
        beta = jnp.where(active, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
        p = r + _per_sample(beta, p) * p
        return i + 1, x, r, p, jnp.where(active, rs_new, 0.0)

    _, x, _, _, _ = jax.lax.while_loop(cond, body, (0, x, r, p, rs))
    return x


class LinearOperator(struct.PyTreeNode):
    """A linear map acting on the trailing dimensions of a batch.

    Subclasses implement :meth:`A`, :meth:`y_shape` and :meth:`x_shape`; everything else has a
    generic default (conjugate gradients) that the tiers below replace with closed forms.
    """

    def A(self, x: Array) -> Array:
        """Forward map: x of shape (B, *x_shape) -> y of shape (B, *y_shape)."""
        raise NotImplementedError

    def AT(self, y: Array) -> Array:
        """Adjoint: <A x, y> == <x, Aᵀ y>. Default: ``jax.linear_transpose`` of :meth:`A`."""
        x_struct = jax.ShapeDtypeStruct((y.shape[0],) + self.x_shape(y.shape[1:]), y.dtype)
        (x,) = jax.linear_transpose(self.A, x_struct)(y)
        return x

    def pinv(self, y: Array) -> Array:
        """Moore–Penrose pseudo-inverse A⁺ y. Default: CG on Aᵀ A x = Aᵀ y from 0 (minimum norm)."""
        aty = self.AT(y)
        return cg(lambda v: self.AT(self.A(v)), aty)

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        """argmin_x ||y - A x||² + ρ ||x - z||² (ρ a scalar or one per sample).

        At ρ = 0 this is the point of {x : A x = y} (least squares if inconsistent) nearest z.
        Default: z + CG solution of (Aᵀ A + ρ I) d = Aᵀ (y - A z).
        """
        rho_b = _per_sample(rho, z)
        rhs = self.AT(y - self.A(z))
        return z + cg(lambda v: self.AT(self.A(v)) + rho_b * v, rhs)

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        """Aᵀ (r² A Aᵀ + σ² I)⁻¹ y, on the range of A (PiGDM's noise-aware guidance vector).

        With σ² = 0 this is A⁺ y / r². Default: z solving (r² Aᵀ A + σ² I) z = Aᵀ y by CG,
        which equals the expression above (push-through identity) and needs no y-space solve.
        """
        aty = self.AT(y)
        r2_b = _per_sample(r2, aty)
        s2_b = _per_sample(s2, aty)
        return cg(lambda v: r2_b * self.AT(self.A(v)) + s2_b * v, aty)

    # ---- shapes (trailing dimensions, no batch) ----------------------------------------
    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one measurement for one input of ``x_shape``; raises ValueError if invalid."""
        raise NotImplementedError

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one input for one measurement of ``y_shape``; raises ValueError if invalid."""
        raise NotImplementedError

    def check_batch(self, batch: int) -> None:
        """Raise ValueError when per-sample leaves (e.g. masks) do not fit a batch of ``batch``."""

    # ---- structure hooks (read by compose; every one is optional) -----------------------
    def coisometry_c(self) -> float | None:
        """c when A Aᵀ = c I is known statically (orthogonal rows of equal norm), else None."""
        return None

    def partial_isometry_c(self) -> float | None:
        """c when A Aᵀ A = c A is known statically, else None (default: :meth:`coisometry_c`)."""
        return self.coisometry_c()

    def composed_c(self, inner: LinearOperator) -> float | None:
        """c of ``self ∘ inner`` as a partial isometry when this operator has a rule for
        ``inner`` that the generic ones miss (e.g. the channel mean after a channel-shared
        mask), else None."""
        return None

    def separable_factors(self, x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """(M_h, M_w), float64, when A maps every channel of an (H, W, C) input ``x_shape`` as
        X ↦ M_h X M_wᵀ (the same matrices for every channel and every sample), else None.
        Needs concrete (not traced) parameters."""
        return None

    def input_shape(self) -> tuple[int, ...] | None:
        """One input's shape when the operator fixes it, else None."""
        return None

    def bind(self, x_shape: tuple[int, ...]) -> LinearOperator:
        """This operator for inputs of trailing shape ``x_shape``.

        Operators whose singular values depend on the image size (``Blur``,
        ``BicubicDownsampling``, compositions) record it here, so that :meth:`SVDOperator.singulars`
        can be evaluated; :func:`invdiff.solve` and ``check_operator`` call it. The default
        returns the operator itself.
        """
        return self

    # ---- composition -------------------------------------------------------------------
    def __matmul__(self, inner: LinearOperator) -> LinearOperator:
        """``outer @ inner`` applies ``inner`` first: the same as ``compose(outer, inner)``."""
        return compose(self, inner)

    @property
    def has_svd(self) -> bool:
        return isinstance(self, SVDOperator)


class MatrixFree(LinearOperator):
    """Write only :meth:`A` and give ``in_shape`` (one input's shape, no batch).

    ``AT`` is ``jax.linear_transpose`` of ``A``; ``pinv``, ``prox`` and ``AT_gram_inv`` use
    conjugate gradients (see ``CG_TOL``, ``CG_MAXITER``). ``A`` must be linear in x and act on
    a batch (B, *in_shape).
    """

    in_shape: tuple[int, ...] = struct.field(pytree_node=False, kw_only=True)

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(x_shape) != tuple(self.in_shape):
            raise ValueError(f"{type(self).__name__} takes inputs of shape {tuple(self.in_shape)}, "
                             f"got {tuple(x_shape)}")
        out = jax.eval_shape(self.A, jax.ShapeDtypeStruct((1,) + tuple(self.in_shape), jnp.float32))
        return tuple(out.shape[1:])

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        expected = self.y_shape(self.in_shape)
        if tuple(y_shape) != expected:
            raise ValueError(f"{type(self).__name__} gives measurements of shape {expected}, "
                             f"got y with trailing shape {tuple(y_shape)}")
        return tuple(self.in_shape)


class LinearFunction(MatrixFree):
    """A matrix-free operator from a function: ``LinearFunction(fn, in_shape=(H, W, C))``."""

    fn: Callable[[Array], Array] = struct.field(pytree_node=False, kw_only=True)

    def __init__(self, fn: Callable[[Array], Array], in_shape: tuple[int, ...]):
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "in_shape", tuple(in_shape))

    def A(self, x: Array) -> Array:
        return self.fn(x)


class PartialIsometry(LinearOperator):
    """Operators with A Aᵀ A = c A: closed forms from ``A``, ``AT`` and the constant :meth:`c`.

    pinv y = Aᵀ y / c; prox(z, y, ρ) = z + Aᵀ (y - A z) / (c + ρ);
    Aᵀ (r² A Aᵀ + σ² I)⁻¹ y = Aᵀ y / (r² c + σ²).
    """

    def c(self) -> Array | float:
        """The constant c of A Aᵀ A = c A."""
        raise NotImplementedError

    def partial_isometry_c(self) -> float | None:
        try:
            return float(self.c())
        except (NotImplementedError, TypeError, jax.errors.ConcretizationTypeError):
            return None

    def pinv(self, y: Array) -> Array:
        return self.AT(y) / self.c()

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        return z + self.AT(y - self.A(z)) / (self.c() + _per_sample(rho, z))

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        aty = self.AT(y)
        return aty / (_per_sample(r2, aty) * self.c() + _per_sample(s2, aty))


class SVDOperator(LinearOperator):
    """A = U diag(s) Vᵀ, given as spectral maps. The spectral space has one input's shape.

    Subclasses implement :meth:`Vt` (x -> x̄), :meth:`V`, :meth:`Ut` (y -> ȳ, zero-padded to
    the spectral shape), :meth:`U` (the adjoint of :meth:`Ut`) and :meth:`singulars` (s,
    broadcastable to x̄, zero where A has no singular value).
    """

    def Vt(self, x: Array) -> Array:
        raise NotImplementedError

    def V(self, xbar: Array) -> Array:
        raise NotImplementedError

    def Ut(self, y: Array) -> Array:
        raise NotImplementedError

    def U(self, ybar: Array) -> Array:
        raise NotImplementedError

    def singulars(self) -> Array:
        raise NotImplementedError

    def A(self, x: Array) -> Array:
        return self.U(self.singulars() * self.Vt(x))

    def AT(self, y: Array) -> Array:
        return self.V(self.singulars() * self.Ut(y))

    def pinv(self, y: Array) -> Array:
        s = self.singulars()
        return self.V(jnp.where(s > 0, self.Ut(y) / jnp.where(s > 0, s, 1.0), 0.0))

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        s = self.singulars()
        zbar = self.Vt(z)
        rho_b = _per_sample(rho, zbar)
        denom = s * s + rho_b
        step = jnp.where(s > 0, s * (self.Ut(y) - s * zbar) / jnp.where(denom > 0, denom, 1.0), 0.0)
        return self.V(zbar + step)

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        s = self.singulars()
        ybar = self.Ut(y)
        denom = _per_sample(r2, ybar) * s * s + _per_sample(s2, ybar)
        return self.V(jnp.where(s > 0, s * ybar / jnp.where(denom > 0, denom, 1.0), 0.0))


def _concrete(v) -> bool:
    """True for a concrete array (not a tracer, not a placeholder leaf from a tree map)."""
    return isinstance(v, (np.ndarray, jax.Array, list, tuple)) and not isinstance(v, jax.core.Tracer)


class Separable(SVDOperator):
    """``Separable(mh, mw)``: (B, H, W, C) -> (B, h, w, C), Y = M_h X M_wᵀ for every channel.

    ``mh`` (h, H) acts along the rows and ``mw`` (w, W) along the columns of every channel and
    sample (DDRM's ``SRConv`` and ``Deblurring``, Kawar et al. 2022, App. B). The SVD is the
    Kronecker product of the two 1-D SVDs M = U diag(s) Vᵀ, computed once at construction in
    float64 (``uh``, ``sh``, ``vh``, ``uw``, ``sw``, ``vw``, with ``vh`` and ``vw`` the full
    square V): the spectral space is (H, W, C), x̄ = V_hᵀ X V_w, and the singular values
    s_h,i · s_w,j lie on (H, W, 1), zero beyond min(h, H) x min(w, W). Products at or below
    ``rcond · max`` count as 0 (default rcond = max(h, H, w, W) · eps(float32), numpy's
    matrix-rank cutoff). Cost per channel: O(h H W + h w W) for A and Aᵀ, O(H² W + H W²) for
    the spectral maps and so for A⁺, prox and the gram inverse.
    """

    mh: Array
    mw: Array
    uh: Array | None = None
    sh: Array | None = None
    vh: Array | None = None
    uw: Array | None = None
    sw: Array | None = None
    vw: Array | None = None
    rcond: float | None = struct.field(pytree_node=False, default=None, kw_only=True)

    def __post_init__(self):
        if self.uh is not None or not (_concrete(self.mh) or isinstance(self.mh, jax.core.Tracer)):
            return  # rebuilt by JAX (jit, tree.map) or the SVD was given
        factors = {}
        for axis, m in (("h", self.mh), ("w", self.mw)):
            if isinstance(m, jax.core.Tracer):
                m = m.astype(jnp.float32)
                u, sv, vt = jnp.linalg.svd(m, full_matrices=True)
            else:
                m = np.asarray(m, np.float64)
                if m.ndim != 2 or not np.all(np.isfinite(m)):
                    raise ValueError(f"Separable needs finite 2-D matrices, got m{axis} of shape {m.shape}")
                u, sv, vt = np.linalg.svd(m, full_matrices=True)
                # numpy leaves: constants where the operator is built inside a trace (BicubicDownsampling)
                m, u, sv, vt = (np.asarray(a, np.float32) for a in (m, u, sv, vt))
            factors.update({f"m{axis}": m, f"u{axis}": u, f"s{axis}": sv, f"v{axis}": vt.T})
        for name, value in factors.items():
            object.__setattr__(self, name, value)

    # ---- shapes ------------------------------------------------------------------------
    def _sizes(self) -> tuple[int, int, int, int]:
        """(h, H, w, W)."""
        return (*self.mh.shape, *self.mw.shape)

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, hh, w, ww = self._sizes()
        if len(x_shape) != 3 or tuple(x_shape[:2]) != (hh, ww):
            raise ValueError(f"{type(self).__name__} takes images (H, W, C) = ({hh}, {ww}, C), got trailing "
                             f"shape {tuple(x_shape)}")
        return (h, w, x_shape[2])

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, hh, w, ww = self._sizes()
        if len(y_shape) != 3 or tuple(y_shape[:2]) != (h, w):
            raise ValueError(f"{type(self).__name__} gives measurements (h, w, C) = ({h}, {w}, C), got y with "
                             f"trailing shape {tuple(y_shape)}")
        return (hh, ww, y_shape[2])

    def separable_factors(self, x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        self.y_shape(tuple(x_shape))
        if not (_concrete(self.mh) and _concrete(self.mw)):
            return None
        return np.asarray(self.mh, np.float64), np.asarray(self.mw, np.float64)

    # ---- the map -----------------------------------------------------------------------
    def A(self, x: Array) -> Array:
        self.y_shape(tuple(x.shape[1:]))
        return jnp.einsum("kj,bijc->bikc", self.mw.astype(x.dtype),
                          jnp.einsum("ia,bajc->bijc", self.mh.astype(x.dtype), x))

    def AT(self, y: Array) -> Array:
        self.x_shape(tuple(y.shape[1:]))
        return jnp.einsum("kj,bakc->bajc", self.mw.astype(y.dtype),
                          jnp.einsum("ia,bikc->bakc", self.mh.astype(y.dtype), y))

    # ---- the SVD view (spectral shape (H, W, C)) ---------------------------------------
    def _k(self) -> tuple[int, int]:
        h, hh, w, ww = self._sizes()
        return min(h, hh), min(w, ww)

    def Vt(self, x: Array) -> Array:
        self.y_shape(tuple(x.shape[1:]))
        return jnp.einsum("jq,bpjc->bpqc", self.vw.astype(x.dtype),
                          jnp.einsum("ap,bajc->bpjc", self.vh.astype(x.dtype), x))

    def V(self, xbar: Array) -> Array:
        return jnp.einsum("jq,bpqc->bpjc", self.vw.astype(xbar.dtype),
                          jnp.einsum("ap,bpqc->baqc", self.vh.astype(xbar.dtype), xbar))

    def Ut(self, y: Array) -> Array:
        self.x_shape(tuple(y.shape[1:]))
        (kh, kw), (_, hh, _, ww) = self._k(), self._sizes()
        ybar = jnp.einsum("kq,bpkc->bpqc", self.uw[:, :kw].astype(y.dtype),
                          jnp.einsum("ip,bikc->bpkc", self.uh[:, :kh].astype(y.dtype), y))
        return jnp.pad(ybar, ((0, 0), (0, hh - kh), (0, ww - kw), (0, 0)))

    def U(self, ybar: Array) -> Array:
        kh, kw = self._k()
        ybar = ybar[:, :kh, :kw]
        return jnp.einsum("kq,bpqc->bpkc", self.uw[:, :kw].astype(ybar.dtype),
                          jnp.einsum("ip,bpqc->biqc", self.uh[:, :kh].astype(ybar.dtype), ybar))

    def singulars(self) -> Array:
        (kh, kw), (h, hh, w, ww) = self._k(), self._sizes()
        s = jnp.outer(jnp.pad(self.sh[:kh], (0, hh - kh)), jnp.pad(self.sw[:kw], (0, ww - kw)))
        rcond = self.rcond if self.rcond is not None else max(h, hh, w, ww) * float(jnp.finfo(jnp.float32).eps)
        return jnp.where(s > rcond * jnp.max(s), s, 0.0)[:, :, None]


class Composed(LinearOperator):
    """``outer ∘ inner``: A = A_outer A_inner, Aᵀ = A_innerᵀ A_outerᵀ. Build it with :func:`compose`.

    ``pinv``, ``prox`` and ``AT_gram_inv`` use conjugate gradients unless ``c_value`` is set:
    then the composition is a partial isometry (A Aᵀ A = c A) and the closed forms are used.
    ``invdiff.testing.check_operator`` verifies such a declaration.
    """

    outer: LinearOperator
    inner: LinearOperator
    c_value: float | None = struct.field(pytree_node=False, default=None)

    def A(self, x: Array) -> Array:
        return self.outer.A(self.inner.A(x))

    def AT(self, y: Array) -> Array:
        return self.inner.AT(self.outer.AT(y))

    def c(self) -> float:
        if self.c_value is None:
            raise ValueError("this composition was not declared a partial isometry")
        return self.c_value

    def pinv(self, y: Array) -> Array:
        return PartialIsometry.pinv(self, y) if self.c_value is not None else super().pinv(y)

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        if self.c_value is not None:
            return PartialIsometry.prox(self, z, y, rho)
        return super().prox(z, y, rho)

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        if self.c_value is not None:
            return PartialIsometry.AT_gram_inv(self, y, r2, s2)
        return super().AT_gram_inv(y, r2, s2)

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.outer.y_shape(self.inner.y_shape(x_shape))

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.inner.x_shape(self.outer.x_shape(y_shape))

    def check_batch(self, batch: int) -> None:
        self.outer.check_batch(batch)
        self.inner.check_batch(batch)

    # ---- structure ---------------------------------------------------------------------
    def coisometry_c(self) -> float | None:
        c_out, c_in = self.outer.coisometry_c(), self.inner.coisometry_c()
        return None if c_out is None or c_in is None else c_out * c_in

    def partial_isometry_c(self) -> float | None:
        return self.c_value

    def separable_factors(self, x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        f_in = self.inner.separable_factors(tuple(x_shape))
        f_out = None if f_in is None else self.outer.separable_factors(self.inner.y_shape(tuple(x_shape)))
        return None if f_out is None else (f_out[0] @ f_in[0], f_out[1] @ f_in[1])

    def input_shape(self) -> tuple[int, ...] | None:
        return self.inner.input_shape()

    def bind(self, x_shape: tuple[int, ...]) -> LinearOperator:
        return compose(self.outer, self.inner, c=self.c_value, x_shape=tuple(x_shape))


class ComposedSVD(Composed, SVDOperator):
    """A composition whose SVD :func:`compose` found: ``svd`` is an SVD operator equal to
    ``outer ∘ inner`` (today a :class:`Separable`, for separable maps such as a Gaussian blur
    followed by a downsampling). A, Aᵀ and the spectral maps come from ``svd`` (so that they agree
    to float32 round-off); pinv, prox and the gram inverse use ``c_value`` when the composition
    is also a partial isometry, else the SVD closed forms."""

    svd: SVDOperator | None = None

    def A(self, x: Array) -> Array:
        return self.svd.A(x)

    def AT(self, y: Array) -> Array:
        return self.svd.AT(y)

    def Vt(self, x: Array) -> Array:
        return self.svd.Vt(x)

    def V(self, xbar: Array) -> Array:
        return self.svd.V(xbar)

    def Ut(self, y: Array) -> Array:
        return self.svd.Ut(y)

    def U(self, ybar: Array) -> Array:
        return self.svd.U(ybar)

    def singulars(self) -> Array:
        return self.svd.singulars()

    def bind(self, x_shape: tuple[int, ...]) -> LinearOperator:
        try:
            self.svd.y_shape(tuple(x_shape))
            return self
        except ValueError:
            return super().bind(x_shape)


def _derived_c(outer: LinearOperator, inner: LinearOperator) -> float | None:
    """The c of outer ∘ inner as a partial isometry when a short argument proves it.

    A₁ A₁ᵀ = c₁ I (inner) and A₂ A₂ᵀ A₂ = c₂ A₂ (outer) give A Aᵀ A = c₁ A₂ A₂ᵀ A₂ A₁ = c₁ c₂ A;
    otherwise the outer operator's own rule for this inner one (:meth:`LinearOperator.composed_c`).
    """
    c_in, c_out = inner.coisometry_c(), outer.partial_isometry_c()
    if c_in is not None and c_out is not None:
        return c_in * c_out
    return outer.composed_c(inner)


def _separable_svd(outer: LinearOperator, inner: LinearOperator,
                   x_shape: tuple[int, ...] | None) -> Separable | None:
    """The Kronecker SVD of outer ∘ inner when both declare 1-D factors for images of x_shape."""
    if x_shape is None or len(x_shape) != 3:
        return None
    try:
        f_in = inner.separable_factors(x_shape)
        f_out = None if f_in is None else outer.separable_factors(inner.y_shape(x_shape))
    except (ValueError, TypeError, jax.errors.ConcretizationTypeError):
        return None
    if f_out is None:
        return None
    return Separable(f_out[0] @ f_in[0], f_out[1] @ f_in[1])


def compose(*ops: LinearOperator, c: float | None = None,
            x_shape: tuple[int, ...] | None = None) -> LinearOperator:
    """The composition A = ops[0] ∘ ops[1] ∘ … : ``compose(A3, A2, A1)`` applies A1 first.

    The result is a :class:`Composed` (conjugate gradients for A⁺, prox and the gram inverse)
    unless the operators' structure hooks give a closed form:

    * a partial isometry, A Aᵀ A = c A: from A₁ A₁ᵀ = c₁ I and A₂ A₂ᵀ A₂ = c₂ A₂ (c = c₁ c₂;
      e.g. inpainting the grey or the low-resolution image), or from an operator's own rule
      (``composed_c``: the channel mean after a channel-shared mask, two masks);
    * an SVD (a :class:`ComposedSVD`): when every operator declares 1-D factors along H and W
      (``separable_factors``: average pooling, bicubic downsampling, circular blurs with a
      separable kernel such as the Gaussian and uniform ones), the composition is a
      :class:`Separable` whose SVD is a Kronecker product of 1-D SVDs, so DDRM runs on blur
      followed by downsampling. This needs the image shape: ``x_shape`` (H, W, C), or the first
      operator's own (``input_shape``), or later :meth:`LinearOperator.bind` (which
      :func:`invdiff.solve` calls).

    Non-separable combinations (e.g. a motion blur followed by downsampling) stay on conjugate
    gradients, and DDRM, which needs an SVD, refuses them with a clear error. Pass ``c`` to
    declare A Aᵀ A = c A yourself (``invdiff.testing.check_operator`` checks it).
    """
    if not ops:
        raise ValueError("compose needs at least one operator")
    for op in ops:
        if not isinstance(op, LinearOperator):
            raise TypeError(f"compose takes invdiff LinearOperators, got {type(op).__name__}")
    if len(ops) == 1:
        if c is not None:
            raise ValueError("c= only applies to a composition of two or more operators")
        return ops[0] if x_shape is None else ops[0].bind(tuple(x_shape))
    out = ops[-1]
    shape = tuple(x_shape) if x_shape is not None else out.input_shape()
    for i, outer in enumerate(reversed(ops[:-1])):
        inner = out
        if shape is not None:
            inner = inner.bind(shape)
            outer = outer.bind(inner.y_shape(shape))
        c_pair = c if i == len(ops) - 2 and c is not None else _derived_c(outer, inner)
        svd = _separable_svd(outer, inner, shape)
        if svd is not None:
            out = ComposedSVD(outer=outer, inner=inner, c_value=c_pair, svd=svd)
        else:
            out = Composed(outer=outer, inner=inner, c_value=c_pair)
    return out
