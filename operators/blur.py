"""Blur: y = k ⊛ x, a 2-D convolution of every channel with a kernel (shared or one per channel).

``Blur(kernel, boundary="circular")``: ``kernel`` is (kh, kw), shared by the channels, or
(kh, kw, C), one per channel. Convolution, not correlation:
y[i, j] = Σ_{a, b} k[a, b] x[i + kh//2 - a, j + kw//2 - b] (the kernel's centre is at
(kh//2, kw//2); DiffPIR's ``p2o`` places it the same way). The boundary decides the tier:

* ``"circular"`` (default): x wraps around, so A = F⁻¹ diag(K̂) F is diagonal in the 2-D DFT
  (K̂ the DFT of the kernel, periodised onto the H x W image, so kernels larger than the image
  are fine). An SVD operator with A⁺, prox and Aᵀ(r² A Aᵀ + σ² I)⁻¹ in closed form through
  real FFTs, O(n log n). **Cutoff:** frequencies where |K̂| < ``cutoff`` · max |K̂| (per channel;
  default :data:`DEFAULT_CUTOFF` = 1e-3) are treated as unobserved: A itself is defined with them
  removed, so A A⁺ A = A holds exactly, and A differs from the plain circular convolution by at
  most ``cutoff`` · max |K̂| per frequency. For a separable kernel k = a bᵀ (``gaussian``,
  ``uniform``, ``separable``) the cutoff is applied per axis, at √cutoff ≈ 0.032 of each 1-D
  spectrum (DDRM's ``ZERO = 3e-2``), so that the blur keeps its 1-D factors and composes with a
  downsampling into a separable SVD (``invdiff.compose``).
  SVD view: V = the orthonormal 2-D Hartley transform (x̄ = Re F x − Im F x), singular values
  |K̂| on (H, W, 1 or C), U = F⁻¹ diag(K̂ / |K̂|) F V (the phase of K̂). The singular values need
  the image size: ``shape=(H, W)`` or :meth:`~invdiff.operator.LinearOperator.bind`
  (``invdiff.solve`` binds every operator); everything else works at any size.
* ``"reflect"``: x is extended by mirror reflection (``numpy.pad(mode="reflect")``, torch's
  ``ReflectionPad2d``, as DPS's blur), y keeps x's size; ``"valid"``: no padding, y is
  (H - kh + 1, W - kw + 1). Both are the matrix-free tier: Aᵀ by ``jax.linear_transpose``, A⁺
  and prox by conjugate gradients (``invdiff.operator.CG_TOL`` / ``CG_MAXITER``), which converge
  slowly when the blur nearly removes frequencies: use the circular boundary for strong blurs.

Kernels (and the cutoff) are array leaves: a new kernel of the same size does not recompile.
The papers' kernels: :meth:`Blur.gaussian`, :meth:`Blur.uniform` (DDRM's 9-tap deblurring) and
:meth:`Blur.motion` (the random-trajectory kernels of DPS and DiffPIR).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff.operator import LinearOperator, SVDOperator, _concrete, _per_sample

Array = jax.Array

BOUNDARIES = ("circular", "reflect", "valid")
#: Frequencies with |K̂| below this fraction of max |K̂| count as unobserved (circular boundary).
DEFAULT_CUTOFF = 1e-3


# ---------------------------------------------------------------------------------------
# kernels


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """The sampled Gaussian exp(-t² / 2σ²) at t = i - (size - 1)/2, normalised to sum 1."""
    _check_size(size)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"the Gaussian's sigma must be a positive number (pixels), got {sigma!r}")
    t = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-0.5 * (t / float(sigma)) ** 2)
    return g / g.sum()


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"the kernel size must be a positive integer, got {size!r}")


def motion_kernel(size: int, intensity: float, key: Array | int) -> np.ndarray:
    """A random-trajectory motion-blur kernel (size, size), non-negative, summing to 1.

    The model of the ``motionblur`` package's ``Kernel`` (L. Borodenko), with which DPS (Chung
    et al. 2023) and DiffPIR (Zhu et al. 2023) draw their motion blurs (size 61, intensity 0.5):
    on a canvas of twice the size, with D its diagonal, a path of random steps
    D (1 - intensity + 0.1) · Beta(1, 30) until its length reaches 0.75 D (U(0, 1) + U(0, intensity²));
    step angles from a triangular law on [0, θ_max + 0.1] (mode intensity · θ_max, θ_max ~
    U(0, intensity · π)) whose sign flips with probability Beta(2, 20); the path is centred,
    rotated by U(0, π), drawn as a line of width D / 150 (at least 1 pixel), blurred with a Gaussian of radius D / 100
    and resized to size x size (Lanczos). The random numbers come from ``key`` (jax.random),
    so one key gives one kernel; numbers drawn by that package's NumPy global generator differ,
    so the kernels are alike in law, not equal to theirs.
    """
    from PIL import Image, ImageDraw, ImageFilter

    _check_size(size)
    if not np.isfinite(intensity) or not 0.0 <= float(intensity) <= 1.0:
        raise ValueError(f"motion-blur intensity must be in [0, 1], got {intensity!r}")
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    eps, intensity = 0.1, float(intensity)
    canvas = 2 * size
    diag = math.hypot(canvas, canvas)
    k_len, k_steps, k_angle, k_rot = jax.random.split(key, 4)

    u = np.asarray(jax.random.uniform(k_len, (2,)), np.float64)
    max_len = 0.75 * diag * (u[0] + u[1] * intensity**2)
    steps: list[float] = []
    chunk, total = 0, 0.0
    while total < max_len:
        if chunk > 10_000:
            raise RuntimeError("motion_kernel: the path did not reach its length; report this key")
        draws = np.asarray(jax.random.beta(jax.random.fold_in(k_steps, chunk), 1.0, 30.0, (256,)), np.float64)
        for step in draws * (1.0 - intensity + eps) * diag:
            if total >= max_len:
                break
            if step < max_len:
                steps.append(float(step))
                total += float(step)
        chunk += 1
    n = len(steps)

    ka, kj, k0, kt, kf = jax.random.split(k_angle, 5)
    max_angle = float(jax.random.uniform(ka, (), minval=0.0, maxval=intensity * np.pi))
    jitter = float(jax.random.beta(kj, 2.0, 20.0))
    first = float(jax.random.uniform(k0, (), minval=-max_angle, maxval=max_angle))
    # triangular(left=0, mode=intensity·max_angle, right=max_angle + eps) by its inverse CDF
    lo, mode, hi = 0.0, intensity * max_angle, max_angle + eps
    q = np.asarray(jax.random.uniform(kt, (n,)), np.float64)
    split = (mode - lo) / (hi - lo)
    tri = np.where(q < split, lo + np.sqrt(q * (hi - lo) * (mode - lo)),
                   hi - np.sqrt((1.0 - q) * (hi - lo) * (hi - mode)))
    flips = np.asarray(jax.random.uniform(kf, (n,)), np.float64) < jitter
    angles = [first]
    for a, flip in zip(tri[1:], flips[1:]):
        sign = np.sign(angles[-1])
        angles.append(float(a * (-sign if flip else sign)))

    path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    path = (path - path.mean()) * np.exp(1j * float(jax.random.uniform(k_rot, (), maxval=np.pi)))
    path += (canvas + 1j * canvas) / 2.0
    image = Image.new("L", (canvas, canvas))
    ImageDraw.Draw(image).line([(p.real, p.imag) for p in path], fill=255, width=max(1, int(diag / 150)))
    image = image.filter(ImageFilter.GaussianBlur(radius=int(diag * 0.01)))
    image = image.resize((size, size), resample=Image.LANCZOS)
    kernel = np.asarray(image, np.float64)
    if kernel.sum() <= 0:
        raise RuntimeError("motion_kernel drew an empty kernel; report this key")
    return kernel / kernel.sum()


# ---------------------------------------------------------------------------------------
# periodisation and spectra


def _wrap(k: int, n: int) -> np.ndarray:
    """Where the kernel taps 0 … k-1 land on a length-n circle, the centre k//2 at 0."""
    return (np.arange(k) - k // 2) % n


def _negate(n: int) -> np.ndarray:
    return (-np.arange(n)) % n


def _hermitian(spec: Array, axes: tuple[int, ...]) -> Array:
    """(S + conj(S at -k)) / 2: exactly Hermitian, so that |S| is exactly even and a cutoff on it
    keeps k and -k together (float FFTs of real data are Hermitian only to round-off)."""
    flipped = spec
    for ax in axes:
        flipped = jnp.take(flipped, _negate(spec.shape[ax]), axis=ax)
    return 0.5 * (spec + jnp.conj(flipped))


def _cut(spec: Array, frac: Array, axes: tuple[int, ...]) -> Array:
    mag = jnp.abs(spec)
    return jnp.where(mag >= frac * jnp.max(mag, axis=axes, keepdims=True), spec, 0.0)


def _circulant_1d(v: np.ndarray, n: int, frac: float) -> np.ndarray:
    """The n x n circulant matrix of the 1-D kernel ``v`` (cut at ``frac`` of its spectrum), float64."""
    p = np.zeros(n)
    np.add.at(p, _wrap(len(v), n), np.asarray(v, np.float64))
    g = np.fft.fft(p)
    g = 0.5 * (g + np.conj(g[_negate(n)]))
    g = np.where(np.abs(g) >= frac * np.abs(g).max(), g, 0.0)
    col = np.fft.ifft(g).real
    idx = (np.arange(n)[:, None] - np.arange(n)[None, :]) % n
    return col[idx]


def _rfft2(x: Array) -> Array:
    return jnp.fft.rfft2(x, axes=(1, 2))


def _irfft2(spec: Array, h: int, w: int) -> Array:
    return jnp.fft.irfft2(spec, s=(h, w), axes=(1, 2))


def _hartley(x: Array) -> Array:
    """The orthonormal 2-D Hartley transform over axes (1, 2) of a real array; its own inverse."""
    f = jnp.fft.fft2(x, axes=(1, 2), norm="ortho")
    return f.real - f.imag


# ---------------------------------------------------------------------------------------


class Blur(LinearOperator):
    """``Blur(kernel, boundary="circular")``; see the module docstring.

    Fields: ``kernel`` (kh, kw) or (kh, kw, C); ``boundary``; ``factors`` = (a, b), the 1-D
    kernels of a separable kernel a bᵀ (set by :meth:`separable`, :meth:`gaussian`,
    :meth:`uniform`); ``cutoff`` (circular); ``shape`` = (H, W) once known (:meth:`bind`).
    ``Blur(...)`` returns a :class:`CircularBlur` (SVD tier) or a :class:`PaddedBlur`
    (matrix-free tier) according to ``boundary``.
    """

    kernel: Array
    boundary: str = struct.field(pytree_node=False, default="circular")
    factors: tuple[Array, Array] | None = struct.field(default=None, kw_only=True)
    cutoff: Array = struct.field(default_factory=lambda: jnp.asarray(DEFAULT_CUTOFF, jnp.float32), kw_only=True)
    shape: tuple[int, int] | None = struct.field(pytree_node=False, default=None, kw_only=True)

    def __new__(cls, *args, **kwargs):
        if cls is Blur:
            boundary = kwargs.get("boundary", args[1] if len(args) > 1 else "circular")
            if boundary not in BOUNDARIES:
                raise ValueError(f"unknown blur boundary {boundary!r}; valid: {', '.join(BOUNDARIES)}")
            cls = CircularBlur if boundary == "circular" else PaddedBlur
        return object.__new__(cls)

    def __post_init__(self):
        if self.boundary not in BOUNDARIES or (self.boundary == "circular") != isinstance(self, CircularBlur):
            raise ValueError(f"{type(self).__name__} cannot have boundary {self.boundary!r}; build it with "
                             f"Blur(kernel, boundary=...) (valid: {', '.join(BOUNDARIES)})")
        if _concrete(self.kernel):
            k = np.asarray(self.kernel)
            if k.ndim not in (2, 3) or 0 in k.shape:
                raise ValueError(f"a blur kernel is (kh, kw) or (kh, kw, C), got shape {k.shape}")
            if not np.issubdtype(k.dtype, np.number) or np.iscomplexobj(k):
                raise TypeError(f"a blur kernel must be real, got dtype {k.dtype}")
            if not np.all(np.isfinite(k)):
                raise ValueError("the blur kernel contains NaN or inf")
            if not np.any(k != 0):
                raise ValueError("the blur kernel is all zeros")
            object.__setattr__(self, "kernel", jnp.asarray(k, jnp.float32))
        if self.factors is not None and all(_concrete(f) for f in self.factors):
            a, b = (np.asarray(f, np.float64) for f in self.factors)
            if a.ndim != 1 or b.ndim != 1 or tuple(self.kernel.shape) != (a.size, b.size):
                raise ValueError(f"factors must be 1-D kernels (kh,) and (kw,) of the (kh, kw) kernel, got shapes "
                                 f"{a.shape}, {b.shape} for a kernel of shape {tuple(self.kernel.shape)}")
            object.__setattr__(self, "factors", (jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
        if isinstance(self.cutoff, (int, float, np.number)) or _concrete(self.cutoff):
            cut = float(np.asarray(self.cutoff))
            if not 0.0 <= cut < 1.0:
                raise ValueError(f"the blur cutoff is a fraction of max |K̂| in [0, 1), got {cut}")
            object.__setattr__(self, "cutoff", jnp.asarray(cut, jnp.float32))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape[:2]))

    # ---- constructors ------------------------------------------------------------------
    @staticmethod
    def separable(kernel_h, kernel_w=None, *, boundary: str = "circular", shape: tuple[int, int] | None = None,
                  cutoff: float = DEFAULT_CUTOFF) -> Blur:
        """The blur with the separable kernel a bᵀ (a = ``kernel_h`` along H, b = ``kernel_w``,
        default a): it keeps its 1-D factors, so the circular one composes with downsampling
        into a separable SVD."""
        a = np.asarray(kernel_h, np.float64)
        b = a if kernel_w is None else np.asarray(kernel_w, np.float64)
        if a.ndim != 1 or b.ndim != 1:
            raise ValueError(f"Blur.separable takes 1-D kernels, got shapes {a.shape} and {b.shape}")
        return Blur(np.outer(a, b), boundary=boundary, factors=(a, b), shape=shape, cutoff=cutoff)

    @staticmethod
    def gaussian(size: int, sigma: float, *, boundary: str = "circular", shape: tuple[int, int] | None = None,
                 cutoff: float = DEFAULT_CUTOFF) -> Blur:
        """A size x size sampled Gaussian of standard deviation ``sigma`` pixels, summing to 1
        (DPS and DiffPIR: size 61, σ = 3; DDRM and DDNM: 5 taps, σ = 10)."""
        g = gaussian_kernel_1d(size, sigma)
        return Blur.separable(g, g, boundary=boundary, shape=shape, cutoff=cutoff)

    @staticmethod
    def uniform(size: int, *, boundary: str = "circular", shape: tuple[int, int] | None = None,
                cutoff: float = DEFAULT_CUTOFF) -> Blur:
        """The size x size box average (DDRM's and DDNM's uniform deblurring: size 9)."""
        _check_size(size)
        g = np.full(size, 1.0 / size)
        return Blur.separable(g, g, boundary=boundary, shape=shape, cutoff=cutoff)

    @staticmethod
    def motion(size: int, intensity: float, key: Array | int, *, boundary: str = "circular",
               shape: tuple[int, int] | None = None, cutoff: float = DEFAULT_CUTOFF) -> Blur:
        """A random-trajectory motion blur (:func:`motion_kernel`), the same for the same key
        (DPS and DiffPIR: size 61, intensity 0.5)."""
        return Blur(motion_kernel(size, intensity, key), boundary=boundary, shape=shape, cutoff=cutoff)

    # ---- shapes ------------------------------------------------------------------------
    def _kernel_size(self) -> tuple[int, int]:
        return int(self.kernel.shape[0]), int(self.kernel.shape[1])

    def _check_image(self, shape: tuple[int, ...], what: str = "x") -> None:
        if len(shape) != 3:
            raise ValueError(f"Blur expects images (H, W, C), got {what} with trailing shape {tuple(shape)}")
        if self.kernel.ndim == 3 and self.kernel.shape[2] not in (1, shape[2]):
            raise ValueError(f"the blur has {self.kernel.shape[2]} per-channel kernels but the image has "
                             f"{shape[2]} channels; give a (kh, kw) kernel to share it")

    def _check_bound(self, h: int, w: int) -> None:
        if self.shape is not None and (h, w) != tuple(self.shape):
            raise ValueError(f"this Blur was built for {self.shape[0]}x{self.shape[1]} images, got {h}x{w}")

    def bind(self, x_shape: tuple[int, ...]) -> Blur:
        self.y_shape(tuple(x_shape))
        return self if self.shape is not None else self.replace(shape=tuple(x_shape[:2]))

    def _channel_kernel(self) -> Array:
        """The kernel as (kh, kw, C') with C' = 1 (shared) or C."""
        return self.kernel if self.kernel.ndim == 3 else self.kernel[:, :, None]


class CircularBlur(Blur, SVDOperator):
    """A blur with circular boundary: the SVD tier through the 2-D FFT (build it with ``Blur(...)``)."""

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_image(tuple(x_shape))
        self._check_bound(*x_shape[:2])
        return tuple(x_shape)

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_image(tuple(y_shape), "y")
        self._check_bound(*y_shape[:2])
        return tuple(y_shape)

    # ---- the transfer function ---------------------------------------------------------
    def transfer(self, h: int, w: int) -> Array:
        """K̂ on the full H x W DFT grid, (H, W, C'), with the cut frequencies set to 0."""
        if self.factors is not None:
            frac = jnp.sqrt(self.cutoff)
            spec = []
            for f, n in zip(self.factors, (h, w)):
                p = jnp.zeros((n,), jnp.float32).at[_wrap(f.shape[0], n)].add(f)
                spec.append(_cut(_hermitian(jnp.fft.fft(p), (0,)), frac, (0,)))
            return (spec[0][:, None] * spec[1][None, :])[:, :, None]
        k = self._channel_kernel()
        kh, kw = self._kernel_size()
        p = jnp.zeros((h, w, k.shape[2]), jnp.float32).at[_wrap(kh, h)[:, None], _wrap(kw, w)[None, :]].add(k)
        return _cut(_hermitian(jnp.fft.fft2(p, axes=(0, 1)), (0, 1)), self.cutoff, (0, 1))

    def _half(self, h: int, w: int) -> Array:
        return self.transfer(h, w)[:, : w // 2 + 1]

    def _hw(self, v: Array, what: str = "x") -> tuple[int, int]:
        self._check_image(tuple(v.shape[1:]), what)
        self._check_bound(*v.shape[1:3])
        return int(v.shape[1]), int(v.shape[2])

    # ---- the map and its closed forms --------------------------------------------------
    def A(self, x: Array) -> Array:
        h, w = self._hw(x)
        return _irfft2(self._half(h, w) * _rfft2(x), h, w).astype(x.dtype)

    def AT(self, y: Array) -> Array:
        h, w = self._hw(y, "y")
        return _irfft2(jnp.conj(self._half(h, w)) * _rfft2(y), h, w).astype(y.dtype)

    def pinv(self, y: Array) -> Array:
        h, w = self._hw(y, "y")
        k = self._half(h, w)
        m2 = jnp.abs(k) ** 2
        inv = jnp.where(m2 > 0, jnp.conj(k) / jnp.where(m2 > 0, m2, 1.0), 0.0)
        return _irfft2(inv * _rfft2(y), h, w).astype(y.dtype)

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        h, w = self._hw(z)
        k = self._half(h, w)
        zf, yf = _rfft2(z), _rfft2(y)
        rho_b = _per_sample(rho, z)
        den = jnp.abs(k) ** 2 + rho_b
        out = jnp.where(den > 0, (jnp.conj(k) * yf + rho_b * zf) / jnp.where(den > 0, den, 1.0), zf)
        return _irfft2(out, h, w).astype(z.dtype)

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        h, w = self._hw(y, "y")
        k = self._half(h, w)
        m2 = jnp.abs(k) ** 2
        den = _per_sample(r2, y) * m2 + _per_sample(s2, y)
        out = jnp.where((m2 > 0) & (den > 0), jnp.conj(k) * _rfft2(y) / jnp.where(den > 0, den, 1.0), 0.0)
        return _irfft2(out, h, w).astype(y.dtype)

    # ---- the SVD view: V = Hartley, U = phase · Hartley, s = |K̂| ------------------------
    def _phase(self, h: int, w: int) -> Array:
        k = self.transfer(h, w)
        mag = jnp.abs(k)
        return jnp.where(mag > 0, k / jnp.where(mag > 0, mag, 1.0), 1.0)

    def Vt(self, x: Array) -> Array:
        self._hw(x)
        return _hartley(x)

    def V(self, xbar: Array) -> Array:
        return _hartley(xbar)

    def Ut(self, y: Array) -> Array:
        h, w = self._hw(y, "y")
        f = jnp.conj(self._phase(h, w)) * jnp.fft.fft2(y, axes=(1, 2), norm="ortho")
        return (f.real - f.imag).astype(y.dtype)

    def U(self, ybar: Array) -> Array:
        h, w = int(ybar.shape[1]), int(ybar.shape[2])
        f = self._phase(h, w) * jnp.fft.fft2(_hartley(ybar), axes=(1, 2), norm="ortho")
        return jnp.fft.ifft2(f, axes=(1, 2), norm="ortho").real.astype(ybar.dtype)

    def singulars(self) -> Array:
        if self.shape is None:
            raise ValueError("Blur.singulars() depends on the image size: build the blur with shape=(H, W) or "
                             "call .bind((H, W, C)) first (invdiff.solve does)")
        return jnp.abs(self.transfer(*self.shape))

    # ---- structure ---------------------------------------------------------------------
    def separable_factors(self, x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        self.y_shape(tuple(x_shape))
        if self.factors is None or not all(_concrete(v) for v in (*self.factors, self.cutoff)):
            return None
        frac = math.sqrt(float(self.cutoff))
        return tuple(_circulant_1d(np.asarray(f), n, frac) for f, n in zip(self.factors, x_shape[:2]))


class PaddedBlur(Blur):
    """A blur with reflect or valid boundary: the matrix-free tier (build it with ``Blur(...)``)."""

    def _pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        kh, kw = self._kernel_size()
        if self.boundary == "valid":
            return (0, 0), (0, 0)
        return (kh - 1 - kh // 2, kh // 2), (kw - 1 - kw // 2, kw // 2)

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_image(tuple(x_shape))
        h, w, c = x_shape
        self._check_bound(h, w)
        kh, kw = self._kernel_size()
        if self.boundary == "valid":
            if h < kh or w < kw:
                raise ValueError(f"a valid {kh}x{kw} blur needs images of at least that size, got {h}x{w}")
            return (h - kh + 1, w - kw + 1, c)
        (t, b), (left, r) = self._pads()
        if max(t, b) >= h or max(left, r) >= w:
            raise ValueError(f"reflect padding of a {kh}x{kw} kernel needs images larger than half the kernel, "
                             f"got {h}x{w}; use boundary='circular'")
        return tuple(x_shape)

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_image(tuple(y_shape), "y")
        h, w, c = y_shape
        kh, kw = self._kernel_size()
        x = (h + kh - 1, w + kw - 1, c) if self.boundary == "valid" else tuple(y_shape)
        self.y_shape(x)
        return x

    def A(self, x: Array) -> Array:
        self.y_shape(tuple(x.shape[1:]))
        c = x.shape[3]
        (t, b), (left, r) = self._pads()
        if self.boundary == "reflect":
            x = jnp.pad(x, ((0, 0), (t, b), (left, r), (0, 0)), mode="reflect")
        k = jnp.broadcast_to(self._channel_kernel(), self.kernel.shape[:2] + (c,)).astype(x.dtype)
        rhs = k[::-1, ::-1, None, :]  # a convolution: lax.conv correlates, so flip the kernel
        return jax.lax.conv_general_dilated(x, rhs, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=c)
