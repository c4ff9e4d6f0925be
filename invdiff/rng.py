"""``normal`` and ``split``: jax.random's values, in fewer compiled kernels on CPU.

For threefry keys (JAX's default) these return exactly what ``jax.random.normal`` and
``jax.random.split`` return, bit for bit, compiled with the same XLA options
(``tests/test_rng.py``). Inside invdiff's own programs, arrays of 4096 values or more are drawn
with XLA:CPU's element-wise work in YNNPACK (:mod:`invdiff.compiler`), which rounds differently
from ``jax.random.normal`` called outside a program: 3 ulp at most (4.8e-7) in ~6 % of the
values. What differs is the program:

* JAX lowers the threefry hash on CPU as a rolled ``fori_loop`` of 5 iterations. XLA:CPU compiles
  every call site's loop body into its own small kernels (6-10 per call site).
* ``erf_inv`` (normal = √2 erf⁻¹(u)) selects each polynomial coefficient between two branches.
  Next to invdiff's YNNPACK element-wise fusion, each select of two constants became a separate
  kernel that writes a whole image.

Here the hash is unrolled (JAX's own non-CPU lowering) and each branch's polynomial is evaluated
with scalar coefficients, with one select at the end. Every lane performs the same float
operations in the same order as XLA's erf_inv, so the values are identical.

On DDNM's 20-step program for the bundled model, XLA:CPU compiled 101 kernels instead of 153
(counted in a ``jax.profiler`` trace of the compilation); for the solvers' compile times, see the
README, "CPU speed and compile time".

Anything else (another PRNG implementation, ``jax_threefry_partitionable`` off, a dtype other
than float32, 2**32 or more values) goes to ``jax.random`` unchanged.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))

# XLA's ErfInv32 (xla/hlo/builder/lib/math.cc, via chlo.erf_inv): coefficients for w < 5 and w >= 5
_ERFINV_LT5 = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
               -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_GE5 = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
               -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)

#: the lower end of jax.random.normal's uniform draw: the float32 after -1 towards 0
_LO = np.nextafter(np.float32(-1), np.float32(0))


def _rotl(v: Array, r: int) -> Array:
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def threefry2x32(k1: Array, k2: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), as ``jax._src.random.threefry2x32``'s
    unrolled lowering: key words ``k1, k2`` (uint32 scalars), counter words ``x0, x1``."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotl(x1, r)
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _is_threefry(key: Array) -> bool:
    """Whether ``key`` is one threefry key whose values this module reproduces: typed, or a raw
    uint32[2] under the default threefry implementation. Reads only its type, never its data."""
    if not jax.config.jax_threefry_partitionable:
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.shape == () and str(jax.random.key_impl(key)) == "threefry2x32"
    return key.dtype == jnp.uint32 and key.shape == (2,) and jax.config.jax_default_prng_impl == "threefry2x32"


def _words(key: Array) -> tuple[Array, Array]:
    """The two uint32 words of a key that passed :func:`_is_threefry`."""
    data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return data[0], data[1]


def _counter(shape: tuple[int, ...]) -> tuple[Array, Array]:
    # jax's iota_2x32_shape for fewer than 2**32 values: high words 0, low words the flat index
    lo = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return jnp.zeros(shape, jnp.uint32), lo


def _poly(w: Array, coefficients: tuple[float, ...]) -> Array:
    p = jnp.asarray(coefficients[0], w.dtype)
    for c in coefficients[1:]:
        p = jnp.asarray(c, w.dtype) + p * w
    return p


def _erf_inv(x: Array) -> Array:
    """XLA's float32 erf⁻¹, both branches evaluated whole (no per-coefficient select)."""
    w = -jnp.log1p(-x * x)
    p = jnp.where(w < 5, _poly(w - 2.5, _ERFINV_LT5), _poly(jnp.sqrt(w) - 3, _ERFINV_GE5))
    return jnp.where(jnp.abs(x) == 1, x * jnp.inf, p * x)


def normal(key: Array, shape: tuple[int, ...] = (), dtype: jnp.dtype = jnp.float32) -> Array:
    """``jax.random.normal(key, shape, dtype)``, the same values (see the module docstring)."""
    shape = tuple(int(d) for d in shape)
    if not _is_threefry(key) or jnp.dtype(dtype) != jnp.float32 or not 0 < math.prod(shape) < 2**32:
        return jax.random.normal(key, shape, dtype)
    return _normal(key, shape)


@functools.partial(jax.jit, static_argnums=1)
def _normal(key: Array, shape: tuple[int, ...]) -> Array:
    b1, b2 = threefry2x32(*_words(key), *_counter(shape))
    bits = b1 ^ b2
    # jax.random.uniform(key, shape, float32, _LO, 1): 23 random mantissa bits in [1, 2), minus 1
    floats = lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - np.float32(1)
    u = jnp.maximum(_LO, floats * (np.float32(1) - _LO) + _LO)
    return np.float32(np.sqrt(2)) * _erf_inv(u)


def split(key: Array, num: int = 2) -> Array:
    """``jax.random.split(key, num)``, the same keys (see the module docstring)."""
    if not _is_threefry(key) or not isinstance(num, (int, np.integer)) or not 0 < num < 2**32:
        return jax.random.split(key, num)
    return _split(key, int(num))


@functools.partial(jax.jit, static_argnums=1)
def _split(key: Array, num: int) -> Array:
    b1, b2 = threefry2x32(*_words(key), *_counter((num,)))
    data = jnp.stack([b1, b2], axis=1)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(data, impl="threefry2x32")
    return data  # raw uint32 keys in, raw keys out, like jax.random.split
