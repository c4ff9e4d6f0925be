"""Seams of tiled restorations, and padding against running the network at the image's size.

    nice -n 10 python benchmarks/seams.py --steps 20 --out benchmarks/results

1. **Tiled restorations** of composites larger than the bundled 64x64 model: 96x128 (HxW;
   "128x96" as W x H) and 192x192 canvases tiled with validation emoji of one class
   (People & Body, label 6), shifted by 16 pixels so that the emoji's cells do not line up
   with the tiles. For every solver (``solvers.SOLVERS``, ``steps=--steps``) and operator,
   :func:`invdiff.solve_any_size` tiles the image (64x64 tiles, overlap >= 16: 6 and 16
   tiles). Reported: :func:`invdiff.tiling.seam_ratio` of the result (mean gradient
   magnitude across tile borders / inside the tiles; 1 = no seam), the same ratio at
   control lines CONTROL_SHIFT pixels off the tile borders (a multiple of the
   super-resolution factor: block edges of a downsampled measurement fall on both alike,
   so a seam shows as the border ratio exceeding the control ratio), the border ratio of the
   ground truth (what the image itself has there), PSNR against the ground truth, the
   largest change of a known pixel after 8-bit rounding (inpainting; grey levels of 255),
   NFE and wall seconds (compilation included, or read from JAX's persistent cache). A
   baseline, "ddnm, independent tiles", solves each tile as its own 64x64 problem and blends
   the results once at the end with the same weights: what blending at every step is for.
2. **Small sizes**: ``--small-images`` validation images centre-cropped to 64x48 and 40x40 (W x H),
   inpainted (thick brush masks) with DDNM, once padded into the 64x64 model ("pad", the
   default) and once with the network run at the image's size ("direct", rounded up to a
   multiple of 8). PSNR on the whole image and on the missing pixels.

Writes ``seams_<machine>.md`` and ``.json`` and ``seams_<machine>.png`` (the 192x192
inpainting results) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import machine  # noqa: E402

import invdiff  # noqa: E402
import solvers as solver_registry  # noqa: E402
from invdiff import metrics  # noqa: E402
from invdiff.images import atomic_write_bytes, grid, save_image, to_model  # noqa: E402
from invdiff.tiling import plan, seam_ratio, tile_edges, tiled_model  # noqa: E402
from operators import Inpainting, named  # noqa: E402

SIZES = ((96, 128), (192, 192))  # (H, W)
SMALL_SIZES = ((48, 64), (40, 40))  # (H, W)
LABEL = 6  # People & Body, the largest class of the validation split
SHIFT = 16
CONTROL_SHIFT = 8


def control_lines(edges: tuple[int, ...], length: int) -> tuple[int, ...]:
    """The tile borders moved CONTROL_SHIFT pixels into the tiles (none on a border)."""
    return tuple(p + CONTROL_SHIFT for p in edges if p + CONTROL_SHIFT < length and p + CONTROL_SHIFT not in edges)


def composite(images: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) canvas tiled with 64x64 images drawn from ``images``, shifted by SHIFT."""
    rows, cols = -(-(h + SHIFT) // 64), -(-(w + SHIFT) // 64)
    pick = rng.choice(len(images), rows * cols, replace=False)
    cells = images[pick].reshape(rows, cols, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 64, cols * 64, 3)
    return cells[SHIFT:SHIFT + h, SHIFT:SHIFT + w]


def eight_bit(x) -> np.ndarray:
    return np.round((np.clip(np.asarray(x, np.float64), -1, 1) + 1) * 127.5)


def independent_tiles(model, mask: np.ndarray, y, steps: int, key) -> np.ndarray:
    """Baseline for inpainting: every tile solved on its own (one batch of 64x64 problems with
    the tiles of the same mask and measurement), the results blended once at the end."""
    b, h, w, _ = y.shape
    tm = tiled_model(model, (h, w))
    op = Inpainting(tm.split(jnp.asarray(mask)))
    labels = jnp.full((b * tm.num_tiles,), LABEL, jnp.int32)
    sol = invdiff.solve(solver_registry.make("ddnm", steps), model, op, tm.split(y), key=key, label=labels)
    return np.asarray(tm.blend(sol.x)), sol.nfe * tm.num_tiles


def composites(model, images: np.ndarray, seed: int):
    """For each size: the composite (1, H, W, 3), the tiling plan, the tile borders and the
    control lines (rows, columns), and the ground truth's ratios across both."""
    rng = np.random.default_rng(seed)
    for h, w in SIZES:
        x = composite(images, h, w, rng)[None]
        p = plan(model, (h, w))
        edges = (tile_edges(h, p.tile[0], p.overlap), tile_edges(w, p.tile[1], p.overlap))
        control = (control_lines(edges[0], h), control_lines(edges[1], w))
        truth = dict(seam_ratio_truth=float(seam_ratio(jnp.asarray(x), *edges)[0]),
                     control_ratio_truth=float(seam_ratio(jnp.asarray(x), *control)[0]))
        yield x, p, edges, control, truth


def tiled_rows(model, images: np.ndarray, args) -> tuple[list[dict], dict]:
    rows, shown = [], {}
    for x, p, edges, control, truth in composites(model, images, args.seed):
        h, w = x.shape[1:3]
        for op_name in args.operators:
            key = jax.random.key(args.seed)
            deg = named.make(op_name, x.shape, key)
            y = deg.op.A(jnp.asarray(x))
            runs = [(name, None) for name in args.solvers]
            if deg.mask is not None and deg.sigma_y == 0:
                runs.append(("ddnm, independent tiles", "independent"))
            for name, special in runs:
                t0 = time.perf_counter()
                if special:
                    out, nfe = independent_tiles(model, deg.mask, y, args.steps, key)
                else:
                    solver = solver_registry.make(name, args.steps)
                    sol = invdiff.solve_any_size(solver, model, deg.op, y, key=key, sigma_y=deg.sigma_y,
                                                 label=jnp.asarray([LABEL]))
                    out, nfe = np.asarray(sol.x), sol.nfe
                seconds = time.perf_counter() - t0
                row = dict(size=f"{w}x{h}", operator=op_name, solver=name, tiles=p.tiles, nfe=nfe,
                           seam_ratio=float(seam_ratio(jnp.asarray(out), *edges)[0]),
                           control_ratio=float(seam_ratio(jnp.asarray(out), *control)[0]), **truth,
                           psnr=float(metrics.psnr(jnp.asarray(out), jnp.asarray(x))[0]), seconds=seconds)
                if deg.mask is not None:
                    known = np.broadcast_to(deg.mask.astype(bool), x.shape)
                    row["known_change_255"] = float(np.abs(eight_bit(out) - eight_bit(x))[known].max())
                rows.append(row)
                print(json.dumps(row), flush=True)
                if (h, w) == tuple(SIZES[-1]) and op_name == args.operators[0]:
                    shown.setdefault("truth", x[0])
                    shown.setdefault("measurement", np.asarray(deg.op.pinv(y))[0])
                    shown[name] = out[0]
    return rows, shown


def small_rows(model, images: np.ndarray, labels: np.ndarray, args) -> list[dict]:
    rows = []
    n = args.small_images
    for h, w in SMALL_SIZES:
        top, left = (64 - h) // 2, (64 - w) // 2
        x = images[:n, top:top + h, left:left + w]
        key = jax.random.key(args.seed)
        deg = named.make("inpaint-thick", x.shape, key)
        y = deg.op.A(jnp.asarray(x))
        missing = ~np.broadcast_to(deg.mask.astype(bool), x.shape)
        for mode in ("pad", "direct"):
            t0 = time.perf_counter()
            sol = invdiff.solve_any_size(solver_registry.make("ddnm", args.steps), model, deg.op, y, key=key,
                                         label=jnp.asarray(labels[:n]), mode=mode)
            out = np.asarray(sol.x)
            err_missing = np.mean(((out - x) ** 2)[missing].reshape(-1)) if missing.any() else 0.0
            row = dict(size=f"{w}x{h}", mode=mode, run=plan(model, (h, w), mode).describe(), images=n,
                       psnr=float(np.mean(metrics.psnr(jnp.asarray(out), jnp.asarray(x)))),
                       psnr_missing=float(10 * np.log10(4.0 / err_missing)),
                       seconds=time.perf_counter() - t0)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def write(out: Path, meta: dict, tiled: list[dict], small: list[dict]) -> Path:
    lines = [f"# Tiled and padded restorations — {meta['machine']}", "",
             f"- command: `{meta['command']}`; jax {meta['jax']}; date {meta['date']}; load average at the end "
             f"{meta['load_average']} (the machine is shared with other jobs: seconds are indicative only)",
             f"- model: emoji64 (64x64); steps {meta['steps']}; label {LABEL} (People & Body); seed {meta['seed']}"]
    if "rewritten_by" in meta:
        lines.append(f"- tables rewritten from the JSON by `{meta['rewritten_by']}` (ground-truth columns recomputed "
                     "from the seeded composites)")
    lines += ["", "DDPM and DDIM ignore y (unconditional samples): their rows are the same for every operator.", "",
             "## 1. Tiled restorations (64x64 tiles, overlap >= 16)", "",
             "seam ratio = mean |gradient| across tile borders / elsewhere (1: no seam); control = the same across "
             f"lines {CONTROL_SHIFT} pixels off the borders; truth = both for the ground-truth composite; "
             "known Δ = largest change of a known pixel, 8-bit levels; s = wall seconds, compilation included "
             "(or read from JAX's persistent compilation cache).", "",
             "| size (WxH) | operator | solver | tiles | NFE | seam ratio | control | truth: seam, control | PSNR "
             "| known Δ | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in tiled:
        known = f"{r['known_change_255']:.0f}" if "known_change_255" in r else "–"
        lines.append(f"| {r['size']} | {r['operator']} | {r['solver']} | {r['tiles']} | {r['nfe']} | "
                     f"{r['seam_ratio']:.3f} | {r['control_ratio']:.3f} | {r['seam_ratio_truth']:.3f}, "
                     f"{r['control_ratio_truth']:.3f} | "
                     f"{r['psnr']:.2f} | {known} | {r['seconds']:.0f} |")
    lines += ["", "## 2. Small images: padding vs the network at the image's size (DDNM, thick brush masks)", "",
              "| size (WxH) | mode | how | images | PSNR | PSNR of the missing pixels | s |",
              "|---|---|---|---|---|---|---|"]
    for r in small:
        lines.append(f"| {r['size']} | {r['mode']} | {r['run']} | {r['images']} | {r['psnr']:.2f} | "
                     f"{r['psnr_missing']:.2f} | {r['seconds']:.0f} |")
    md = out / f"seams_{meta['slug']}.md"
    atomic_write_bytes(md, ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(out / f"seams_{meta['slug']}.json",
                       json.dumps(dict(meta=meta, tiled=tiled, small=small), indent=1).encode())
    return md


def figure(shown: dict[str, np.ndarray], per_row: int = 5) -> np.ndarray:
    """The shown images in rows of ``per_row``, each labelled."""
    names = list(shown)
    first = shown[names[0]]
    blank = np.full_like(first, 255 if first.dtype == np.uint8 else 1.0)  # white
    rows = []
    for i in range(0, len(names), per_row):
        chunk = names[i:i + per_row]
        cells = [shown[k] for k in chunk] + [blank] * (per_row - len(chunk))
        rows.append(grid([cells], col_labels=chunk, scale=1))
    return np.concatenate(rows)


def report(path: Path, images: np.ndarray, model) -> Path:
    """Rewrite the markdown from a results JSON, filling in ground-truth columns that an older
    version of this script did not record (the composites are rebuilt from the seed)."""
    res = json.loads(path.read_text())
    meta = res["meta"]
    meta["rewritten_by"] = f"python {os.path.relpath(__file__)} --report {path}"
    truths = {f"{x.shape[2]}x{x.shape[1]}": truth for x, *_, truth in composites(model, images, meta["seed"])}
    for r in res["tiled"]:
        for k, v in truths[r["size"]].items():
            r.setdefault(k, v)
    atomic_write_bytes(path, json.dumps(res, indent=1).encode())
    return write(path.parent, meta, res["tiled"], res["small"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/emoji64_val.npz"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--solvers", default=",".join(solver_registry.SOLVERS))
    ap.add_argument("--operators", default="inpaint-thick,sr4")
    ap.add_argument("--small-images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--report", metavar="JSON", help="only rewrite the markdown of an earlier run's JSON")
    args = ap.parse_args(argv)
    args.solvers = [s for s in args.solvers.split(",") if s]
    args.operators = [s for s in args.operators.split(",") if s]
    data = np.load(args.val)
    images, labels = to_model(data["images"]), np.asarray(data["labels"], np.int32)
    model = invdiff.load_model("emoji64")
    if args.report:
        print(report(Path(args.report), images[labels == LABEL], model))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mach = machine()
    command = [os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])
    meta = dict(machine=mach["name"], slug=mach["slug"], jax=jax.__version__, steps=args.steps, seed=args.seed,
                command="python " + " ".join(command),
                date=time.strftime("%Y-%m-%d %H:%M"))
    small = small_rows(model, images, labels, args)
    tiled, shown = tiled_rows(model, images[labels == LABEL], args)
    meta["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(write(out, meta, tiled, small))
    if shown:
        save_image(out / f"seams_{mach['slug']}.png", figure(shown))


if __name__ == "__main__":
    main()
