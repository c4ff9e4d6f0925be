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
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
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
        r2_b = _per_sample(r2, y)
        s2_b = _per_sample(s2, y)
        aty = self.AT(y)
        x = cg(lambda v: r2_b * self.AT(self.A(v)) + s2_b * v, aty)
        return x

    # ---- shapes (trailing dimensions, no batch) ----------------------------------------
    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one measurement for one input of ``x_shape``; raises ValueError if invalid."""
        raise NotImplementedError

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one input for one measurement of ``y_shape``; raises ValueError if invalid."""
        raise NotImplementedError

    def check_batch(self, batch: int) -> None:
        """Raise ValueError when per-sample leaves (e.g. masks) do not fit a batch of ``batch``."""

    # ---- composition -------------------------------------------------------------------
    def __matmul__(self, inner: LinearOperator) -> LinearOperator:
        """``outer @ inner`` applies ``inner`` first (see :class:`Composed`)."""
        return Composed(outer=self, inner=inner)

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

    def pinv(self, y: Array) -> Array:
        return self.AT(y) / self.c()

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        return z + self.AT(y - self.A(z)) / (self.c() + _per_sample(rho, z))

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        return self.AT(y) / (_per_sample(r2, y) * self.c() + _per_sample(s2, y))


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


class Composed(LinearOperator):
    """``outer ∘ inner``: A = A_outer A_inner, Aᵀ = A_innerᵀ A_outerᵀ.

    ``pinv`` and ``prox`` use conjugate gradients, unless ``c`` is given: then the composition
    is declared a partial isometry (A Aᵀ A = c A) and the closed forms are used.
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


def compose(*ops: LinearOperator, c: float | None = None) -> LinearOperator:
    """``compose(A3, A2, A1)`` applies A1 first. Pass ``c`` to declare A Aᵀ A = c A."""
    if not ops:
        raise ValueError("compose needs at least one operator")
    out = ops[-1]
    for op in reversed(ops[:-1]):
        out = Composed(outer=op, inner=out)
    if c is not None:
        if not isinstance(out, Composed):
            raise ValueError("c= only applies to a composition of two or more operators")
        out = out.replace(c_value=float(c))
    return out
