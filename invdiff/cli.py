"""The ``invdiff`` command line: demo, train, convert.

Errors a user can fix (a missing file, a bad flag) print one line and exit with status 2;
anything else is a bug and keeps its traceback.
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="invdiff", description="Diffusion priors for linear inverse problems.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="restore validation emoji with every solver on the bundled model")
    d.add_argument("--out", default="invdiff-demo", help="output directory (default: invdiff-demo)")
    d.add_argument("--full", action="store_true", help="the papers' full step counts (slow on CPU)")
    d.add_argument("--images", type=int, default=2, help="validation images per operator (default 2)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--label", type=int, default=None,
                   help="condition every image on this class id (default: each image's true class)")
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
    except (FileNotFoundError, ValueError, TypeError, PermissionError, KeyError) as e:
        print(f"invdiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
