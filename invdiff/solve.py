"""``solve()``: one solver, end to end, as one compiled program.

The driver walks a schedule that is data (see :mod:`invdiff.schedule`) with one
``jax.lax.scan``. A transition that goes down calls ``solver.step`` (one reverse step, with
the network); a transition that goes up re-noises with the forward chain and calls no
network, so RePaint-style resampling composes with every solver.

Solvers are immutable PyTrees: integer settings that change the program (``steps``,
``jump_length``) are static, continuous hyperparameters are array leaves, so a sweep over
them — like a new y, mask, key or label — reuses the compiled program.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff import compiler, noise, rng
from invdiff.model import Model
from invdiff.operator import LinearOperator, PartialIsometry, SVDOperator, _bdot, _per_sample
from invdiff.schedule import repaint_schedule, transitions

Array = jax.Array


@struct.dataclass
class Problem:
    """What a solver step sees: the prior, the operator and the measurement.

    ``sigma_y`` is the measurement noise standard deviation in model units ([-1, 1] images).
    ``x0_range``: x̂0 is clipped to this (low, high) range in every step (None: no clipping).
    """

    model: Model
    op: LinearOperator
    y: Array
    sigma_y: Array
    label: Array | None = None
    x0_range: tuple[float, float] | None = struct.field(pytree_node=False, default=None)


@struct.dataclass
class Step:
    """One transition t -> s of the walk, as traced scalars (original timesteps; s = -1 is clean)."""

    t: Array
    s: Array
    abar_t: Array
    abar_s: Array
    omab_t: Array  # 1 - ᾱ_t, computed in float64 on the host
    omab_s: Array  # 1 - ᾱ_s
    beta: Array  # β' = 1 - ᾱ_t / ᾱ_s of the (respaced) transition
    log_var_clipped: Array
    up: Array
    index: Array

    @property
    def sigma_t(self) -> Array:
        """sqrt(1 - ᾱ_t), the noise level at t."""
        return jnp.sqrt(self.omab_t)

    @property
    def sigma_s(self) -> Array:
        """sqrt(1 - ᾱ_s), the noise level at s."""
        return jnp.sqrt(self.omab_s)

    @property
    def is_last(self) -> Array:
        return self.s < 0


class Solver(struct.PyTreeNode):
    """Base class of solvers: ``init`` and ``step`` are pure; the walk is data.

    ``steps``: respaced diffusion steps walked (defaults to the paper's setting in each
    subclass). ``jump_length`` / ``jump_n_sample``: RePaint's resampling walk, available to
    every solver (1, 1 = no resampling).
    """

    steps: int = struct.field(pytree_node=False, default=100, kw_only=True)
    jump_length: int = struct.field(pytree_node=False, default=1, kw_only=True)
    jump_n_sample: int = struct.field(pytree_node=False, default=1, kw_only=True)

    #: network forward passes per down step, and vector-Jacobian products through it
    nfe_per_step: ClassVar[int] = 1
    vjp_per_step: ClassVar[int] = 0

    def particle_count(self) -> int:
        """Particles per measurement: N for particle solvers (a static ``particles`` field), else 1.

        ``solve`` carries the N particles of each measurement in one batch of B·N (row b·N + n is
        particle n of measurement b; y, labels and per-sample operator leaves are repeated to
        match) and returns particle 0 of each measurement as ``x``, all of them as ``particles``."""
        return int(getattr(self, "particles", 1))

    def timesteps(self, schedule: Any) -> np.ndarray | None:
        """The original timesteps the ``steps``-step chain keeps, ascending; None (default):
        guided-diffusion's evenly spaced respacing. DiffPIR returns its quadratic spacing."""
        return None

    def walk(self) -> np.ndarray:
        """The respaced indices this solver walks (RePaint's jump schedule)."""
        return repaint_schedule(self.steps, self.jump_length, self.jump_n_sample)

    def wrap_model(self, model: Model, x_shape: tuple[int, ...], devices: Any = None) -> Model:
        """The model this solver runs on x of ``x_shape`` (batch included) and ``devices`` (as
        given to :func:`solve`): ``model`` itself, or a wrapper (``invdiff.tiled``: the network
        on tiles). Called by :func:`solve` before any check; its ``nfe_per_call`` is counted."""
        return model

    def check(self, problem: Problem) -> None:
        """Raise a clear error for a problem this solver cannot take (called before compiling)."""

    def init(self, problem: Problem, x: Array, key: Array) -> Any:
        """Solver-private state carried along the walk (default: none)."""
        return ()

    def step(self, problem: Problem, tr: Step, x: Array, state: Any, key: Array) -> tuple[Array, Any, Array]:
        """One reverse transition: returns (x_s, new state, x̂0 used in this step)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------
# Shared step maths for solvers: x̂0 prediction, ancestral steps, noised measurements.


def _timesteps(t: Array, x: Array) -> Array:
    return jnp.full((x.shape[0],), t, dtype=jnp.int32)


def _clip(problem: Problem, x: Array, x0: Array, eps: Array, tr: Step) -> tuple[Array, Array]:
    """Clip x̂0 to the data range and recompute ε̂ from it (guided-diffusion's clip_denoised)."""
    if problem.x0_range is None:
        return x0, eps
    lo, hi = problem.x0_range
    x0 = jnp.clip(x0, lo, hi)
    return x0, noise.eps_from_x0(x, x0, tr.abar_t, tr.omab_t)


def denoise(problem: Problem, x: Array, tr: Step) -> tuple[Array, Array, Array | None]:
    """Network call at t: returns (ε̂, x̂0, v) where v is the learned variance or None.

    x̂0 is clipped to ``problem.x0_range`` (and ε̂ made consistent with it) when set."""
    eps, v = problem.model.eps_and_v(x, _timesteps(tr.t, x), problem.label)
    eps = eps.astype(x.dtype)
    x0, eps = _clip(problem, x, noise.x0_from_eps(x, eps, tr.abar_t, tr.omab_t), eps, tr)
    return eps, x0, v


def denoise_vjp(problem: Problem, x: Array, tr: Step) -> tuple[Array, Array, Array | None, Callable]:
    """Like :func:`denoise`, plus the VJP of x ↦ x̂0(x) (one backward pass through the network).

    The VJP is that of the unclipped x̂0 (clipping would zero the gradient where it acts); the
    returned x̂0 and ε̂ are clipped like :func:`denoise`'s."""

    def f(x_):
        eps, v = problem.model.eps_and_v(x_, _timesteps(tr.t, x_), problem.label)
        eps = eps.astype(x_.dtype)
        return noise.x0_from_eps(x_, eps, tr.abar_t, tr.omab_t), (eps, v)

    x0, vjp_fn, (eps, v) = jax.vjp(f, x, has_aux=True)
    x0, eps = _clip(problem, x, x0, eps, tr)
    return eps, x0, v, lambda g: vjp_fn(g)[0]


def residual_norm_descent(problem: Problem, x0: Array, vjp: Callable) -> Array:
    """-∇_{x_t} ||y - A x̂0(x_t)||, one norm per sample; 0 where the residual vanishes (DPS, MCG).

    ∇_{x̂0} ||r|| = -Aᵀ r / ||r||: written out so that a zero residual gives a zero step
    instead of the NaN of differentiating sqrt at 0. ``vjp`` is :func:`denoise_vjp`'s.
    """
    r = problem.y - problem.op.A(x0)
    norm = jnp.sqrt(_bdot(r, r))
    safe = jnp.where(norm > 0, norm, 1.0)
    return vjp(problem.op.AT(r / _per_sample(safe, r)))


def ancestral_variance(tr: Step, v: Array | None) -> Array:
    """Variance of the DDPM step t -> s: learned-range if the model gives v, else β̃."""
    if v is None:
        return noise.q_posterior_variance(tr.abar_t, tr.abar_s, tr.omab_t, tr.omab_s, tr.beta)
    log_var = noise.learned_range_log_variance(v.astype(jnp.float32), jnp.log(tr.beta), tr.log_var_clipped)
    return jnp.exp(log_var)


def ancestral_step(x: Array, x0: Array, tr: Step, v: Array | None, key: Array) -> Array:
    """DDPM ancestral step t -> s (Ho et al. 2020, eq. 6-7); no noise on the last step."""
    mean = noise.q_posterior_mean(x0, x, tr.abar_t, tr.abar_s, tr.omab_t, tr.omab_s, tr.beta)
    var = ancestral_variance(tr, v)
    z = rng.normal(key, x.shape, x.dtype)
    return mean + jnp.where(tr.is_last, 0.0, jnp.sqrt(var)) * z


def noised_measurement(problem: Problem, tr: Step, key: Array) -> Array:
    """y_s = sqrt(ᾱ_s) y + sqrt(1 - ᾱ_s) A z: the known part noised like the forward process."""
    x_like = jax.eval_shape(problem.op.AT, problem.y)  # only the shape: no work
    z = rng.normal(key, x_like.shape, x_like.dtype)
    return jnp.sqrt(tr.abar_s) * problem.y + tr.sigma_s * problem.op.A(z)


def project_to_measurement(problem: Problem, x: Array, tr: Step, key: Array) -> Array:
    """x + A⁺(y_s − A x): replace the measured part of x by the measurement noised to level s
    (RePaint's known-region injection, ILVR's low-pass refinement, MCG's projection)."""
    y_s = noised_measurement(problem, tr, key)
    return x + problem.op.pinv(y_s - problem.op.A(x))


# ---------------------------------------------------------------------------------------


@struct.dataclass
class Trajectory:
    """Saved states: ``x`` and ``x0hat`` of shape (n, B, ...) after every ``save_every``-th
    transition, with the original timestep ``t`` reached (-1 = clean) and the walk position."""

    x: Array
    x0hat: Array
    t: Array
    position: Array


@struct.dataclass
class Solution:
    """``x``: one restored sample per row of y. ``nfe`` / ``vjp``: network forward passes and
    vector-Jacobian products per sample (a wrapped model's ``nfe_per_call`` included).
    ``trajectory``: saved states, or None (for particle solvers its states hold all B·N particles).
    ``particles``: for particle solvers (MCGdiff, TDS), all N final particles of each measurement,
    (B, N, ...), equally weighted (resampled at the end); ``x`` is ``particles[:, 0]``, a draw from
    the weighted particle set. None for other solvers."""

    x: Array
    nfe: int = struct.field(pytree_node=False)
    vjp: int = struct.field(pytree_node=False, default=0)
    trajectory: Trajectory | None = None
    particles: Array | None = None


_TRACES = {"count": 0}


def trace_count() -> int:
    """How many times the solve program has been traced (each trace means a compilation)."""
    return _TRACES["count"]


#: Progress callbacks of the solves in flight, by call id: the id is an operand of the compiled
#: program (a new callback never recompiles), so concurrent solves never see each other's reports.
_PROGRESS: dict[int, Callable[[int], None]] = {}
_CALL_IDS = itertools.count(1)


def _report_progress(call_id: Any, i: Any) -> None:
    fn = _PROGRESS.get(int(call_id))
    if fn is not None:
        fn(int(i))


def progress_interval(length: int) -> int:
    """How often (in transitions) the compiled loop reports progress: about 100 times per walk."""
    return max(1, length // 100)


def _run(solver: Solver, problem: Problem, tr: tuple, x_init: Array | None, key: Array, call_id: Array,
         save_every: int, progress: bool, sharding: Any, resample: bool = True,
         init_shape: tuple[int, ...] | None = None) -> tuple[Array, Trajectory | None]:
    """The walk. ``x_init=None`` draws x_T ~ N(0, I) of ``init_shape`` here, inside the walk's own
    program (a separate program for the draw took ~0.2 s more to compile on 2 cores)."""
    _TRACES["count"] += 1
    if x_init is None:
        key, x_init = _split_and_normal(key, init_shape)
        if sharding is not None:
            x_init = jax.lax.with_sharding_constraint(x_init, sharding)
    length = tr[0].shape[0]
    every = progress_interval(length)
    key_init, key_steps = rng.split(key)
    state = solver.init(problem, x_init, key_init)
    keys = rng.split(key_steps, length)
    xs = (tr, keys, jnp.arange(length, dtype=jnp.int32))

    def body(carry, inp):
        x, state, x0 = carry
        (t, s, abar_t, abar_s, omab_t, omab_s, beta, lv, up), k, i = inp
        st = Step(t=t, s=s, abar_t=abar_t, abar_s=abar_s, omab_t=omab_t, omab_s=omab_s, beta=beta,
                  log_var_clipped=lv, up=up, index=i)

        def go_down(_):
            return solver.step(problem, st, x, state, k)

        def go_up(_):
            return noise.renoise(x, beta, rng.normal(k, x.shape, x.dtype)), state, x0

        # a walk without up-steps needs no branch (RePaint-style resampling walks do)
        x, state, x0 = jax.lax.cond(up, go_up, go_down, None) if resample else go_down(None)
        if sharding is not None:
            x = jax.lax.with_sharding_constraint(x, sharding)
        if progress:
            report = (i % every == every - 1) | (i == length - 1)
            jax.lax.cond(report, lambda: jax.debug.callback(_report_progress, call_id, i + 1), lambda: None)
        return (x, state, x0), None

    carry = (x_init, state, jnp.zeros_like(x_init))
    if not save_every:
        (x, _, _), _ = jax.lax.scan(body, carry, xs)
        return x, None

    n_chunks, rest = divmod(length, save_every)
    chunked = jax.tree.map(lambda a: a[: n_chunks * save_every].reshape((n_chunks, save_every) + a.shape[1:]), xs)

    def chunk(carry, inp):
        carry, _ = jax.lax.scan(body, carry, inp)
        return carry, (carry[0], carry[2], inp[0][1][-1], inp[2][-1])

    carry, (txs, tx0, tt, tpos) = jax.lax.scan(chunk, carry, chunked)
    if rest:
        carry, _ = jax.lax.scan(body, carry, jax.tree.map(lambda a: a[n_chunks * save_every:], xs))
    return carry[0], Trajectory(x=txs, x0hat=tx0, t=tt, position=tpos)


_run_compiled = compiler.jit(_run, static_argnames=("save_every", "progress", "sharding", "resample",
                                                    "init_shape"))


def _split_and_normal(key: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
    key, k0 = rng.split(key)
    return key, rng.normal(k0, shape, jnp.float32)


def _run_jit(solver: Solver, problem: Problem, tr: tuple, x_init: Array, key: Array, call_id: Array,
             lower: bool = False, **static: Any) -> Any:
    """The compiled walk; ``resample`` (static) is read off the walk's concrete ``up`` flags.
    ``lower``: the walk's program lowered ahead of time (a ``jax.stages.Lowered``), not run."""
    up = tr[-1]
    resample = isinstance(up, jax.core.Tracer) or bool(np.any(np.asarray(up)))
    run = _run_compiled.lower if lower else _run_compiled
    return run(solver, problem, tr, x_init, key, call_id, resample=resample, **static)


def shard_count(batch: int, devices: int) -> int:
    """Devices a batch is split over: the largest divisor of ``batch`` that is <= ``devices``
    (every device gets the same number of samples; 6 samples on 4 devices use 3)."""
    return max(d for d in range(1, min(batch, devices) + 1) if batch % d == 0)


def _shard(problem: Problem, x_init: Array, batch: int, x_shape: tuple[int, ...],
           devices: Any) -> tuple[Problem, Array, Any]:
    """Place the batch axis of y, x_init, the labels and per-sample operator leaves across
    ``devices`` (a 1-D mesh named "batch"); everything else is replicated. Returns the
    sharding of x for the loop's constraint, or None on one device.

    Devices of several processes (``jax.devices()`` after ``jax.distributed.initialize``):
    every process passes the same whole batch; y, x_init and the labels become global arrays
    of which each process computes its own rows, and the rest stays as given (host-local
    arrays count as replicated; operators are not rebuilt around arrays a process cannot
    read). Inside a trace (``solve`` under ``jax.vmap`` or ``jax.jit``) nothing is placed.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from invdiff.testing import per_sample_axes

    if isinstance(problem.y, jax.core.Tracer):
        return problem, x_init, None
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty: pass None (all local devices) or a list of jax devices")
    n = shard_count(batch, len(devices))
    processes = {d.process_index for d in devices}
    if len(processes) > 1 and len({d.process_index for d in devices[:n]}) < len(processes):
        raise ValueError(f"a batch of {batch} cannot be spread over the {len(devices)} devices of {len(processes)} "
                         f"processes (it would use {n}, leaving a process without work): make the batch a "
                         f"multiple of {len(devices)}")
    if n == 1:
        if len(devices) == 1 or devices[0] != jax.local_devices()[0]:
            # one chosen device: commit the inputs to it (the default device needs nothing)
            put = lambda a: jax.device_put(a, devices[0]) if isinstance(a, jax.Array) else a
            return jax.tree.map(put, problem), put(x_init), None
        return problem, x_init, None
    mesh = Mesh(np.asarray(devices[:n]), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    everywhere = NamedSharding(mesh, PartitionSpec())

    def place(axis, a):
        if not isinstance(a, jax.Array):
            return a
        return jax.device_put(a, rows if axis == 0 else everywhere)

    label = None if problem.label is None else place(0, problem.label)
    if len(processes) > 1:
        return problem.replace(y=place(0, problem.y), label=label), place(0, x_init), rows
    try:
        axes = per_sample_axes(problem.op, x_shape, batch)
        op = jax.tree.map(place, axes, problem.op, is_leaf=lambda v: v is None)
    except (ValueError, TypeError):  # no per-sample description: replicate (still correct)
        op = jax.tree.map(lambda a: place(None, a), problem.op)
    problem = problem.replace(
        model=jax.tree.map(lambda a: place(None, a), problem.model), op=op, y=place(0, problem.y),
        sigma_y=place(None, problem.sigma_y), label=label)
    return problem, place(0, x_init), rows


def _repeat_particles(problem: Problem, x_shape: tuple[int, ...], batch: int, n: int) -> Problem:
    """Repeat y, the labels and the operator's per-sample leaves N times along the batch (each
    measurement's row becomes N consecutive rows), for a particle solver's B·N batch."""
    from invdiff.testing import per_sample_axes

    rep = lambda a: jnp.repeat(a, n, axis=0)
    try:
        axes = per_sample_axes(problem.op, x_shape, batch)
        op = jax.tree.map(lambda ax, a: rep(a) if ax == 0 else a, axes, problem.op, is_leaf=lambda v: v is None)
    except (ValueError, TypeError):  # no per-sample description: shared leaves
        op = problem.op
    return problem.replace(op=op, y=rep(problem.y), label=None if problem.label is None else rep(problem.label))


def _check_static_fields(solver: Solver) -> None:
    import dataclasses

    for f in dataclasses.fields(solver):
        if f.name in ("steps", "jump_length", "jump_n_sample") and f.metadata.get("pytree_node", True):
            raise TypeError(
                f"{type(solver).__name__} re-declares {f.name!r} as a traced field; declare it static: "
                f"{f.name}: int = struct.field(pytree_node=False, default=..., kw_only=True)")
    for name in ("steps", "jump_length", "jump_n_sample"):
        v = getattr(solver, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            what = " (the respaced diffusion steps walked)" if name == "steps" else ""
            raise ValueError(f"{type(solver).__name__}: {name} must be a positive integer{what}, got {v!r}")


def _all_finite(a: Array) -> bool:
    """Whether every value of a concrete array is finite; read on the host when it can be (no
    compiled program: jnp's isfinite and all compiled two, ~0.1 s on first use)."""
    if getattr(a, "is_fully_addressable", True):
        return bool(np.isfinite(np.asarray(a)).all())
    return bool(jnp.all(jnp.isfinite(a)))


def _check_array(name: str, a: Any) -> Array:
    try:
        arr = jnp.asarray(a)
    except TypeError as e:
        raise TypeError(f"{name} must be an array of floats, got {type(a).__name__}") from e
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name} is complex ({arr.dtype}); solve works on real arrays: pass the real and imaginary "
                        f"parts as separate channels, or {name}.real if the imaginary part is noise")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} has dtype {arr.dtype}, not a float: raw pixel values? Convert to floats in the "
                        f"model's units first (images: invdiff.images.to_model maps uint8 0..255 to [-1, 1])")
    if not isinstance(arr, jax.core.Tracer) and not _all_finite(arr):
        raise ValueError(f"{name} contains NaN or infinite values; clean or mask them before solving")
    return arr


#: y is "far" outside a model's data range (lo, hi) when more than this fraction of A⁺y lies
#: more than one range width beyond it (outside [-3, 3] for images in [-1, 1]).
FAR_FRACTION = 0.01


def _warn_far_from_data_range(model: Model, op: LinearOperator, y: Array) -> None:
    """Warn when y cannot come from data in ``model.data_range`` (e.g. raw 0..255 pixels).

    Checked on A⁺y, which for y = A x is the part of x that y determines and so lies in the
    data's units whatever the operator's scale; only for operators with a closed-form
    pseudo-inverse (no iterative solve is run for a check). Data in [0, 1] instead of [-1, 1]
    lies inside the range and is not detected."""
    closed_form = isinstance(op, (PartialIsometry, SVDOperator)) or getattr(op, "c_value", None) is not None
    data_range = getattr(model, "data_range", None)
    if data_range is None or isinstance(y, jax.core.Tracer) or not closed_form:
        return
    lo, hi = data_range
    width = hi - lo
    x = np.asarray(op.pinv(y))
    far = float(np.mean((x < lo - width) | (x > hi + width)))
    if far > FAR_FRACTION:
        warnings.warn(
            f"y lies far outside the model's data range [{lo:g}, {hi:g}]: {far:.0%} of A⁺y is beyond "
            f"[{lo - width:g}, {hi + width:g}] (values from {x.min():.4g} to {x.max():.4g}). Raw pixel values? "
            f"Scale y to the model's units (images: invdiff.images.to_model maps 0..255 to [-1, 1])",
            UserWarning, stacklevel=3)


def solve(
    solver: Solver,
    model: Model,
    op: LinearOperator,
    y: Array,
    *,
    key: Array,
    sigma_y: float | Array = 0.0,
    label: Array | None = None,
    x_init: Array | None = None,
    start_step: int | None = None,
    walk: np.ndarray | None = None,
    save_every: int = 0,
    progress: Callable[[int], None] | None = None,
    clip_x0: bool | tuple[float, float] | None = None,
    devices: Any = None,
) -> Solution:
    """Run ``solver`` on y = A x + σ_y n with ``model`` as the prior; one compiled program.

    Args:
      solver: e.g. ``DDNM()``; its ``steps``/``jump_*`` fields fix the walk.
      model: anything with ``.schedule`` and ``.eps`` (see :class:`invdiff.model.Model`).
      op: the degradation operator; y has shape (B, *op.y_shape(x_shape)).
      y: real floats in the model's units (integer and complex y are refused). For models
        with a ``data_range``, a y that lies far outside it (:data:`FAR_FRACTION`) warns.
      key: a ``jax.random.key``; the same key gives the same result.
      sigma_y: measurement noise standard deviation in model units ([-1, 1] images): 0.05
        here is 0.025 on a [0, 1] scale. Scalar, >= 0.
      label: class labels, shape (B,), for class-conditional models.
      x_init, start_step: start from a saved state x_init at respaced index ``start_step``
        instead of pure noise at the top (e.g. SDEdit: x_init = ``noised(x0, ...)``).
      walk: explicit respaced indices to walk (overrides the solver's jump schedule).
      save_every: keep x and x̂0 after every ``save_every``-th transition (0 keeps nothing).
      progress: a host callback ``progress(n)``, called from inside the compiled loop (via
        ``jax.debug.callback``) with the number of transitions done, about 100 times per walk
        (every :func:`progress_interval` transitions) and at the end; the walk has
        ``len(solver.walk()) - 1`` transitions. Changing the callback does not recompile; None
        compiles no callback at all. Each call's reports reach its own callback only, also
        when several threads solve at once (the call's id is an operand of the program).
      clip_x0: clip x̂0 in every step to a (low, high) range, as the reference implementations
        do for images; None (default) or True uses the model's ``data_range`` ((-1, 1) for
        image networks, none for analytic priors), False turns clipping off.
      devices: the devices the batch is split over (data parallel, a 1-D mesh over the batch
        axis); None uses all local devices. The batch goes to the largest number of them that
        divides it (:func:`shard_count`); results equal a one-device solve up to float
        rounding. ``x`` comes back sharded the same way.

    Returns a :class:`Solution` with ``x`` (B, *x_shape), ``nfe`` and ``vjp`` per sample. A
    particle solver (``solver.particle_count()`` = N > 1: MCGdiff, TDS) runs the N particles of
    each row of y as one batch of B·N (a given ``x_init`` starts every particle of its row; the
    B·N axis is what ``devices`` splits), counts N network calls per step in ``nfe``, and also
    returns ``particles`` (B, N, *x_shape).
    """
    c = _prepare(solver, model, op, y, key=key, sigma_y=sigma_y, label=label, x_init=x_init,
                 start_step=start_step, walk=walk, save_every=save_every, clip_x0=clip_x0, devices=devices)
    call_id = next(_CALL_IDS) % 2**31 if progress is not None else 0
    if progress is not None:
        _PROGRESS[call_id] = progress
    try:
        x, traj = _run_jit(*c.args, jax.device_put(np.int32(call_id)), progress=progress is not None, **c.static)
        if progress is not None:
            x = jax.block_until_ready(x)  # the callbacks must run while this one is registered
    finally:
        _PROGRESS.pop(call_id, None)
    particles = None
    if c.n_part > 1:
        particles = x.reshape((c.batch, c.n_part) + c.x_shape)
        x = particles[:, 0]
    return Solution(x=x, nfe=c.nfe, vjp=c.vjp, trajectory=traj, particles=particles)


def precompile(
    solver: Solver,
    model: Model,
    op: LinearOperator,
    y: Array,
    *,
    key: Array,
    sigma_y: float | Array = 0.0,
    label: Array | None = None,
    x_init: Array | None = None,
    start_step: int | None = None,
    walk: np.ndarray | None = None,
    save_every: int = 0,
    progress: Callable[[int], None] | None = None,
    clip_x0: bool | tuple[float, float] | None = None,
    devices: Any = None,
) -> None:
    """Compile the program that :func:`solve` with these arguments runs, without running it.

    Takes :func:`solve`'s arguments and checks them the same way (of ``progress``, only
    whether it is None matters here). A later ``solve`` whose arguments have the same shapes,
    dtypes and static settings (the solver's step counts, the operator's type, whether
    ``progress`` is None, ...) runs without compiling, also with other values (another y, key,
    mask, hyperparameter). Compilation releases the GIL for most of its time, so calling this
    in a thread overlaps compiling the next problem with solving the current one (``invdiff
    demo`` does: on a CPU, compilation is mostly one core's work, and a small solve leaves
    cores idle). Wait for it to return before the ``solve`` it prepares: a ``solve`` that
    starts while the same program is still compiling compiles it a second time.
    """
    c = _prepare(solver, model, op, y, key=key, sigma_y=sigma_y, label=label, x_init=x_init,
                 start_step=start_step, walk=walk, save_every=save_every, clip_x0=clip_x0, devices=devices)
    _run_jit(*c.args, jax.device_put(np.int32(0)), lower=True, progress=progress is not None, **c.static).compile()


@dataclasses.dataclass(frozen=True)
class _Call:
    """A checked, prepared solve: the walk program's arguments and what the Solution reports."""

    args: tuple
    static: dict
    batch: int
    n_part: int
    x_shape: tuple[int, ...]
    nfe: int
    vjp: int


def _prepare(solver: Solver, model: Model, op: LinearOperator, y: Array, *, key: Array,
             sigma_y: float | Array, label: Array | None, x_init: Array | None, start_step: int | None,
             walk: np.ndarray | None, save_every: int, clip_x0: bool | tuple[float, float] | None,
             devices: Any) -> _Call:
    """Checks solve's arguments (clear errors before any compilation) and prepares its program's
    arguments."""
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be an invdiff Solver instance (e.g. DDNM()), got {solver!r}")
    _check_static_fields(solver)
    if model is None or not hasattr(model, "schedule") or not callable(getattr(model, "eps", None)):
        raise TypeError(f"model must be an invdiff Model (e.g. invdiff.load_model('emoji64')), got "
                        f"{type(model).__name__}")
    if not isinstance(op, LinearOperator):
        raise TypeError(f"op must be an invdiff LinearOperator, got {type(op).__name__}")
    y = _check_array("y", y)
    if y.ndim < 2:
        raise ValueError(f"y must have a batch dimension: shape (B, ...), got shape {tuple(y.shape)}")
    sig = np.asarray(sigma_y, dtype=np.float64) if not isinstance(sigma_y, jax.core.Tracer) else None
    if sig is not None and (sig.ndim != 0 or not np.isfinite(sig) or sig < 0):
        raise ValueError(f"sigma_y must be a finite scalar >= 0 (model units, [-1, 1] images); got {sigma_y!r}")
    x_shape = tuple(op.x_shape(tuple(y.shape[1:])))
    op = op.bind(x_shape)  # operators whose SVD depends on the image size learn it here
    batch = int(y.shape[0])
    op.check_batch(batch)
    if label is not None:
        if not isinstance(label, jax.core.Tracer) and np.asarray(label).dtype.kind not in "biuf":
            raise TypeError(f"label must hold integer class ids, e.g. jnp.array([3, 3]); got {label!r}")
        label = jnp.asarray(label)
    model = solver.wrap_model(model, (batch,) + x_shape, devices)
    model.check_input((batch,) + x_shape, label)
    if hasattr(model, "with_prepared"):  # parameter-only quantities, computed once on the host
        model = model.with_prepared(vjp=solver.vjp_per_step > 0)
    if clip_x0 is None or clip_x0 is True:
        x0_range = getattr(model, "data_range", None)
        if clip_x0 is True and x0_range is None:
            raise ValueError("clip_x0=True needs a model with a data_range; pass clip_x0=(low, high)")
    elif clip_x0 is False:
        x0_range = None
    else:
        try:
            lo, hi = (float(v) for v in clip_x0)
        except (TypeError, ValueError):
            raise TypeError(f"clip_x0 must be None, True, False or (low, high); got {clip_x0!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"clip_x0 must be a finite range (low, high) with low < high; got {clip_x0!r}")
        x0_range = (lo, hi)
    _warn_far_from_data_range(model, op, y)
    sigma = jnp.asarray(sigma_y, jnp.float32) if sig is None else jax.device_put(np.float32(sig))
    problem = Problem(model=model, op=op, y=y, sigma_y=sigma, label=label,
                      x0_range=x0_range)
    solver.check(problem)

    w = solver.walk() if walk is None else np.asarray(walk, dtype=np.int64)
    if start_step is not None:
        if x_init is None:
            raise ValueError("start_step needs x_init: the state at that respaced step")
        hits = np.flatnonzero(w == start_step)
        if hits.size == 0 or start_step < 0:
            raise ValueError(f"start_step={start_step} is not on the walk (respaced indices "
                             f"{int(w.max())} … -1)")
        w = w[hits[0]:]
    tr = transitions(model.schedule, solver.steps, w, use=solver.timesteps(model.schedule))
    n_part = solver.particle_count()
    init_shape = None
    if x_init is None:  # drawn inside the compiled walk
        init_shape = (batch * n_part,) + x_shape
    else:
        x_init = _check_array("x_init", x_init)
        if tuple(x_init.shape) != (batch,) + x_shape:
            raise ValueError(f"x_init must have shape {(batch,) + x_shape}, got {tuple(x_init.shape)}")
        x_init = jnp.repeat(x_init, n_part, axis=0) if n_part > 1 else x_init
    if n_part > 1:
        problem = _repeat_particles(problem, x_shape, batch, n_part)
    if save_every < 0:
        raise ValueError("save_every must be >= 0")
    # numpy to device without a compiled conversion (jnp.asarray of numpy compiles a small
    # "stage" / "convert_element_type" program per shape on first use)
    tr_arrays = tuple(jax.device_put(np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
                                     else np.asarray(a)) for a in tr.arrays())
    problem, x_init, sharding = _shard(problem, x_init, batch * n_part, x_shape, devices)
    per_call = int(getattr(model, "nfe_per_call", 1)) * n_part
    return _Call(args=(solver, problem, tr_arrays, x_init, key),
                 static=dict(save_every=int(save_every), sharding=sharding, init_shape=init_shape),
                 batch=batch, n_part=n_part, x_shape=x_shape,
                 nfe=tr.num_down * solver.nfe_per_step * per_call, vjp=tr.num_down * solver.vjp_per_step * per_call)


def noised(x0: Array, model: Model, steps: int, start_step: int, key: Array) -> Array:
    """x0 noised by the forward process to respaced index ``start_step`` of a ``steps``-step
    chain: the ``x_init`` of an SDEdit-style partial solve."""
    use, _ = model.schedule.respace(str(steps))
    abar = jnp.asarray(model.schedule.alphas_cumprod[use[start_step]], jnp.float32)
    return noise.q_sample(jnp.asarray(x0), rng.normal(key, jnp.shape(x0)), abar)
