"""The ``invdiff`` command line: restore, bench, demo, train, convert.

Errors a user can fix (a missing or unreadable file, a bad flag or name, an output directory
that cannot be written) print one line and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _parse_flags(items: Sequence[str]) -> dict[str, Any]:
    from invdiff.nets.convert import parse_flags

    return parse_flags(list(items))


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
    model = train(config, args.data, args.workdir, tc, time_limit_s=args.time_limit)
    if args.export:
        save_model(model, args.export)
        print(f"EMA model written to {args.export}")


def _cmd_convert(args: argparse.Namespace) -> None:
    from invdiff.nets.convert import convert

    convert(args.ckpt, args.out, preset=args.preset, **_parse_flags(args.flag))
    print(f"wrote {args.out}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from invdiff.demo import run_demo

    run_demo(out=args.out, full=args.full, images=args.images, seed=args.seed, label=args.label)


def _cmd_restore(args: argparse.Namespace) -> None:
    from invdiff.restore import restore

    written = restore(args.inputs, args.operator, args.out, solver=args.solver, mask=args.mask,
                      mask_type=args.mask_type, factor=args.factor, steps=args.steps, sigma_y=args.sigma_y,
                      seed=args.seed, label=args.label, model=args.model, resize=args.resize, fmt=args.format,
                      batch_size=args.batch_size, save_measurement=args.save_measurement,
                      progress=not args.quiet)
    print(f"wrote {len(written)} image(s) to {args.out}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from invdiff.bench import run_from_args

    run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="invdiff", description="Diffusion priors for linear inverse problems.")
    sub = p.add_subparsers(dest="command", required=True)

    from operators import masks
    from solvers import SOLVERS

    r = sub.add_parser(
        "restore", help="restore your own images (inpainting, colorization, super-resolution)",
        description="Restore PNG/JPEG images with a diffusion prior. Inpainting: the mask says which pixels are "
                    "known (white = known, black = missing). sr: an input of size model/factor is the "
                    "low-resolution measurement itself; a full-size input is downsampled first.")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG or JPEG images, solved together in one batch")
    r.add_argument("--operator", required=True, choices=["inpaint", "colorize", "sr"])
    r.add_argument("--solver", default="ddnm", help="solver name (default ddnm): " + ", ".join(SOLVERS))
    r.add_argument("--out", required=True, help="output directory; results are OUT/<input name>")
    r.add_argument("--mask", help="inpaint: mask image of the input's size, white = known, black = missing")
    r.add_argument("--mask-type", dest="mask_type",
                   choices=list(masks.FAMILIES),
                   help="inpaint: a generated mask instead of --mask (random ones are drawn from --seed)")
    r.add_argument("--factor", type=int, default=4, help="sr: downsampling factor (default 4)")
    r.add_argument("--steps", type=int, help="respaced diffusion steps (default: the solver's paper setting)")
    r.add_argument("--sigma-y", dest="sigma_y", type=float, default=0.0,
                   help="noise std the solver assumes in the measurement, in model units: images scaled to "
                        "[-1, 1], so 0.05 = 6.4/255 grey levels (default 0)")
    r.add_argument("--seed", type=int, default=0, help="sampler and random-mask seed (default 0)")
    r.add_argument("--label", type=int, help="class id for a class-conditional model (emoji64: 0-9)")
    r.add_argument("--model", default="emoji64", help="bundled model name or model directory (default emoji64)")
    r.add_argument("--resize", action="store_true", help="resize inputs to the model's size (bicubic)")
    r.add_argument("--format", choices=["png", "jpg"], help="output format (default: each input's own)")
    r.add_argument("--batch-size", dest="batch_size", type=int,
                   help="at most this many images per compiled call (default: all at once)")
    r.add_argument("--save-measurement", dest="save_measurement", action="store_true",
                   help="also write OUT/<name>.measurement.png, the pseudo-inverse of the measurement")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_restore)

    from invdiff.bench import add_arguments

    b = sub.add_parser("bench", help="benchmark solvers x operators on validation images",
                       description="Run the solver x operator grid and write results.md/.csv/.json and plots.")
    add_arguments(b)
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("demo", help="restore validation emoji with every solver on the bundled model")
    d.add_argument("--out", default="invdiff-demo", help="output directory (default: invdiff-demo)")
    d.add_argument("--full", action="store_true", help="the papers' full step counts (slow on CPU)")
    d.add_argument("--images", type=int, default=2, help="validation images per operator (default 2)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--label", type=int, default=None,
                   help="condition every image on this class id (default: unconditional when the model has a "
                        "null class, as emoji64 v2; else each image's true class)")
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
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("convert", help="convert a guided-diffusion .pt checkpoint to an orbax model directory")
    c.add_argument("ckpt")
    c.add_argument("--preset")
    c.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (OSError, ValueError, TypeError, KeyError) as e:
        print(f"invdiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
