"""Evaluation metrics: image quality (PSNR, SSIM), measurement consistency, known-region drift,
and the sliced Wasserstein distance between sample sets (the GMM posterior benchmark).

Every function is pure jnp and returns one value per sample (batch first) unless stated. Images
are NHWC in [-1, 1], so the default ``data_range`` is 2.0 (pass 1.0 for [0, 1] images, 255 for
8-bit ones).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _per_sample_mean(v: Array) -> Array:
    return jnp.mean(v.reshape(v.shape[0], -1), axis=1)


def _check_same_shape(x: Array, ref: Array, fn: str) -> tuple[Array, Array]:
    x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
    if x.shape != ref.shape:
        raise ValueError(f"{fn}: x and ref must have the same shape, got {x.shape} and {ref.shape}")
    if x.ndim < 2:
        raise ValueError(f"{fn}: expected a batch (B, ...), got shape {x.shape}")
    return x, ref


def psnr(x: Array, ref: Array, data_range: float = 2.0) -> Array:
    """Peak signal-to-noise ratio per sample, 10 log10(data_range² / MSE) in dB.

    ``x``, ``ref``: (B, ...); the MSE is over every non-batch axis. ``data_range`` is the
    width of the value range: 2.0 for [-1, 1] images. Identical images give +inf.
    """
    x, ref = _check_same_shape(x, ref, "psnr")
    mse = _per_sample_mean((x - ref) ** 2)
    return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def ssim(x: Array, ref: Array, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Array:
    """Structural similarity per sample (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004, eq. 13).

    Local statistics use an ``win_size`` x ``win_size`` Gaussian window of std ``sigma``
    (the paper's 11 x 11, σ = 1.5), computed over the fully-contained ("valid") windows as in
    the authors' reference implementation; C1 = (k1 L)², C2 = (k2 L)² with L = ``data_range``
    (2.0 for [-1, 1] images). The SSIM map is averaged over positions, then over channels.
    Images smaller than the window use the largest odd window that fits.
    ``x``, ``ref``: (B, H, W, C) or (B, H, W). Returns shape (B,); ssim(x, x) = 1.
    """
    x, ref = _check_same_shape(x, ref, "ssim")
    if x.ndim == 3:
        x, ref = x[..., None], ref[..., None]
    if x.ndim != 4:
        raise ValueError(f"ssim: expected images (B, H, W, C) or (B, H, W), got shape {x.shape}")
    b, h, w, c = x.shape
    size = min(win_size, h, w)
    size -= 1 - size % 2
    kernel = jnp.asarray(_gaussian_window(size, sigma), jnp.float32)[:, :, None, None]

    def filt(img: Array) -> Array:  # (B, H, W, C) -> (B, H', W', C), depthwise valid filter
        flat = jnp.moveaxis(img, -1, 1).reshape(b * c, h, w, 1)
        out = jax.lax.conv_general_dilated(flat, kernel, (1, 1), "VALID",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.moveaxis(out.reshape(b, c, out.shape[1], out.shape[2]), 1, -1)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = filt(x), filt(ref)
    sxx = filt(x * x) - mx * mx
    syy = filt(ref * ref) - my * my
    sxy = filt(x * ref) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return jnp.mean(smap, axis=(1, 2, 3))


def consistency(op: Any, x: Array, y: Array) -> Array:
    """Relative measurement residual ||A x − y|| / ||y|| per sample (0 when A x = y exactly).

    ``op``: an invdiff LinearOperator; x (B, *x_shape), y (B, *y_shape).
    """
    r = op.A(jnp.asarray(x, jnp.float32)) - jnp.asarray(y, jnp.float32)
    num = jnp.sqrt(jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1))
    den = jnp.sqrt(jnp.sum(jnp.asarray(y, jnp.float32).reshape(r.shape[0], -1) ** 2, axis=1))
    return num / den


def outside_mask_mse(x: Array, ref: Array, mask: Array) -> Array:
    """MSE over the KNOWN region (mask == 1) per sample: how far a solver moved observed pixels.

    The seeds' outside-mask drift study: with ``Inpainting(mask)`` (1 = observed), this is
    Σ mask (x − ref)² / Σ mask per sample. ``mask`` broadcasts against x: (*S), (B, *S), or
    with a single channel (H, W, 1). A sample with an empty known region gives NaN.
    """
    x, ref = _check_same_shape(x, ref, "outside_mask_mse")
    m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x.shape)
    num = jnp.sum((m * (x - ref) ** 2).reshape(x.shape[0], -1), axis=1)
    return num / jnp.sum(m.reshape(x.shape[0], -1), axis=1)


def change_map(x: Array, ref: Array) -> Array:
    """Per-pixel change |x − ref| averaged over channels: (B, H, W, C) -> (B, H, W)."""
    x, ref = _check_same_shape(x, ref, "change_map")
    return jnp.mean(jnp.abs(x - ref), axis=-1)


def _w2_sq_1d(pa: Array, pb: Array) -> Array:
    """Exact squared 2-Wasserstein distance between 1-D empirical measures, per column.

    pa (n_a, P), pb (n_b, P): ∫₀¹ (F_a⁻¹(u) − F_b⁻¹(u))² du with the quantile functions
    piecewise constant on the merged grid {k / n_a} ∪ {k / n_b} (exact for unequal sizes).
    """
    na, nb = pa.shape[0], pb.shape[0]
    qa, qb = jnp.sort(pa, axis=0), jnp.sort(pb, axis=0)
    if na == nb:
        return jnp.mean((qa - qb) ** 2, axis=0)
    brk = np.sort(np.concatenate([np.arange(1, na + 1) / na, np.arange(1, nb + 1) / nb]))
    prev = np.concatenate([[0.0], brk[:-1]])
    width, mid = brk - prev, 0.5 * (brk + prev)
    ia = np.minimum((mid * na).astype(np.int64), na - 1)
    ib = np.minimum((mid * nb).astype(np.int64), nb - 1)
    return jnp.sum(jnp.asarray(width, jnp.float32)[:, None] * (qa[ia] - qb[ib]) ** 2, axis=0)


def sliced_wasserstein(a: Array, b: Array, key: Array, n_projections: int = 1000) -> Array:
    """Monte Carlo sliced 2-Wasserstein distance between two sample sets (Bonneel et al. 2015).

    SW₂(a, b) = ( E_θ W₂²(θᵀ a, θᵀ b) )^{1/2}, θ uniform on the unit sphere, estimated with
    ``n_projections`` random directions (normalised Gaussian vectors drawn from ``key``; the
    same key gives the same directions, so compare methods with one key). Each 1-D W₂ is exact
    for the empirical measures (sizes may differ). ``a`` (n_a, d), ``b`` (n_b, d); a scalar.
    Translating every sample by δ gives SW₂ = (E (θᵀδ)²)^{1/2} → |δ| / √d.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein: expected sample sets (n_a, d) and (n_b, d), got {a.shape} "
                         f"and {b.shape}")
    theta = jax.random.normal(key, (a.shape[1], n_projections), jnp.float32)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    return jnp.sqrt(jnp.mean(_w2_sq_1d(a @ theta, b @ theta)))


__all__ = ["change_map", "consistency", "outside_mask_mse", "psnr", "sliced_wasserstein", "ssim"]
