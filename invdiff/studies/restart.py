"""``restart``: resample the hole from a saved state — when is the content decided?

Each image is inpainted once (the original run) as a :func:`~invdiff.studies.common.checkpointed_run`,
which keeps the state at evenly spaced walk positions. From each of these states the rest of
the walk is solved again ``completions`` times with fresh randomness. The spread of the
hole across the completions (per-pixel standard deviation; LPIPS when weights are given),
their distance to the original fill and their quality against the restart timestep say from
which noise level on the content stays put.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from invdiff.bench import cells
from invdiff.studies import common as c

NAME = "restart"
SEED = "000 — *Inpainting with denoising diffusion probabilistic models* (the RePaint study), §7 and appendix E"
CLAIM = """> "Our experiments suggest that the diversity of resampling increases with higher starting timesteps, as
> expected. […] resampling from timesteps between 250 and 120 often leads to significant changes in the
> inpainted region in most cases. However, after timestep 110, resampled images tend to be similar to the
> original inpainted image." (000, §7: RePaint, 250 steps with jumps 10 x 10, half mask, checkpoints every
> 10 timesteps, judged by eye)

That is: the content of the hole is decided at about t = 110–120 of 250, i.e. 44–48 % of the way from the
clean image to pure noise (original timesteps ≈ 440–480 of 1000 on the same linear schedule)."""

SCALES: dict[str, dict[str, Any]] = {
    "cpu": {"images": 4, "batch": 4, "steps": 40, "solver": "repaint", "jump": [1, 1], "operator": "inpaint-half",
            "first": 5, "every": 5, "completions": 3},
    # the seed's Table 3: checkpoints at walk positions 200, 390, …, 4380 of RePaint's 4570-transition walk
    "paper": {"images": 34, "batch": 4, "steps": 250, "solver": "repaint", "jump": [10, 10], "operator": "inpaint-half",
              "first": 200, "every": 190, "completions": 3},
}
OUTPUTS = ["table.md", "table.csv", "table.json", "restart_curves.png", "grid.png"]
#: fold_in data of completion j's keys: RESTART + j
RESTART = 1000
#: The seed's band of "decided" timesteps (original timesteps of a 1000-step linear schedule).
SEED_BAND = (440, 480)


def build(settings: dict) -> Any:
    import solvers

    j, r = settings["jump"]
    return solvers.get(settings["solver"])(steps=int(settings["steps"]), jump_length=int(j), jump_n_sample=int(r))


def cut_positions(settings: dict, length: int) -> list[int]:
    """Checkpoints: walk position 0, ``first``, ``first + every``, …, and the end (``length − 1``)."""
    last = length - 1
    cuts = [0] + list(range(int(settings["first"]), last, int(settings["every"]))) + [last]
    return sorted(set(cuts))


def check(model: Any, images: Any, labels: Any, settings: dict) -> None:
    from operators import named

    named.make(settings["operator"], (1,) + tuple(images.shape), 0)
    if not str(settings["operator"]).startswith("inpaint"):
        raise ValueError(f"the restart study inpaints: operator must be an inpaint-<mask> name, got "
                         f"{settings['operator']!r}")
    if int(settings["first"]) < 1 or int(settings["every"]) < 1:
        raise ValueError("first and every (walk positions between checkpoints) must be positive")
    walk = build(settings).walk()
    if len(cut_positions(settings, len(walk))) < 3:
        raise ValueError(f"{settings['steps']} steps leave fewer than two checkpoints with first={settings['first']}, "
                         f"every={settings['every']}: use more steps")
    if int(settings["completions"]) < 2:
        raise ValueError("completions must be at least 2 (a spread needs two samples besides the original)")


def run(ctx: c.Context) -> None:
    s = ctx.settings
    solver = build(s)
    walk = solver.walk()
    cuts = cut_positions(s, len(walk))
    ts = c.timesteps_of(ctx.model, int(s["steps"]), walk)
    ops = [f"restart-c{k:02d}" for k in range(len(cuts) - 1)]
    name, op_name, n_comp = s["solver"], s["operator"], int(s["completions"])
    for real, padded in ctx.chunks():
        need = [k for k in range(len(cuts) - 1) if ctx.missing(name, ops[k], real)]
        if not need and not ctx.missing(name, "original", real):
            continue
        x = ctx.images.read(padded)
        m = cells.measure(op_name, x, [ctx.images.ids[i] for i in padded], ctx.seed)
        label = ctx.label_array(padded)
        hole = c.hole_of(m.deg.mask, x.shape)
        t0 = time.perf_counter()
        states = c.checkpointed_run(solver, ctx.model, m.deg.op, m.y, m.keys, walk, cuts, sigma_y=m.deg.sigma_y,
                                    label=label)
        original = np.asarray(states[-1])
        q = c.quality(original, x, m.deg, m.y, ctx.lpips)
        seconds = (time.perf_counter() - t0) / len(real)
        for j, i in enumerate(real):
            ctx.save_png("truth", op_name, i, x[j])
            ctx.save_png("measurement", op_name, i, np.asarray(m.pinv_y[j]))
            ctx.save_png(name, "original", i, original[j])
        ctx.save([{**ctx.base(name, "original", i), "seconds": seconds, "nfe": int(np.sum(np.diff(walk) < 0)),
                   **{k: float(v[j]) for k, v in q.items()}} for j, i in enumerate(real)])
        for k in need:
            t0 = time.perf_counter()
            finals = []
            for n in range(1, n_comp + 1):
                st = c.checkpointed_run(solver, ctx.model, m.deg.op, m.y, c.fold(m.keys, RESTART + n), walk, cuts,
                                        sigma_y=m.deg.sigma_y, label=label, x_start=states[k], first=k)
                finals.append(np.asarray(st[-1]))
            seconds = (time.perf_counter() - t0) / len(real)
            samples = np.stack([original] + finals)
            quals = [c.quality(f, x, m.deg, m.y, ctx.lpips) for f in finals]
            stats = {"hole_std": c.spread(samples, hole),
                     "dist_original": np.mean([c.hole_rms(f, original, hole) for f in finals], axis=0),
                     **{key: np.mean([qq[key] for qq in quals], axis=0) for key in quals[0]}}
            if ctx.lpips is not None:
                import jax.numpy as jnp

                stats["lpips_original"] = np.mean([np.asarray(ctx.lpips(jnp.clip(f, -1, 1), jnp.clip(original, -1, 1)))
                                                   for f in finals], axis=0)
                stats["lpips_pairwise"] = c.pairwise_lpips(ctx.lpips, samples)
            results = []
            for j, i in enumerate(real):
                for n, f in enumerate(finals, start=1):
                    ctx.save_png(f"{name}-{n}", ops[k], i, f[j])
                results.append({**ctx.base(name, ops[k], i), "checkpoint": k, "position": cuts[k],
                                "t": int(ts[cuts[k]]),
                                "completions": n_comp, "seconds": seconds,
                                **{key: float(v[j]) for key, v in stats.items()}})
            ctx.save(results)


def half_point(ts: np.ndarray, d: np.ndarray) -> float:
    """The largest restart timestep at which ``d`` has fallen to half its value at the first
    checkpoint (linear interpolation between checkpoints; NaN if it never does)."""
    target = d[0] / 2.0
    for a in range(1, len(d)):
        if d[a] <= target:
            f = (d[a - 1] - target) / max(d[a - 1] - d[a], 1e-12)
            return float(ts[a - 1] + f * (ts[a] - ts[a - 1]))
    return float("nan")


def report(rep: c.Report) -> c.Verdict:
    s = rep.settings
    keys = ["hole_std", "dist_original", "psnr", "ssim"]
    keys += ["lpips_original", "lpips_pairwise"] if rep.has_lpips else []
    checkpoints = sorted({r["checkpoint"] for r in rep.results if "checkpoint" in r})
    rows = []
    for k in checkpoints:
        rs = rep.select(operator=f"restart-c{k:02d}")
        rows.append(c.add_stats({"checkpoint": k, "t": rs[0]["t"], "position": rs[0]["position"]}, rs, keys))
    orig = rep.select(operator="original")
    columns = [c.Column("t", "restart timestep t", "d"), c.Column("position", "walk position", "d"),
               c.Column("n", "n", "d"),
               c.Column("hole_std", "hole spread (std)", ".3f", True),
               c.Column("dist_original", "RMS to original fill", ".3f", True),
               c.Column("psnr", "PSNR (dB)", ".2f", True), c.Column("ssim", "SSIM", ".3f", True)]
    if rep.has_lpips:
        columns += [c.Column("lpips_original", "LPIPS to original", ".3f", True),
                    c.Column("lpips_pairwise", "LPIPS between samples", ".3f", True)]
    o_psnr = c.stats(orig, "psnr")
    notes = [f"Each row: the rest of the walk solved {s['completions']} times from the original run's state at "
             f"timestep t (original timesteps of the 1000-step schedule; the first row restarts from the same x_T). "
             f"hole spread = per-pixel standard deviation across the original fill and the completions, averaged "
             f"over the hole; RMS to original = the completions' root-mean-square difference from the original fill "
             f"in the hole; PSNR/SSIM of the completions against the ground truth. The original fills: PSNR "
             f"{c.pm(o_psnr[0], o_psnr[1], '.2f')} dB over {o_psnr[2]} images."]
    table = c.write_table(rep.out, "table", "Restarting from a checkpoint", rows, columns, notes)

    # per image: where the distance to the original falls to half its value at the top
    halves = []
    for image in sorted({r["image"] for r in rep.results if "checkpoint" in r}):
        rs = sorted((r for r in rep.results if r["image"] == image and "checkpoint" in r),
                    key=lambda r: r["checkpoint"])
        if len(rs) == len(checkpoints) and len(rs) >= 2:
            halves.append(half_point(np.array([r["t"] for r in rs], float), np.array([r["dist_original"] for r in rs])))
    half = c.stats([{"h": h} for h in halves], "h")
    _plot(rep, rows, o_psnr, half)
    _grid(rep, checkpoints, rows)
    verdict = _verdict(rep, rows, half, checkpoints)
    j, r = s["jump"]
    setup = [f"{s['solver']} on `{s['operator']}`, {s['steps']} steps" + (f" with jumps ({j}, {r})" if r > 1 else
             " (plain walk)") + f"; checkpoints at walk positions 0, {s['first']}, {s['first'] + s['every']}, … "
             f"({len(checkpoints)} restart points); {s['completions']} completions per checkpoint and image",
             "a checkpointed run solves the walk segment by segment; segment c draws from the image's key folded with "
             "c, so a restart with the original keys replays the run exactly, and completions use fresh keys"]
    limits = ["The bundled emoji64 model is small and 64 x 64: its content may be decided at another noise level than "
              "for the seed's 256 x 256 ImageNet model.",
              f"{s['steps']} steps" + (" without RePaint's jumps" if r == 1 else "") + " instead of 250 steps with "
              "10 x 10 jumps: the walk positions differ, the noise levels (timesteps) are comparable.",
              f"{rep.images()} images and {s['completions']} completions each: the spread is estimated from "
              f"{s['completions'] + 1} samples per pixel.",
              "The seed judged similarity by eye; the half-way point of the RMS distance is our operational "
              "definition of 'decided'."]
    return c.write_summary(rep, sys.modules[__name__], setup=setup, table=table,
                           figures=[("restart_curves.png", "Spread, distance to the original and quality against the "
                                     "restart timestep (mean ± 95 % CI over images)"),
                                    ("grid.png", "First image: completions from each checkpoint")],
                           verdict=verdict, limits=limits)


def _verdict(rep: c.Report, rows: list[dict], half: tuple, checkpoints: list[int]) -> c.Verdict:
    if len(rows) < 2:
        return c.Verdict("inconclusive at this scale", "too few checkpoints were run", ())
    top = rep.select(operator=f"restart-c{checkpoints[0]:02d}")
    bottom = rep.select(operator=f"restart-c{checkpoints[-1]:02d}")
    d, ci, _ = c.paired(top, bottom, "hole_std")
    monotone = c.sign(d, ci)
    h, hci, n = half
    lo, hi = SEED_BAND
    reasons = [f"hole spread from the highest restart timestep (t = {rows[0]['t']}) minus from the lowest "
               f"(t = {rows[-1]['t']}): {c.pm(d, ci, '.3f')}",
               f"the RMS distance to the original fill falls to half its top value at t = {c.pm(h, hci, '.0f')} "
               f"({n} images); the seed's band is t ≈ {lo}–{hi}",
               "hole spread by restart timestep: " + ", ".join(f"t={r['t']}: {r['hole_std']:.3f}" for r in rows)]
    if monotone < 0:
        return c.Verdict("contradicts", "restarting later gives MORE diversity than restarting early", tuple(reasons))
    if monotone == 0:
        return c.Verdict("inconclusive at this scale", "the spread at the highest and lowest restart timesteps is not "
                         "resolved by the 95 % CI", tuple(reasons))
    half = hci if np.isfinite(hci) else 0
    in_band = np.isfinite(h) and (h - half <= hi) and (h + half >= lo)
    if in_band:
        return c.Verdict("supports", f"diversity grows with the restart timestep and half of it is gone by t = "
                         f"{c.pm(h, hci, '.0f')}, within the seed's t ≈ {lo}–{hi}", tuple(reasons))
    return c.Verdict("partly supports", f"diversity grows with the restart timestep, as the seed says, but the content "
                     f"is decided at t = {c.pm(h, hci, '.0f')}, not at the seed's t ≈ {lo}–{hi}", tuple(reasons))


def _plot(rep: c.Report, rows: list[dict], o_psnr: tuple, half: tuple) -> None:
    t = [r["t"] for r in rows]

    def series(k: str, label: str | None = None) -> dict:
        return {"x": t, "y": [r[k] for r in rows], "err": [r[f"{k}_ci95"] for r in rows], "label": label}

    panels = [{"xlabel": "restart timestep t", "ylabel": "hole spread (per-pixel std)", "series": [series("hole_std")],
               "invert_x": True},
              {"xlabel": "restart timestep t", "ylabel": "RMS distance to the original fill",
               "series": [series("dist_original")], "invert_x": True},
              {"xlabel": "restart timestep t", "ylabel": "PSNR of the completions (dB)", "series": [series("psnr")],
               "invert_x": True, "hline": o_psnr[0]}]
    if rep.has_lpips:
        panels.append({"xlabel": "restart timestep t", "ylabel": "LPIPS between samples",
                       "series": [series("lpips_pairwise")], "invert_x": True})
    h = half[0]
    title = (f"Restarting from a checkpoint ({rep.images()} images; dashed: the original fills' PSNR)"
             + (f"; half-way at t = {h:.0f}" if np.isfinite(h) else ""))
    c.line_plot(rep.out / "restart_curves.png", title, panels, width=4.2 * len(panels))


def _grid(rep: c.Report, checkpoints: list[int], rows: list[dict]) -> None:
    first = rep.select(index=0)
    if not first:
        return
    image, s = first[0]["image"], rep.settings
    op = s["operator"]
    head = [c.load_png(rep.out, "truth", op, image), c.load_png(rep.out, "measurement", op, image),
            c.load_png(rep.out, s["solver"], "original", image)]
    grid_rows, labels = [], []
    for k, r in zip(checkpoints, rows):
        grid_rows.append(head + [c.load_png(rep.out, f"{s['solver']}-{n}", f"restart-c{k:02d}", image)
                                 for n in range(1, int(s["completions"]) + 1)])
        labels.append(f"restart t={r['t']}")
    c.image_grid(rep.out / "grid.png", grid_rows, labels,
                 ["truth", "input", "original"] + [f"completion {n}" for n in range(1, int(s["completions"]) + 1)])
