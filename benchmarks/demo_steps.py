"""How many steps each solver needs on the demo's box inpainting: the data behind
``invdiff.demo.DEMO_SETTINGS``.

    python benchmarks/demo_steps.py [--model emoji64] [--out benchmarks/results/demo_steps_cpu.md]

Restores the demo's first two validation emoji (the red diamond and the panda) with the box
mask, for every solver at several step counts, and reports the PSNR of the hole (the missing
pixels only), NFE, VJPs and the wall seconds of the solve call (compilation included, the
persistent compilation cache switched off, so the seconds are what a first run of
``invdiff demo`` pays). The model runs unconditionally when it has a null class, else on
each image's true class (what the demo does by default).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

#: (solver, settings) tried; RePaint as steps/jump_length/jump_n_sample.
GRID = [("ddnm", dict(steps=s)) for s in (20, 50, 100)] + \
       [("repaint", dict(steps=s, jump_length=j, jump_n_sample=2)) for s, j in ((20, 5), (50, 5), (100, 10))] + \
       [("ilvr", dict(steps=s)) for s in (20, 50, 100)] + \
       [("diffpir", dict(steps=s)) for s in (20, 50, 100)] + \
       [("pigdm", dict(steps=s)) for s in (20, 50)] + \
       [("mcg", dict(steps=s)) for s in (20, 50)]


def main() -> None:
    jax.config.update("jax_enable_compilation_cache", False)
    import invdiff
    import solvers as registry
    from invdiff.demo import bundled_samples
    from operators import Inpainting, masks

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji64")
    p.add_argument("--out", default="benchmarks/results/demo_steps_cpu.md")
    p.add_argument("--only", help="comma-separated solver names")
    a = p.parse_args()
    model = invdiff.load_model(a.model)
    x, labels, names = bundled_samples()
    x, labels = jnp.asarray(x[:2]), jnp.asarray(labels[:2])
    uncond = getattr(model, "null_label", None) is not None
    mask = masks.by_name("box", jax.random.key(0), 64, 64)
    op = Inpainting(mask)
    y = op.A(x)
    miss = np.asarray(1.0 - mask)[None, :, :, None] * np.ones((2, 1, 1, 3))
    rows = []
    for name, kw in GRID:
        if a.only and name not in a.only.split(","):
            continue
        solver = registry.get(name)(**kw)
        t0 = time.perf_counter()
        sol = invdiff.solve(solver, model, op, y, key=jax.random.key(0), label=None if uncond else labels)
        xr = np.clip(np.asarray(jax.block_until_ready(sol.x)), -1, 1)
        sec = time.perf_counter() - t0
        mse = (((xr - np.asarray(x)) ** 2) * miss).sum(axis=(1, 2, 3)) / miss.sum(axis=(1, 2, 3))
        hole = 10 * np.log10(4.0 / mse)
        setting = "/".join(str(kw[k]) for k in ("steps", "jump_length", "jump_n_sample") if k in kw)
        rows.append((name, setting, sol.nfe, sol.vjp, hole[0], hole[1], sec))
        print(rows[-1], flush=True)
    md = ["# Demo step counts: box inpainting of the demo's first two emoji", "",
          f"- model `{a.model}`, {'unconditional (null class)' if uncond else 'true class labels'}; machine: "
          f"{platform.platform()}, {jax.devices()[0].device_kind}, jax {jax.__version__}; the 2 cores were shared "
          "with other jobs, so seconds are upper bounds",
          "- command: `python benchmarks/demo_steps.py" + (f" --model {a.model}" if a.model != "emoji64" else "") + "`",
          "- hole PSNR: the missing 32x32 box only, data range 2; seconds: the solve call including its compilation",
          "", f"| solver | steps{' (RePaint: steps/jump/samples)'} | NFE | VJP | hole PSNR {names[0]} | "
          f"hole PSNR {names[1]} | seconds |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.1f} |" for r in rows]
    Path(a.out).write_text("\n".join(md) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
