"""``invdiff study``: the seeds' studies as commands, on any model and images.

Each study reruns an experiment of the documents this project grew from
(``../shared/seeds``) and says whether the measurement supports the seed's claim:

=================  ====================================================================
``resampling``     RePaint's jumps against more plain steps at equal NFE (RePaint, DDNM,
                   DiffPIR) — :mod:`invdiff.studies.resampling`
``restart``        resample the hole from a saved state: when is the content decided? —
                   :mod:`invdiff.studies.restart`
``attention``      how much attention the hole's queries give to the known region, per
                   block, over t — :mod:`invdiff.studies.attention`
``drift``          change of the known pixels for every solver: radius, σ_y, guidance
                   strength, SDEdit strength, heat maps — :mod:`invdiff.studies.drift`
``labels``         one masked input under every class label — :mod:`invdiff.studies.labels`
``ilvr-filter``    ILVR's factor N and range_t against fidelity and diversity —
                   :mod:`invdiff.studies.ilvr_filter`
=================  ====================================================================

Every study is built on the bench harness (:mod:`invdiff.bench`: data, models, per-image
seeds, records, reports) and writes, in its directory, ``records.jsonl`` (a rerun resumes;
another configuration is refused), ``table.md``/``.csv``/``.json``, PNG figures and
``summary.md`` (the claim, the setup, the results, the verdict and its limits). Its CPU
defaults take a few minutes with the bundled model; ``paper_scale=True`` (``--paper-scale``)
uses the papers' settings, a GPU job. Shared parts: :mod:`invdiff.studies.common`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from invdiff.studies import attention, drift, ilvr_filter, labels, resampling, restart
from invdiff.studies.common import Verdict, write_report

#: The studies by name, in the order ``invdiff study all`` runs them.
STUDIES = {m.NAME: m for m in (resampling, restart, attention, drift, labels, ilvr_filter)}


def get(name: str) -> Any:
    """The study module called ``name``."""
    try:
        return STUDIES[name]
    except KeyError:
        raise ValueError(f"unknown study {name!r}: choose one of {', '.join(STUDIES)} or all") from None


def run_study(name: str, *, model: Any = None, preset: str | None = None, flags: dict | None = None, data: Any = None,
              labels: Any = None, label: int | None = None, images: int | None = None, steps: int | None = None,
              seed: int = 0, out: str | os.PathLike[str] | None = None, paper_scale: bool = False,
              lpips_weights: Sequence[str] | None = None, overwrite: bool = False, progress: bool = True,
              settings: dict | None = None) -> Verdict:
    """Run the study ``name`` and write its results to ``out``; returns its :class:`Verdict`.

    Args:
      model: None (the bundled ``emoji64``), a bundled name, a guided-diffusion ``.pt`` file
        (with ``preset``/``flags``), an orbax directory, or a loaded model.
      data: None (the bundled validation images), a folder of images, an ``.npz`` or an array
        (N, H, W, C); ``labels`` / ``label`` as in ``invdiff bench``.
      images: how many images (default: the study's; at most the data's).
      steps: the study's base number of steps (default: its scale's).
      out: the study's directory (default ``invdiff-studies/<name>``); a rerun resumes there.
      paper_scale: the papers' settings instead of the CPU defaults.
      lpips_weights: (AlexNet .pth, LPIPS linear .pth) adds LPIPS where a study uses it.
      overwrite: replace tables and figures in ``out`` that no records there account for.
      settings: overrides of the study's settings (see its ``SCALES``).
    """
    from invdiff.studies import common

    return common.run(get(name), model=model, preset=preset, flags=flags, data=data, labels=labels, label=label,
                      images=images, steps=steps, seed=seed, out=out, paper_scale=paper_scale,
                      lpips_weights=lpips_weights, overwrite=overwrite, progress=progress, settings=settings)


def write_index(out: str | os.PathLike[str]) -> Path:
    """``OUT/README.md``: every study directory's verdict line, wall time and summary link."""
    from invdiff.images import atomic_write_bytes
    from invdiff.studies.common import read_report

    out = Path(out)
    lines = ["# invdiff studies", "", "Each directory holds one study's records, tables, figures and `summary.md`; "
             "`invdiff study all --out DIR` reruns them all (resuming what is done).", "",
             "| study | verdict | images | wall time (s) | summary |", "|---|---|---|---|---|"]
    for name, module in STUDIES.items():
        d = out / name
        if not (d / "records.jsonl").is_file():
            continue
        verdict = write_report(module, d)
        rep = read_report(d)
        lines.append(f"| {name} | **{verdict.word}** — {verdict.line} | {rep.images()} | {rep.wall_seconds():.0f} | "
                     f"[{name}/summary.md]({name}/summary.md) |")
    return atomic_write_bytes(out / "README.md", ("\n".join(lines) + "\n").encode())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``invdiff study`` options."""
    from invdiff.bench.cli import _lpips_files

    parser.add_argument("name", metavar="NAME",  # checked by run_from_args: a one-line error, exit 2
                        help="the study: " + ", ".join(STUDIES) + ", or all (each into OUT/<name>)")
    parser.add_argument("--model", default="emoji64", metavar="NAME|PATH",
                        help="a bundled name, a guided-diffusion .pt file (with --preset or --flag) or an orbax "
                        "directory (default: emoji64)")
    parser.add_argument("--preset", metavar="NAME", help="the architecture of a .pt file (default: none)")
    parser.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                        help="a guided-diffusion create_model flag for a .pt file, repeatable")
    parser.add_argument("--data", metavar="DIR|FILE.npz",
                        help="a folder of PNG/JPEG images or an .npz with 'images' [and 'labels'] (default: the 10 "
                        "bundled emoji64 validation images)")
    parser.add_argument("--labels", metavar="FILE.csv", help="class labels: a CSV file,label (default: the data's)")
    parser.add_argument("--label", type=int, metavar="K", help="one class id for every image")
    parser.add_argument("--images", type=int, metavar="N", help="number of images (default: each study's)")
    parser.add_argument("--steps", type=int, metavar="N", help="the study's base number of steps (default: each "
                        "study's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of masks, noise and solvers (default 0)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: invdiff-studies/NAME, or "
                        "invdiff-studies for all); a rerun resumes")
    parser.add_argument("--paper-scale", dest="paper_scale", action="store_true",
                        help="the papers' settings (images, steps, jumps): a GPU job (default: CPU-sized)")
    parser.add_argument("--lpips-weights", dest="lpips_weights", type=_lpips_files, metavar="ALEXNET.pth,LIN.pth",
                        help="also measure LPIPS (default: no LPIPS)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace tables and figures in OUT that were not written by its records (default: "
                        "refuse)")
    parser.add_argument("--report", action="store_true", help="run nothing: rebuild the tables, figures and summary "
                        "from OUT's records")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> None:
    """Run ``invdiff study`` with :func:`add_arguments`' options."""
    from invdiff.nets.convert import parse_flags

    names = list(STUDIES) if args.name == "all" else [get(args.name).NAME]
    root = Path(args.out or "invdiff-studies")
    for name in names:
        out = root / name if (args.name == "all" or args.out is None) else root
        if args.report:
            v = write_report(get(name), out)
        else:
            flags = parse_flags(args.flag) if args.flag else None
            v = run_study(name, model=args.model, preset=args.preset, flags=flags,
                          data=args.data, labels=args.labels, label=args.label, images=args.images, steps=args.steps,
                          seed=args.seed, out=out, paper_scale=args.paper_scale, lpips_weights=args.lpips_weights,
                          overwrite=args.overwrite, progress=not args.quiet)
        print(f"{name}: {v.word} — {v.line} ({out / 'summary.md'})")
        sys.stdout.flush()
    if args.name == "all":
        print(f"wrote {write_index(root)}")


__all__ = ["STUDIES", "Verdict", "add_arguments", "get", "run_from_args", "run_study", "write_index"]
