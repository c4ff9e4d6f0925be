"""``compose`` that recognises compositions which stay partial isometries.

``invdiff.operator.compose`` falls back to conjugate gradients unless told ``c=``. This
version derives ``c`` where a short argument proves A Aᵀ A = c A for A = A₂ A₁
(A₁ applied first):

1. A₁ A₁ᵀ = c₁ I (Colorization: 1/3, Downsampling(f): 1/f², or a composition of such) and
   A₂ a partial isometry with c₂: A Aᵀ A = c₁ A₂ A₂ᵀ A₂ A₁ = c₁ c₂ A. Examples: inpainting of
   the grey image after colorization (c = 1/3), inpainting of the low-resolution image,
   colorization after downsampling and vice versa.
2. A₁ = diag(m) an inpainting mask shared across channels and A₂ = Colorization:
   A₂ᵀ A₂ = P/3 with P the per-pixel channel-averaging projector, which commutes with diag(m),
   so A Aᵀ A = A₂ m A₂ᵀ A₂ m = A₂ (P/3) m m = A/3 (c = 1/3).
3. Two inpainting masks: commuting orthogonal projections, their product is one (c = 1).

Anything else (e.g. Downsampling after Inpainting with a random mask) keeps the CG
pseudo-inverse and prox of :class:`invdiff.operator.Composed`. ``c=`` still overrides.
"""

from __future__ import annotations

import numpy as np

from invdiff.operator import Composed, LinearOperator, PartialIsometry
from invdiff.operator import compose as _core_compose
from operators.colorization import Colorization
from operators.downsampling import Downsampling
from operators.inpainting import Inpainting, _concrete


def coisometry_c(op: LinearOperator) -> float | None:
    """c when A Aᵀ = c I is known statically, else None."""
    if isinstance(op, Colorization):
        return 1.0 / 3.0
    if isinstance(op, Downsampling):
        return 1.0 / op.factor**2
    if isinstance(op, Composed):
        c_out, c_in = coisometry_c(op.outer), coisometry_c(op.inner)
        if c_out is not None and c_in is not None:
            return c_out * c_in
    return None


def partial_isometry_c(op: LinearOperator) -> float | None:
    """c when A Aᵀ A = c A is known statically, else None."""
    if isinstance(op, Composed):
        return op.c_value
    if isinstance(op, PartialIsometry):
        return float(op.c())
    return None


def _mask_shared_across_channels(op: Inpainting) -> bool:
    m = op.mask
    if op.broadcast_channels is True or m.ndim == 2 or m.shape[-1] == 1:
        return True
    if _concrete(m) and m.shape[-1] == 3:
        m = np.asarray(m)
        return bool(np.all(m == m[..., :1]))
    return False


def composed_c(outer: LinearOperator, inner: LinearOperator) -> float | None:
    """The c of outer ∘ inner as a partial isometry, when one of the rules above proves it."""
    c_in = coisometry_c(inner)
    c_out = partial_isometry_c(outer)
    if c_in is not None and c_out is not None:
        return c_in * c_out
    if isinstance(outer, Colorization) and isinstance(inner, Inpainting):
        return 1.0 / 3.0 if _mask_shared_across_channels(inner) else None
    if isinstance(outer, Inpainting) and isinstance(inner, Inpainting):
        return 1.0
    return None


def compose(*ops: LinearOperator, c: float | None = None) -> LinearOperator:
    """``compose(A3, A2, A1)`` applies A1 first; derives c for the known partial isometries.

    Pass ``c`` to declare A Aᵀ A = c A yourself (``invdiff.testing.check_operator`` checks it).
    """
    if c is not None or len(ops) < 2:
        return _core_compose(*ops, c=c)
    out = ops[-1]
    for op in reversed(ops[:-1]):
        out = Composed(outer=op, inner=out, c_value=composed_c(op, out))
    return out
