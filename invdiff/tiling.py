"""Any image size: run a prior trained at one size on images of another.

Three ways, chosen by :func:`plan` (and run by :func:`solve_any_size`):

* **pad** — an image no larger than the model in either side is placed in the middle of a
  model-size canvas. The operator is extended by a :class:`Crop` (:func:`extend`): the solver
  sees A' = A ∘ crop, so the padded pixels are unknown and the known pixels stay known. The
  result is cropped back.
* **direct** — a fully convolutional network (ADM) is run at the image's own size, padded the
  same way up to a multiple of its downsampling factor (``ADMModel(any_size=True)``). On the
  bundled model it restored worse than padding (``benchmarks/seams.py``): not the default.
* **tile** — a larger image is covered by overlapping tiles of the model's size (a side
  shorter than a tile is padded first). :class:`TiledModel` cuts x_t into those tiles at every
  network call, runs the network on all of them as one batch, and blends the tiles' ε̂ back
  with smooth weights normalised to sum to one at every pixel. :func:`tiled` wraps any solver
  so that it runs with that model. This is MultiDiffusion's fusion (Bar-Tal et al., ICML
  2023: a per-pixel weighted average of the tiles' denoised estimates, one global state)
  with two deviations: MultiDiffusion averages the tiles' next states with uniform weights,
  we average the network's prediction with a raised-cosine window, and the solver then takes
  one step on the whole image.

What is exact and what is approximate with tiles
------------------------------------------------

The solver itself runs unchanged on the whole image with the whole operator: only the
network is tiled. So

* the data step (projection, pseudo-inverse, prox, SVD step, gradient of ‖y − A x̂0‖) is the
  untiled one, for every operator — inpainting, colorization, downsampling, blur, and global
  operators such as compressed sensing alike: nothing is split at tile borders, so no
  operator has to act locally and none is refused;
* the gradient solvers (MCG, PiGDM, DPS) differentiate exactly through the blended network;
* the known-pixel guarantee of the projecting solvers (RePaint, ILVR, DDNM, MCG, DDRM,
  DiffPIR at σ_y = 0) is unchanged;
* the approximation is the prior: the blended ε̂ is a weighted average of the network's
  predictions for each tile seen on its own. It is not the score of one distribution over
  the whole image; each tile's content is judged by a model that never saw its
  neighbours, and tiles that cut objects are out of the model's training distribution. How
  visible that is at the tile borders is measured by :func:`seam_ratio`
  (``benchmarks/seams.py``); a content mismatch spread over the overlap (two tiles
  "imagining" different things that are cross-faded) is not a gradient jump and is not
  measured by it.

Blending ε̂ and blending x̂0 = (x − √(1−ᾱ) ε̂)/√ᾱ are the same thing (x is shared by the
tiles and the weights sum to one); a learned variance is blended the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff.model import Model
from invdiff.operator import Composed, LinearOperator, PartialIsometry, SVDOperator
from invdiff.solve import Problem, Solution, Solver, Step, shard_count, solve

Array = jax.Array

#: Default overlap of neighbouring tiles, as a fraction of the tile size.
OVERLAP_FRACTION = 0.25


# ---------------------------------------------------------------------------------------
# Tile geometry


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or any(isinstance(a, bool) or int(a) != a or a < 1 for a in t):
        raise ValueError(f"{name} must be a positive integer or a pair (height, width), got {v!r}")
    return int(t[0]), int(t[1])


def tile_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Where the tiles of one axis start: the fewest tiles of ``tile`` pixels that cover
    ``length`` with neighbours overlapping by at least ``overlap``, spread evenly (the first
    at 0, the last ending at ``length``)."""
    if length < tile:
        raise ValueError(f"an axis of {length} pixels is shorter than the tile ({tile}); pad it first")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must lie in [0, tile) = [0, {tile}), got {overlap}")
    n = 1 + math.ceil((length - tile) / (tile - overlap))
    return tuple(int(s) for s in np.round(np.linspace(0, length - tile, n)))


def window(tile: int, ramp: int) -> np.ndarray:
    """The 1-D blending weight across one tile: 1 in the middle, falling as sin² over the
    ``ramp`` pixels next to each edge (never 0). Two tiles overlapping by exactly ``ramp``
    pixels have weights summing to 1 there (sin² + cos²)."""
    d = np.minimum(np.arange(tile), tile - 1 - np.arange(tile)) + 0.5  # distance to the nearest edge
    if ramp <= 0:
        return np.ones(tile, np.float32)
    return np.where(d < ramp, np.sin(0.5 * np.pi * d / ramp) ** 2, 1.0).astype(np.float32)


def tile_edges(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Positions p where a tile starts or ends inside the image: the pixel pairs (p − 1, p)
    straddle a tile border. Empty when one tile covers the axis."""
    starts = tile_starts(length, tile, overlap)
    edges = {s for s in starts} | {s + tile for s in starts}
    return tuple(sorted(p for p in edges if 0 < p < length))


def _index(starts: tuple[int, ...], tile: int) -> np.ndarray:
    return np.asarray(starts, np.int32)[:, None] + np.arange(tile, dtype=np.int32)[None]


def _gather(x: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
    """(B, H, W, C) -> (B · n_r · n_c, th, tw, C), tiles in row-major order per image."""
    th, tw = rows.shape[1], cols.shape[1]
    t = x[:, rows][:, :, :, cols]  # (B, n_r, th, n_c, tw, C)
    return t.transpose(0, 1, 3, 2, 4, 5).reshape((-1, th, tw) + x.shape[3:])


def _scatter(t: Array, rows: np.ndarray, cols: np.ndarray, size: tuple[int, int]) -> Array:
    """The adjoint of :func:`_gather`: every tile added back at its place."""
    (n_r, th), (n_c, tw) = rows.shape, cols.shape
    b = t.shape[0] // (n_r * n_c)
    t = t.reshape((b, n_r, n_c, th, tw) + t.shape[3:]).transpose(0, 1, 3, 2, 4, 5)
    u = jnp.zeros((b, n_r, th, size[1]) + t.shape[5:], t.dtype).at[:, :, :, cols].add(t)
    return jnp.zeros((b,) + size + t.shape[5:], t.dtype).at[:, rows].add(u)


# ---------------------------------------------------------------------------------------
# The tiled model


class TiledModel(Model):
    """``base`` run on overlapping tiles of an image of ``size`` = (H, W), ε̂ blended.

    Every call of :meth:`eps` cuts x (B, H, W, C) into tiles of ``tile`` = (th, tw) pixels
    overlapping by at least ``overlap`` (:func:`tile_starts`), runs ``base`` once on the batch
    of all B · n tiles (labels repeated per tile) and blends the tiles' outputs with the
    separable :func:`window` weights, normalised so that they sum to one at every pixel
    (a constant field comes back as that constant). One tile (``size == tile``) calls
    ``base`` on x itself. ``nfe_per_call`` is n × the base's. With several devices
    (``devices``, None = all local ones) the tile batch is spread over them like a batch.
    Build with :func:`tiled_model`.
    """

    base: Model
    size: tuple[int, int] = struct.field(pytree_node=False, kw_only=True)
    tile: tuple[int, int] = struct.field(pytree_node=False, kw_only=True)
    overlap: int = struct.field(pytree_node=False, kw_only=True)
    devices: tuple[Any, ...] | None = struct.field(pytree_node=False, default=None, kw_only=True)

    # ---- geometry (static) --------------------------------------------------------------
    def starts(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The tiles' first rows and first columns."""
        return (tile_starts(self.size[0], self.tile[0], self.overlap),
                tile_starts(self.size[1], self.tile[1], self.overlap))

    @property
    def num_tiles(self) -> int:
        r, c = self.starts()
        return len(r) * len(c)

    @property
    def nfe_per_call(self) -> int:
        return self.num_tiles * int(getattr(self.base, "nfe_per_call", 1))

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(the per-tile weight (th, tw, 1), 1 / its sum over the tiles at each pixel (H, W, 1))."""
        (r, c), (th, tw) = self.starts(), self.tile
        w = np.outer(window(th, self.overlap), window(tw, self.overlap))
        total = np.zeros(self.size, np.float64)
        for i in r:
            for j in c:
                total[i:i + th, j:j + tw] += w
        return w[..., None].astype(np.float32), (1.0 / total)[..., None].astype(np.float32)

    # ---- the Model contract -------------------------------------------------------------
    def check_input(self, x_shape: tuple[int, ...], label: Any = None) -> None:
        x_shape = tuple(x_shape)
        if len(x_shape) != 4 or x_shape[1:3] != self.size:
            raise ValueError(f"this tiled model covers {self.size[0]}x{self.size[1]} images: x must have shape "
                             f"(B, {self.size[0]}, {self.size[1]}, C), got {x_shape}")
        self.base.check_input((x_shape[0],) + self.tile + x_shape[3:], label)

    def _spread(self, tiles: Array, batch: int) -> Array:
        """Constrain the tile batch to the devices: those ``solve`` splits the batch over when
        it does (the tiles follow their image), else as many as divide the tile count."""
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = list(self.devices or jax.local_devices())
        n = shard_count(batch, len(devices))
        if n == 1:
            n = shard_count(tiles.shape[0], len(devices))
        if n == 1:
            return tiles
        mesh = Mesh(np.asarray(devices[:n]), ("tiles",))
        return jax.lax.with_sharding_constraint(tiles, NamedSharding(mesh, PartitionSpec("tiles")))

    def _indices(self) -> tuple[np.ndarray, np.ndarray]:
        r, c = self.starts()
        return _index(r, self.tile[0]), _index(c, self.tile[1])

    def split(self, x: Array) -> Array:
        """(B, H, W, C) images -> (B · n, th, tw, C) tiles, row-major per image."""
        return _gather(x, *self._indices())

    def blend(self, tiles: Array) -> Array:
        """(B · n, th, tw, C) per-tile values -> (B, H, W, C), their normalised weighted average."""
        w, inv_total = (jnp.asarray(a, tiles.dtype) for a in self.weights())
        return _scatter(tiles * w, *self._indices(), self.size) * inv_total

    def eps_and_v(self, x: Array, t: Array, label: Array | None = None) -> tuple[Array, Array | None]:
        if self.num_tiles == 1:
            return self.base.eps_and_v(x, t, label)
        n = self.num_tiles
        tiles = self._spread(self.split(x), x.shape[0])
        lab = None if label is None else jnp.repeat(jnp.asarray(label), n)
        eps, v = self.base.eps_and_v(tiles, jnp.repeat(jnp.asarray(t), n), lab)
        return self.blend(eps), None if v is None else self.blend(v)

    def eps(self, x: Array, t: Array, label: Array | None = None) -> Array:
        return self.eps_and_v(x, t, label)[0]


def native_size(model: Model) -> tuple[int, int] | None:
    """The (H, W) a model was trained at: an ADM's ``config.image_size``, an analytic image
    prior's shape; None when unknown (pass ``tile=`` then)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "image_size"):
        return int(cfg.image_size), int(cfg.image_size)
    shape = getattr(model, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 3:
        return int(shape[0]), int(shape[1])
    return None


def size_multiple(model: Model) -> int:
    """The factor an ADM network's input size must be a multiple of: 2^(number of levels − 1)."""
    cfg = getattr(model, "config", None)
    mult = getattr(cfg, "resolved_channel_mult", None)
    return 2 ** (len(mult) - 1) if mult else 1


def default_overlap(tile: tuple[int, int]) -> int:
    """:data:`OVERLAP_FRACTION` of the smaller tile side."""
    return int(round(OVERLAP_FRACTION * min(tile)))


def tiled_model(model: Model, size: tuple[int, int], tile: int | tuple[int, int] | None = None,
                overlap: int | None = None, devices: Any = None) -> TiledModel:
    """``model`` run on overlapping tiles of (H, W) = ``size`` images (see :class:`TiledModel`).

    ``tile`` defaults to the model's own size (:func:`native_size`), ``overlap`` to a quarter
    of the tile (:func:`default_overlap`). Raises ValueError for an image smaller than a tile
    (pad it: :func:`solve_any_size` does) or an overlap outside [0, tile).
    """
    if tile is None:
        tile = native_size(model)
        if tile is None:
            raise ValueError(f"{type(model).__name__} does not say its image size: pass tile=(height, width)")
    tile = _pair(tile, "tile")
    size = _pair(size, "size")
    overlap = default_overlap(tile) if overlap is None else overlap
    if isinstance(overlap, bool) or int(overlap) != overlap or not 0 <= overlap < min(tile):
        raise ValueError(f"overlap must be an integer in [0, {min(tile)}) for {tile[0]}x{tile[1]} tiles, "
                         f"got {overlap!r}")
    if size[0] < tile[0] or size[1] < tile[1]:
        raise ValueError(f"a {size[0]}x{size[1]} image is smaller than the {tile[0]}x{tile[1]} tiles: pad it to at "
                         f"least the tile size (invdiff.solve_any_size does this)")
    return TiledModel(schedule=model.schedule, base=model, size=size, tile=tile, overlap=int(overlap),
                      devices=None if devices is None else tuple(devices),
                      learned_variance=model.learned_variance, data_range=model.data_range)


class Tiled(Solver):
    """``inner`` run with its model tiled (:class:`TiledModel`); see :func:`tiled`."""

    inner: Solver
    tile: tuple[int, int] | None = struct.field(pytree_node=False, default=None, kw_only=True)
    overlap: int | None = struct.field(pytree_node=False, default=None, kw_only=True)

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self.inner.nfe_per_step

    @property
    def vjp_per_step(self) -> int:  # type: ignore[override]
        return self.inner.vjp_per_step

    def wrap_model(self, model: Model, x_shape: tuple[int, ...], devices: Any = None) -> Model:
        if len(x_shape) != 4:
            raise ValueError(f"tiled solvers take images (B, H, W, C), got x of shape {tuple(x_shape)}")
        return tiled_model(model, x_shape[1:3], self.tile, self.overlap, devices)

    def walk(self) -> np.ndarray:
        return self.inner.walk()

    def check(self, problem: Problem) -> None:
        self.inner.check(problem)

    def init(self, problem: Problem, x: Array, key: Array) -> Any:
        return self.inner.init(problem, x, key)

    def step(self, problem: Problem, tr: Step, x: Array, state: Any, key: Array) -> tuple[Array, Any, Array]:
        return self.inner.step(problem, tr, x, state, key)


def tiled(solver: Solver, tile: int | tuple[int, int] | None = None, overlap: int | None = None) -> Solver:
    """``solver`` with its network run on overlapping tiles, for images larger than the model.

    ``invdiff.solve(invdiff.tiled(DDNM()), model, op, y, ...)`` runs DDNM on the whole image
    with the whole operator, in one compiled program, calling the network through a
    :class:`TiledModel`: at every step all tiles of model size (``tile``, default the model's
    size) overlapping by ``overlap`` (default a quarter of the tile) go through the network as
    one batch and their ε̂ are blended. ``Solution.nfe`` counts every tile. See the module
    docstring for what is exact (the data step, for every operator) and what is approximate
    (the prior).
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"tiled() wraps an invdiff Solver instance (e.g. DDNM()), got {solver!r}")
    if isinstance(solver, Tiled):
        raise ValueError("this solver is tiled already")
    if tile is not None:
        tile = _pair(tile, "tile")
    return Tiled(solver, tile=tile, overlap=overlap, steps=solver.steps, jump_length=solver.jump_length,
                 jump_n_sample=solver.jump_n_sample)


# ---------------------------------------------------------------------------------------
# Padding: the operator extended by a crop


class Crop(PartialIsometry):
    """x (H', W', C) -> its (H, W) window at ``offset``: A = crop, Aᵀ = zero padding.

    A Aᵀ = I (a co-isometry), so A Aᵀ A = A: a partial isometry with c = 1, A⁺ = Aᵀ.
    """

    padded: tuple[int, int] = struct.field(pytree_node=False)
    size: tuple[int, int] = struct.field(pytree_node=False)
    offset: tuple[int, int] = struct.field(pytree_node=False, default=(0, 0))

    def __post_init__(self):
        (ph, pw), (h, w), (oh, ow) = self.padded, self.size, self.offset
        if not (0 <= oh and oh + h <= ph and 0 <= ow and ow + w <= pw):
            raise ValueError(f"a {h}x{w} window at offset {self.offset} does not fit in {ph}x{pw}")

    def c(self) -> float:
        return 1.0

    def _pads(self, ndim: int) -> list[tuple[int, int]]:
        (ph, pw), (h, w), (oh, ow) = self.padded, self.size, self.offset
        return [(0, 0), (oh, ph - h - oh), (ow, pw - w - ow)] + [(0, 0)] * (ndim - 3)

    def A(self, x: Array) -> Array:
        (h, w), (oh, ow) = self.size, self.offset
        return x[:, oh:oh + h, ow:ow + w]

    def AT(self, y: Array) -> Array:
        return jnp.pad(y, self._pads(y.ndim))

    def pinv(self, y: Array) -> Array:
        return self.AT(y)

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(x_shape) < 2 or tuple(x_shape[:2]) != self.padded:
            raise ValueError(f"Crop takes {self.padded[0]}x{self.padded[1]} inputs, got trailing shape "
                             f"{tuple(x_shape)}")
        return self.size + tuple(x_shape[2:])

    def x_shape(self, y_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(y_shape) < 2 or tuple(y_shape[:2]) != self.size:
            raise ValueError(f"Crop gives {self.size[0]}x{self.size[1]} outputs, got y with trailing shape "
                             f"{tuple(y_shape)}")
        return self.padded + tuple(y_shape[2:])

    def outside(self, channels: int) -> np.ndarray:
        """Flat indices (into one padded (H', W', C) input) of the pixels outside the window."""
        (h, w), (oh, ow) = self.size, self.offset
        inside = np.zeros(self.padded + (channels,), bool)
        inside[oh:oh + h, ow:ow + w] = True
        return np.flatnonzero(~inside).astype(np.int32)


def _known_c(op: LinearOperator) -> float | None:
    if isinstance(op, Composed):
        return op.c_value
    if isinstance(op, PartialIsometry):
        return float(op.c())
    return None


class Cropped(Composed):
    """``op ∘ crop``: ``op`` applied to the (H, W) window of a padded input (see :func:`extend`).

    Exact closed forms from ``op``'s own, because the crop C is a co-isometry (C Cᵀ = I):
    (A C)⁺ = Cᵀ A⁺; prox keeps the padded pixels at z and applies ``op.prox`` inside;
    Cᵀ Aᵀ (r² A Aᵀ + σ² I)⁻¹ likewise. A partial isometry stays one with the same c.
    """

    def pinv(self, y: Array) -> Array:
        return self.inner.AT(self.outer.pinv(y))

    def prox(self, z: Array, y: Array, rho: Array) -> Array:
        zc = self.inner.A(z)
        return z + self.inner.AT(self.outer.prox(zc, y, rho) - zc)

    def AT_gram_inv(self, y: Array, r2: Array, s2: Array) -> Array:
        return self.inner.AT(self.outer.AT_gram_inv(y, r2, s2))


class CroppedSVD(Cropped, SVDOperator):
    """:class:`Cropped` for an ``op`` with an SVD, keeping one (for DDRM and DDNM+).

    Spectral space: per sample, the flattened spectral coefficients of ``op`` on the window
    followed by the padded pixels (singular value 0: they are not observed).
    """

    #: ``op``'s spectral shape for one input, and the number of padded values per input (static)
    spectral: tuple[int, ...] = struct.field(pytree_node=False, default=(), kw_only=True)
    n_pad: int = struct.field(pytree_node=False, default=0, kw_only=True)

    def _split(self, xbar: Array) -> tuple[Array, Array]:
        n = int(np.prod(self.spectral))
        return xbar[:, :n].reshape((xbar.shape[0],) + self.spectral), xbar[:, n:]

    def _join(self, inside: Array, outside: Array) -> Array:
        return jnp.concatenate([inside.reshape(inside.shape[0], -1), outside], axis=1)

    def Vt(self, x: Array) -> Array:
        out = self.inner.outside(x.shape[-1])
        return self._join(self.outer.Vt(self.inner.A(x)), x.reshape(x.shape[0], -1)[:, out])

    def V(self, xbar: Array) -> Array:
        inside, outside = self._split(xbar)
        x = self.inner.AT(self.outer.V(inside))
        out = self.inner.outside(x.shape[-1])
        return x.reshape(x.shape[0], -1).at[:, out].set(outside).reshape(x.shape)

    def Ut(self, y: Array) -> Array:
        inside = self.outer.Ut(y)
        return self._join(inside, jnp.zeros((y.shape[0], self.n_pad), inside.dtype))

    def U(self, ybar: Array) -> Array:
        return self.outer.U(self._split(ybar)[0])

    def singulars(self) -> Array:
        s = jnp.asarray(self.outer.singulars())
        if s.ndim > len(self.spectral):  # one set per sample (per-sample inpainting masks)
            s = jnp.broadcast_to(s, s.shape[:1] + self.spectral)
            return self._join(s, jnp.zeros((s.shape[0], self.n_pad), s.dtype))
        s = jnp.broadcast_to(s, self.spectral).reshape(-1)
        return jnp.concatenate([s, jnp.zeros((self.n_pad,), s.dtype)])


def extend(op: LinearOperator, x_shape: tuple[int, int, int], padded: tuple[int, int],
           offset: tuple[int, int] | None = None, batch: int = 1) -> Cropped:
    """``op``, which acts on (H, W, C) = ``x_shape`` images, extended to ``padded`` = (H', W')
    inputs by a :class:`Crop` at ``offset`` (default: centred). The padded pixels are not
    observed. ``op``'s closed forms, partial-isometry constant and SVD are kept (``batch``: the
    batch size, for operators with per-sample leaves)."""
    h, w, c = (int(a) for a in x_shape)
    ph, pw = _pair(padded, "padded")
    if offset is None:
        offset = ((ph - h) // 2, (pw - w) // 2)
    crop = Crop((ph, pw), (h, w), tuple(int(o) for o in offset))
    if isinstance(op, SVDOperator):
        spectral = jax.eval_shape(op.Vt, jax.ShapeDtypeStruct((batch, h, w, c), jnp.float32)).shape[1:]
        return CroppedSVD(op, crop, _known_c(op), spectral=tuple(spectral), n_pad=(ph * pw - h * w) * c)
    return Cropped(op, crop, _known_c(op))


# ---------------------------------------------------------------------------------------
# Choosing how to run an image of any size


#: ``solve_any_size`` modes
MODES = ("auto", "native", "pad", "direct", "tile")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How an (H, W) image is run: ``mode`` ("native", "pad", "direct" or "tile"), the size
    ``run`` = (H', W') the solver works at (the image sits at ``offset`` in it; the rest is
    padding), and for "tile" the ``tile`` size, ``overlap`` and the number of ``tiles``."""

    mode: str
    size: tuple[int, int]
    run: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    tile: tuple[int, int] | None = None
    overlap: int | None = None
    tiles: int = 1

    @property
    def padded(self) -> bool:
        return self.run != self.size

    def describe(self) -> str:
        """One line, sizes as width x height."""
        (h, w), (rh, rw) = self.size, self.run
        pad = f", padded to {rw}x{rh}" if self.padded else ""
        if self.mode == "tile":
            return f"{w}x{h}{pad}: {self.tiles} tiles of {self.tile[1]}x{self.tile[0]}, overlap >= {self.overlap}"
        return {"native": f"{w}x{h}: the model's own size", "pad": f"{w}x{h}{pad}",
                "direct": f"{w}x{h}: the network run at {rw}x{rh}"}[self.mode]


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def plan(model: Model, size: tuple[int, int], mode: str = "auto", tile: int | tuple[int, int] | None = None,
         overlap: int | None = None) -> Plan:
    """Decide how :func:`solve_any_size` runs an image of ``size`` = (H, W) with ``model``.

    ``mode="auto"``: the model's own size runs as it is; a smaller image (both sides at most
    the model's) is padded to the model's size ("pad"; measured better than "direct" in
    ``benchmarks/seams.py``); anything larger is tiled ("tile"), a side shorter than the tile
    being padded first. ``"direct"`` runs the network at the image's size rounded up to a
    multiple of the UNet's downsampling factor (ADM models only). ``tile``/``overlap``
    override the tile size (default: the model's size) and overlap (default: a quarter tile).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    size = _pair(size, "size")
    native = native_size(model)
    if native is None and tile is None:
        raise ValueError(f"{type(model).__name__} does not say its image size: pass tile=(height, width)")
    tile = _pair(tile, "tile") if tile is not None else native
    native = native or tile
    h, w = size
    if mode == "auto":
        if size == native:
            mode = "native"
        elif h <= native[0] and w <= native[1]:
            mode = "pad"
        else:
            mode = "tile"
    if mode == "native":
        if size != native:
            raise ValueError(f"mode 'native' needs an image of the model's size {native[0]}x{native[1]}, got {h}x{w}")
        return Plan("native", size, size)
    if mode == "pad":
        if h > native[0] or w > native[1]:
            raise ValueError(f"a {h}x{w} image does not fit in the model's {native[0]}x{native[1]}: use mode 'tile'")
        return Plan("pad", size, native, ((native[0] - h) // 2, (native[1] - w) // 2))
    if mode == "direct":
        if getattr(model, "config", None) is None or not hasattr(model, "any_size"):
            raise ValueError(f"mode 'direct' needs a fully convolutional ADM model, not {type(model).__name__}")
        m = size_multiple(model)
        run = (_round_up(h, m), _round_up(w, m))
        return Plan("direct", size, run, ((run[0] - h) // 2, (run[1] - w) // 2))
    run = (max(h, tile[0]), max(w, tile[1]))
    tm = tiled_model(model, run, tile, overlap)  # checks tile and overlap
    return Plan("tile", size, run, ((run[0] - h) // 2, (run[1] - w) // 2), tm.tile, tm.overlap, tm.num_tiles)


def solve_any_size(solver: Solver, model: Model, op: LinearOperator, y: Array, *, key: Array,
                   sigma_y: float | Array = 0.0, label: Array | None = None, mode: str = "auto",
                   tile: int | tuple[int, int] | None = None, overlap: int | None = None,
                   devices: Any = None, **solve_kwargs: Any) -> Solution:
    """:func:`invdiff.solve` for images of any size; ``x`` comes back at the input's size.

    ``op`` acts on the user's (H, W, C) images (build it at that size, e.g. with an
    (H, W) inpainting mask) and ``y`` is its measurement. :func:`plan` decides, from the
    model's size, whether to run the image as it is, pad it (the operator extended by a
    :class:`Crop`, so the padded pixels are unknown), run the network at the image's size
    (``mode="direct"``), or tile it (:func:`tiled`). The known pixels of the projecting
    solvers stay known in every mode. ``Solution.nfe`` counts every tile; a saved
    ``trajectory`` has the padded size. Other keyword arguments go to :func:`invdiff.solve`
    (``x_init`` must then have the padded size, ``plan(...).run``).
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"op must be an invdiff LinearOperator, got {type(op).__name__}")
    y = jnp.asarray(y)
    x_shape = tuple(op.x_shape(tuple(y.shape[1:])))
    if len(x_shape) != 3:
        raise ValueError(f"solve_any_size restores images (H, W, C); this operator's inputs have shape {x_shape}")
    p = plan(model, x_shape[:2], mode, tile, overlap)
    run_op = extend(op, x_shape, p.run, p.offset, batch=int(y.shape[0])) if p.padded else op
    run_solver = tiled(solver, p.tile, p.overlap) if p.mode == "tile" else solver
    run_model = model.replace(any_size=True) if p.mode == "direct" else model
    sol = solve(run_solver, run_model, run_op, y, key=key, sigma_y=sigma_y, label=label, devices=devices,
                **solve_kwargs)
    if p.padded:
        sol = sol.replace(x=run_op.inner.A(sol.x))
    return sol


# ---------------------------------------------------------------------------------------
# Seams


@functools.partial(jax.jit, static_argnames=("row_edges", "col_edges"))
def seam_ratio(x: Array, row_edges: tuple[int, ...], col_edges: tuple[int, ...]) -> Array:
    """Mean gradient magnitude across tile borders over that inside the tiles, per image.

    x: (B, H, W, C). The gradients are the absolute differences of neighbouring pixels (per
    channel); "across a border" are the vertical differences between rows p − 1 and p for p in
    ``row_edges`` and the horizontal ones between columns p − 1 and p for p in ``col_edges``
    (:func:`tile_edges`); every other difference is "inside". 1 means the borders are as smooth
    as the rest of the image; a visible seam gives more. Returns shape (B,).
    """
    x = jnp.asarray(x, jnp.float32)
    _, h, w = x.shape[:3]
    gv = jnp.abs(x[:, 1:] - x[:, :-1])  # (B, H-1, W, C): pair (i, i+1) at index i
    gh = jnp.abs(x[:, :, 1:] - x[:, :, :-1])
    mv = np.zeros((h - 1,), bool)
    mv[[p - 1 for p in row_edges]] = True
    mh = np.zeros((w - 1,), bool)
    mh[[p - 1 for p in col_edges]] = True
    mv = jnp.asarray(mv)[None, :, None, None]
    mh = jnp.asarray(mh)[None, None, :, None]
    axes = (1, 2, 3)
    border = jnp.sum(jnp.where(mv, gv, 0.0), axes) + jnp.sum(jnp.where(mh, gh, 0.0), axes)
    inside = jnp.sum(jnp.where(mv, 0.0, gv), axes) + jnp.sum(jnp.where(mh, 0.0, gh), axes)
    n_border = (len(row_edges) * w + len(col_edges) * h) * x.shape[3]
    n_inside = ((h - 1) * w + h * (w - 1)) * x.shape[3] - n_border
    if n_border == 0 or n_inside == 0:
        raise ValueError("seam_ratio needs tile borders and pixels between them; give the tile edges")
    return (border / n_border) / (inside / n_inside)
