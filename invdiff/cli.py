"""The ``invdiff`` command line: restore, bench, study, demo, train, convert.

Errors a user can fix (a missing or unreadable file, a bad flag or name, an output directory
that cannot be written, an output that exists already) print one line and exit with status 2;
anything else is a bug and keeps its traceback. Warnings are one line each. Ctrl-C during
``restore``, ``demo`` or ``train`` is honoured at the next safe point (finished work is
written first); the command says what was done and what was not and exits with status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _parse_flags(items: Sequence[str]) -> dict[str, Any]:
    from invdiff.nets.convert import parse_flags

    return parse_flags(list(items))


def _interruptible(cmd: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """Run a command with Ctrl-C deferred to its safe points from the start (imports, model
    loading and compilation included): see :func:`invdiff.guard.deferred_interrupts`."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> None:
        from invdiff.guard import deferred_interrupts

        with deferred_interrupts():
            cmd(args)

    return run


def _check_export(export: str, overwrite: bool, inputs: Sequence[str]) -> None:
    """``train --export DIR``: refuse before training what the export would replace."""
    from invdiff.images import writable_dir

    d = Path(export)
    if d.exists() and not d.is_dir():
        raise ValueError(f"--export {d} is an existing file; the export is a model directory: choose another path")
    if d.resolve() in {Path(p).resolve() for p in inputs}:
        raise ValueError(f"--export {d} is the training data or the work directory; choose another directory")
    if d.is_dir() and any(d.iterdir()) and not overwrite:
        raise FileExistsError(f"--export {d} exists and is not empty; pass --overwrite to replace the model there, "
                              f"or choose another directory")
    writable_dir(d if d.is_dir() else d.parent)


@_interruptible
def _cmd_train(args: argparse.Namespace) -> None:
    import dataclasses

    from invdiff.nets.adm import ADMConfig
    from invdiff.nets.checkpoint import save_model
    from invdiff.nets.presets import preset_flags
    from invdiff.train import TrainConfig, train

    flags = preset_flags(args.preset) if args.preset else {}
    flags.update(_parse_flags(args.flag))
    config = ADMConfig.from_flags(**flags)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    tc = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    if args.export:
        _check_export(args.export, args.overwrite, [args.data, args.workdir])
    model = train(config, args.data, args.workdir, tc, time_limit_s=args.time_limit)
    if args.export:
        save_model(model, args.export, overwrite=args.overwrite)
        print(f"EMA model written to {args.export}")


def _cmd_convert(args: argparse.Namespace) -> None:
    from invdiff.nets.convert import convert

    convert(args.ckpt, args.out, preset=args.preset, **_parse_flags(args.flag))
    print(f"wrote {args.out}")


@_interruptible
def _cmd_demo(args: argparse.Namespace) -> None:
    from invdiff.demo import run_demo

    run_demo(out=args.out, full=args.full, images=args.images, seed=args.seed, label=args.label,
             overwrite=args.overwrite)


@_interruptible
def _cmd_restore(args: argparse.Namespace) -> None:
    from invdiff.restore import restore

    written = restore(args.inputs, args.operator, args.out, solver=args.solver, mask=args.mask,
                      mask_type=args.mask_type, factor=args.factor, steps=args.steps, sigma_y=args.sigma_y,
                      seed=args.seed, label=args.label, model=args.model, resize=args.resize, fmt=args.format,
                      batch_size=args.batch_size, save_measurement=args.save_measurement,
                      overwrite=args.overwrite, progress=not args.quiet, size_mode=args.size_mode,
                      tile=args.tile, overlap=args.overlap)
    print(f"wrote {len(written)} image(s) to {args.out}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from invdiff.bench import run_from_args

    run_from_args(args)


def _cmd_study(args: argparse.Namespace) -> None:
    from invdiff.studies import run_from_args

    run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="invdiff", description="Diffusion priors for linear inverse problems.")
    sub = p.add_subparsers(dest="command", required=True)

    from operators import masks
    from solvers import SOLVERS

    r = sub.add_parser(
        "restore", help="restore your own images (inpainting, colorization, super-resolution, deblurring, CS)",
        description="Restore PNG/JPEG images with a diffusion prior. Inpainting: the mask says which pixels are "
                    "known (white = known, black = missing). Inputs may have any size: a result has its input's "
                    "size; images smaller than the model are padded, larger ones restored in overlapping tiles "
                    "blended at every step. sr: an input of the model's size is downsampled first (a test of "
                    "the solver); an input of any other size is the low-resolution measurement itself and its "
                    "result is --factor times larger.")
    r.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="PNG or JPEG images; those of one size are solved together in one batch")
    r.add_argument("--operator", required=True, metavar="NAME",
                   help="inpaint, colorize, sr (average pooling), sr-bicubic (torch's antialiased bicubic), "
                        "deblur-gauss, deblur-uniform, deblur-motion (the input is the blurred image), or cs<P> "
                        "(P%% compressed-sensing measurements of the input, e.g. cs25)")
    r.add_argument("--solver", default="ddnm", help="solver name (default ddnm): " + ", ".join(SOLVERS))
    r.add_argument("--out", required=True, help="output directory; results are OUT/<input name>")
    r.add_argument("--mask", help="inpaint: mask image of the input's size, white = known, black = missing")
    r.add_argument("--mask-type", dest="mask_type",
                   choices=list(masks.FAMILIES),
                   help="inpaint: a generated mask instead of --mask (random ones are drawn from --seed)")
    r.add_argument("--factor", type=int, default=4, help="sr, sr-bicubic: downsampling factor (default 4)")
    r.add_argument("--steps", type=int, help="respaced diffusion steps (default: the solver's paper setting)")
    r.add_argument("--sigma-y", dest="sigma_y", type=float, default=0.0,
                   help="noise std the solver assumes in the measurement, in model units: images scaled to "
                        "[-1, 1], so 0.05 = 6.4/255 grey levels (default 0)")
    r.add_argument("--seed", type=int, default=0,
                   help="sampler, random-mask, motion-kernel and CS-subset seed (default 0)")
    r.add_argument("--label", type=int, help="class id for a class-conditional model (emoji64: 0-9); optional for "
                                             "a model with a null class, as emoji64: without it the model runs "
                                             "unconditionally")
    r.add_argument("--model", default="emoji64", help="bundled model name or model directory (default emoji64)")
    r.add_argument("--resize", action="store_true",
                   help="squeeze every input to the model's size (bicubic) instead of restoring it at its own size")
    r.add_argument("--size-mode", dest="size_mode", default="auto", choices=["auto", "pad", "direct", "tile"],
                   help="an input whose size is not the model's: auto (default: pad a smaller one with unknown "
                        "pixels, tile a larger one), pad, direct (the network at the input's size), tile")
    r.add_argument("--tile", type=int, help="tile side in pixels (default: the model's size)")
    r.add_argument("--overlap", type=int,
                   help="least overlap of neighbouring tiles in pixels (default: a quarter tile)")
    r.add_argument("--format", choices=["png", "jpg"], help="output format (default: each input's own)")
    r.add_argument("--batch-size", dest="batch_size", type=int,
                   help="at most this many images per compiled call (default: all at once)")
    r.add_argument("--save-measurement", dest="save_measurement", action="store_true",
                   help="also write OUT/<name>.measurement.png, the pseudo-inverse of the measurement")
    r.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: refuse them before any work)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_restore)

    from invdiff.bench import add_arguments

    b = sub.add_parser("bench", help="benchmark solvers x operators on your images (resumable)",
                       description="Run the solver x operator grid over a set of images. Every result is appended to "
                                   "OUT/records.jsonl (a rerun of the same command resumes) and summarised in "
                                   "results.md/.csv/.json, quality plots and sample grids.")
    add_arguments(b)
    b.set_defaults(func=_cmd_bench)

    from invdiff.studies import add_arguments as study_arguments

    st = sub.add_parser("study", help="rerun one of the seeds' studies and say whether its claim holds (resumable)",
                        description="Rerun a study of the seeds (resampling, restart, attention, drift, labels, "
                                    "ilvr-filter) on a model and images: records.jsonl (a rerun resumes), tables, "
                                    "figures and summary.md with the seed's claim and a verdict. See docs/studies.md.")
    study_arguments(st)
    st.set_defaults(func=_cmd_study)

    d = sub.add_parser("demo", help="restore validation emoji with every solver on the bundled model")
    d.add_argument("--out", default="invdiff-demo", help="output directory (default: invdiff-demo)")
    d.add_argument("--full", action="store_true", help="the papers' full step counts (slow on CPU)")
    d.add_argument("--images", type=int, default=2, help="validation images per operator (default 2)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--label", type=int, default=None,
                   help="condition every image on this class id (default: unconditional when the model has a "
                        "null class; else each image's true class)")
    d.add_argument("--overwrite", action="store_true", help="replace the output files of an earlier demo run")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train an ADM UNet (resumes from WORKDIR's last checkpoint)")
    t.add_argument("data", help=".npz with images (N,H,W,3) uint8 [+ labels], or a folder of images")
    t.add_argument("workdir", help="checkpoints and logs go here; an existing run resumes")
    t.add_argument("--preset", help="start from a preset's flags (see invdiff.nets.presets)")
    t.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                   help="guided-diffusion create_model flag, e.g. --flag num_channels=64 (repeatable)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-steps", dest="warmup_steps", type=int)
    t.add_argument("--ema-decay", dest="ema_decay", type=float)
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    t.add_argument("--dtype", choices=["float32", "bfloat16"])
    t.add_argument("--seed", type=int)
    t.add_argument("--time-limit", dest="time_limit", type=float, help="stop (after a checkpoint) after this many s")
    t.add_argument("--export", help="also write the EMA model as an orbax model directory here")
    t.add_argument("--overwrite", action="store_true", help="replace the model in an existing --export directory")
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("convert", help="convert a guided-diffusion .pt checkpoint to an orbax model directory")
    c.add_argument("ckpt")
    c.add_argument("--preset")
    c.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_cmd_convert)
    return p


def _interrupted(command: str, e: BaseException) -> int:
    with contextlib.suppress(OSError):
        print(f"invdiff {command}".strip() + ": interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    from invdiff.guard import deferred_interrupts

    try:
        with deferred_interrupts() as stop:  # the parser imports jax: no KeyboardInterrupt inside that
            args = build_parser().parse_args(argv)
            stop.check("nothing was started")
    except KeyboardInterrupt as e:
        return _interrupted(next((a for a in (argv or sys.argv[1:]) if not a.startswith("-")), ""), e)

    def one_line(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"invdiff {args.command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        try:
            args.func(args)
        except (OSError, ValueError, TypeError, KeyError) as e:
            print(f"invdiff {args.command}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            return _interrupted(args.command, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
