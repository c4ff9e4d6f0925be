"""Running cells: one solver on one named degradation for a batch of images.

Randomness is per image. Every (operator, image) pair gets a seed, :func:`image_seed`, a hash
of the run's seed, the operator's name and the image's id; its key draws the image's random
mask, its measurement noise and the solver's randomness. :func:`solve_each` runs
:func:`invdiff.solve` once per image under :func:`jax.vmap` (one compiled program for the
batch, split over the local devices as ``solve`` does), so an image's result does not depend
on the batch it falls in, on ``--batch-size`` or on the number of processes. All solvers of
one operator see the same measurement and the same key for an image (common random numbers:
differences between solvers are not noise of the draw). Random parts of an operator other
than masks (a compressed-sensing matrix, a motion-blur kernel) are drawn once per operator
from the run's seed, so the whole batch shares one operator.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import platform
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invdiff import metrics as metric_registry
from invdiff.bench.timing import compile_clock


def image_seed(seed: int, operator: str, image_id: str) -> int:
    """The 31-bit seed of one image under one operator (a BLAKE2 hash: stable across runs)."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{operator}\x1f{image_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def solver_settings(solver: Any) -> dict[str, Any]:
    """A solver's fields (steps, jumps and its hyperparameters) as plain values."""
    out = {}
    for f in dataclasses.fields(solver):
        v = getattr(solver, f.name)
        if isinstance(v, (jax.Array, np.ndarray)):
            v = np.asarray(v).tolist()
        out[f.name] = v if isinstance(v, (int, float, str, bool, list, type(None))) else repr(v)
    return out


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A batch under one named degradation: ``deg`` (operator, σ_y, masks), ``y``, each
    image's solver key (``keys``, shape (B,)) and seed (``seeds``), and A⁺y."""

    deg: Any
    y: jax.Array
    keys: jax.Array
    seeds: tuple[int, ...]
    pinv_y: jax.Array


@jax.jit
def _image_keys(seeds: jax.Array) -> jax.Array:
    """(B, 3) keys per image: its mask, its measurement noise, its solver."""
    return jax.vmap(lambda s: jax.random.split(jax.random.key(s), 3))(seeds)


@functools.partial(jax.jit, static_argnames=("noisy",))
def _observe(op: Any, x: jax.Array, k_noise: jax.Array, sigma_y: jax.Array, noisy: bool) -> tuple[jax.Array, ...]:
    y = op.A(x)
    if noisy:
        n = jax.vmap(lambda k: jax.random.normal(k, y.shape[1:], jnp.float32))(k_noise)
        y = y + sigma_y * op.A(op.pinv(n))
    return y, op.pinv(y)


def degradation(operator: str, shape: tuple[int, ...], seed: int, mask_keys: Sequence[jax.Array] = ()) -> Any:
    """The named degradation for a batch of ``shape``: operator-wide random parts from ``seed``,
    and one random mask per image from ``mask_keys`` (inpainting)."""
    from operators import named

    deg = named.make(operator, shape, jax.random.key(image_seed(seed, operator, "")))
    if deg.mask is not None and len(mask_keys):  # one mask per image, drawn from the image's own key
        masks = [named.make(operator, (1,) + tuple(shape[1:]), k).mask[0, ..., 0] for k in mask_keys]
        deg = named.make(operator, shape, mask=np.stack(masks))
    return deg


def measure(operator: str, x: np.ndarray, ids: Sequence[str], seed: int, deg: Any = None) -> Measurement:
    """y = A x + σ_y A A⁺ n for a batch, with one mask and one noise draw per image.

    ``operator``: a name of :func:`operators.named.make`; ``x`` (B, H, W, C) in [-1, 1];
    ``ids``: the images' ids (their seeds, :func:`image_seed`). ``deg``: a degradation built
    by the caller (an :class:`operators.named.Degradation`, e.g. a circle mask of a chosen
    radius or another σ_y) to use instead of the named one; ``operator`` then only names the
    images' seeds.
    """
    seeds = tuple(image_seed(seed, operator, i) for i in ids)
    keys = _image_keys(jnp.asarray(seeds, jnp.uint32))
    if deg is None:
        deg = degradation(operator, tuple(int(s) for s in x.shape), seed, list(keys[:, 0]))
    y, pinv_y = _observe(deg.op, jnp.asarray(x), keys[:, 1], jnp.asarray(deg.sigma_y, jnp.float32),
                         noisy=deg.sigma_y > 0)
    return Measurement(deg, y, keys[:, 2], seeds, pinv_y)


def _vmapped_solve(solver, model, op, y, keys, sigma_y, label, x_init=None, start_step=None, walk=None):
    import invdiff
    from invdiff.testing import per_sample_axes

    x_shape = tuple(op.x_shape(tuple(y.shape[1:])))
    try:
        op_axes = per_sample_axes(op, x_shape, y.shape[0])
    except (ValueError, TypeError):  # no per-sample description: the batch shares the operator
        op_axes = None
    cost = {}
    w = None if walk is None else np.asarray(walk, np.int64)

    def one(op_i, y_i, key_i, label_i, x_i):
        sol = invdiff.solve(solver, model, op_i, y_i[None], key=key_i, sigma_y=sigma_y,
                            label=None if label_i is None else label_i[None],
                            x_init=None if x_i is None else x_i[None], start_step=start_step, walk=w)
        cost.update(nfe=sol.nfe, vjp=sol.vjp)
        return sol.x[0]

    axes = (op_axes, 0, 0, None if label is None else 0, None if x_init is None else 0)
    x = jax.vmap(one, in_axes=axes)(op, y, keys, label, x_init)
    return x, jnp.asarray(cost["nfe"]), jnp.asarray(cost["vjp"])


_solve_each = jax.jit(_vmapped_solve)


def solve_each(solver: Any, model: Any, op: Any, y: jax.Array, keys: jax.Array, *, sigma_y: float = 0.0,
               label: jax.Array | None = None, devices: Any = None, x_init: jax.Array | None = None,
               start_step: int | None = None, walk: Sequence[int] | None = None) -> tuple[jax.Array, int, int]:
    """``invdiff.solve`` with one key per image: ``(x, nfe, vjp)``.

    Image i's restoration depends only on ``keys[i]``, ``y[i]``, its per-sample operator
    leaves and ``label[i]``: one compiled program runs ``solve`` on every image (vmapped),
    with the batch split over ``devices`` (default: the local devices) as ``solve`` splits it.

    ``x_init`` (B, ...), ``start_step``, ``walk``: as :func:`invdiff.solve`'s (a restart from
    saved states, a part of a walk). With a ``walk``, the vmapped solves are not wrapped in one
    more ``jit``: the walk stays data of ``solve``'s own compiled program, so every walk of
    the same length (the segments of a checkpointed run, say) reuses one compilation.
    """
    from invdiff.solve import Problem, _shard

    batch = int(y.shape[0])
    x_shape = tuple(op.x_shape(tuple(y.shape[1:])))
    problem = Problem(model=model, op=op, y=jnp.asarray(y), sigma_y=jnp.asarray(sigma_y, jnp.float32),
                      label=None if label is None else jnp.asarray(label))
    problem, keys, _ = _shard(problem, keys, batch, x_shape, jax.local_devices() if devices is None else devices)
    if x_init is not None:  # placed like the keys: one row per image
        x_init = jax.device_put(jnp.asarray(x_init, jnp.float32), keys.sharding)
    args = (solver, problem.model, problem.op, problem.y, keys, problem.sigma_y, problem.label, x_init)
    if walk is None and start_step is None:
        x, nfe, vjp = _solve_each(*args)
    else:
        x, nfe, vjp = _vmapped_solve(*args, start_step=start_step, walk=walk)
    return x, int(nfe), int(vjp)


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """One solver on one batch: ``results`` (one dict per real image, padding dropped) and the
    arrays (real images only) a caller may save: ``x`` restored, ``truth``, ``pinv_y`` = A⁺y."""

    results: list[dict]
    x: np.ndarray
    truth: np.ndarray
    pinv_y: np.ndarray


def run_batch(solver_name: str, solver: Any, model: Any, m: Measurement, x: np.ndarray, ids: Sequence[str],
              indices: Sequence[int], labels: np.ndarray | None, *, metrics: Sequence[str], real: int | None = None,
              repeat: bool = False, devices: Any = None) -> BatchResult:
    """Solve and score one batch: images ``x`` (B, H, W, C) with ids ``ids``, measured as ``m``
    (:func:`measure`).

    The first ``real`` images are reported (default all; the rest pad the batch to a
    compiled size). ``metrics``: names in :data:`invdiff.metrics.METRICS`. Each result holds
    the metrics, NFE/VJP per image, ``seconds`` (the batch's run time over its real images),
    ``compile_seconds`` (the batch's compile time, shared the same way; 0 once compiled),
    the seed, the label and the solver settings.
    """
    real = len(ids) if real is None else int(real)
    label = None if labels is None else jnp.asarray(labels, jnp.int32)

    def call():
        return solve_each(solver, model, m.deg.op, m.y, m.keys, sigma_y=m.deg.sigma_y, label=label, devices=devices)

    with compile_clock() as clock:
        t0 = time.perf_counter()
        xr, nfe, vjp = call()
        jax.block_until_ready(xr)
        first = time.perf_counter() - t0
    compile_s = min(clock.seconds, first)
    if repeat:
        t0 = time.perf_counter()
        jax.block_until_ready(call()[0])
        run_s = time.perf_counter() - t0
    else:
        run_s = max(first - compile_s, 0.0)

    restoration = metric_registry.Restoration(x=xr, ref=jnp.asarray(x), op=m.deg.op, y=m.y,
                                              mask=None if m.deg.mask is None else jnp.asarray(m.deg.mask))
    scores = metric_registry.evaluate([metric_registry.METRICS[name] for name in metrics], restoration)
    common = {
        "sigma_y": float(m.deg.sigma_y), "steps": int(solver.steps), "nfe": nfe, "vjp": vjp,
        "seconds": run_s / real, "compile_seconds": compile_s / real, "batch": int(x.shape[0]),
        "devices": len(jax.local_devices()) if devices is None else len(devices), "process": jax.process_index(),
        "host": platform.node(), "device": jax.local_devices()[0].device_kind,
        "settings": solver_settings(solver),
    }
    results = []
    for j in range(real):
        r = {"solver": solver_name, "operator": m.deg.name, "image": ids[j], "index": int(indices[j]),
             "label": None if labels is None else int(labels[j]), "seed": m.seeds[j]}
        r.update({name: float(v[j]) for name, v in scores.items()})
        r.update(common)
        results.append(r)
    return BatchResult(results, np.asarray(xr)[:real], np.asarray(x)[:real], np.asarray(m.pinv_y)[:real])


__all__ = ["BatchResult", "Measurement", "degradation", "image_seed", "measure", "run_batch", "solve_each",
           "solver_settings"]
