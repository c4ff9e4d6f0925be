"""Every solver on every operator, through ``invdiff.solve``: does it run, and does it fit y?

The default tests run one solver per operator path (about two seconds of compilation each);
this runs the whole grid: every solver in ``solvers.SOLVERS`` on every degradation of the
table below, on 16x16x3 images from a Gaussian prior (``invdiff.priors.Gaussian``), 3 steps,
σ_y = 0. A cell records the relative consistency ‖A x − y‖ / ‖y‖ (DDRM, DiffPIR and the
A⁺-projecting solvers end on {A x = y}; PiGDM, DPS and the unconditional DDPM / DDIM need not),
the seconds of the call (compilation included: the machine is shared, so read them as rough),
or the error a solver raises (DDRM refuses operators without an SVD, by design).

    python benchmarks/operators_x_solvers.py            # writes benchmarks/results/operators_x_solvers.md
    python benchmarks/operators_x_solvers.py --quick    # two solvers, two operators: a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invdiff  # noqa: E402
import solvers  # noqa: E402
from invdiff.priors import Gaussian  # noqa: E402
from operators import BicubicDownsampling, Blur, Downsampling, compose, named  # noqa: E402

IMG = (16, 16, 3)


def operators_table(key: jax.Array) -> dict:
    """name -> operator: today's named degradations, the new ones and the SR compositions."""
    shape = (2,) + IMG
    names = ["inpaint-box", "colorize", "sr4", "sr4-bicubic", "deblur-gauss", "deblur-uniform", "deblur-motion",
             "cs25"]
    ops = {n: named.make(n, shape, key).op for n in names}
    ops["blur-reflect (matrix-free)"] = Blur.gaussian(3, 0.5, boundary="reflect")
    ops["gauss blur + bicubic x4 (Kronecker SVD)"] = compose(BicubicDownsampling(4), Blur.gaussian(9, 1.5))
    ops["motion blur + pooling x2 (CG)"] = compose(Downsampling(2), Blur.motion(9, 0.5, key))
    return ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two solvers on two operators")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "operators_x_solvers.md"))
    args = parser.parse_args()

    prior = Gaussian(jnp.full(IMG, 0.1), var=0.25, schedule=invdiff.NoiseSchedule.linear(1000))
    x_true = prior.sample(jax.random.key(1), 2)
    ops = operators_table(jax.random.key(3))
    names = list(solvers.SOLVERS)
    if args.quick:
        ops = dict(list(ops.items())[3:5])
        names = ["ddrm", "pigdm"]
    rows, failures = [], 0
    for oname, op in ops.items():
        y = jax.jit(lambda o, v: o.A(v))(op, x_true)
        cells = []
        for sname in names:
            t = time.perf_counter()
            try:
                sol = invdiff.solve(solvers.make(sname, 3), prior, op, y, key=jax.random.key(0))
                fit = float(jnp.linalg.norm(op.bind(IMG).A(sol.x) - y) / jnp.linalg.norm(y))
                ok = bool(np.all(np.isfinite(sol.x)))
                failures += not ok
                cells.append(f"{fit:.0e} ({time.perf_counter() - t:.0f} s)" if ok else "non-finite")
            except TypeError as e:  # DDRM without an SVD: refused before compiling
                cells.append("refused: " + str(e).split(";")[0].split("(")[0].strip())
            print(f"{oname:42s} {sname:8s} {cells[-1]}", flush=True)
        rows.append((oname, type(op.bind(IMG)).__name__, cells))

    lines = [
        "# Every solver on every operator",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, shared with other jobs; jax {jax.__version__}. "
        f"Images {IMG}, batch 2, Gaussian prior, 3 steps, σ_y = 0. Command: "
        f"`python benchmarks/operators_x_solvers.py{' --quick' if args.quick else ''}`.",
        "",
        "Cells: ‖A x − y‖ / ‖y‖ of the result (seconds of the call, compilation included). "
        "PiGDM, DPS, DDPM and DDIM do not project onto {A x = y}: their residuals are large by design.",
        "",
        "| operator | tier | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    lines += [f"| {o} | {tier} | " + " | ".join(c) + " |" for o, tier, c in rows]
    lines.append("")
    lines.append(f"{sum(len(c) for _, _, c in rows)} cells, {failures} non-finite.")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
