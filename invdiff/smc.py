"""Sequential Monte Carlo pieces shared by the particle solvers (MCGdiff, TDS).

A particle solver carries the N particles of each of B measurements as one batch of B·N
(measurement-major: row b·N + n is particle n of measurement b), so the network sees B·N
images per call. Log-weights live in a (B, N) float32 array, normalised after every update
(log-sum-exp, so every entry is <= 0 and nothing overflows); resampling is systematic or
multinomial, per measurement, inside the compiled loop, and triggered by the effective sample
size ESS = 1 / Σ_n w_n² (Doucet & Johansen 2009, "A tutorial on particle filtering", sec. 3.5
and 4.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from invdiff import rng

Array = jax.Array

RESAMPLING = ("systematic", "multinomial")


def check_resampling(name: str, particles: int) -> None:
    """Raise a clear error for an unknown resampling scheme or a particle count below 1."""
    if name not in RESAMPLING:
        raise ValueError(f"resampling={name!r} is not known: choose one of {', '.join(RESAMPLING)}")
    if int(particles) != particles or particles < 1:
        raise ValueError(f"particles must be a positive integer, got {particles!r}")


def normalize(log_w: Array) -> Array:
    """log w − logsumexp(log w) over the particle axis (last): normalised log-weights. The
    maximum is subtracted first (exact for the entries that matter), so that log-weights of
    any magnitude keep their differences to float32 precision."""
    shifted = log_w - jax.lax.stop_gradient(jnp.max(log_w, axis=-1, keepdims=True))
    return shifted - jax.nn.logsumexp(shifted, axis=-1, keepdims=True)


def ess(log_w: Array) -> Array:
    """Effective sample size 1 / Σ w² of normalised log-weights, per row: in [1, N]."""
    return jnp.exp(-jax.nn.logsumexp(2.0 * log_w, axis=-1))


def ancestors(key: Array, log_w: Array, scheme: str) -> Array:
    """Resampled ancestor indices (B, N) from normalised log-weights (B, N)."""
    b, n = log_w.shape
    if scheme == "multinomial":
        return jax.random.categorical(key, log_w[:, None, :], axis=-1, shape=(b, n)).astype(jnp.int32)
    # systematic: one uniform per row, N evenly spaced points through the weights' CDF
    u = (jax.random.uniform(key, (b, 1)) + jnp.arange(n)[None, :]) / n
    cdf = jnp.cumsum(jnp.exp(log_w), axis=-1)
    idx = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(cdf, u)
    return jnp.minimum(idx, n - 1).astype(jnp.int32)


def maybe_resample(key: Array, log_w: Array, threshold: Array, scheme: str) -> tuple[Array, Array]:
    """Ancestors and new log-weights: resample the rows whose ESS is below ``threshold · N``
    (the others keep their particles: identity ancestors, unchanged weights)."""
    n = log_w.shape[-1]
    low = ess(log_w) < threshold * n
    anc = jnp.where(low[:, None], ancestors(key, log_w, scheme), jnp.arange(n, dtype=jnp.int32)[None, :])
    new_w = jnp.where(low[:, None], -jnp.log(jnp.asarray(n, log_w.dtype)), log_w)
    return anc, new_w


def gather(a: Array, anc: Array) -> Array:
    """Rows of a (B·N, ...) particle batch picked by ancestors (B, N) within each measurement."""
    b, n = anc.shape
    flat = (anc + n * jnp.arange(b, dtype=anc.dtype)[:, None]).reshape(-1)
    return jnp.take(a, flat, axis=0)


def select_first(key: Array, log_w: Array, scheme: str) -> Array:
    """Final ancestors: resample every row, then rotate each row by a uniform random offset so
    that slot 0 is a draw from the weighted particle set (an unbiased resampling gives particle
    i an expected N·w_i copies, so a uniformly chosen slot holds particle i with probability w_i)."""
    b, n = log_w.shape
    k_res, k_slot = rng.split(key)
    anc = ancestors(k_res, log_w, scheme)
    shift = jax.random.randint(k_slot, (b, 1), 0, n)
    return jnp.take_along_axis(anc, (jnp.arange(n)[None, :] + shift) % n, axis=-1)


def row_sum(a: Array) -> Array:
    """Sum over every axis but the first (one number per particle)."""
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def per_particle(v: Array, n: int) -> Array:
    """A (B·N,) per-particle quantity as (B, N)."""
    return v.reshape(-1, n)
