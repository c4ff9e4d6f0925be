"""On the bundled emoji64 model: does x̂0 clipping help DDNM, DDRM and PiGDM, and do the particle
samplers (MCGdiff, TDS) give sensible images at the CPU preset?

Part 1 runs DDNM, DDRM and PiGDM at 20 steps with x̂0 clipped to [-1, 1] (``clip_x0=None``, the
default for image networks) and without (``clip_x0=False``, the authors' code) on the validation
emoji that ship with the package: box and thick-stroke inpainting (noiseless) and noisy 4x
super-resolution (σ_y = 0.05 in model units). Part 2 runs ``solvers.make("mcgdiff", 20)`` and
``solvers.make("tds", 20)`` (4 particles) on the same tasks and writes a grid.

    python benchmarks/emoji64_fidelity.py --images 4          # writes benchmarks/results/emoji64_fidelity.*
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invdiff  # noqa: E402
import solvers  # noqa: E402
from invdiff import metrics  # noqa: E402
from invdiff.demo import bundled_samples  # noqa: E402
from invdiff.images import grid, save_image  # noqa: E402
from operators import Downsampling, Inpainting, masks  # noqa: E402

SIGMA_SR = 0.05


def tasks(x: np.ndarray, key: jax.Array) -> dict[str, tuple]:
    n, h, w, _ = x.shape
    out = {}
    for i, fam in enumerate(("box", "thick")):
        m = np.asarray(masks.by_name(fam, jax.random.fold_in(key, i), h, w))
        op = Inpainting(jnp.asarray(np.repeat(m[None, :, :, None], n, axis=0)))
        out[f"inpaint-{fam}"] = (op, op.A(jnp.asarray(x)), 0.0)
    op = Downsampling(4)
    y = op.A(jnp.asarray(x)) + SIGMA_SR * jax.random.normal(key, (n, h // 4, w // 4, 3))
    out["sr4-noisy"] = (op, y, SIGMA_SR)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tasks", default="inpaint-box,inpaint-thick,sr4-noisy", help="comma list of tasks")
    p.add_argument("--solvers", default="ddnm,ddrm,pigdm,mcgdiff,tds", help="comma list of solvers")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "emoji64_fidelity"))
    args = p.parse_args(argv)
    model = invdiff.load_model("emoji64")
    x, labels, _ = bundled_samples()
    x, labels = x[: args.images], jnp.asarray(labels[: args.images])
    rows, pictures = [], {}
    t_all = time.perf_counter()
    chosen = args.tasks.split(",")
    for task, (op, y, sy) in tasks(x, jax.random.key(0)).items():
        if task not in chosen:
            continue
        chosen_solvers = args.solvers.split(",")
        runs = [(n, solvers.make(n, args.steps), clip) for n in ("ddnm", "ddrm", "pigdm") for clip in (None, False)
                if n in chosen_solvers]
        runs += [(n, solvers.make(n, args.steps), None) for n in ("mcgdiff", "tds") if n in chosen_solvers]
        for name, solver, clip in runs:
            t0 = time.perf_counter()
            sol = invdiff.solve(solver, model, op, y, key=jax.random.key(1), sigma_y=sy, label=labels, clip_x0=clip)
            out = np.asarray(jax.block_until_ready(sol.x))
            seconds = time.perf_counter() - t0
            ps = np.asarray(metrics.psnr(jnp.asarray(np.clip(out, -1, 1)), jnp.asarray(x)))
            rows.append(dict(task=task, solver=name, clip=clip is None, psnr=float(ps.mean()), nfe=sol.nfe,
                             vjp=sol.vjp, particles=solver.particle_count(), seconds=round(seconds, 1)))
            print(rows[-1], flush=True)
            pictures.setdefault(task, {})["measurement"] = np.asarray(op.pinv(y))
            if clip is None:
                pictures[task][name] = out
            write(args, x, rows, pictures, time.perf_counter() - t_all)
    print(write(args, x, rows, pictures, time.perf_counter() - t_all))


def write(args: argparse.Namespace, x: np.ndarray, rows: list[dict], pictures: dict, seconds: float) -> str:
    """The grid (.png), the table (.md) and the rows (.json) of what has run so far."""
    names = ["measurement"] + [n for n in ("ddnm", "ddrm", "pigdm", "mcgdiff", "tds")
                               if all(n in pictures[t] for t in pictures)]
    img_rows = [list(np.concatenate([x] * len(pictures)))]
    img_rows += [list(np.concatenate([pictures[t][n] for t in pictures])) for n in names]
    cols = [t for t in pictures for _ in range(args.images)]
    save_image(args.out + ".png", grid(img_rows, ["ground truth"] + names, cols))

    lines = ["# x̂0 clipping and the particle samplers on the bundled emoji64 model", "",
             f"{args.images} validation emoji, {args.steps} steps (`solvers.make(name, {args.steps})`; the particle "
             "samplers with 4 particles), PSNR (dB, mean over images; higher is better). `clip`: x̂0 clipped to "
             "[-1, 1] in every step (the default for image networks); `no clip`: `clip_x0=False`, the authors' code.",
             "", "| task | solver | clip | no clip | NFE | VJP | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["clip"]:
            continue
        no = next((q for q in rows if q["task"] == r["task"] and q["solver"] == r["solver"] and not q["clip"]), None)
        no_clip = "" if no is None else f"{no['psnr']:.2f}"
        lines.append(f"| {r['task']} | {r['solver']} | {r['psnr']:.2f} | {no_clip} | {r['nfe']} | {r['vjp']} | "
                     f"{r['seconds']} |")
    dev = jax.devices()[0]
    lines += ["", f"Command: `python benchmarks/emoji64_fidelity.py --images {args.images} --steps {args.steps} "
              f"--tasks {args.tasks} --solvers {args.solvers}`. Machine: {os.cpu_count()} CPUs shared with other "
              f"jobs (load ~20), {dev.platform}; total {seconds:.0f} s (compilation included).", ""]
    md = "\n".join(lines)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(rows=rows, seconds=seconds), f, indent=1)
    return md


if __name__ == "__main__":
    main()
