"""``resampling``: RePaint's jumps against more plain steps, at equal network evaluations.

For every resampling walk (``steps`` T, ``jump_length`` j, ``jump_n_sample`` r; NFE = its down
steps) the study also runs the plain walk with exactly that many steps, on the same images,
masks and keys, and compares them image by image. It does so for RePaint (the claim's
method) and for DDNM and DiffPIR, since the jump walk composes with every solver here.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from invdiff.bench import cells
from invdiff.studies import common as c

NAME = "resampling"
SEED = ("000 — *Inpainting with denoising diffusion probabilistic models* (the RePaint study), §3 and §6; "
        "003 — the RePaint review, on the paper's computational trade-off")
CLAIM = """> "To achieve good image inpainting, we use a technique called harmonization rather than slowing down
> the diffusion process." (000, §3: 250 steps, jump length 10, 10 resamplings: 4570 transitions)

> "Through that study, they show that for the same computational budget, it is better to increase the
> number of resamplings to the detriment of the number of denoising steps." (003, on RePaint's Table 4)

That is: at an equal number of network evaluations (NFE), RePaint's resampling (go back up `jump_length`
steps, `jump_n_sample − 1` times) fills the hole more coherently with the known region than a plain walk
with more steps."""

SCALES: dict[str, dict[str, Any]] = {
    "cpu": {"images": 4, "batch": 4, "steps": 20, "operator": "inpaint-half", "solvers": ["repaint", "ddnm", "diffpir"],
            "jumps": [[5, 2], [10, 2], [5, 3]]},
    "paper": {"images": 100, "batch": 8, "steps": 250, "operator": "inpaint-half",
              "solvers": ["repaint", "ddnm", "diffpir"], "jumps": [[10, 2], [10, 5], [10, 10]]},
}
OUTPUTS = ["table.md", "table.csv", "table.json", "quality_vs_nfe.png", "grid.png"]
METRICS = ("psnr", "ssim", "seam", "lpips")


def walks(settings: dict) -> list[dict]:
    """Every walk the study runs: the plain T-step walk, each resampling walk, and a plain walk
    with each resampling walk's NFE."""
    from invdiff.schedule import repaint_schedule

    t = int(settings["steps"])
    out, seen = [], set()

    def add(steps: int, j: int, r: int) -> dict:
        w = repaint_schedule(steps, j, r)
        item = {"name": f"T{steps}-j{j}-r{r}", "T": steps, "j": j, "r": r, "nfe": int(np.sum(np.diff(w) < 0))}
        if item["name"] not in seen:
            seen.add(item["name"])
            out.append(item)
        return item

    add(t, 1, 1)
    for j, r in settings["jumps"]:
        jumped = add(t, int(j), int(r))
        add(jumped["nfe"], 1, 1)
    return out


def check(model: Any, images: Any, labels: Any, settings: dict) -> None:
    import solvers
    from operators import named

    if not str(settings["operator"]).startswith("inpaint"):
        raise ValueError(f"the resampling study inpaints: operator must be an inpaint-<mask> name, got "
                         f"{settings['operator']!r}")
    named.make(settings["operator"], (1,) + tuple(images.shape), 0)
    for name in settings["solvers"]:
        solvers.get(name)
    for j, r in settings["jumps"]:
        if int(j) < 1 or int(r) < 2 or int(j) >= int(settings["steps"]):
            raise ValueError(f"jumps: each (jump_length, jump_n_sample) needs 1 <= jump_length < steps = "
                             f"{settings['steps']} and jump_n_sample >= 2; got ({j}, {r})")


def run(ctx: c.Context) -> None:
    import solvers

    s = ctx.settings
    plan = walks(s)
    op_name = s["operator"]
    for real, padded in ctx.chunks():
        todo = [(sv, w) for sv in s["solvers"] for w in plan if ctx.missing(sv, w["name"], real)]
        if not todo:
            continue
        x = ctx.images.read(padded)
        m = cells.measure(op_name, x, [ctx.images.ids[i] for i in padded], ctx.seed)
        for j, i in enumerate(real):
            ctx.save_png("truth", op_name, i, x[j])
            ctx.save_png("measurement", op_name, i, np.asarray(m.pinv_y[j]))
        for sv, w in todo:
            solver = solvers.get(sv)(steps=w["T"], jump_length=w["j"], jump_n_sample=w["r"])
            t0 = time.perf_counter()
            xr, nfe, _ = cells.solve_each(solver, ctx.model, m.deg.op, m.y, m.keys, sigma_y=m.deg.sigma_y,
                                          label=ctx.label_array(padded))
            xr = np.asarray(xr)
            seconds = (time.perf_counter() - t0) / len(real)
            q = c.quality(xr, x, m.deg, m.y, ctx.lpips)
            results = []
            for j, i in enumerate(real):
                ctx.save_png(sv, w["name"], i, xr[j])
                results.append({**ctx.base(sv, w["name"], i), "T": w["T"], "jump_length": w["j"],
                                "jump_n_sample": w["r"], "nfe": nfe, "seconds": seconds,
                                **{k: float(v[j]) for k, v in q.items()}})
            ctx.save(results)


def report(rep: c.Report) -> c.Verdict:
    s = rep.settings
    plan = walks(s)
    shown = [k for k in METRICS if k != "lpips" or rep.has_lpips]
    rows = []
    for sv in s["solvers"]:
        for w in plan:
            rs = rep.select(solver=sv, operator=w["name"])
            if not rs:
                continue
            row = c.add_stats({"solver": sv, "walk": w["name"], "T": w["T"], "jump_length": w["j"],
                               "jump_n_sample": w["r"], "nfe": w["nfe"]}, rs, shown)
            if w["r"] > 1:  # against the plain walk of the same NFE
                plain = rep.select(solver=sv, operator=f"T{w['nfe']}-j1-r1")
                for k in shown:
                    row[f"d_{k}"], row[f"d_{k}_ci95"], _ = c.paired(rs, plain, k)
            rows.append(row)
    columns = [c.Column("solver", "solver"), c.Column("walk", "walk (T, j, r)"), c.Column("nfe", "NFE", "d"),
               c.Column("n", "n", "d"), c.Column("psnr", "PSNR (dB)", ".2f", True),
               c.Column("ssim", "SSIM", ".3f", True), c.Column("seam", "seam error", ".3f", True)]
    if rep.has_lpips:
        columns.append(c.Column("lpips", "LPIPS", ".3f", True))
    columns += [c.Column("d_psnr", "ΔPSNR vs plain, same NFE", ".2f", True),
                c.Column("d_seam", "Δseam vs plain", ".3f", True)]
    if rep.has_lpips:
        columns.append(c.Column("d_lpips", "ΔLPIPS vs plain", ".3f", True))
    notes = ["walk `T<T>-j<j>-r<r>`: T respaced steps, RePaint's jump length j and jump_n_sample r (j1-r1: plain). "
             "Δ = this walk − the plain walk with the same NFE, per image (same image, mask and key), mean ± 95 % CI. "
             "PSNR/SSIM/LPIPS against the ground truth over the whole image (the known region is kept exactly by "
             "these solvers at σ_y = 0, so they measure the hole); seam error = RMS difference between the steps "
             "across the mask boundary in the result and in the truth (lower: the fill joins the known region "
             "as the truth does)."]
    table = c.write_table(rep.out, "table", "Resampling against more plain steps", rows, columns, notes)
    _plot(rep, rows, shown)
    _grid(rep, plan)
    verdict = _verdict(rep, rows, s, shown)
    setup = [f"operator `{s['operator']}` (one mask per image, σ_y = 0); solvers {', '.join(s['solvers'])}",
             f"walks: plain T = {s['steps']}; jumps (j, r) = {', '.join(f'({j}, {r})' for j, r in s['jumps'])} on "
             f"T = {s['steps']}; each also as a plain walk with the same NFE: "
             + ", ".join(f"{w['name']} (NFE {w['nfe']})" for w in plan)]
    limits = ["The bundled emoji64 model is small (4.5 M parameters) and 64 x 64; emoji are simple, often "
              "symmetric shapes on white, so a half mask is easier to harmonise than a natural image.",
              f"{rep.images()} images: confidence intervals are wide; the comparison is paired (same image, mask "
              f"and key), which removes most of the between-image variance.",
              f"{s['steps']} base steps instead of RePaint's 250; the jumps are scaled down with them.",
              "PSNR/SSIM reward the one true fill; harmonisation is judged by the seam error (our proxy) and, when "
              "weights are given, LPIPS — RePaint's paper used LPIPS and a user study."]
    return c.write_summary(rep, sys.modules[__name__], setup=setup, table=table,
                           figures=[("quality_vs_nfe.png", "Left: mean quality against NFE, plain walks (lines) "
                                     "and resampling walks (labelled squares). Right: resampling − plain walk of the "
                                     "same NFE, per image, mean ± 95 % CI"),
                                    ("grid.png", "First image: truth, input, and every walk per solver")],
                           verdict=verdict, limits=limits)


def pooled(rep: c.Report, solver: str, plan: list[dict], key: str) -> tuple[float, float, int]:
    """Mean ± CI over images of (resampling walk − plain walk of the same NFE), averaged per image over
    the resampling walks: one paired test per solver and metric."""
    per_image: dict[str, list[float]] = {}
    for w in (w for w in plan if w["r"] > 1):
        plain = {r["image"]: r.get(key) for r in rep.select(solver=solver, operator=f"T{w['nfe']}-j1-r1")}
        for r in rep.select(solver=solver, operator=w["name"]):
            if r.get(key) is not None and plain.get(r["image"]) is not None:
                per_image.setdefault(r["image"], []).append(r[key] - plain[r["image"]])
    n_walks = sum(1 for w in plan if w["r"] > 1)
    return c.stats([{"d": float(np.mean(v))} for v in per_image.values() if len(v) == n_walks], "d")


def _verdict(rep: c.Report, rows: list[dict], s: dict, shown: list[str]) -> c.Verdict:
    plan = walks(s)
    better = {"psnr": 1, "ssim": 1, "seam": -1, "lpips": -1}
    tested = ["psnr", "seam"] + (["lpips"] if "lpips" in shown else [])
    signs, reasons = [], []
    for sv in s["solvers"]:
        parts = []
        for k in tested:
            d, ci, n = pooled(rep, sv, plan, k)
            sg = better[k] * c.sign(d, ci)
            if sv == "repaint":
                signs.append(sg)
            parts.append(f"Δ{k} {c.pm(d, ci, '.3f')}" + {1: " (better)", -1: " (worse)", 0: ""}[sg])
        per_walk = "; ".join(f"{r['walk']} (NFE {r['nfe']}): ΔPSNR {c.pm(r['d_psnr'], r['d_psnr_ci95'], '.2f')}"
                             for r in rows if r["solver"] == sv and r["jump_n_sample"] > 1 and "d_psnr" in r)
        reasons.append(f"{sv}, resampling − plain at equal NFE, averaged over the resampling walks: {', '.join(parts)}"
                       + (f" — per walk: {per_walk}" if per_walk else ""))
    if "repaint" not in s["solvers"]:
        return c.Verdict("inconclusive at this scale", "RePaint, the claim's method, was not run.", tuple(reasons))
    word = c.combine(signs)
    line = {"supports": "at equal NFE, RePaint's resampling walks beat the plain walks, and no tested metric is "
                        "significantly worse",
            "contradicts": "at equal NFE, the plain walks beat RePaint's resampling walks",
            "mixed": "at equal NFE, RePaint's resampling is better on one metric and worse on another",
            }.get(word, "no difference between RePaint's resampling and plain walks at equal NFE is resolved by the "
                        "95 % CIs")
    others = [sv for sv in s["solvers"] if sv != "repaint"]
    return c.Verdict(word, line + " (tests: " + ", ".join(tested)
                     + (f"; {', '.join(others)} in the reasons" if others else "") + ").", tuple(reasons))


def _plot(rep: c.Report, rows: list[dict], shown: list[str]) -> None:
    labels = {"psnr": "PSNR (dB), higher is better", "seam": "seam error, lower is better",
              "lpips": "LPIPS, lower is better", "ssim": "SSIM, higher is better"}
    colors = {sv: f"C{i}" for i, sv in enumerate(dict.fromkeys(r["solver"] for r in rows))}
    panels = []
    for k in [m for m in ("psnr", "seam", "lpips") if m in shown]:
        series = []
        for sv, col in colors.items():
            plain = sorted((r for r in rows if r["solver"] == sv and r["jump_n_sample"] == 1), key=lambda r: r["nfe"])
            jumped = [r for r in rows if r["solver"] == sv and r["jump_n_sample"] > 1]
            series.append({"x": [r["nfe"] for r in plain], "y": [r[k] for r in plain], "label": f"{sv} plain",
                           "style": "o-", "color": col})
            if jumped:
                series.append({"x": [r["nfe"] for r in jumped], "y": [r[k] for r in jumped], "style": "s",
                               "color": col, "label": f"{sv} resampling",
                               "annotate": [f"j{r['jump_length']} r{r['jump_n_sample']}" for r in jumped]})
        panels.append({"xlabel": "network evaluations per image (NFE)", "ylabel": labels[k] + " (mean)",
                       "series": series})
    for k in [m for m in ("psnr", "seam") if m in shown]:
        series = []
        for i, (sv, col) in enumerate(colors.items()):
            jumped = [r for r in rows if r["solver"] == sv and r["jump_n_sample"] > 1 and f"d_{k}" in r]
            series.append({"x": [r["nfe"] * (1 + 0.02 * (i - 1)) for r in jumped], "y": [r[f"d_{k}"] for r in jumped],
                           "err": [r[f"d_{k}_ci95"] for r in jumped], "style": "s", "color": col, "label": sv,
                           "annotate": [f"j{r['jump_length']} r{r['jump_n_sample']}" for r in jumped]})
        panels.append({"xlabel": "NFE", "ylabel": f"Δ{k}: resampling − plain, same NFE", "series": series,
                       "hline": 0.0})
    c.line_plot(rep.out / "quality_vs_nfe.png", f"Resampling vs plain walks ({rep.settings['operator']}, "
                f"{rep.images()} images; right: paired differences, mean ± 95 % CI)", panels, width=4.2 * len(panels))


def _grid(rep: c.Report, plan: list[dict]) -> None:
    first = rep.select(index=0)
    if not first:
        return
    image = first[0]["image"]
    op = rep.settings["operator"]
    rows, labels = [], []
    for sv in rep.settings["solvers"]:
        rows.append([c.load_png(rep.out, "truth", op, image), c.load_png(rep.out, "measurement", op, image)]
                    + [c.load_png(rep.out, sv, w["name"], image) for w in plan])
        labels.append(sv)
    c.image_grid(rep.out / "grid.png", rows, labels,
                 ["truth", "input"] + [f"{w['name']}\nNFE {w['nfe']}" for w in plan])
