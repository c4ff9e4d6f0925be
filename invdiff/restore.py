"""``invdiff restore``: restore your own images from the shell.

Every input is read as RGB and mapped to the model's [-1, 1] units (8- and 16-bit files at
full precision, transparency over white, EXIF orientation applied: see
:mod:`invdiff.images`), the measurement y is formed, all inputs are solved together in one
batched, compiled call (or in chunks of ``batch_size``), and each chunk's results are written
to ``OUT/<input name>`` (atomically) as soon as it is done.

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
* ``sr``: either the low-resolution image itself (size = model size / factor: it *is* the
  measurement) or a full-size image, which is first downsampled (f x f average pooling).
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
class Job:
    """A restore job whose inputs are read and checked: what :func:`restore` solves and writes."""

    paths: list[Path]  # the inputs
    targets: list[Path]  # one result per input
    measurements: list[Path]  # one A⁺y file per input, or none
    model: Any
    op: Any  # the operator for the whole batch (inpainting: one mask row per input)
    y: np.ndarray  # (n, *y_shape) in model units
    labels: np.ndarray | None
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


def _read_input(p: Path, s: int, low: int | None, resize: bool) -> tuple[np.ndarray, bool]:
    """One input in model units and whether it is the low-resolution measurement itself (sr).
    Its size (as shown, EXIF orientation included) is checked from the header, before the
    pixels are decoded."""
    from invdiff.images import load_image, open_image, oriented_size

    im = open_image(p)
    w, h = oriented_size(im)
    given = low is not None and (w, h) == (low, low)
    if not resize and not given and (w, h) != (s, s):
        im.close()
        sizes = f"{s}x{s}" + (f" (or {low}x{low}, the low-resolution measurement)" if low else "")
        raise ValueError(f"{p} is {w}x{h} but the model takes {sizes}; resize it or pass --resize")
    return load_image(p, size=None if given else s, image=im), given


def _read_mask(mask_path: Path, paths: Sequence[Path], s: int) -> np.ndarray:
    """The (s, s) known-pixel mask; it must have every input's size (checked from headers first)."""
    from invdiff.images import load_mask, open_image, oriented_size

    with open_image(mask_path) as im:
        mw, mh = oriented_size(im)
    for p in paths:
        with open_image(p) as im:
            w, h = oriented_size(im)
        if (w, h) != (mw, mh):
            raise ValueError(f"the mask {mask_path} is {mw}x{mh} but the image {p} is {w}x{h}; give a mask of the "
                             f"image's size")
    known = load_mask(mask_path, size=(s, s))
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
    out = writable_dir(out)
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
    low = s // factor if operator in _SR and s % factor == 0 else None
    xs, given = zip(*(_read_input(p, s, low, resize) for p in paths))
    given = [g or operator.startswith("deblur") for g in given]  # a blurred input is y itself
    mask_arr = _read_mask(mask_path, paths, s).astype(np.float32) if mask_path is not None else None

    n = len(paths)
    name = degradation_name(operator, factor, mask_type)
    op = named.make(name, (n, s, s, channels), jax.random.key(seed), mask=mask_arr).op
    # y = A x for full-size inputs, in one batched call; a low-resolution sr input is y itself
    full = np.stack([np.zeros((s, s, channels), np.float32) if g else x for x, g in zip(xs, given)])
    y = np.array(op.A(jnp.asarray(full)))
    for i, g in enumerate(given):
        if g:
            y[i] = xs[i]
    return Job(paths=paths, targets=targets, measurements=measurements, model=net, op=op, y=y,
               labels=np.full((n,), label, np.int32) if label is not None else None,
               solver=solver_registry.make(solver, steps), sigma_y=float(sigma_y), seed=int(seed))


def _rows(job: Job, sl: slice) -> Any:
    """The operator for the inputs ``sl`` (inpainting masks are per input)."""
    from operators import Inpainting

    return Inpainting(job.op.mask[sl]) if isinstance(job.op, Inpainting) else job.op


def write_batch(job: Job, sl: slice, x: np.ndarray) -> list[Path]:
    """Write the results ``x`` of the inputs ``sl`` (and their A⁺y files); returns the results' paths."""
    import jax.numpy as jnp

    from invdiff.images import save_image

    written = [save_image(dst, xi) for dst, xi in zip(job.targets[sl], x)]
    if job.measurements:
        for dst, m in zip(job.measurements[sl], np.asarray(_rows(job, sl).pinv(jnp.asarray(job.y[sl])))):
            save_image(dst, m)
    return written


def _summary(job: Job, done: int) -> str:
    from invdiff.guard import _listing

    wrote = f"wrote {done} of {len(job.paths)} result(s)" + (f" ({_listing(job.targets[:done])})" if done else "")
    return f"{wrote}; not restored: {_listing(job.paths[done:])}"


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
) -> list[Path]:
    """Restore the images ``inputs`` and write them to ``out``; returns the written paths.

    Args:
      inputs: PNG or JPEG files (8 or 16 bits; transparency is composited over white; the
        EXIF orientation is applied). They must have the model's size (64x64 for emoji64)
        unless ``resize`` (bicubic) is set; for ``sr`` a low-resolution input (size / factor)
        is the measurement itself.
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
                      save_measurement=save_measurement, overwrite=overwrite)
        n = len(job.paths)
        total = len(job.solver.walk()) - 1  # transitions of the walk
        chunk = batch_size or n
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=total * ((n + chunk - 1) // chunk), desc=f"{solver}: compiling", unit="step")
        written: list[Path] = []
        try:
            for start in range(0, n, chunk):
                stop.check(_summary(job, start))
                sl = slice(start, start + chunk)
                if bar is not None:
                    done = [0]

                    def cb(k, done=done):
                        if done[0] == 0:
                            bar.set_description(f"{solver}: sampling")
                        bar.update(k - done[0])
                        done[0] = k
                elif callable(progress):
                    cb = lambda k: progress(k, total)  # noqa: B023 (called before the loop moves on)
                else:
                    cb = None
                labels = None if job.labels is None else jnp.asarray(job.labels[sl])
                sol = invdiff.solve(job.solver, job.model, _rows(job, sl), jnp.asarray(job.y[sl]),
                                    key=jax.random.key(job.seed), sigma_y=job.sigma_y, label=labels, progress=cb)
                written += write_batch(job, sl, np.asarray(sol.x))
        finally:
            if bar is not None:
                bar.close()
    return written
