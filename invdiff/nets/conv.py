"""The UNet's 2-D convolution, with an input gradient that stays fast inside a compiled loop.

Why not ``flax.linen.Conv``: differentiating ``lax.conv_general_dilated`` with respect to its
input gives a convolution whose kernel has input and output features swapped. Outside a loop
XLA materialises that transposed kernel once. Inside a ``lax.scan`` body (the solvers' loop),
XLA's CPU backend folds the transpose into the convolution instead (kernel layout ``01oi``).
It then runs a generic convolution that is about 3.5x slower.

On the bundled emoji64 model at batch 1 on a 2-core CPU, one forward + VJP costs:

| where | forward + VJP |
|---|---|
| outside a loop | 200 ms |
| inside a scan, with ``lax`` | 775 ms |
| inside a scan, with this module | 174 ms |

The cost falls on MCG, PiGDM and DPS. :func:`conv` keeps the forward pass and the kernel
gradient of ``lax``. It writes the input gradient out as a convolution with an explicitly
flipped and transposed kernel, held behind ``lax.optimization_barrier`` so that XLA cannot fold
the transpose back. The values are the same as ``lax``'s; ``tests/test_network.py`` compares
both gradients.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
_DN = ("NHWC", "HWIO", "NHWC")


def _plain(x: Array, k: Array, strides: tuple[int, int], padding: tuple, precision: Any) -> Array:
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_DN, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: Array, k: Array, strides: tuple[int, int], padding: tuple, precision: Any = None) -> Array:
    """NHWC x HWIO convolution with explicit ``padding`` ((lo, hi), (lo, hi)), as ``lax``'s."""
    return _plain(x, k, strides, padding, precision)


def _conv_fwd(x, k, strides, padding, precision):
    return _plain(x, k, strides, padding, precision), (x, k)


def _conv_bwd(strides, padding, precision, res, g):
    x, k = res
    # input gradient: a stride-1 convolution of g, dilated by the stride, with the kernel
    # flipped in space and its in/out features swapped (materialised: see the module docstring)
    kt = lax.optimization_barrier(jnp.swapaxes(k[::-1, ::-1], 2, 3))
    pads = []
    for (lo, hi), s, n, kk, m in zip(padding, strides, x.shape[1:3], k.shape[:2], g.shape[1:3]):
        extra = n + lo + hi - kk - (m - 1) * s  # input rows the forward pass never reached
        pads.append((kk - 1 - lo, kk - 1 - hi + extra))
    dx = lax.conv_general_dilated(g, kt.astype(g.dtype), (1, 1), pads, lhs_dilation=strides, dimension_numbers=_DN,
                                  precision=precision)
    # kernel gradient: x correlated with g (batch and features swapped), g dilated by the stride;
    # written out rather than traced through jax.vjp on every call (dropped when unused)
    kpads = [(lo, kk + (m - 1) * s - n - lo)
             for (lo, _), s, n, kk, m in zip(padding, strides, x.shape[1:3], k.shape[:2], g.shape[1:3])]
    dk = lax.conv_general_dilated(x, g.astype(x.dtype), (1, 1), kpads, rhs_dilation=strides,
                                  dimension_numbers=("CHWN", "IHWO", "HWNC"), precision=precision)
    return dx.astype(x.dtype), dk.astype(k.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


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


class Conv2d(nn.Module):
    """``flax.linen.Conv`` for NHWC images with symmetric padding ``kernel // 2`` (the same
    parameters, ``kernel`` (HWIO) and ``bias``, and the same dtype handling), on :func:`conv` and
    :func:`checked_param`."""

    features: int
    kernel: int
    strides: int = 1
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = checked_param(self, "kernel", nn.initializers.lecun_normal(),
                          (self.kernel, self.kernel, x.shape[-1], self.features))
        b = checked_param(self, "bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or jnp.result_type(x, k)
        x, k, b = x.astype(dtype), k.astype(dtype), b.astype(dtype)
        p = self.kernel // 2
        return conv(x, k, (self.strides, self.strides), ((p, p), (p, p)), self.precision) + b
