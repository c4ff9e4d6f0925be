"""guided-diffusion's ADM UNet (``UNetModel``) in Flax linen, NHWC.

A line-by-line port of ``guided_diffusion/unet.py`` (openai/guided-diffusion, commit 22e0df8,
Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis"), restricted to 2-D
images. Numerics follow the original:

* timestep features: ``[cos(t·f_i), sin(t·f_i)]`` with f_i = exp(-ln(10000)·i/half), built in
  float32 (``timestep_embedding``);
* every norm is a 32-group GroupNorm with eps 1e-5 computed in float32 (``GroupNorm32``);
* attention softmax in float32; q and k each scaled by ch^(-1/4) (``QKVAttention*``);
* the stride-2 down-sampling conv pads one pixel on every side (not XLA's "SAME");
* in the decoder, the current activation is concatenated *before* the stored skip.

Parameter names mirror the PyTorch ``state_dict`` so that checkpoints map mechanically:
the top-level module ``input_blocks_3_1`` holds ``input_blocks.3.1.*``, and inside a
ResBlock ``in_layers_2`` is ``in_layers.2`` (see :func:`flax_to_torch_key`).

``dtype`` is the compute dtype (e.g. bfloat16); parameters are always float32. As in the
original's fp16 mode, the time embedding and the final ``out`` layers run in float32, and
norms and softmaxes are always float32.

Computed differently from the original, for speed on XLA:CPU, with the same function (outputs
equal to the original's to about 1e-6 relative, ``tests/test_network.py``):

* a norm followed by SiLU is one :func:`group_norm_silu` (the SiLU in float32, where the
  original's fp16 mode runs it in fp16), and the scale-shift norm's ``(1 + scale)`` and
  ``shift`` fold into the norm's per-sample affine; both have written-out VJPs that store only
  the norm's input and do little arithmetic on per-(sample, channel) arrays (see the note
  above :func:`group_norm`);
* nearest-neighbour x2 upsampling followed by a 3x3 conv is one 2x2 conv of the small image
  (:func:`invdiff.nets.conv.up2_conv3`);
* the attention softmax has a written-out VJP.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invdiff.nets.conv import PREPARED, Conv2d, checked_param, flip_kernel, phase_kernel, taps_matrix, winograd_kernel

Array = jax.Array
Dtype = Any

_PAD1 = ((1, 1), (1, 1))


def timestep_embedding(t: Array, dim: int, max_period: int = 10000) -> Array:
    """Sinusoidal timestep features (guided-diffusion ``nn.timestep_embedding``), float32.

    The first half holds cosines, the second half sines; an odd ``dim`` gets a zero column.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class GroupNorm32(nn.Module):
    """guided-diffusion's ``GroupNorm32``: 32 groups, eps 1e-5, computed in float32.

    Parameters ``scale`` / ``bias`` are torch's ``weight`` / ``bias``. Returns the input dtype.
    The statistics are the two-pass mean and variance of the original; see :func:`group_norm`.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    #: False: the forward ops alone, without the written-out VJP rules (see UNet.custom_vjp)
    custom_vjp: bool = True

    @nn.compact
    def __call__(self, x: Array, scale_shift: tuple[Array, Array] | None = None, *,
                 act: bool = False) -> Array:
        """GroupNorm of ``x``; with ``scale_shift`` = (s, b), each (B, C), ``GN(x) * (1 + s) + b``
        (a ResBlock's scale-shift norm); with ``act``, followed by SiLU (:func:`group_norm_silu`,
        in float32)."""
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm32 needs channels divisible by {self.num_groups}, got {c}")
        scale = checked_param(self, "scale", nn.initializers.ones, (c,))
        bias = checked_param(self, "bias", nn.initializers.zeros, (c,))
        h = x.astype(jnp.float32)
        half = None
        if scale_shift is not None:
            # (GN(h) scale + bias)(1 + s) + b as a per-sample affine: two small ops (one XLA:CPU
            # kernel with the slices of the embedding projection they read) that save four
            # operations per pixel in the forward pass and more in the VJP
            s, b = (jnp.asarray(v, jnp.float32) for v in scale_shift)
            scale, bias = scale * (1 + s), bias * (1 + s) + b
        elif act and self.has_variable(PREPARED, "bias_half"):
            half = self.get_variable(PREPARED, "bias_half")
        g, eps = self.num_groups, self.epsilon
        if not self.custom_vjp:
            fwd = _group_norm_silu_fwd(h, scale, bias, g, eps, half) if act else _group_norm_fwd(h, scale, bias, g, eps)
            out = fwd[0]
        elif act:
            out = _norm_silu(h, scale, bias, g, eps, half)
        else:
            out = _norm(h, scale, bias, g, eps)
        return out.astype(x.dtype)


# How the norms are written for XLA:CPU. Its YNNPACK fusions take element-wise work only on
# arrays of at least 4096 elements; any arithmetic on a per-(sample, channel) array (B, C)
# becomes a generated kernel of its own, one per channel count and pattern, each costing
# 10-30 ms of compilation, and a scalar constant that meets an image is stored as an image.
# So the (B, C) arrays here are parameters and the outputs of the reductions (channel sums
# and their group means: one YNNPACK reduce + dot each), and everything else (the affine and
# the gradient coefficients) is computed at image size, in the pass that reads the image.
# Small ops left: rsqrt(var + eps) (per pixel it would cost run time), a ResBlock's
# scale-shift folded into the affine (GroupNorm32: per pixel it cost ~20 % more in the VJP)
# and, before a SiLU, bias / 2 (``half``; prepare_params computes it once).


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(h: Array, scale: Array, bias: Array, groups: int, eps: float) -> Array:
    """GroupNorm of channels-last ``h`` (B, ..., C) with affine ``scale``, ``bias``, each (C,) or
    per sample (B, C): the mean, then the variance of the centred values (two passes, as torch),
    per sample and group of C / groups channels.

    Every pass sums over the spatial axes per channel first (contiguous rows in NHWC), then over
    the channels of a group (:func:`_group_mean`): reducing a (B, H, W, G, C/G) view in one go
    ran 2-4x slower on XLA:CPU. The VJP is written out (:func:`_norm_input_grad`) and is traced
    once per call instead of differentiating about twenty primitives."""
    return _group_norm_fwd(h, scale, bias, groups, eps)[0]


def _group_mean(v: Array, like: Array, groups: int, times: float = 1.0) -> Array:
    """Per-channel sums ``v`` (B, C) of ``like`` (B, ..., C) -> ``times`` their group means,
    (B, C), as one product with a block-diagonal averaging matrix. Summing a (B, G, C/G)
    view and repeating the result took five small XLA:CPU kernels per use where this takes one
    (a norm and its VJP use it four times): the bundled model's forward compiled 40 % faster."""
    b, c = v.shape
    n = math.prod(like.shape[1:-1]) * (c // groups)
    gid = np.arange(c) // (c // groups)
    avg = jnp.asarray((gid[:, None] == gid[None, :]) * (times / n), v.dtype)
    return jnp.dot(v, avg, precision=jax.lax.Precision.HIGHEST)


def _channel_sums(h: Array) -> Array:
    return jnp.sum(h, tuple(range(1, h.ndim - 1)))


def _per_sample(v: Array, like: Array) -> Array:
    """A per-channel array (C,) or (B, C) as (1 or B, 1.., C), to broadcast against ``like``."""
    return v.reshape((-1,) + (1,) * (like.ndim - 2) + (like.shape[-1],))


def _param_grad(v: Array, param: Array, c: float = 1.0) -> Array:
    """``c`` times per-(sample, channel) sums (B, C), as the gradient of a (C,) or (B, C) array."""
    v = v.sum(0) if param.ndim == 1 else v
    return v if c == 1.0 else c * v


def _group_stats(h: Array, groups: int, eps: float, half: bool) -> tuple[Array, Array]:
    """The group mean and rstd = 1 / sqrt(var + eps), or rstd / 2 = 1 / sqrt(4 var + 4 eps) for
    ``half`` (the 4 is in the averaging matrix: no extra op); each (B, C). Kept 2-D: as
    (B, 1, 1, C) XLA:CPU gave rstd another layout and copied it, a kernel per channel count."""
    k = 4.0 if half else 1.0
    mean = _group_mean(_channel_sums(h), h, groups)
    var = _group_mean(_channel_sums(jnp.square(h - _per_sample(mean, h))), h, groups, k)
    return mean, jax.lax.rsqrt(var + k * eps)


def _half_bias(bias: Array, bias_half: Array | None, half: bool) -> Array:
    """``bias`` / 2 for ``half`` (``bias_half`` if given: see :func:`prepare_params`)."""
    if not half:
        return bias
    return 0.5 * bias if bias_half is None else bias_half


def _affine(h: Array, mean: Array, rstd: Array, scale: Array, bias: Array, bias_half: Array | None,
            half: bool) -> Array:
    """GN(h) scale + bias, one image-sized op at a time; / 2 for ``half`` (with ``rstd`` from
    :func:`_group_stats` of the same ``half``)."""
    return (h - _per_sample(mean, h)) * _per_sample(rstd, h) * _per_sample(scale, h) + _per_sample(
        _half_bias(bias, bias_half, half), h)


def _group_norm_fwd(h: Array, scale: Array, bias: Array, groups: int, eps: float, bias_half: Array | None = None,
                    half: bool = False) -> tuple[Array, tuple]:
    mean, rstd = _group_stats(h, groups, eps, half)
    res = (h, mean, rstd, scale, bias, bias_half)
    return _affine(*res, half=half), res


def _group_norm_bwd(groups: int, eps: float, res: tuple, g: Array) -> tuple:
    return _norm_input_grad(res, g, groups, half=False)


def _norm_input_grad(res: tuple, g: Array, groups: int, half: bool) -> tuple:
    """The VJP of the norm (:func:`_affine` and the statistics) for dL/d(GN(h) scale + bias) =
    ``g``, or = ``g`` / 2 for ``half`` (with the residuals of the same ``half``).

    With xhat = (h - mean) rstd and gx = dL/dxhat, dL/dh = rstd (gx - <gx> - xhat <gx xhat>)
    (<.> a mean over the group). For ``half``, rstd and xhat are halved and the 4 their
    product lacks is in the averaging matrix. Only the sums are (B, C); every other quantity is
    recomputed at image size from h and g in the pass that needs it."""
    h, mean, rstd, scale, bias, _ = res
    xhat = (h - _per_sample(mean, h)) * _per_sample(rstd, h)
    gx = g * _per_sample(scale, h)
    m1 = _per_sample(_group_mean(_channel_sums(gx), h, groups), h)
    m2 = _per_sample(_group_mean(_channel_sums(gx * xhat), h, groups, 4.0 if half else 1.0), h)
    dh = (gx - m1 - xhat * m2) * _per_sample(rstd, h)
    return dh, _param_grad(_channel_sums(g * xhat), scale), _param_grad(_channel_sums(g), bias, 0.5 if half else 1.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_silu(h: Array, scale: Array, bias: Array, groups: int, eps: float,
                    bias_half: Array | None = None) -> Array:
    """``silu(group_norm(h, scale, bias, groups, eps))``, as u + u tanh(u) with u = z / 2
    (the same function: sigmoid(z) = (1 + tanh(z / 2)) / 2; ``jax.nn.sigmoid`` is expanded by
    XLA:CPU into exp and scalar constants). Its VJP keeps only ``h`` and the per-group
    statistics and recomputes the rest, so the forward pass fuses whole into the convolution
    that reads its output. ``bias_half``, if given, must be ``bias / 2`` (:func:`prepare_params`;
    no gradient flows into it)."""
    return _group_norm_silu_fwd(h, scale, bias, groups, eps, bias_half)[0]


def _group_norm_silu_fwd(h: Array, scale: Array, bias: Array, groups: int, eps: float,
                         bias_half: Array | None) -> tuple[Array, tuple]:
    u, res = _group_norm_fwd(h, scale, bias, groups, eps, bias_half, half=True)
    return u + u * jnp.tanh(u), res


def _group_norm_silu_bwd(groups: int, eps: float, res: tuple, g: Array) -> tuple:
    # behind a barrier, or XLA merges this recomputation with the forward pass's (CSE) and
    # stores u and tanh(u) after all
    res = jax.lax.optimization_barrier(res)
    u = _affine(*res, half=True)
    t = jnp.tanh(u)
    gu = g * u
    # d silu / dz = (1 + t + u (1 - t^2)) / 2
    return _norm_input_grad(res, g + g * t + gu - gu * t * t, groups, half=True) + (None,)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
group_norm_silu.defvjp(_group_norm_silu_fwd, _group_norm_silu_bwd)

# With its VJP rules, the UNet calls each norm through a nested jit: norms of the same shape (most
# of a UNet's) are then traced, linearized and transposed once per program instead of once per
# call. DPS's 20-step program on the bundled model compiled in 8.4 s instead of 10.2 s
# (benchmarks/compile_time.py, 3 rounds); the bundled model's values bit for bit (the 128-channel
# model's Winograd VJP to float rounding, 5e-6). Without the VJP rules (a network that is never
# differentiated) they did not pay: DDNM's program compiled in 4.52 s against 4.17 s.
_norm = jax.jit(group_norm, static_argnums=(3, 4))
_norm_silu = jax.jit(group_norm_silu, static_argnums=(3, 4))


def prepare_params(params: Any, *, vjp: bool = False, upsampling: Sequence[tuple[str, ...]] = (),
                   winograd: bool = False, strided: Sequence[tuple[str, ...]] = ()) -> dict:
    """Quantities the UNet derives from its parameters alone, computed once with numpy, as a
    tree for the :data:`~invdiff.nets.conv.PREPARED` variable collection (the same values, bit
    for bit, as the network computes without them):

    * ``bias_half``: each norm's bias / 2 (a norm before a SiLU computes z / 2);
    * ``kernel_up``: for the convolutions at the paths in ``upsampling`` (those that read a x2
      upsampled input, :meth:`UNet.upsampling_convs`), the 2x2 kernel of all four output
      phases (:func:`~invdiff.nets.conv.phase_kernel`; 16/9 the size of the 3x3 kernel);
    * with ``vjp``, ``kernel_t``: each convolution kernel flipped and transposed
      (:func:`~invdiff.nets.conv.flip_kernel`), the kernel of its input gradient; where there
      is a ``kernel_up``, that flipped, as the matrix of
      :func:`~invdiff.nets.conv.taps_conv` (:func:`~invdiff.nets.conv.taps_matrix`). This is
      a second copy of the convolution weights.
    * with ``winograd``, for every other 3x3 convolution (not upsampling, not at the paths in
      ``strided``, :meth:`UNet.strided_convs`): ``kernel_w``, its kernel transformed for
      :func:`~invdiff.nets.conv.winograd_conv3` (16/9 the size), and with ``vjp``, instead of
      ``kernel_t``, ``kernel_wt``: the transformed kernel of its input gradient. The network
      then computes these convolutions by Winograd's F(2x2, 3x3): equal up to float rounding,
      not bit for bit.

    Inside a compiled program, each of these would be a small computation of its own, and on
    XLA:CPU a generated kernel to compile, one per shape (DPS's program on the bundled model:
    157 kernels with ``kernel_t`` only, 131 with both and 2-D norm statistics, 119 with
    ``kernel_up``). For fixed weights only: after any change to ``params`` the tree is stale
    (``ADMModel`` drops it)."""
    out: dict = {}
    up, strided_ = {tuple(p) for p in upsampling}, {tuple(p) for p in strided}

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            return
        derived = {}
        if "scale" in node and np.ndim(node.get("bias")) == 1:
            derived["bias_half"] = np.asarray(node["bias"]) * np.float32(0.5)
        elif np.ndim(node.get("kernel")) == 4 and (path in up or vjp or winograd):
            k = np.asarray(node["kernel"])
            if winograd and k.shape[:2] == (3, 3) and path not in up and path not in strided_:
                derived["kernel_w"] = winograd_kernel(k)
                if vjp:
                    derived["kernel_wt"] = winograd_kernel(flip_kernel(k))
            elif path in up:
                if k.shape[:2] != (3, 3):
                    raise ValueError(f"upsampling convolution {'/'.join(path)} has a {k.shape[0]}x{k.shape[1]} "
                                     "kernel: phase kernels need 3x3")
                k = derived["kernel_up"] = phase_kernel(k)
            if vjp and "kernel_up" in derived:
                derived["kernel_t"] = taps_matrix(flip_kernel(k))
            elif vjp and "kernel_w" not in derived:
                derived["kernel_t"] = np.ascontiguousarray(flip_kernel(k))
        if derived:
            leaf = out
            for key in path:
                leaf = leaf.setdefault(key, {})
            leaf.update(derived)
        for key, child in node.items():
            visit(child, path + (key,))

    visit(params, ())
    if missing := up - _holders(out, "kernel_up"):
        raise ValueError(f"prepare_params: no convolution kernel at the upsampling paths {sorted(missing)}")
    if missing := strided_ - _holders(params, "kernel"):
        raise ValueError(f"prepare_params: no convolution kernel at the strided paths {sorted(missing)}")
    return out


def _holders(tree: Any, leaf: str) -> set[tuple[str, ...]]:
    """The paths of the modules (nested dict keys) in a variable tree that hold a leaf named
    ``leaf`` (e.g. ``_holders(prepared, "kernel_t")``)."""
    return {tuple(k.key for k in p[:-1]) for p, _ in jax.tree_util.tree_leaves_with_path(tree)
            if getattr(p[-1], "key", None) == leaf}


def silu(x: Array) -> Array:
    """x * sigmoid(x), as ``jax.nn.silu`` but inline (not a nested jit: cheaper to trace). The
    UNet's SiLUs after a norm are :func:`group_norm_silu`; this one acts on the time embedding."""
    return x * jax.lax.logistic(x)


class Dense(nn.Module):
    """``flax.linen.Dense`` (the same parameters ``kernel`` (in, out) and ``bias``, initialisers
    and dtype handling) on :func:`checked_param`."""

    features: int
    dtype: Dtype | None = None
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = checked_param(self, "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        b = checked_param(self, "bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or jnp.result_type(x, k)
        x, k, b = x.astype(dtype), k.astype(dtype), b.astype(dtype)
        return jax.lax.dot_general(x, k, (((x.ndim - 1,), (0,)), ((), ())),
                                   precision=self.precision) + b


def _conv(features: int, kernel: int, name: str, dtype: Dtype, precision: Any, custom_vjp: bool,
          strides: int = 1, upsample: bool = False) -> Conv2d:
    return Conv2d(features, kernel, strides=strides, dtype=dtype, precision=precision, name=name,
                  upsample=upsample, custom_vjp=custom_vjp)


def _up_conv(x: Array, features: int, name: str, dtype: Dtype, precision: Any, custom_vjp: bool) -> Array:
    """``Conv2d(features, 3)(_nearest_up2(x))``, computed without the upsampled image
    (:func:`invdiff.nets.conv.up2_conv3`)."""
    return _conv(features, 3, name, dtype, precision, custom_vjp, upsample=True)(x)


def _avg_pool2(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).astype(x.dtype)


def _nearest_up2(x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Upsample(nn.Module):
    """``Upsample``: nearest ×2, then (``use_conv``) a 3×3 conv named ``conv``."""

    channels: int
    use_conv: bool
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    precision: Any = None
    custom_vjp: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.use_conv:
            return _up_conv(x, self.out_channels or self.channels, "conv", self.dtype, self.precision,
                            self.custom_vjp)
        return _nearest_up2(x)


class Downsample(nn.Module):
    """``Downsample``: a 3×3 stride-2 conv ``op`` padded by 1 on every side, or 2×2 average pool."""

    channels: int
    use_conv: bool
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    precision: Any = None
    custom_vjp: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.use_conv:
            return _conv(self.out_channels or self.channels, 3, "op", self.dtype, self.precision,
                         self.custom_vjp, strides=2)(x)
        return _avg_pool2(x)


class ResBlock(nn.Module):
    """guided-diffusion's ``ResBlock`` (optionally up/down-sampling, scale-shift norm).

    Sub-module names follow the torch Sequential indices: ``in_layers_0`` (norm),
    ``in_layers_2`` (conv), ``emb_layers_1`` (Linear), ``out_layers_0`` (norm),
    ``out_layers_3`` (conv) and ``skip_connection`` (1×1 conv when channels change).
    """

    channels: int
    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    precision: Any = None
    custom_vjp: bool = True

    @nn.compact
    def __call__(self, x: Array, emb: Array, train: bool = False) -> Array:
        oc, cv = self.out_channels, self.custom_vjp
        h = GroupNorm32(name="in_layers_0", custom_vjp=cv)(x, act=True)
        if self.up:
            h = _up_conv(h, oc, "in_layers_2", self.dtype, self.precision, cv)
            x = _nearest_up2(x)
        else:
            if self.down:
                h, x = _avg_pool2(h), _avg_pool2(x)
            h = _conv(oc, 3, "in_layers_2", self.dtype, self.precision, cv)(h)

        # Linear layers stay float32 in the original's fp16 mode; cast the result.
        emb_out = Dense(2 * oc if self.use_scale_shift_norm else oc, dtype=jnp.float32,
                        precision=self.precision, name="emb_layers_1")(silu(emb))
        emb_out = emb_out.astype(self.dtype)
        if self.use_scale_shift_norm:
            h = GroupNorm32(name="out_layers_0", custom_vjp=cv)(h, tuple(jnp.split(emb_out, 2, axis=-1)), act=True)
        else:
            h = GroupNorm32(name="out_layers_0", custom_vjp=cv)(h + emb_out[:, None, None, :], act=True)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(oc, 3, "out_layers_3", self.dtype, self.precision, cv)(h)

        if oc != x.shape[-1]:
            x = _conv(oc, 1, "skip_connection", self.dtype, self.precision, cv)(x)
        return x + h


class AttentionBlock(nn.Module):
    """``AttentionBlock``: self-attention over all H·W positions, added back residually.

    ``qkv`` and ``proj_out`` are torch kernel-1 Conv1d layers, here Dense layers. Legacy order
    (``QKVAttentionLegacy``): the 3C qkv channels are split into heads first, and each head's
    block holds q, k, v in consecutive thirds. New order (``QKVAttention``): q, k, v are the
    thirds of all 3C channels, each split into heads. The attention weights (B, heads, HW, HW)
    are sown into the ``intermediates`` collection as ``attention`` (a no-op unless that
    collection is mutable).
    """

    channels: int
    num_heads: int = 1
    num_head_channels: int = -1
    use_new_attention_order: bool = False
    dtype: Dtype = jnp.float32
    precision: Any = None
    custom_vjp: bool = True

    @property
    def heads(self) -> int:
        if self.num_head_channels == -1:
            return self.num_heads
        if self.channels % self.num_head_channels:
            raise ValueError(
                f"q,k,v channels {self.channels} is not divisible by "
                f"num_head_channels {self.num_head_channels}"
            )
        return self.channels // self.num_head_channels

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        heads = self.heads
        ch = c // heads
        h = GroupNorm32(name="norm", custom_vjp=self.custom_vjp)(x).reshape(b, hh * ww, c)
        qkv = Dense(3 * c, dtype=self.dtype, precision=self.precision, name="qkv")(h)
        # (B, T, heads, 3, ch) in the legacy order, (B, T, 3, heads, ch) in the new one, moved
        # to (3, B, heads, T, ch) so that both products are plain batched matmuls.
        if self.use_new_attention_order:
            q, k, v = qkv.reshape(b, hh * ww, 3, heads, ch).transpose(2, 0, 3, 1, 4)
        else:
            q, k, v = qkv.reshape(b, hh * ww, heads, 3, ch).transpose(3, 0, 2, 1, 4)
        # the original scales q and k by ch^(-1/4) each (for fp16); one factor on q is the same
        logits = jnp.einsum("bhtc,bhsc->bhts", q * (1.0 / math.sqrt(ch)), k, precision=self.precision)
        logits = logits.astype(jnp.float32)
        weights = softmax(logits) if self.custom_vjp else _softmax_fwd(logits)[0]
        self.sow("intermediates", "attention", weights)
        a = jnp.einsum("bhts,bhsc->bhtc", weights.astype(self.dtype), v, precision=self.precision)
        a = a.transpose(0, 2, 1, 3).reshape(b, hh * ww, c)
        out = Dense(c, dtype=self.dtype, precision=self.precision, name="proj_out")(a)
        return x + out.reshape(b, hh, ww, c).astype(x.dtype)


@jax.custom_vjp
def softmax(x: Array) -> Array:
    """``jax.nn.softmax(x, axis=-1)``, with its VJP w g - w <w, g> written out on the stored
    weights w (a few per cent off the UNet's forward + VJP on XLA:CPU)."""
    return _softmax_fwd(x)[0]


def _softmax_fwd(x: Array) -> tuple[Array, Array]:
    e = jnp.exp(x - x.max(-1, keepdims=True))
    w = e * (1 / e.sum(-1, keepdims=True))
    return w, w


def _softmax_bwd(w: Array, g: Array) -> tuple[Array]:
    wg = w * g
    return (wg - w * jnp.sum(wg, -1, keepdims=True),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def attention_ds(image_size: int, attention_resolutions: str | Sequence[int]) -> tuple[int, ...]:
    """create_model's conversion of attention resolutions in pixels ("32,16,8") to
    downsample factors (image_size // res)."""
    if isinstance(attention_resolutions, str):
        res = [int(r) for r in attention_resolutions.split(",") if r.strip()]
    else:
        res = [int(r) for r in attention_resolutions]
    return tuple(image_size // r for r in res)


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """create_model's default ``channel_mult`` for ``channel_mult=""`` (32 is our addition)."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
             64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
    if image_size not in table:
        raise ValueError(
            f"no default channel_mult for image_size={image_size} (guided-diffusion knows "
            f"{sorted(table)}): pass channel_mult explicitly, e.g. channel_mult='1,2,2'"
        )
    return table[image_size]


class UNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (2-D), NHWC in and out.

    Arguments are ``UNetModel``'s: ``attention_resolutions`` here are *downsample factors*
    (use :func:`attention_ds` to convert create_model's pixel strings). ``num_classes=None``
    gives an unconditional model. ``dtype`` is the compute dtype; parameters are float32.
    """

    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    dropout: float = 0.0
    channel_mult: tuple[float, ...] = (1, 2, 4, 8)
    conv_resample: bool = True
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    dtype: Dtype = jnp.float32
    precision: Any = None
    #: False: the forward ops alone, without the VJP rules written out for GroupNorm, the
    #: convolutions and softmax (for programs that never differentiate the network, e.g. a
    #: sampler without network VJPs): traced ~30 % faster, the same values. Differentiating it
    #: still works, by autodiff (slower, more memory).
    custom_vjp: bool = True

    def strided_convs(self) -> tuple[tuple[str, str], ...]:
        """Parameter paths of the stride-2 convolutions (``Downsample``'s ``op``), as
        :meth:`__call__` names them."""
        if self.resblock_updown or not self.conv_resample:
            return ()
        paths, idx = [], 1
        for _ in range(len(self.channel_mult) - 1):
            idx += self.num_res_blocks
            paths.append((f"input_blocks_{idx}_0", "op"))
            idx += 1
        return tuple(paths)

    def upsampling_convs(self) -> tuple[tuple[str, str], ...]:
        """Parameter paths of the convolutions that read a x2 upsampled input (``Upsample``'s
        ``conv``, or an up ResBlock's ``in_layers_2``), as :meth:`__call__` names them."""
        paths = []
        ds, idx = 2 ** (len(self.channel_mult) - 1), 0
        for level in reversed(range(len(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                if level and i == self.num_res_blocks:
                    name = f"output_blocks_{idx}_{2 if ds in self.attention_resolutions else 1}"
                    if self.resblock_updown:
                        paths.append((name, "in_layers_2"))
                    elif self.conv_resample:
                        paths.append((name, "conv"))
                    ds //= 2
                idx += 1
        return tuple(paths)

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, *, train: bool = False) -> Array:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("must specify y if and only if the model is class-conditional")
        mc = self.model_channels
        dt, prec, cv = self.dtype, self.precision, self.custom_vjp
        heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample
        ted = 4 * mc

        emb = timestep_embedding(t, mc)
        emb = Dense(ted, precision=prec, name="time_embed_0")(emb)
        emb = Dense(ted, precision=prec, name="time_embed_2")(silu(emb))
        if self.num_classes is not None:
            emb = emb + nn.Embed(self.num_classes, ted, param_dtype=jnp.float32,
                                 name="label_emb")(y)

        def res(ch: int, oc: int, name: str, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch, oc, self.dropout, self.use_scale_shift_norm, up=up, down=down,
                            dtype=dt, precision=prec, custom_vjp=cv, name=name)

        def attn(ch: int, heads: int, name: str) -> AttentionBlock:
            return AttentionBlock(ch, heads, self.num_head_channels,
                                  self.use_new_attention_order, dtype=dt, precision=prec, custom_vjp=cv,
                                  name=name)

        h = x.astype(dt)
        ch = int(self.channel_mult[0] * mc)
        h = _conv(ch, 3, "input_blocks_0_0", dt, prec, cv)(h)
        hs = [h]
        chans = [ch]
        ds = 1
        idx = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                oc = int(mult * mc)
                h = res(ch, oc, f"input_blocks_{idx}_0")(h, emb, train)
                ch = oc
                if ds in self.attention_resolutions:
                    h = attn(ch, self.num_heads, f"input_blocks_{idx}_1")(h)
                hs.append(h)
                chans.append(ch)
                idx += 1
            if level != len(self.channel_mult) - 1:
                name = f"input_blocks_{idx}_0"
                if self.resblock_updown:
                    h = res(ch, ch, name, down=True)(h, emb, train)
                else:
                    h = Downsample(ch, self.conv_resample, ch, dt, prec, cv, name=name)(h)
                hs.append(h)
                chans.append(ch)
                ds *= 2
                idx += 1

        h = res(ch, ch, "middle_block_0")(h, emb, train)
        h = attn(ch, self.num_heads, "middle_block_1")(h)
        h = res(ch, ch, "middle_block_2")(h, emb, train)

        idx = 0
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(self.num_res_blocks + 1):
                skip_ch = chans.pop()
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                oc = int(mc * mult)
                h = res(ch + skip_ch, oc, f"output_blocks_{idx}_0")(h, emb, train)
                ch = oc
                sub = 1
                if ds in self.attention_resolutions:
                    h = attn(ch, heads_up, f"output_blocks_{idx}_1")(h)
                    sub = 2
                if level and i == self.num_res_blocks:
                    name = f"output_blocks_{idx}_{sub}"
                    if self.resblock_updown:
                        h = res(ch, ch, name, up=True)(h, emb, train)
                    else:
                        h = Upsample(ch, self.conv_resample, ch, dt, prec, cv, name=name)(h)
                    ds //= 2
                idx += 1

        # The original casts back to the input dtype before ``out`` (float32 in fp16 mode).
        h = h.astype(jnp.float32)
        h = GroupNorm32(name="out_0", custom_vjp=cv)(h, act=True)
        return _conv(self.out_channels, 3, "out_2", jnp.float32, prec, cv)(h)


# ----------------------------------------------------------------------------------------
# Names: Flax parameter paths <-> PyTorch state_dict keys.

_TOP = re.compile(r"^(input_blocks|output_blocks|middle_block|time_embed|out|label_emb)((?:_\d+)*)$")
_SUB = re.compile(r"^(in_layers|emb_layers|out_layers)((?:_\d+)+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def flax_module_to_torch(path: Sequence[str]) -> str:
    """``("input_blocks_3_1", "qkv")`` -> ``"input_blocks.3.1.qkv"``."""
    parts = []
    for i, p in enumerate(path):
        m = (_TOP if i == 0 else _SUB).match(p)
        if m:
            parts.append(m.group(1) + m.group(2).replace("_", "."))
        else:
            parts.append(p)
    return ".".join(parts)


def flax_to_torch_key(path: Sequence[str]) -> str:
    """A Flax parameter path (module names..., leaf) -> the guided-diffusion state_dict key."""
    *mods, leaf = path
    return f"{flax_module_to_torch(mods)}.{_LEAF.get(leaf, leaf)}"
