"""The UNet's 2-D convolution, with an input gradient that stays fast inside a compiled loop.

Why not ``flax.linen.Conv``: differentiating ``lax.conv_general_dilated`` with respect to its
input gives a convolution whose kernel has input and output features swapped. Outside a loop
XLA materialises that transposed kernel once. Inside a ``lax.scan`` body (the solvers' loop),
XLA's CPU backend folds the transpose into the convolution instead (kernel layout ``01oi``).
It then runs a generic convolution that is about 2x slower (table below).

The cost falls on MCG, PiGDM and DPS. :func:`conv` keeps the forward pass and the kernel
gradient of ``lax``. It writes the input gradient out as a convolution with an explicitly
flipped and transposed kernel, which XLA copies into the standard layout in every step (a pass
over the weights, small next to the convolutions). The values are the same as ``lax``'s; ``tests/test_network.py``
compares both gradients. ``solve`` passes these kernels in, computed once with numpy
(:func:`invdiff.nets.unet.prepare_params`): on CPU each in-program transpose was also a kernel XLA generated
and compiled, one per weight shape.

Forward + VJP of the bundled emoji64 model at batch 4, inside a 4-step ``lax.scan``, on a 2-core
CPU (jax 0.10.2, invdiff's XLA options):

| input gradient | per step | program compiled in |
|---|---|---|
| ``lax``'s own | 548 ms | 5.0 s |
| this module, transposed kernel behind ``lax.optimization_barrier`` (until Nov 2026) | 291 ms | 6.1-6.7 s |
| this module, no barrier | 237-253 ms | 5.0-6.1 s |

The barrier made XLA store every transposed kernel twice, in two layouts: one more compiled
kernel per weight shape.

The input gradient of :func:`up2_conv3`'s 2x2 phase convolution (4 O features in, I out)
runs as :func:`taps_conv`: one matrix product for all four taps, then a shifted sum. XLA:CPU's
convolution ran it at 18-60 GFLOP/s, the product at 80-100. Its input is the gradient of the
phases, written in one pass by :data:`interleave_phases`' VJP. Forward + VJP, alternated in
one process (scratch A/B, 14-16 repeats, 2-core AMD EPYC, jax 0.10.2): the bundled model at
batch 16 1731 -> 1629 ms, the 128-channel ADM at batch 1 1274 -> 1197 ms.

:func:`winograd_conv3` computes a 3x3 stride-1 convolution by Winograd's F(2x2, 3x3) (Lavin &
Gray 2016): 16/36 of the multiply-adds, as 16 matrix products between additions that
transform the tiles. On CPU it pays for wide layers, and only in programs compiled without
YNNPACK's element-wise fusions, which split the transforms into one pass per addition. A
3x3 128->128 convolution at 4x64x64 (2-core AMD EPYC, jax 0.10.2, medians of 20): direct 24-26
ms; Winograd 20-22 ms without those fusions (transform in 4 ms, products 13 ms, transform out
1 ms), 32-37 ms with them. :meth:`invdiff.nets.adm.ADMModel.with_prepared` decides where it is
used (:data:`invdiff.nets.adm.CPU_WINOGRAD_MIN_CHANNELS`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
_DN = ("NHWC", "HWIO", "NHWC")

#: the Flax variable collection of :func:`invdiff.nets.unet.prepare_params`
PREPARED = "prepared"


def _plain(x: Array, k: Array, strides: tuple[int, int], padding: tuple, precision: Any) -> Array:
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_DN, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: Array, k: Array, strides: tuple[int, int], padding: tuple, precision: Any = None,
         kt: Array | None = None, kw: Array | None = None, kwt: Array | None = None) -> Array:
    """NHWC x HWIO convolution with explicit ``padding`` ((lo, hi), (lo, hi)), as ``lax``'s.
    ``kt``, if given, must be :func:`flip_kernel` of ``k`` (for a 2x2 kernel at stride 1 padded
    by 1, as :func:`up2_conv3`'s, :func:`taps_matrix` of that): the input gradient then uses it
    instead of flipping ``k`` inside the program. ``kw``, ``kwt``, if given, must be
    :func:`winograd_kernel` of ``k`` and of :func:`flip_kernel` of ``k``, for a 3x3 kernel at
    stride 1 padded by 1: the forward pass, and the input gradient, then run as
    :func:`winograd_conv3`. No gradient flows into ``kt``, ``kw``, ``kwt``."""
    return _forward(x, k, strides, padding, precision, kw)


def _forward(x: Array, k: Array, strides: tuple[int, int], padding: tuple, precision: Any,
             kw: Array | None) -> Array:
    """The convolution itself: by Winograd with ``kw`` (:func:`winograd_kernel` of ``k``), else lax's."""
    return _plain(x, k, strides, padding, precision) if kw is None else winograd_conv3(x, kw, precision)


def flip_kernel(k: Any) -> Any:
    """An HWIO kernel flipped in space with its in/out features swapped: the kernel of the
    input gradient. numpy in, numpy out (no compiled program); jax arrays are traced."""
    xp = np if isinstance(k, np.ndarray) else jnp
    return xp.swapaxes(k[::-1, ::-1], 2, 3)


def taps_matrix(k: Any) -> Any:
    """An HWIO kernel as the (I, H W O) matrix of :func:`taps_conv`. numpy in, numpy out."""
    kh, kw, ci, co = k.shape
    return k.transpose(2, 0, 1, 3).reshape(ci, kh * kw * co)


def taps_conv(x: Array, m: Array, window: tuple[int, int], precision: Any = None) -> Array:
    """An unpadded stride-1 convolution of ``x`` (NHWC) with the ``window``-sized kernel whose
    :func:`taps_matrix` is ``m``, as one matrix product for every tap at every input pixel,
    then a shifted sum over the taps: y = sum_{r,s} (x k[r, s])[:, r:r+H', s:s+W'].
    (H' + kh - 1)(W' + kw - 1) / (H' W') the multiply-adds of the direct form, in one large
    product; it pays where the output has few features next to the input (the input gradient
    of :func:`up2_conv3`: 4 O features in, I out). On a 2-core AMD EPYC (jax 0.10.2, medians of
    20): 2x2, 256 -> 64 features at 8x32x32, 13 ms against 47 for ``lax``'s convolution; 1024 ->
    256 at 1x32x32, 22 against 30 ms."""
    b, h, w, _ = x.shape
    kh, kw = window
    z = lax.dot_general(x, m, (((3,), (0,)), ((), ())), precision=precision).reshape(b, h, w, kh, kw, -1)
    ho, wo = h - kh + 1, w - kw + 1
    out = z[:, :ho, :wo, 0, 0]
    for r in range(kh):
        for s in range(kw):
            if r or s:
                out = out + z[:, r:r + ho, s:s + wo, r, s]
    return out


def _taps_gradient(k: Array, strides: tuple[int, int], padding: tuple) -> bool:
    """Whether the input gradient runs as :func:`taps_conv` (a 2x2 kernel at stride 1 padded by
    1, as :func:`up2_conv3`'s), with ``kt`` as a :func:`taps_matrix`."""
    return k.shape[:2] == (2, 2) and tuple(strides) == (1, 1) and tuple(map(tuple, padding)) == ((1, 1), (1, 1))


def _conv_fwd(x, k, strides, padding, precision, kt, kw, kwt):
    if kt is not None and (kt.ndim == 2) != _taps_gradient(k, strides, padding):
        raise ValueError(f"conv: kt of shape {kt.shape} for a {k.shape[0]}x{k.shape[1]} kernel at stride {strides}, "
                         f"padding {padding}: kt must be taps_matrix(flip_kernel(k)) for a 2x2 kernel at stride 1 "
                         "padded by 1, else flip_kernel(k)")
    return _forward(x, k, strides, padding, precision, kw), (x, k, kt, kwt)


def _conv_bwd(strides, padding, precision, res, g):
    x, k, kt, kwt = res
    # input gradient: a stride-1 convolution of g, dilated by the stride, with the kernel
    # flipped in space and its in/out features swapped (see the module docstring)
    if kwt is not None:
        dx = winograd_conv3(g, kwt, precision)
    elif _taps_gradient(k, strides, padding):
        # up2_conv3's gradient: YNNPACK ran this 2x2 convolution (4 O -> I features) at 18-60
        # GFLOP/s, the product over all taps at 80-100 (see taps_conv)
        m = taps_matrix(flip_kernel(k)) if kt is None else kt
        dx = taps_conv(g, m.astype(g.dtype), k.shape[:2], precision)
    else:
        if kt is None:
            kt = flip_kernel(k)
        pads = []
        for (lo, hi), s, n, kk, m in zip(padding, strides, x.shape[1:3], k.shape[:2], g.shape[1:3]):
            extra = n + lo + hi - kk - (m - 1) * s  # input rows the forward pass never reached
            pads.append((kk - 1 - lo, kk - 1 - hi + extra))
        dx = lax.conv_general_dilated(g, kt.astype(g.dtype), (1, 1), pads, lhs_dilation=strides,
                                      dimension_numbers=_DN, precision=precision)
    # kernel gradient: x correlated with g (batch and features swapped), g dilated by the stride;
    # written out rather than traced through jax.vjp on every call (dropped when unused)
    kpads = [(lo, kk + (m - 1) * s - n - lo)
             for (lo, _), s, n, kk, m in zip(padding, strides, x.shape[1:3], k.shape[:2], g.shape[1:3])]
    dk = lax.conv_general_dilated(x, g.astype(x.dtype), (1, 1), kpads, rhs_dilation=strides,
                                  dimension_numbers=("CHWN", "IHWO", "HWNC"), precision=precision)
    return dx.astype(x.dtype), dk.astype(k.dtype), None, None, None


conv.defvjp(_conv_fwd, _conv_bwd)


# Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", CVPR 2016, eq. 8): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A per 4x4 input tile d and
# 2x2 output tile Y, with
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # kernel transform
#   Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]       (input, _bt)
#   Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]                                     (output)


def winograd_kernel(k: Any) -> np.ndarray:
    """The transformed kernel of :func:`winograd_conv3` for a 3x3 HWIO kernel ``k``: G k Gᵀ for
    every (in, out) feature pair, shape (16, I, O) with tile position (a, b) at 4 a + b.
    Computed in float64 and stored in ``k``'s dtype. numpy in, numpy out."""
    k = np.asarray(k)
    if k.ndim != 4 or k.shape[:2] != (3, 3):
        raise ValueError(f"winograd_kernel needs a 3x3 HWIO kernel, got shape {k.shape}")
    u = np.einsum("ai,ijco,bj->abco", _G, k.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, *k.shape[2:]).astype(k.dtype))


def _bt(d0: Array, d1: Array, d2: Array, d3: Array) -> tuple[Array, Array, Array, Array]:
    """Bᵀ d for the four taps d0..d3 of tiles along one axis."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def winograd_conv3(x: Array, u: Array, precision: Any = None) -> Array:
    """``conv(x, k)`` for a 3x3 kernel ``k`` at stride 1 padded by 1 on every side, by
    Winograd's F(2x2, 3x3), with ``u = winograd_kernel(k)``. Each 2x2 output tile reads a 4x4
    input tile; the 16 tile positions are 16 matrix products (tiles x I) @ (I x O), 16/36 of a
    direct convolution's multiply-adds, between additions that transform the tiles in and out.
    An odd height or width is padded by one more row or column and cropped. Equal to the
    direct form up to float rounding: the 128-channel ADM's output and input gradient differ
    by 1.3e-6 and 1.9e-6 relative to their largest values. On CPU only where it pays: see
    :data:`invdiff.nets.adm.CPU_WINOGRAD_MIN_CHANNELS`."""
    b, h, w, c = x.shape
    h2, w2 = h + h % 2, w + w % 2
    th, tw = h2 // 2, w2 // 2
    xp = jnp.pad(x, ((0, 0), (1, 1 + h % 2), (1, 1 + w % 2), (0, 0)))  # (b, h2 + 2, w2 + 2, c)
    # tile row i reads padded rows 2i..2i+3: rows (2i, 2i+1) of the top pairs, then of the bottom
    top, bottom = xp[:, :h2].reshape(b, th, 2, w2 + 2, c), xp[:, 2:].reshape(b, th, 2, w2 + 2, c)
    rows = jnp.stack(_bt(top[:, :, 0], top[:, :, 1], bottom[:, :, 0], bottom[:, :, 1]))
    left, right = rows[..., :w2, :].reshape(4, b, th, tw, 2, c), rows[..., 2:, :].reshape(4, b, th, tw, 2, c)
    v = jnp.stack(_bt(left[..., 0, :], left[..., 1, :], right[..., 0, :], right[..., 1, :]), 1)  # (4, 4, b, th, tw, c)
    m = lax.dot_general(v.reshape(16, b * th * tw, c), u.astype(x.dtype), (((2,), (1,)), ((0,), (0,))),
                        precision=precision).reshape(4, 4, b, th, tw, -1)
    r = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])  # Aᵀ over the tile rows: output row 0, 1
    y = jnp.stack([jnp.stack([q[0] + q[1] + q[2], q[1] - q[2] - q[3]], axis=3) for q in r], axis=2)
    return y.reshape(b, h2, w2, -1)[:, :h, :w]  # (b, th, 2, tw, 2, o) interleaved


def checked_param(module: nn.Module, name: str, init: Any, shape: tuple[int, ...]) -> Array:
    """``module.param(name, init, shape, float32)``, without Flax's shape check by tracing the
    initialiser on every apply (``jax.eval_shape`` per parameter: a third of the UNet's trace
    time); the shape is compared directly instead."""
    if module.has_variable("params", name):
        value = module.get_variable("params", name)
        if tuple(jnp.shape(value)) != tuple(shape):
            raise flax.errors.ScopeParamShapeError(name, module.scope.path_text,
                                                   tuple(jnp.shape(value)), tuple(shape))
        return value
    return module.param(name, init, shape, jnp.float32)


def _phase_taps(k: Any, axis: int) -> list[list[Any]]:
    """[a][r]: the 2-tap kernels along ``axis`` of output phase a (even, odd) of a 3-tap kernel
    over a nearest-neighbour x2 upsampled input: even outputs read input pixels (i - 1, i) with
    taps (k0, k1 + k2), odd ones (i, i + 1) with (k0 + k1, k2)."""
    k0, k1, k2 = (k[(slice(None),) * axis + (j,)] for j in range(3))
    return [[k0, k1 + k2], [k0 + k1, k2]]


def phase_kernel(k: Any) -> Any:
    """The 2x2 kernel (2, 2, I, 4 O) of :func:`up2_conv3` for a 3x3 HWIO kernel ``k``: output
    channels (a, c, o) hold phase (a, c) (row, column). Sums of 2-4 taps, added in one fixed
    order whether ``k`` is numpy or jax (the same bits both ways). numpy in, numpy out."""
    xp = np if isinstance(k, np.ndarray) else jnp
    rows = _phase_taps(k, 0)  # [a][r]: (3, I, O) over the columns
    taps = [[_phase_taps(rows[a][r], 0) for r in range(2)] for a in range(2)]  # [a][r][c][s]: (I, O)
    k4 = xp.stack([xp.stack([xp.stack([xp.stack([taps[a][r][c][s] for c in range(2)], -2) for a in range(2)], -3)
                             for s in range(2)]) for r in range(2)])  # (r, s, I, a, c, O)
    return k4.reshape(2, 2, k.shape[2], 4 * k.shape[3])


def up2_conv3(x: Array, k: Array, precision: Any = None, custom_vjp: bool = True, k4: Array | None = None,
              k4t: Array | None = None) -> Array:
    """``conv(nearest_up2(x), k)`` for a 3x3 kernel ``k`` padded by 1, without the upsampled
    image: even output rows read input rows (i-1, i) with taps (k0, k1 + k2), odd ones (i, i+1)
    with (k0 + k1, k2), and likewise for columns. All four phases are one 2x2 convolution of
    ``x`` padded by 1, with 4x the output channels; each phase is its output shifted by (a, c)
    and the phases are interleaved. 4/9 (H+1)(W+1)/(HW) of the direct form's multiply-adds
    (0.47 at 32x32), and the input gradient needs no 2x2 sum over an upsampled gradient.
    Equal to the direct form up to float rounding (the taps are added before multiplying).
    ``custom_vjp``: as :class:`Conv2d`'s; ``k4``, ``k4t``, if given, must be :func:`phase_kernel`
    of ``k`` and :func:`taps_matrix` of :func:`flip_kernel` of that (see
    :func:`invdiff.nets.unet.prepare_params`)."""
    b, h, w, ci = x.shape
    o = k.shape[-1]
    k4, pads = phase_kernel(k) if k4 is None else k4, ((1, 1), (1, 1))
    if not custom_vjp:
        return _interleave(_plain(x, k4, (1, 1), pads, precision).reshape(b, h + 1, w + 1, 2, 2, o))
    return interleave_phases(conv(x, k4, (1, 1), pads, precision, k4t).reshape(b, h + 1, w + 1, 2, 2, o))


def _interleave(y: Array) -> Array:
    b, h, w = y.shape[0], y.shape[1] - 1, y.shape[2] - 1
    rows = [jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in range(2)], axis=3) for a in range(2)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, -1)  # (B, H, 2, W, 2, O) interleaved


def _interleave_bwd(_: None, g: Array) -> tuple[Array]:
    b, h, w, o = g.shape[0], g.shape[1] // 2, g.shape[2] // 2, g.shape[3]
    g = g.reshape(b, h, 2, w, 2, o)
    phase = [[jnp.pad(g[:, :, a, :, c], ((0, 0), (a, 1 - a), (c, 1 - c), (0, 0))) for c in range(2)]
             for a in range(2)]
    return (jnp.stack([jnp.stack(p, axis=3) for p in phase], axis=3),)


#: The image of :func:`up2_conv3` from its phase convolution's output y, shape (B, H + 1, W + 1,
#: 2, 2, O): output pixel (2 i + a, 2 j + c) is y[:, i + a, j + c, a, c]. Its VJP writes the
#: gradient of y in one pass, each phase's block padded by one row and column. Autodiff of the
#: slices padded each phase to the whole of y and added the four, and XLA:CPU fused those sums
#: into the gradient's convolution.
interleave_phases = jax.custom_vjp(_interleave)
interleave_phases.defvjp(lambda y: (_interleave(y), None), _interleave_bwd)


class Conv2d(nn.Module):
    """``flax.linen.Conv`` for NHWC images with symmetric padding ``kernel // 2`` (the same
    parameters, ``kernel`` (HWIO) and ``bias``, and the same dtype handling), on :func:`conv` and
    :func:`checked_param`. ``upsample=True`` (3x3 kernels, stride 1) convolves the
    nearest-neighbour x2 upsampled input, computed by :func:`up2_conv3`. ``custom_vjp=False``
    convolves with ``lax`` directly, without :func:`conv`'s VJP rule: for programs that never
    differentiate the network (faster to trace; autodiff still works, slower)."""

    features: int
    kernel: int
    strides: int = 1
    dtype: Any = None
    precision: Any = None
    upsample: bool = False
    custom_vjp: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = checked_param(self, "kernel", nn.initializers.lecun_normal(),
                          (self.kernel, self.kernel, x.shape[-1], self.features))
        b = checked_param(self, "bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or jnp.result_type(x, k)
        x, k, b = x.astype(dtype), k.astype(dtype), b.astype(dtype)
        # see unet.prepare_params
        kt = self.get_variable(PREPARED, "kernel_t").astype(dtype) if self.has_variable(PREPARED, "kernel_t") else None
        if self.upsample:
            if self.kernel != 3 or self.strides != 1:
                raise ValueError(f"upsample=True needs a 3x3 stride-1 conv, got kernel {self.kernel}, "
                                 f"stride {self.strides}")
            k4 = self.get_variable(PREPARED, "kernel_up").astype(dtype) if self.has_variable(PREPARED, "kernel_up") \
                else None
            return up2_conv3(x, k, self.precision, self.custom_vjp, k4, kt if k4 is not None else None) + b
        p = self.kernel // 2
        pads, strides = ((p, p), (p, p)), (self.strides, self.strides)
        kw, kwt = (self.get_variable(PREPARED, name).astype(dtype) if self.has_variable(PREPARED, name) else None
                   for name in ("kernel_w", "kernel_wt"))
        if kw is not None and (self.kernel, self.strides) != (3, 1):
            raise ValueError(f"kernel_w (Winograd) needs a 3x3 stride-1 conv, got kernel {self.kernel}, "
                             f"stride {self.strides}")
        if not self.custom_vjp:
            return _forward(x, k, strides, pads, self.precision, kw) + b
        return conv(x, k, strides, pads, self.precision, kt, kw, kwt) + b
