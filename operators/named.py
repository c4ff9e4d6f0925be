"""Degradations by name, as the command line and the benchmark grid spell them.

==========================  =================================================================
name                        degradation
==========================  =================================================================
``inpaint-<family>``        inpainting with a mask of a :data:`operators.masks.FAMILIES` family
                            (``inpaint-box``, ``inpaint-thick``, ``inpaint-random``, …)
``colorize``                colorization (the mean of the three channels is observed)
``sr<k>``                   k x k average-pooling super-resolution (``sr2``, ``sr4``, …)
``sr<k>-bicubic``           x k bicubic super-resolution (torch's antialiased bicubic;
                            ``sr4-bicubic`` is the papers' "SR x4")
``deblur-gauss``            circular Gaussian blur, 61 x 61, σ = 3 px (DPS, DiffPIR)
``deblur-uniform``          circular 9 x 9 box blur (DDRM, DDNM)
``deblur-motion``           circular random-trajectory motion blur, 61 x 61, intensity 0.5
                            (DPS, DiffPIR), one kernel per batch drawn from the key
``cs<p>``                   compressed sensing keeping p % of the Walsh–Hadamard (or DCT)
                            coefficients (``cs25``, ``cs50``, …; DDNM), the subset from the key
``<any of them>-noisy``     the same with measurement noise σ_y = :data:`NOISY_SIGMA`
==========================  =================================================================

Kernels larger than the image wrap around (the blurs are circular), so every name but ``sr<k>``
and ``sr<k>-bicubic`` (k must divide H and W) builds for any (B, H, W, C).

σ_y is in model units: images live in [-1, 1], so ``NOISY_SIGMA = 0.05`` is 0.025 on a
[0, 1] scale (about 6.4 grey levels of 255).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.operator import LinearOperator
from operators import masks
from operators.bicubic import BicubicDownsampling
from operators.blur import Blur
from operators.colorization import Colorization
from operators.compressed_sensing import CompressedSensing
from operators.downsampling import Downsampling
from operators.inpainting import Inpainting

#: σ_y of the ``-noisy`` variants, in model units ([-1, 1] images).
NOISY_SIGMA = 0.05

#: The named degradations (``sr<k>``, ``sr<k>-bicubic`` take any factor, ``cs<p>`` any percentage).
NAMES = tuple(f"inpaint-{f}" for f in masks.FAMILIES) + ("colorize", "sr2", "sr4", "sr4-bicubic", "deblur-gauss",
                                                         "deblur-uniform", "deblur-motion", "cs25")

#: The papers' blur kernels: (size, σ) of the Gaussian, the box size, (size, intensity) of the motion blur.
GAUSS_BLUR = (61, 3.0)
UNIFORM_BLUR = 9
MOTION_BLUR = (61, 0.5)


@dataclass(frozen=True)
class Degradation:
    """A named degradation for a batch: ``op``, its noise level and, for inpainting, the
    (B, H, W, 1) mask (1 = known)."""

    name: str
    op: LinearOperator
    sigma_y: float
    mask: np.ndarray | None = None


def valid_names() -> str:
    """The accepted names, for error messages."""
    return (", ".join(NAMES) + ", sr<k> and sr<k>-bicubic for any factor k, cs<p> for any percentage p, "
            "and <name>-noisy for each")


def make(name: str, shape: tuple[int, int, int, int], key: jax.Array | int = 0,
         mask: np.ndarray | None = None) -> Degradation:
    """The degradation ``name`` for a batch of images of ``shape`` (B, H, W, C).

    Random mask families draw one mask per image from ``key``. ``mask`` (H, W) or (B, H, W),
    1 = known, overrides the family for ``inpaint-<anything>``: pass ``name="inpaint"``.
    """
    if len(shape) != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got {tuple(shape)}")
    b, h, w, c = (int(s) for s in shape)
    base, noisy = (name[: -len("-noisy")], True) if name.endswith("-noisy") else (name, False)
    sigma = NOISY_SIGMA if noisy else 0.0
    if isinstance(key, int):
        key = jax.random.key(key)
    if base == "inpaint" or base.startswith("inpaint-"):
        if mask is not None:
            m = np.asarray(mask, np.float32)
            if m.shape[-2:] != (h, w):
                raise ValueError(f"the mask is {m.shape[-2]}x{m.shape[-1]} (HxW) but the images are {h}x{w}; "
                                 f"resize the mask or the images so that they match")
            m = np.broadcast_to(m.reshape((-1, h, w)), (b, h, w))
        else:
            family = base[len("inpaint-"):]
            if family not in masks.FAMILIES:
                raise ValueError(f"unknown degradation {name!r}: mask family {family!r} is not one of "
                                 f"{', '.join(masks.FAMILIES)}")
            kw = {"missing": 0.7} if family == "random" else {}
            m = np.asarray(masks.by_name(family, key, h, w, n=b, **kw))
        m = np.ascontiguousarray(m[..., None])
        return Degradation(name, Inpainting(jnp.asarray(m)), sigma, m)
    if base == "colorize":
        if c != 3:
            raise ValueError(f"colorize needs RGB images (3 channels), got {c}")
        return Degradation(name, Colorization(), sigma)
    sr = re.fullmatch(r"sr(\d+)(-bicubic)?", base)
    if sr:
        f = int(sr.group(1))
        if f < 1 or h % f or w % f:
            raise ValueError(f"{name}: the image size {h}x{w} must be divisible by the factor {f}")
        op = BicubicDownsampling(f, shape=(h, w)) if sr.group(2) else Downsampling(f)
        return Degradation(name, op, sigma)
    if base == "deblur-gauss":
        return Degradation(name, Blur.gaussian(*GAUSS_BLUR, shape=(h, w)), sigma)
    if base == "deblur-uniform":
        return Degradation(name, Blur.uniform(UNIFORM_BLUR, shape=(h, w)), sigma)
    if base == "deblur-motion":
        return Degradation(name, Blur.motion(*MOTION_BLUR, key, shape=(h, w)), sigma)
    cs = re.fullmatch(r"cs(\d+)", base)
    if cs:
        p = int(cs.group(1))
        if not 0 < p <= 100:
            raise ValueError(f"{name}: the percentage of coefficients kept must be in 1 … 100, got {p}")
        if round(p / 100 * h * w) < 1:
            raise ValueError(f"{name}: {p} % of a {h}x{w} image keeps no coefficient; use a larger percentage")
        return Degradation(name, CompressedSensing(p / 100, key, (h, w, c)), sigma)
    raise ValueError(f"unknown degradation {name!r}; valid names: {valid_names()}")
