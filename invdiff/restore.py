"""``invdiff restore``: restore your own images from the shell.

Every input is read as RGB and mapped to the model's [-1, 1] units (8- and 16-bit files at
full precision, transparency over white, EXIF orientation applied: see
:mod:`invdiff.images`), the measurement y is formed, the inputs of one size are solved
together in one batched, compiled call (or in chunks of ``batch_size``), and each chunk's
results are written to ``OUT/<input name>`` (atomically) as soon as it is done.

Inputs may have any size, and each result has its input's size: an image smaller than the
model is padded to the model's size with the padding unknown (the operator is extended by a
crop), a larger one is restored in overlapping tiles of the model's size whose network
outputs are blended at every step (:func:`invdiff.solve_any_size`, :func:`invdiff.tiled`;
the README's "Any image size" says which solvers and operators that is exact for).
``--resize`` squeezes every input to the model's size instead.

Nothing a user has is replaced unasked: before any work, existing outputs are refused unless
``overwrite`` (``--overwrite``), and outputs that would replace an input, a read-only file or
each other are always refused. Ctrl-C is honoured between chunks: the chunk being solved is
finished and written, the rest is not started, and :class:`invdiff.guard.Interrupted` says
which files were written and which inputs were not restored (the CLI exits with status 130).

What an input means, per operator:

* ``inpaint``: the image with its missing region (whatever the missing pixels hold is
  ignored); the mask comes from ``--mask MASK.png`` (white = known, black = missing, grey
  level >= 0.5 counts as white; same size as the input) or ``--mask-type FAMILY`` (random
  families draw one mask per image from ``--seed``).
* ``colorize``: a colour or greyscale image; its grey level (the channel mean) is observed.
* ``sr``: an image of the model's size is downsampled first (f x f average pooling: a test of
  the solver on a known image); an image of any other size is the low-resolution measurement
  itself and its result is ``factor`` times larger.
  ``sr-bicubic``: the same with torch's antialiased bicubic downsampling (the papers' "SR x4").
* ``deblur-gauss``, ``deblur-uniform``, ``deblur-motion``: the blurred image itself (it is the
  measurement); the kernels are those of :mod:`operators.named` (the motion one drawn from
  ``--seed``).
* ``cs<P>`` (e.g. ``cs25``): a full-size image, of which P % of the Walsh–Hadamard (or DCT)
  coefficients are measured (the subset drawn from ``--seed``).

``sigma_y`` is the noise level the solver assumes in the measurement, as a standard deviation
in model units (images scaled to [-1, 1]; 0.05 = 0.025 of the [0, 1] range ≈ 6.4 grey levels
of 255). Restore never adds noise itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Operators ``restore`` knows (``cs<P>`` takes any percentage P); inpainting takes a mask file or a mask family.
OPERATORS = ("inpaint", "colorize", "sr", "sr-bicubic", "deblur-gauss", "deblur-uniform", "deblur-motion", "cs25")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Operators whose input may be the low-resolution measurement itself.
_SR = ("sr", "sr-bicubic")


def degradation_name(operator: str, factor: int = 4, mask_type: str | None = None) -> str:
    """The :func:`operators.named.make` name of a ``restore`` operator; ValueError if unknown."""
    cs = re.fullmatch(r"cs(\d+)", operator)
    if operator not in OPERATORS and not (cs and 0 < int(cs.group(1)) <= 100):
        raise ValueError(f"unknown operator {operator!r}; valid operators: {', '.join(OPERATORS)} "
                         f"(cs<P> for any percentage P from 1 to 100)")
    if operator == "inpaint":
        return "inpaint" if mask_type is None else f"inpaint-{mask_type}"
    if operator in _SR:
        return f"sr{int(factor)}" + operator[len("sr"):]
    return operator


def output_paths(inputs: Sequence[Path], out: Path, fmt: str | None) -> list[Path]:
    """``OUT/<stem>.<ext>``: the input's own format (PNG or JPEG) unless ``fmt`` is given."""
    paths = []
    for p in inputs:
        ext = f".{fmt.lower().lstrip('.')}" if fmt else (p.suffix.lower() if p.suffix.lower() in IMAGE_SUFFIXES
                                                          else ".png")
        if ext not in IMAGE_SUFFIXES:
            raise ValueError(f"unknown output format {fmt!r}: use png or jpg")
        paths.append(out / f"{p.stem}{ext}")
    return paths


def measurement_path(target: Path) -> Path:
    """Where ``save_measurement`` writes A⁺y for the result ``target``."""
    return target.with_name(f"{target.stem}.measurement.png")


@dataclasses.dataclass
class Group:
    """The inputs of one result size, solved together: what one operator acts on."""

    index: list[int]  # positions of the inputs in Job.paths
    size: tuple[int, int]  # (H, W) of the results
    op: Any  # the operator for these inputs at that size (inpainting: one mask row per input)
    y: np.ndarray  # (len(index), *y_shape) in model units
    plan: Any  # invdiff.tiling.Plan: how the size is run (native, padded, direct or tiled)


@dataclasses.dataclass
class Job:
    """A restore job whose inputs are read and checked: what :func:`restore` solves and writes."""

    paths: list[Path]  # the inputs
    targets: list[Path]  # one result per input
    measurements: list[Path]  # one A⁺y file per input, or none
    model: Any
    groups: list[Group]  # the inputs by result size
    labels: np.ndarray | None  # one per input
    solver: Any
    sigma_y: float
    seed: int


def _check_label(net: Any, label: int | None) -> None:
    cfg = net.config
    if cfg.class_cond:
        if label is None and getattr(net, "null_label", None) is None:
            raise ValueError(f"this model is class-conditional and has no null class to run without a label: pass "
                             f"--label K, a class id in [0, {cfg.num_classes}) (emoji64: see docs/emoji64.md)")
        if label is not None and not 0 <= label < cfg.num_classes:
            raise ValueError(f"--label must be a class id in [0, {cfg.num_classes}), got {label}")
    elif label is not None:
        raise ValueError("this model is not class-conditional: leave out --label")


def _read_input(p: Path, operator: str, s: int, factor: int, resize: bool) -> tuple[np.ndarray, bool]:
    """One input in model units and whether it is the measurement itself (deblurring; sr: a
    low-resolution input). Its size (as shown, EXIF orientation included) is read from the
    header first. Any size is taken (:func:`invdiff.solve_any_size`); ``resize`` squeezes an
    input to the model's size instead (as older versions had to)."""
    from invdiff.images import load_image, open_image, oriented_size

    im = open_image(p)
    w, h = oriented_size(im)
    if operator.startswith("deblur"):
        return load_image(p, size=s if resize else None, image=im), True
    if operator in _SR:
        # the model's size (or --resize): a full-size image, downsampled first; any other: y itself
        given = (w, h) == (s // factor, s // factor) or ((w, h) != (s, s) and not resize)
        return load_image(p, size=None if given else s, image=im), given
    return load_image(p, size=s if resize and (w, h) != (s, s) else None, image=im), False


def _read_mask(mask_path: Path, paths: Sequence[Path], size: int | None) -> np.ndarray:
    """The known-pixel mask (resized to (size, size) if given); it must have every input's size
    (checked from headers first)."""
    from invdiff.images import load_mask, open_image, oriented_size

    with open_image(mask_path) as im:
        mw, mh = oriented_size(im)
    for p in paths:
        with open_image(p) as im:
            w, h = oriented_size(im)
        if (w, h) != (mw, mh):
            raise ValueError(f"the mask {mask_path} is {mw}x{mh} but the image {p} is {w}x{h}; give a mask of the "
                             f"image's size")
    known = load_mask(mask_path, size=None if size is None else (size, size))
    if not known.any():
        warnings.warn(f"the mask {mask_path} has no known (white) pixel: nothing of the inputs is used and every "
                      f"pixel is generated", UserWarning, stacklevel=3)
    elif known.all():
        warnings.warn(f"the mask {mask_path} has no missing (black) pixel: nothing is inpainted and the results "
                      f"equal the inputs", UserWarning, stacklevel=3)
    return known


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    operator: str,
    out: str | os.PathLike[str],
    *,
    solver: str = "ddnm",
    mask: str | os.PathLike[str] | None = None,
    mask_type: str | None = None,
    factor: int = 4,
    steps: int | None = None,
    sigma_y: float = 0.0,
    seed: int = 0,
    label: int | None = None,
    model: Any = "emoji64",
    resize: bool = False,
    fmt: str | None = None,
    save_measurement: bool = False,
    overwrite: bool = False,
    size_mode: str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
) -> Job:
    """Check the arguments and the outputs, load the model and read the inputs (arguments as
    :func:`restore`); nothing is solved or written. Cheap checks come first: arguments, the
    output files, then the model, then the images (sizes from their headers first)."""
    import jax
    import jax.numpy as jnp

    import invdiff
    import solvers as solver_registry
    from invdiff.guard import check_outputs
    from invdiff.images import writable_dir
    from invdiff.tiling import MODES, plan
    from operators import masks, named

    # ---- everything that can be checked before loading or computing anything ----------
    if not inputs:
        raise ValueError("no input images given")
    degradation_name(operator)  # ValueError listing the valid names
    solver_registry.get(solver)  # ValueError listing the valid names
    if operator == "inpaint":
        if (mask is None) == (mask_type is None):
            raise ValueError("inpaint needs exactly one of --mask MASK.png (white = known) or --mask-type "
                             f"({', '.join(masks.FAMILIES)})")
        if mask_type is not None and mask_type not in masks.FAMILIES:
            raise ValueError(f"unknown mask type {mask_type!r}; valid types: {', '.join(masks.FAMILIES)}")
    elif mask is not None or mask_type is not None:
        raise ValueError(f"--mask and --mask-type are for inpaint, not {operator}")
    if operator in _SR and (int(factor) != factor or factor < 1):
        raise ValueError(f"--factor must be a positive integer, got {factor}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if not np.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"--sigma-y must be a finite number >= 0 (model units, [-1, 1] images), got {sigma_y}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"no image at {p}")
    mask_path = Path(mask) if mask is not None else None
    if mask_path is not None and not mask_path.is_file():
        raise FileNotFoundError(f"mask file not found: {mask_path}")
    if size_mode not in MODES:
        raise ValueError(f"unknown size mode {size_mode!r}: choose one of {', '.join(MODES)}")
    for flag, v in (("--tile", tile), ("--overlap", overlap)):
        if v is not None and (int(v) != v or v < (1 if flag == "--tile" else 0)):
            raise ValueError(f"{flag} must be a {'positive' if flag == '--tile' else 'non-negative'} number of "
                             f"pixels, got {v}")
    out = writable_dir(out)
    n = len(paths)
    targets = output_paths(paths, out, fmt)
    measurements = [measurement_path(t) for t in targets] if save_measurement else []
    check_outputs(targets + measurements, overwrite=overwrite, inputs=paths + ([mask_path] if mask_path else []))

    # ---- the model and the inputs -------------------------------------------------------
    net = invdiff.load_model(model) if isinstance(model, (str, os.PathLike)) else model
    cfg = getattr(net, "config", None)
    if cfg is None:
        raise TypeError("restore needs an image model with a .config (an ADM model); got " + type(net).__name__)
    s, channels = cfg.image_size, cfg.in_channels
    if channels != 3:
        raise ValueError(f"restore works on RGB images; this model takes {channels} channels")
    _check_label(net, label)
    mask_arr = (_read_mask(mask_path, paths, s if resize else None).astype(np.float32)
                if mask_path is not None else None)  # sizes checked from the headers first
    xs, given = zip(*(_read_input(p, operator, s, int(factor), resize) for p in paths))

    # the inputs by result size: each size is one operator (a low-resolution sr input is y itself)
    name = degradation_name(operator, factor, mask_type)
    f = int(factor) if operator in _SR else 1
    sizes = [(x.shape[0] * f, x.shape[1] * f) if g and operator in _SR else x.shape[:2] for x, g in zip(xs, given)]
    groups = []
    for g_i, size in enumerate(dict.fromkeys(sizes)):
        index = [i for i, z in enumerate(sizes) if z == size]
        key = jax.random.key(seed) if g_i == 0 else jax.random.fold_in(jax.random.key(seed), g_i)
        op = named.make(name, (len(index), *size, channels), key, mask=mask_arr).op
        full = np.stack([np.zeros((*size, channels), np.float32) if given[i] else xs[i] for i in index])
        y = np.array(op.A(jnp.asarray(full)))  # y = A x for full-size inputs, in one batched call
        for j, i in enumerate(index):
            if given[i]:
                if y[j].shape != xs[i].shape:
                    raise ValueError(f"{paths[i]} is {xs[i].shape[1]}x{xs[i].shape[0]}, but a {size[1]}x{size[0]} "
                                     f"result measures {y[j].shape[1]}x{y[j].shape[0]}")
                y[j] = xs[i]
        try:
            run = plan(net, size, size_mode, tile, overlap)
        except ValueError as e:
            raise ValueError(f"{paths[index[0]]} ({size[1]}x{size[0]}): {e}") from None
        groups.append(Group(index=index, size=size, op=op, y=y, plan=run))
    return Job(paths=paths, targets=targets, measurements=measurements, model=net, groups=groups,
               labels=np.full((n,), label, np.int32) if label is not None else None,
               solver=solver_registry.make(solver, steps), sigma_y=float(sigma_y), seed=int(seed))


def _rows(group: Group, rows: slice) -> Any:
    """The operator for the rows ``rows`` of a group (inpainting masks are per input)."""
    from operators import Inpainting

    return Inpainting(group.op.mask[rows]) if isinstance(group.op, Inpainting) else group.op


def write_batch(job: Job, group: Group, rows: slice, x: np.ndarray) -> list[Path]:
    """Write the results ``x`` of a group's rows ``rows`` (and their A⁺y files); returns the results' paths."""
    import jax.numpy as jnp

    from invdiff.images import save_image

    index = group.index[rows]
    written = [save_image(job.targets[i], xi) for i, xi in zip(index, x)]
    if job.measurements:
        for i, m in zip(index, np.asarray(_rows(group, rows).pinv(jnp.asarray(group.y[rows])))):
            save_image(job.measurements[i], m)
    return written


def _summary(job: Job, done: list[int]) -> str:
    from invdiff.guard import _listing

    wrote = f"wrote {len(done)} of {len(job.paths)} result(s)"
    if done:
        wrote += f" ({_listing([job.targets[i] for i in sorted(done)])})"
    done_set = set(done)
    return f"{wrote}; not restored: {_listing([p for i, p in enumerate(job.paths) if i not in done_set])}"


def restore(
    inputs: Sequence[str | os.PathLike[str]],
    operator: str,
    out: str | os.PathLike[str],
    *,
    solver: str = "ddnm",
    mask: str | os.PathLike[str] | None = None,
    mask_type: str | None = None,
    factor: int = 4,
    steps: int | None = None,
    sigma_y: float = 0.0,
    seed: int = 0,
    label: int | None = None,
    model: Any = "emoji64",
    resize: bool = False,
    fmt: str | None = None,
    batch_size: int | None = None,
    save_measurement: bool = False,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    size_mode: str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
) -> list[Path]:
    """Restore the images ``inputs`` and write them to ``out``; returns the written paths.

    Args:
      inputs: PNG or JPEG files (8 or 16 bits; transparency is composited over white; the
        EXIF orientation is applied), of any size: each result has its input's size (``sr``:
        ``factor`` times it). Inputs of one size are solved together; see ``size_mode``.
        ``resize`` (bicubic) squeezes every input to the model's size instead, as before.
      operator: ``inpaint``, ``colorize``, ``sr``, ``sr-bicubic``, ``deblur-gauss``,
        ``deblur-uniform``, ``deblur-motion`` or ``cs<P>`` (see the module docstring).
      solver: a name from ``solvers.SOLVERS`` (default ``ddnm``).
      mask / mask_type: inpainting only, exactly one: a mask image (white = known; grey, or
        colour with equal channels; no transparency) or a family from
        ``operators.masks.FAMILIES``. A mask with no known or no missing pixel gets a warning.
      factor: the super-resolution factor (default 4).
      steps: respaced diffusion steps (default: the solver's paper setting).
      sigma_y: measurement noise std the solver assumes, model units ([-1, 1] images).
      seed: seeds the sampler and random masks; the same seed gives the same result.
      label: class id for a class-conditional model (emoji64: 0-9); None runs a model with a
        null class unconditionally (required by class-conditional models without one).
      model: a bundled model name, a model directory or a loaded model.
      fmt: output format ``png`` or ``jpg`` (default: each input's own).
      batch_size: solve at most this many images per compiled call (default: all at once);
        each chunk's results are written as soon as it is done.
      save_measurement: also write ``<stem>.measurement.png``, the pseudo-inverse A⁺y.
      overwrite: replace existing output files (otherwise they are refused before any work).
      progress: a tqdm bar (True), none (False) or a callback ``progress(done, total)`` in
        transitions, called from inside the compiled loop.
      size_mode: how an image whose size is not the model's runs (:func:`invdiff.tiling.plan`):
        ``auto`` (default: a smaller image is padded to the model's size, with the padding
        unknown; a larger one is tiled), ``pad``, ``direct`` (the network at the image's size,
        rounded up to the UNet's downsampling factor) or ``tile``.
      tile, overlap: the tile size (default: the model's size) and the least overlap of
        neighbouring tiles in pixels (default: a quarter tile) of a tiled restoration.

    Raises :class:`invdiff.guard.Interrupted` after Ctrl-C (at the end of the chunk being
    solved, once it is written), saying what was written and what was not.
    """
    import jax
    import jax.numpy as jnp

    import invdiff
    from invdiff.guard import deferred_interrupts

    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    with deferred_interrupts() as stop:
        job = prepare(inputs, operator, out, solver=solver, mask=mask, mask_type=mask_type, factor=factor,
                      steps=steps, sigma_y=sigma_y, seed=seed, label=label, model=model, resize=resize, fmt=fmt,
                      save_measurement=save_measurement, overwrite=overwrite, size_mode=size_mode, tile=tile,
                      overlap=overlap)
        total = len(job.solver.walk()) - 1  # transitions of the walk
        chunks = [(g, slice(a, a + (batch_size or len(g.index)))) for g in job.groups
                  for a in range(0, len(g.index), batch_size or len(g.index))]
        bar = None
        if progress is True:
            import sys

            for g in job.groups:
                if g.plan.mode != "native":
                    print(f"restore: {len(g.index)} input(s) of {g.plan.describe()}", file=sys.stderr)
        written: dict[int, Path] = {}
        try:
            for group, rows in chunks:
                stop.check(_summary(job, list(written)))
                if progress is True and bar is None:  # after the check: "compiling" means the batch has begun
                    from tqdm.auto import tqdm

                    bar = tqdm(total=total * len(chunks), desc=f"{solver}: compiling", unit="step")
                if bar is not None:
                    done = [0]

                    def cb(k, done=done, bar=bar):
                        if done[0] == 0:
                            bar.set_description(f"{solver}: sampling")
                        bar.update(k - done[0])
                        done[0] = k
                elif callable(progress):
                    cb = lambda k: progress(k, total)  # noqa: B023 (called before the loop moves on)
                else:
                    cb = None
                index = group.index[rows]
                labels = None if job.labels is None else jnp.asarray(job.labels[index])
                sol = invdiff.solve_any_size(job.solver, job.model, _rows(group, rows), jnp.asarray(group.y[rows]),
                                             key=jax.random.key(job.seed), sigma_y=job.sigma_y, label=labels,
                                             progress=cb, mode=group.plan.mode, tile=group.plan.tile,
                                             overlap=group.plan.overlap)  # the plan printed above
                written.update(zip(index, write_batch(job, group, rows, np.asarray(sol.x))))
        finally:
            if bar is not None:
                bar.close()
    return [written[i] for i in sorted(written)]
