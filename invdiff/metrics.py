"""Evaluation metrics: image quality (PSNR, SSIM, LPIPS), measurement consistency, known-region
drift, the sliced Wasserstein distance between sample sets (the GMM posterior benchmark), and
the registry of per-image metrics that ``invdiff bench`` and the studies report.

Every function is pure jnp and returns one value per sample (batch first) unless stated. Images
are NHWC in [-1, 1], so the default ``data_range`` is 2.0 (pass 1.0 for [0, 1] images, 255 for
8-bit ones).

The registry: :data:`METRICS` maps a name to a :class:`Metric`, whose ``fn`` takes a
:class:`Restoration` (the solver's output, the ground truth, the operator, y, the mask) and
returns one value per image. Adding one takes a few lines::

    import jax.numpy as jnp
    from invdiff import metrics

    metrics.register(metrics.Metric(
        "l1", lambda r: jnp.mean(jnp.abs(r.x_clipped - r.ref), axis=(1, 2, 3)),
        label="L1", higher_is_better=False))
    # then: invdiff.bench.run_bench(..., metrics=["psnr", "l1"])
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

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


# ---------------------------------------------------------------------------------------
# LPIPS (Zhang, Isola, Efros, Shechtman, Wang, CVPR 2018), AlexNet variant, as the authors'
# `lpips` package v0.1 computes it (lpips/lpips.py, pretrained_networks.py).

#: ScalingLayer of the reference: x -> (x - shift) / scale, per RGB channel, on [-1, 1] images.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: torchvision AlexNet ``features`` convolutions used by LPIPS: (index, out channels, kernel, stride,
#: padding). A 3x3, stride-2 max-pool precedes the second and third; the five ReLU outputs are compared.
_ALEXNET = ((0, 64, 11, 4, 2), (3, 192, 5, 1, 2), (6, 384, 3, 1, 1), (8, 256, 3, 1, 1), (10, 256, 3, 1, 1))
#: The smallest image side AlexNet's two max-pools leave non-empty.
LPIPS_MIN_SIZE = 31


class AlexNetFeatures(nn.Module):
    """The five ReLU outputs of torchvision's AlexNet ``features`` on NHWC images; parameters
    ``conv0``, ``conv3``, ``conv6``, ``conv8``, ``conv10`` (torchvision's module indices)."""

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        outs, h = [], x
        for n, (idx, ch, k, s, p) in enumerate(_ALEXNET):
            if n in (1, 2):
                h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="VALID")
            h = nn.relu(nn.Conv(ch, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                                precision=jax.lax.Precision.HIGHEST, name=f"conv{idx}")(h))
            outs.append(h)
        return outs


@functools.partial(jax.jit, static_argnames=("per_layer",))
def lpips(params: dict, x: Array, y: Array, per_layer: bool = False) -> Array:
    """LPIPS distance per image (jitted) between NHWC images in [-1, 1]: (B,), or (B, 5) per layer.

    Features after each of the five ReLUs are unit-normalised over channels (eps 1e-10),
    their squared differences weighted by the learned 1x1 linear layers, averaged over space
    and summed over layers. ``params`` from :func:`lpips_params`. Images of any size of at
    least :data:`LPIPS_MIN_SIZE` pixels per side; 0 for identical images.
    """
    x, y = _check_same_shape(x, y, "lpips")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"lpips: expected RGB images (B, H, W, 3), got shape {x.shape}")
    if min(x.shape[1:3]) < LPIPS_MIN_SIZE:
        raise ValueError(f"lpips: images must be at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} (AlexNet's pooling), got "
                         f"{x.shape[1]}x{x.shape[2]}")
    shift, scale = jnp.asarray(LPIPS_SHIFT), jnp.asarray(LPIPS_SCALE)
    net = AlexNetFeatures()
    fx = net.apply({"params": params["alexnet"]}, (x - shift) / scale)
    fy = net.apply({"params": params["alexnet"]}, (y - shift) / scale)

    def unit(f):
        return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)

    layers = [jnp.mean(jnp.sum((unit(a) - unit(b)) ** 2 * w, axis=-1), axis=(1, 2))
              for a, b, w in zip(fx, fy, params["lin"])]
    out = jnp.stack(layers, axis=1)
    return out if per_layer else jnp.sum(out, axis=1)


def lpips_params(alexnet: dict[str, np.ndarray], lin: dict[str, np.ndarray]) -> dict:
    """LPIPS parameters from torch state_dicts: torchvision AlexNet's (``features.N.weight``/
    ``bias``; ``classifier.*`` is ignored) and the ``lpips`` package's linear layers
    (``linN.model.1.weight``, shape (1, C, 1, 1))."""
    if not any(k.startswith("features.") for k in alexnet) and any(k.startswith("lin0.") for k in alexnet):
        raise ValueError("the AlexNet weights look like LPIPS linear layers: pass the torchvision AlexNet .pth "
                         "first and the lpips linear-layer .pth second")
    convs, lins = {}, []
    last = 3
    for n, (idx, ch, k, _, _) in enumerate(_ALEXNET):
        w, b = alexnet.get(f"features.{idx}.weight"), alexnet.get(f"features.{idx}.bias")
        if w is None or b is None or w.shape != (ch, last, k, k) or b.shape != (ch,):
            raise ValueError(f"the AlexNet weights need features.{idx}.weight of shape {(ch, last, k, k)} and "
                             f"features.{idx}.bias {(ch,)} (torchvision's alexnet), got "
                             f"{None if w is None else w.shape} and {None if b is None else b.shape}")
        convs[f"conv{idx}"] = {"kernel": jnp.asarray(np.transpose(w, (2, 3, 1, 0)), jnp.float32),
                               "bias": jnp.asarray(b, jnp.float32)}
        lw = lin.get(f"lin{n}.model.1.weight")
        if lw is None or lw.shape != (1, ch, 1, 1):
            raise ValueError(f"the LPIPS linear weights need lin{n}.model.1.weight of shape (1, {ch}, 1, 1) (the "
                             f"lpips package's weights/v0.1/alex.pth), got {None if lw is None else lw.shape}")
        lins.append(jnp.asarray(lw.reshape(ch), jnp.float32))
        last = ch
    return {"alexnet": convs, "lin": lins}


def lpips_from_weights(alexnet_pth: str | os.PathLike[str], lin_pth: str | os.PathLike[str]
                       ) -> Callable[[Array, Array], Array]:
    """A jitted LPIPS ``f(x, y) -> (B,)`` (NHWC in [-1, 1], any size >= 31) from the user's files.

    ``alexnet_pth``: torchvision's AlexNet weights (``alexnet-owt-7be5be79.pth``; only the
    ``features`` are used). ``lin_pth``: the ``lpips`` package's ``weights/v0.1/alex.pth``.
    Both are read with the torch-free loader (:mod:`invdiff.nets.torch_pickle`: nothing from
    the files is executed; GPU-tagged storages load on the CPU). Matches the reference
    implementation to 1e-6 on the test fixture.
    """
    from invdiff.nets.checkpoint import load_state_dict

    params = lpips_params(load_state_dict(alexnet_pth), load_state_dict(lin_pth))
    return functools.partial(lpips, params)


# ---------------------------------------------------------------------------------------
# The registry of per-image metrics (what invdiff bench reports).


@struct.dataclass
class Restoration:
    """What a metric sees for a batch (a PyTree): ``x`` the solver's output (unclipped), ``ref``
    the ground truth, ``op`` and ``y`` the measurement, ``mask`` (B, H, W, 1) with 1 = known for
    inpainting, else None."""

    x: Array
    ref: Array
    op: Any
    y: Array
    mask: Array | None = None

    @property
    def x_clipped(self) -> Array:
        """The output clipped to the image range [-1, 1] (what an image file would hold)."""
        return jnp.clip(self.x, -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A per-image metric: ``fn(Restoration) -> (B,)`` (NaN where it does not apply), the
    table heading ``label``, ``higher_is_better`` and the number format ``fmt``. ``jit``:
    :func:`evaluate` compiles ``fn`` (set False for a function that is jitted already)."""

    name: str
    fn: Callable[[Restoration], Array]
    label: str = ""
    higher_is_better: bool = True
    fmt: str = ".3g"
    jit: bool = True


@functools.cache
def _compiled(metric: Metric) -> Callable[[Restoration], Array]:
    return jax.jit(metric.fn) if metric.jit else metric.fn


def evaluate(metrics: Sequence[Metric], restoration: Restoration) -> dict[str, np.ndarray]:
    """Every metric on a batch: ``{name: float64 (B,)}`` (each ``fn`` compiled once)."""
    return {m.name: np.asarray(_compiled(m)(restoration), np.float64) for m in metrics}


#: Metrics by name. ``invdiff bench`` reports :data:`DEFAULT_METRICS` (and ``lpips`` when given weights).
METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add (or replace) a metric under ``metric.name``; returns it."""
    if not metric.name or not metric.name.replace("_", "").isalnum():
        raise ValueError(f"a metric name must be letters, digits and _, got {metric.name!r}")
    METRICS[metric.name] = metric
    return metric


def _outside(r: Restoration) -> Array:
    if r.mask is None:
        return jnp.full((r.x.shape[0],), jnp.nan)
    return outside_mask_mse(r.x, r.ref, r.mask)


register(Metric("psnr", lambda r: psnr(r.x_clipped, r.ref), "PSNR (dB)", True, ".2f"))
register(Metric("ssim", lambda r: ssim(r.x_clipped, r.ref), "SSIM", True, ".3f"))
register(Metric("consistency", lambda r: consistency(r.op, r.x, r.y), "consistency", False, ".2e"))
register(Metric("outside_mse", _outside, "outside MSE", False, ".2e"))
#: What ``invdiff bench`` reports by default.
DEFAULT_METRICS: tuple[str, ...] = ("psnr", "ssim", "consistency", "outside_mse")


def lpips_metric(alexnet_pth: str | os.PathLike[str], lin_pth: str | os.PathLike[str]) -> Metric:
    """Register and return the ``lpips`` metric (on the clipped output) with the user's weights."""
    f = lpips_from_weights(alexnet_pth, lin_pth)
    return register(Metric("lpips", lambda r: f(r.x_clipped, r.ref), "LPIPS", False, ".4f", jit=False))


__all__ = ["DEFAULT_METRICS", "LPIPS_MIN_SIZE", "METRICS", "AlexNetFeatures", "Metric", "Restoration", "change_map",
           "consistency", "evaluate", "lpips", "lpips_from_weights", "lpips_metric", "lpips_params", "outside_mask_mse",
           "psnr", "register", "sliced_wasserstein", "ssim"]
