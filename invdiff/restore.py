"""``invdiff restore``: restore your own images from the shell.

Every input is read as RGB and mapped to the model's [-1, 1] units, the measurement y is
formed, all inputs are solved together in one batched, compiled call (or in chunks of
``batch_size``), and each result is written to ``OUT/<input name>`` (atomically).

What an input means, per operator:

* ``inpaint``: the image with its missing region (whatever the missing pixels hold is
  ignored); the mask comes from ``--mask MASK.png`` (white = known, black = missing, grey
  level >= 0.5 counts as white; same size as the input) or ``--mask-type FAMILY`` (random
  families draw one mask per image from ``--seed``).
* ``colorize``: a colour or greyscale image; its grey level (the channel mean) is observed.
* ``sr``: either the low-resolution image itself (size = model size / factor: it *is* the
  measurement) or a full-size image, which is first downsampled (f x f average pooling).

``sigma_y`` is the noise level the solver assumes in the measurement, as a standard deviation
in model units (images scaled to [-1, 1]; 0.05 = 0.025 of the [0, 1] range ≈ 6.4 grey levels
of 255). Restore never adds noise itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Operators ``restore`` knows; inpainting takes a mask file or a mask family.
OPERATORS = ("inpaint", "colorize", "sr")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def output_paths(inputs: Sequence[Path], out: Path, fmt: str | None) -> list[Path]:
    """``OUT/<stem>.<ext>``: the input's own format (PNG or JPEG) unless ``fmt`` is given."""
    paths = []
    for p in inputs:
        ext = f".{fmt.lower().lstrip('.')}" if fmt else (p.suffix.lower() if p.suffix.lower() in IMAGE_SUFFIXES
                                                          else ".png")
        if ext not in IMAGE_SUFFIXES:
            raise ValueError(f"unknown output format {fmt!r}: use png or jpg")
        paths.append(out / f"{p.stem}{ext}")
    protected = {p.resolve() for p in inputs}
    for src, dst in zip(inputs, paths):
        if dst.resolve() in protected:
            raise ValueError(f"writing the result of {src} to {dst} would overwrite an input; choose another --out")
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, paths):
        if dst in seen:
            raise ValueError(f"{seen[dst]} and {src} would both be written to {dst}; rename one of them")
        seen[dst] = src
    return paths


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
    progress: bool | Callable[[int, int], None] = True,
) -> list[Path]:
    """Restore the images ``inputs`` and write them to ``out``; returns the written paths.

    Args:
      inputs: PNG or JPEG files. They must have the model's size (64x64 for emoji64) unless
        ``resize`` (bicubic) is set; for ``sr`` a low-resolution input (size / factor) is the
        measurement itself.
      operator: ``inpaint``, ``colorize`` or ``sr``.
      solver: a name from ``solvers.SOLVERS`` (default ``ddnm``).
      mask / mask_type: inpainting only, exactly one: a mask image (white = known) or a family
        from ``operators.masks.FAMILIES``.
      factor: the super-resolution factor (default 4).
      steps: respaced diffusion steps (default: the solver's paper setting).
      sigma_y: measurement noise std the solver assumes, model units ([-1, 1] images).
      seed: seeds the sampler and random masks; the same seed gives the same result.
      label: class id for a class-conditional model (emoji64: 0-9); None runs a model with a
        null class unconditionally (required by class-conditional models without one).
      model: a bundled model name, a model directory or a loaded model.
      fmt: output format ``png`` or ``jpg`` (default: each input's own).
      batch_size: solve at most this many images per compiled call (default: all at once).
      save_measurement: also write ``<stem>.measurement.png``, the pseudo-inverse A⁺y.
      progress: a tqdm bar (True), none (False) or a callback ``progress(done, total)`` in
        transitions, called from inside the compiled loop.
    """
    import jax
    import jax.numpy as jnp

    import invdiff
    import solvers as solver_registry
    from invdiff.images import load_image, save_image, writable_dir
    from operators import Inpainting, masks, named

    # ---- everything that can be checked before loading or computing anything ----------
    if not inputs:
        raise ValueError("no input images given")
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; valid operators: {', '.join(OPERATORS)}")
    solver_registry.get(solver)  # ValueError listing the valid names
    if operator == "inpaint":
        if (mask is None) == (mask_type is None):
            raise ValueError("inpaint needs exactly one of --mask MASK.png (white = known) or --mask-type "
                             f"({', '.join(masks.FAMILIES)})")
        if mask_type is not None and mask_type not in masks.FAMILIES:
            raise ValueError(f"unknown mask type {mask_type!r}; valid types: {', '.join(masks.FAMILIES)}")
    elif mask is not None or mask_type is not None:
        raise ValueError(f"--mask and --mask-type are for inpaint, not {operator}")
    if operator == "sr" and (int(factor) != factor or factor < 1):
        raise ValueError(f"--factor must be a positive integer, got {factor}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if not np.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"--sigma-y must be a finite number >= 0 (model units, [-1, 1] images), got {sigma_y}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"no image at {p}")
    out = writable_dir(out)
    targets = output_paths(paths, out, fmt)
    mask_path = Path(mask) if mask is not None else None
    if mask_path is not None and not mask_path.is_file():
        raise FileNotFoundError(f"mask file not found: {mask_path}")

    # ---- the model and the inputs -------------------------------------------------------
    net = invdiff.load_model(model) if isinstance(model, (str, os.PathLike)) else model
    cfg = getattr(net, "config", None)
    if cfg is None:
        raise TypeError("restore needs an image model with a .config (an ADM model); got " + type(net).__name__)
    s, channels = cfg.image_size, cfg.in_channels
    if channels != 3:
        raise ValueError(f"restore works on RGB images; this model takes {channels} channels")
    if cfg.class_cond:
        if label is None and getattr(net, "null_label", None) is None:
            raise ValueError(f"this model is class-conditional and has no null class to run without a label: pass "
                             f"--label K, a class id in [0, {cfg.num_classes}) (emoji64: see docs/emoji64.md)")
        if label is not None and not 0 <= label < cfg.num_classes:
            raise ValueError(f"--label must be a class id in [0, {cfg.num_classes}), got {label}")
    elif label is not None:
        raise ValueError("this model is not class-conditional: leave out --label")

    low = s // factor if operator == "sr" else None
    xs, given, sizes_in = [], [], []  # given[i]: the input is the low-resolution measurement itself
    for p in paths:
        im = load_image(p)
        h, w = im.shape[:2]
        sizes_in.append((h, w))
        given.append(operator == "sr" and (h, w) == (low, low) and s % factor == 0)
        if not given[-1] and (h, w) != (s, s):
            if not resize:
                sizes = f"{s}x{s}" + (f" (or {low}x{low}, the low-resolution measurement)" if low else "")
                raise ValueError(f"{p} is {w}x{h} but the model takes {sizes}; resize it or pass --resize")
            im = load_image(p, size=s)
        xs.append(im)

    n = len(paths)
    mask_arr = None
    if mask_path is not None:
        mh, mw = np.asarray(masks.from_png(mask_path)).shape
        for p, (h, w) in zip(paths, sizes_in):
            if (h, w) != (mh, mw):
                raise ValueError(f"the mask {mask_path} is {mw}x{mh} but the image {p} is {w}x{h}; "
                                 f"give a mask of the image's size")
        mask_arr = np.asarray(masks.from_png(mask_path, size=(s, s)))
    name = {"inpaint": "inpaint" if mask_type is None else f"inpaint-{mask_type}", "colorize": "colorize",
            "sr": f"sr{int(factor)}"}[operator]
    op = named.make(name, (n, s, s, channels), jax.random.key(seed), mask=mask_arr).op
    # y = A x for full-size inputs, in one batched call; a low-resolution sr input is y itself
    full = np.stack([np.zeros((s, s, channels), np.float32) if g else x for x, g in zip(xs, given)])
    y = np.array(op.A(jnp.asarray(full)))
    for i, g in enumerate(given):
        if g:
            y[i] = xs[i]

    solver_obj = solver_registry.make(solver, steps)
    total = len(solver_obj.walk()) - 1  # transitions of the walk
    chunk = batch_size or n
    labels = np.full((n,), label, np.int32) if label is not None else None

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total * ((n + chunk - 1) // chunk), desc=f"{solver}: compiling", unit="step")
    restored = []
    try:
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            op_c = op if operator != "inpaint" else Inpainting(op.mask[sl])
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
            sol = invdiff.solve(solver_obj, net, op_c, jnp.asarray(y[sl]), key=jax.random.key(seed),
                                sigma_y=sigma_y, label=None if labels is None else jnp.asarray(labels[sl]),
                                progress=cb)
            restored.append(np.asarray(sol.x))
    finally:
        if bar is not None:
            bar.close()

    written = [save_image(dst, x) for dst, x in zip(targets, np.concatenate(restored))]
    if save_measurement:
        for dst, m in zip(targets, np.asarray(op.pinv(jnp.asarray(y)))):
            save_image(out / f"{dst.stem}.measurement.png", m)
    return written

