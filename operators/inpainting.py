"""Inpainting: y = m ⊙ x with a binary mask m (1 = observed).

A = diag(m) is an orthogonal projection, so it is a partial isometry with c = 1
(A Aᵀ A = A) and its own SVD with V = U = I and singular values m (RePaint, Lugmayr et al.
2022, eq. 8: x = m ⊙ x_known + (1 - m) ⊙ x_unknown; DDRM, Kawar et al. 2022, App. A).

Mask layouts (S is one input's shape, e.g. (H, W, C) for an image):

* ``(*S)`` — one mask shared by the batch;
* ``(B, *S)`` — one mask per sample (a new batch of masks of the same shape never recompiles);
* for inputs with at least two axes the mask may leave out the last (channel) axis or give
  it size 1: ``(H, W)`` or ``(H, W, 1)`` for ``(H, W, C)`` images, ``(B, H, W)`` or
  ``(B, H, W, 1)`` per sample. Such masks are broadcast over the channels.

The reading is chosen from x's shape in this order: ``S``, ``S[:-1] + (1,)``, ``S[:-1]``,
then the same three with a leading batch axis. ``broadcast_channels=True`` / ``False``
forces (or forbids) the reading that appends a channel axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff.operator import LinearOperator, PartialIsometry, SVDOperator, _concrete, _per_sample

Array = jax.Array


def validate_mask(mask) -> Array:
    """Check a concrete mask (finite, binary {0, 1}) and return it as float32."""
    m = np.asarray(mask)
    if m.dtype == bool or np.issubdtype(m.dtype, np.integer):
        m = m.astype(np.float32)
    if not np.issubdtype(m.dtype, np.floating):
        raise TypeError(f"mask must be a bool, integer or float array, got dtype {m.dtype}")
    if not np.all(np.isfinite(m)):
        raise ValueError("mask contains NaN or inf; it must hold only 0 (missing) and 1 (observed)")
    if not np.all((m == 0) | (m == 1)):
        bad = m[(m != 0) & (m != 1)]
        raise ValueError(
            f"mask must be binary (0 = missing, 1 = observed); found values such as {bad.flat[0]:g}. "
            "A soft mask is not a projection, so the closed forms pinv = Aᵀ and prox of the "
            "partial-isometry / SVD tiers would be wrong: threshold it, e.g. (mask > 0.5)."
        )
    return jnp.asarray(m, dtype=jnp.float32)


class Inpainting(SVDOperator, PartialIsometry):
    """``Inpainting(mask)``: y = mask * x, same shape as x, zeros where unobserved.

    Both a :class:`~invdiff.operator.PartialIsometry` (c = 1: pinv y = m ⊙ y,
    prox(z, y, ρ) = z + m ⊙ (y - z) / (1 + ρ)) and an :class:`~invdiff.operator.SVDOperator`
    (V = U = identity, singular values = the mask). A concrete mask is checked at construction
    (finite, binary); bool/int masks are cast to float32. See the module docstring for the
    accepted mask layouts.

    ``singulars()`` has no access to x's shape: it appends a channel axis to a 2-D mask
    (the ``(H, W)`` image reading) unless ``broadcast_channels=False`` is given. For one
    mask per sample of plain vectors, ``(B, d)``, pass ``broadcast_channels=False`` when the
    SVD view (DDRM) is used.
    """

    mask: Array
    broadcast_channels: bool | None = struct.field(pytree_node=False, default=None, kw_only=True)

    def __post_init__(self):
        # Also runs when JAX rebuilds the tree (jit, tree.map): validate only concrete arrays.
        if _concrete(self.mask):
            object.__setattr__(self, "mask", validate_mask(self.mask))

    # ---- layout ------------------------------------------------------------------------
    def _layout(self, xs: tuple[int, ...]) -> tuple[bool, bool]:
        """(append a channel axis to the mask?, one mask per sample?) for inputs of shape xs."""
        ms, xs = tuple(self.mask.shape), tuple(xs)
        cands = [((False, False), xs)]
        if len(xs) >= 2:
            cands += [((False, False), xs[:-1] + (1,)), ((True, False), xs[:-1])]
        cands += [((False, True), xs)]
        if len(xs) >= 2:
            cands += [((False, True), xs[:-1] + (1,)), ((True, True), xs[:-1])]
        for (expand, per_sample), shape in cands:
            if self.broadcast_channels is not None and expand != self.broadcast_channels:
                continue
            if (ms[1:] if per_sample else ms) == shape:
                return expand, per_sample
        hint = ""
        if self.broadcast_channels is not None:
            hint = f" (with broadcast_channels={self.broadcast_channels})"
        raise ValueError(
            f"mask has shape {ms} but the image is {xs}{hint}: give a mask of shape {xs}, "
            f"one per sample {('B',) + xs}"
            + (f", or {xs[:-1]} / {xs[:-1] + (1,)} broadcast over the last axis" if len(xs) >= 2 else "")
        )

    def _mask_for(self, v: Array) -> Array:
        expand, per_sample = self._layout(tuple(v.shape[1:]))
        m = self.mask[..., None] if expand else self.mask
        if per_sample and m.shape[0] not in (1, v.shape[0]):
            raise ValueError(f"the mask holds {m.shape[0]} per-sample masks but the batch has "
                             f"{v.shape[0]} samples; give one mask per sample or a shared mask")
        return m.astype(v.dtype)

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._layout(tuple(x_shape))
        return tuple(x_shape)

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._layout(tuple(y_shape))
        return tuple(y_shape)

    def check_batch(self, batch: int) -> None:
        """Per-sample masks must number ``batch`` (or 1). Decided from the mask alone: a mask
        with a leading batch axis is recognised here when it has 4 or more axes (NHWC images);
        other per-sample layouts are checked when A first sees x (still before compiling)."""
        m = self.mask
        if m.ndim >= 4 and m.shape[0] not in (1, batch):
            raise ValueError(f"the mask holds {m.shape[0]} per-sample masks (shape {tuple(m.shape)}) "
                             f"but the batch has {batch} samples")

    def per_sample_axes(self, x_shape: tuple[int, ...], batch: int):
        """``vmap`` in_axes prefix for this operator: 0 on a per-sample mask of ``batch`` masks."""
        _, per_sample = self._layout(tuple(x_shape))
        return self.replace(mask=0 if per_sample and self.mask.shape[0] == batch else None)

    # ---- the partial isometry (c = 1) --------------------------------------------------
    def c(self) -> float:
        return 1.0

    def composed_c(self, inner: LinearOperator) -> float | None:
        """Two masks are commuting orthogonal projections: their product is one (c = 1)."""
        return 1.0 if isinstance(inner, Inpainting) else None

    def shared_across_channels(self) -> bool:
        """True when the mask is known to be the same for every channel (a 2-D or 1-channel mask,
        or a concrete 3-channel mask whose channels agree)."""
        m = self.mask
        if self.broadcast_channels is True or m.ndim == 2 or m.shape[-1] == 1:
            return True
        if _concrete(m) and m.shape[-1] == 3:
            m = np.asarray(m)
            return bool(np.all(m == m[..., :1]))
        return False

    def A(self, x: Array) -> Array:
        return self._mask_for(x) * x

    def AT(self, y: Array) -> Array:
        return self._mask_for(y) * y

    def pinv(self, y: Array) -> Array:
        return self._mask_for(y) * y

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        m = self._mask_for(z)
        return z + m * (y - z) / (1.0 + _per_sample(rho, z))

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        return self._mask_for(y) * y / (_per_sample(r2, y) + _per_sample(s2, y))

    # ---- the SVD view (V = U = I) ------------------------------------------------------
    def Vt(self, x: Array) -> Array:
        return x

    def V(self, xbar: Array) -> Array:
        return xbar

    def Ut(self, y: Array) -> Array:
        return y

    def U(self, ybar: Array) -> Array:
        return ybar

    def singulars(self) -> Array:
        expand = self.mask.ndim == 2 if self.broadcast_channels is None else self.broadcast_channels
        return self.mask[..., None] if expand else self.mask
