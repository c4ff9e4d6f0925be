"""The ``invdiff bench`` options (wired into the command line by :mod:`invdiff.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from invdiff.bench.run import BATCH_PER_DEVICE, BUNDLED_LIMIT, DEFAULT_OPERATORS, DEFAULT_SOLVERS, names

#: ``--steps`` default of the command line: CPU-friendly (``invdiff demo`` uses the same).
CLI_STEPS = 20


def _lpips_files(text: str) -> list[str]:
    files = [f.strip() for f in text.split(",") if f.strip()]
    if len(files) != 2:
        raise argparse.ArgumentTypeError("give two files: ALEXNET.pth,LIN.pth")
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``invdiff bench`` options to ``parser``."""
    import solvers
    from operators import named

    g = parser.add_argument_group("what to run")
    g.add_argument("--solvers", type=names, default=list(DEFAULT_SOLVERS), metavar="LIST",
                   help="comma-separated solver names (default: " + ",".join(DEFAULT_SOLVERS) + "; registered: "
                   + ", ".join(solvers.SOLVERS) + ")")
    g.add_argument("--operators", type=names, default=list(DEFAULT_OPERATORS), metavar="LIST",
                   help="comma-separated degradations: " + named.valid_names() + " (-noisy: measurement noise std "
                   "0.05 in [-1, 1] units) (default: " + ",".join(DEFAULT_OPERATORS) + ")")
    g.add_argument("--steps", type=int, default=CLI_STEPS, metavar="N",
                   help=f"respaced diffusion steps for every solver (default {CLI_STEPS}, CPU-friendly; RePaint then "
                   "resamples with jumps of 5, twice); 0 = each paper's defaults (RePaint 250 steps with 10x10 "
                   "jumps = 2410 network calls per image: a GPU job)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the masks, the measurement noise and the solvers; each image's seed is a hash of "
                   "it, the operator and the image's name (default 0)")
    g.add_argument("--lpips-weights", dest="lpips_weights", type=_lpips_files, metavar="ALEXNET.pth,LIN.pth",
                   help="also report LPIPS, with torchvision's AlexNet weights and the lpips package's "
                   "weights/v0.1/alex.pth (default: no LPIPS)")
    g.add_argument("--repeat", action="store_true",
                   help="solve every batch twice and report the second call's seconds (exact, twice the work; "
                   "default: one call, compile seconds subtracted)")

    d = parser.add_argument_group("data and model")
    d.add_argument("--data", metavar="DIR|FILE.npz",
                   help="a folder of PNG/JPEG images (centre-cropped and resized to the model's size, sorted by "
                   "path; one sub-folder per class gives the labels) or an .npz with 'images' [and 'labels'] "
                   "(default: the 10 bundled emoji64 validation images)")
    d.add_argument("--labels", metavar="FILE.csv",
                   help="class labels: a CSV with the header file,label and a row per image (default: the data's "
                   "own labels)")
    d.add_argument("--label", type=int, metavar="K", help="one class id for every image (default: none)")
    d.add_argument("--limit", "--images", dest="limit", type=int, metavar="N",
                   help=f"run the first N images (default: all; {BUNDLED_LIMIT} of the bundled set)")
    d.add_argument("--batch-size", dest="batch_size", type=int, metavar="B",
                   help=f"images per compiled call (default {BATCH_PER_DEVICE} per local device)")
    d.add_argument("--model", default="emoji64", metavar="NAME|PATH",
                   help="a bundled name, a guided-diffusion .pt file (with --preset or --flag) or an orbax "
                   "directory (default: emoji64, the bundled 64x64 class-conditional model)")
    d.add_argument("--preset", metavar="NAME", help="the architecture of a .pt file (see invdiff.nets.PRESETS; "
                   "default: none)")
    d.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                   help="a guided-diffusion create_model flag for a .pt file, repeatable (default: none)")

    o = parser.add_argument_group("output")
    o.add_argument("--out", default="invdiff-bench", metavar="DIR",
                   help="run directory: records.jsonl, results.md/.csv/.json, plots, images; a rerun of the "
                   "same command resumes (default: invdiff-bench)")
    o.add_argument("--save-images", dest="save_images", action="store_true",
                   help="write every restoration to DIR/images/<operator>/<solver>/ (default: the grids' first "
                   "images only)")
    o.add_argument("--overwrite", action="store_true",
                   help="replace tables and plots in DIR that were not written by this run's records (default: "
                   "refuse)")
    o.add_argument("--report", metavar="DIR",
                   help="run nothing: rebuild the tables, plots and grids of DIR from DIR/records.jsonl")
    o.add_argument("--quiet", action="store_true", help="no progress bar (default: a bar)")

    m = parser.add_argument_group("several processes (see docs/scaling.md)")
    m.add_argument("--coordinator", metavar="HOST:PORT",
                   help="process 0's address for jax.distributed (default: none; detected under SLURM and Open MPI)")
    m.add_argument("--num-processes", dest="num_processes", type=int, metavar="N",
                   help="number of processes (default: 1, or detected)")
    m.add_argument("--process-id", dest="process_id", type=int, metavar="I",
                   help="this process's index, 0 to N-1 (default: 0, or detected)")


def run_from_args(args: argparse.Namespace) -> None:
    """Run :func:`invdiff.bench.run_bench` (or rebuild a report) with :func:`add_arguments`' options."""
    from invdiff.bench import distributed

    if args.report:
        from invdiff.bench.report import write_report

        write_report(args.report)
        print(f"rebuilt results.md, results.csv, results.json and the plots in {args.report}")
        return
    process, _ = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from invdiff.bench.run import run_bench
    from invdiff.nets.convert import parse_flags

    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0 (0 = each paper's defaults), got {args.steps}")
    run_bench(args.solvers, args.operators, data=args.data, labels=args.labels, label=args.label, limit=args.limit,
              batch_size=args.batch_size, steps=args.steps or None, out=args.out, seed=args.seed, model=args.model,
              preset=args.preset, flags=parse_flags(args.flag) if args.flag else None,
              lpips_weights=args.lpips_weights, save_images=args.save_images, overwrite=args.overwrite,
              repeat=args.repeat, progress=not args.quiet)
    if process == 0:
        out = Path(args.out)
        print(f"wrote {out / 'records.jsonl'}, {out / 'results.md'}, results.csv, results.json and the plots in {out}")


__all__ = ["CLI_STEPS", "add_arguments", "run_from_args"]
