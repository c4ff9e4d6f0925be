"""Inpainting mask generators: float32 (H, W) arrays of {0, 1}, 1 = known (observed).

The families used in the literature (algorithms.md): a centre box, half the image, every
second line, random pixels, LaMa-style thick and thin free-form brush strokes (Suvorov et
al., WACV 2022, Sec. 3 "mask generation"), expand / outpainting (keep the centre), circles
(the seed experiments) and masks read from a PNG file. Pass an (H, W) mask straight to
``Inpainting``; it is broadcast over the colour channels.

Randomness: the random families take a ``jax.random.key`` and draw with a NumPy generator
seeded from the key's data, so the same key always gives the same mask (on any device);
``batch(fn, key, n, ...)`` or ``by_name(..., n=n)`` gives (n, H, W) from n split keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: The families ``by_name`` knows, with their meaning.
FAMILIES = {
    "box": "a centre square is missing",
    "half": "one half of the image is missing (side='left'|'right'|'top'|'bottom')",
    "lines": "every second row is missing",
    "random": "random pixels are missing (missing=0.9)",
    "thick": "thick free-form brush strokes are missing (LaMa 'thick', ~30-50%)",
    "thin": "thin free-form brush strokes are missing (LaMa 'thin', ~10-25%)",
    "expand": "only the centre is known (outpainting, keep=0.5 of each side)",
    "circle": "a centred disc is missing (radius = min(h, w) / 4 by default)",
}


def _out(known: np.ndarray) -> Array:
    return jnp.asarray(known.astype(np.float32))


def _check_size(h: int, w: int) -> None:
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise ValueError(f"mask size must be positive integers, got {h}x{w}")


def _rng(key) -> np.random.Generator:
    """A NumPy generator determined by a JAX key (typed or raw uint32) or an int seed."""
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng(int(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def box(h: int, w: int, size: int | None = None) -> Array:
    """A centred ``size`` x ``size`` square is missing (default: half the shorter side)."""
    _check_size(h, w)
    size = max(1, min(h, w) // 2) if size is None else int(size)
    if not 0 <= size <= min(h, w):
        raise ValueError(f"box size must be in [0, {min(h, w)}] for a {h}x{w} mask, got {size}")
    known = np.ones((h, w), bool)
    top, left = (h - size) // 2, (w - size) // 2
    known[top:top + size, left:left + size] = False
    return _out(known)


def half(h: int, w: int, side: str = "left") -> Array:
    """The ``side`` half of the image is missing; the other half is known."""
    _check_size(h, w)
    known = np.ones((h, w), bool)
    if side == "left":
        known[:, : w // 2] = False
    elif side == "right":
        known[:, w - w // 2:] = False
    elif side == "top":
        known[: h // 2] = False
    elif side == "bottom":
        known[h - h // 2:] = False
    else:
        raise ValueError(f"half: side must be 'left', 'right', 'top' or 'bottom', got {side!r}")
    return _out(known)


def lines(h: int, w: int, every: int = 2, axis: int = 0) -> Array:
    """Every ``every``-th line is missing: rows for ``axis=0``, columns for ``axis=1``.

    With the default ``every=2`` the odd rows (1, 3, ...) are missing: RePaint's "every
    second line" mask.
    """
    _check_size(h, w)
    if int(every) != every or every < 1:
        raise ValueError(f"lines: every must be a positive integer, got {every}")
    if axis not in (0, 1):
        raise ValueError(f"lines: axis must be 0 (rows) or 1 (columns), got {axis}")
    idx = np.arange(h if axis == 0 else w)
    keep = idx % every != every - 1
    known = np.broadcast_to(keep[:, None] if axis == 0 else keep[None, :], (h, w))
    return _out(known)


def random_pixels(key, h: int, w: int, missing: float = 0.9) -> Array:
    """Exactly ``round(missing · h · w)`` pixels, chosen uniformly, are missing."""
    _check_size(h, w)
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"random_pixels: missing must be a fraction in [0, 1], got {missing}")
    n_missing = int(round(missing * h * w))
    known = np.ones(h * w, bool)
    known[_rng(key).permutation(h * w)[:n_missing]] = False
    return _out(known.reshape(h, w))


# LaMa-like stroke parameters, relative to the shorter side: (width range, target missing range).
_BRUSH = {
    "thick": ((0.08, 0.16), (0.30, 0.50)),
    "thin": ((0.02, 0.05), (0.10, 0.25)),
}


def _stroke(rng: np.random.Generator, h: int, w: int, width_range: tuple[float, float]) -> np.ndarray:
    """One random-walk polyline of constant width, rasterised by distance to its segments."""
    side = min(h, w)
    width = max(1.0, rng.uniform(*width_range) * side)
    n_vertices = rng.integers(2, 7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    p = np.array([rng.uniform(0, h), rng.uniform(0, w)])
    angle = rng.uniform(0, 2 * np.pi)
    hit = np.zeros((h, w), bool)
    for _ in range(n_vertices):
        angle += rng.uniform(-np.pi / 2, np.pi / 2)
        length = rng.uniform(0.1, 0.4) * side
        q = np.clip(p + length * np.array([np.sin(angle), np.cos(angle)]), 0, [h, w])
        d = q - p
        t = ((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-12)
        t = np.clip(t, 0.0, 1.0)
        dist2 = (yy - p[0] - t * d[0]) ** 2 + (xx - p[1] - t * d[1]) ** 2
        hit |= dist2 <= (width / 2) ** 2
        p = q
    return hit


def brush(key, h: int, w: int, kind: str = "thick") -> Array:
    """Free-form brush strokes are missing (LaMa, Suvorov et al. 2022, Sec. 3).

    Random walks of 2-6 segments with a constant width (thick: 8-16% of the shorter side,
    thin: 2-5%) are added until the missing fraction reaches a target drawn from 30-50%
    (thick) or 10-25% (thin); a stroke that would overshoot the range is redrawn. On very
    small images a single pixel-wide stroke may already overshoot the range.
    """
    _check_size(h, w)
    if kind not in _BRUSH:
        raise ValueError(f"brush: kind must be 'thick' or 'thin', got {kind!r}")
    width_range, (lo, hi) = _BRUSH[kind]
    rng = _rng(key)
    target = rng.uniform(lo, hi)
    missing = np.zeros((h, w), bool)
    for _ in range(200):
        if missing.mean() >= target:
            break
        candidate = missing | _stroke(rng, h, w, width_range)
        if candidate.mean() <= hi or not missing.any():
            missing = candidate
    return _out(~missing)


def expand(h: int, w: int, keep: float = 0.5) -> Array:
    """Outpainting: only a centred box of ``keep`` times each side is known."""
    _check_size(h, w)
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"expand: keep must be a fraction in [0, 1], got {keep}")
    kh, kw = int(round(keep * h)), int(round(keep * w))
    known = np.zeros((h, w), bool)
    top, left = (h - kh) // 2, (w - kw) // 2
    known[top:top + kh, left:left + kw] = True
    return _out(known)


def circle(h: int, w: int, radius: float | None = None,
           center: tuple[float, float] | None = None) -> Array:
    """A disc of ``radius`` pixels around ``center`` (row, col; default the image centre) is
    missing. Pixel (i, j) is missing when its centre (i + 0.5, j + 0.5) lies in the disc."""
    _check_size(h, w)
    radius = min(h, w) / 4 if radius is None else float(radius)
    if radius < 0:
        raise ValueError(f"circle: radius must be >= 0, got {radius}")
    cy, cx = (h / 2, w / 2) if center is None else (float(center[0]), float(center[1]))
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return _out((yy - cy) ** 2 + (xx - cx) ** 2 > radius**2)


def from_png(path: str | os.PathLike, size: tuple[int, int] | None = None) -> Array:
    """Read a mask image: white (grey level >= 0.5) = known, black = missing.

    ``size=(H, W)`` resizes with nearest-neighbour sampling. Colour and alpha images are
    converted to grey first.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"mask file not found: {path!r}")
    try:
        with Image.open(path) as img:
            img = img.convert("L")
            if size is not None:
                h, w = size
                _check_size(h, w)
                img = img.resize((int(w), int(h)), resample=Image.NEAREST)
            grey = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"could not read {path!r} as an image (PNG expected): {e}") from e
    return _out(grey >= 0.5)


def batch(fn: Callable[..., Array], key, n: int, *args, **kwargs) -> Array:
    """(n, H, W): ``fn(k_i, *args, **kwargs)`` for n keys split from ``key``."""
    if int(n) != n or n < 1:
        raise ValueError(f"batch: n must be a positive integer, got {n}")
    return jnp.stack([fn(k, *args, **kwargs) for k in jax.random.split(key, int(n))])


def by_name(name: str, key, h: int, w: int, n: int | None = None, **kwargs) -> Array:
    """A mask of the family ``name`` (see ``FAMILIES``); (n, H, W) with ``n=``.

    ``kwargs`` go to the generator: ``box(size=)``, ``half(side=)``, ``lines(every=, axis=)``,
    ``random_pixels(missing=)``, ``expand(keep=)``, ``circle(radius=, center=)``. The
    deterministic families ignore ``key``.
    """
    makers: dict[str, Callable[..., Array]] = {
        "box": lambda k: box(h, w, **kwargs),
        "half": lambda k: half(h, w, **kwargs),
        "lines": lambda k: lines(h, w, **kwargs),
        "random": lambda k: random_pixels(k, h, w, **kwargs),
        "thick": lambda k: brush(k, h, w, kind="thick", **kwargs),
        "thin": lambda k: brush(k, h, w, kind="thin", **kwargs),
        "expand": lambda k: expand(h, w, **kwargs),
        "circle": lambda k: circle(h, w, **kwargs),
    }
    if name not in makers:
        raise ValueError(f"unknown mask family {name!r}; valid names: {', '.join(sorted(makers))}")
    if n is None:
        return makers[name](key)
    return batch(makers[name], key, n)
