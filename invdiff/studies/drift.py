"""``drift``: how much each solver changes the pixels it was given (outside the mask).

The thesis (seed 004) found that an open-source inpainting pipeline alters pixels outside the
mask. Here every solver inpaints a centred disc; the change of the known pixels is measured
against the input the solver was given (y, which carries the measurement noise when σ_y > 0):

* discs of growing radius (``radii``, fractions of half the shorter side, as the thesis);
* measurement noise σ_y > 0 (``sigmas``);
* the guidance strength of the gradient solvers (``guidance``: DPS's scale, MCG's α, ΠGDM's
  weight; array leaves, so a sweep reuses the compiled program);
* SDEdit-style "strength" (the thesis's main knob): the solve starts from the masked input
  noised to ``strength`` of the walk (:func:`invdiff.noised`) instead of pure noise;

and heat maps show where the change falls. Solvers that end on A x = y (RePaint, ILVR, DDNM,
MCG, DiffPIR at σ_y = 0) cannot drift; the others (DPS, ΠGDM) only pull towards y.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.bench import cells
from invdiff.studies import common as c

NAME = "drift"
SEED = ("004 — V. Halvorsen, *Exploring the Behavior of Open-Source Diffusion Model Inpainting Algorithms* "
        "(master's thesis, UiT 2023), §3.0.4–3.0.6 and §4.2–4.4")
CLAIM = """> "Our findings indicate that the algorithm not only modifies the pixels within the designated mask, as
> intended, but also alters pixels outside of the mask, even those that are unrelated to the inpainted
> subject." (004, abstract)

> "The results indicated a notable trend towards higher mean-squared error (MSE) as the inpainting strength
> increases." (004, Fig. 4.2) — "it does not appear that changing the radius has a significant impact on the
> MSE." (004, §4.3.2) — "the edge of the inpainting mask is a particularly sensitive area for pixel
> alteration." (004, §4.4)

(Stable Diffusion's legacy inpainting pipeline, 20 landscape photographs, circular masks of 20–80 % of half
the shorter side, strengths 0–1; MSE outside the mask on the 0–255 scale.)"""

SCALES: dict[str, dict[str, Any]] = {
    "cpu": {"images": 3, "batch": 3, "steps": 10,
            "solvers": ["repaint", "ilvr", "ddnm", "mcg", "diffpir", "dps", "pigdm"],
            "radii": [0.3, 0.6], "radius": 0.6, "sigmas": [0.1],
            "guidance": {"dps": ["scale", [2.0]], "mcg": ["alpha", [2.0]], "pigdm": ["weight", [2.0]]},
            "strengths": [0.5], "strength_solvers": ["dps", "pigdm"], "edge": 3},
    "paper": {"images": 20, "batch": 4, "steps": 1000,
              "solvers": ["repaint", "ilvr", "ddnm", "mcg", "diffpir", "ddrm", "dps", "pigdm"],
              "radii": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], "radius": 0.8, "sigmas": [0.05, 0.1],
              "guidance": {"dps": ["scale", [0.1, 0.25, 1.0, 2.0]], "mcg": ["alpha", [0.25, 0.5, 2.0]],
                           "pigdm": ["weight", [0.25, 0.5, 2.0]]},
              "strengths": [0.1, 0.3, 0.5, 0.7, 0.9], "strength_solvers": ["dps", "pigdm", "ddnm"], "edge": 3},
}
OUTPUTS = ["table.md", "table.csv", "table.json", "drift.png", "heatmaps.png", "heatmaps_strength.png"]
#: MSE of the known pixels below this (squared model units) is float32 rounding of an exact copy.
EXACT = 1e-10
#: fold_in data of the key that noises the SDEdit start.
STRENGTH = 3000


def conditions(s: dict) -> list[dict]:
    """Every (method, condition) the study runs, in report order: ``part``, ``solver`` (its
    registry name), ``method`` (with a hyperparameter), ``field``/``value``, ``radius``,
    ``sigma``, ``strength``."""
    r0 = float(s["radius"])
    out = []
    for r in s["radii"]:
        out += [{"part": "radius", "solver": sv, "method": sv, "radius": float(r), "sigma": 0.0, "strength": 1.0}
                for sv in s["solvers"]]
    for sg in s["sigmas"]:
        out += [{"part": "noise", "solver": sv, "method": sv, "radius": r0, "sigma": float(sg), "strength": 1.0}
                for sv in s["solvers"]]
    for sv, (field, values) in s["guidance"].items():
        out += [{"part": "guidance", "solver": sv, "method": f"{sv}-{field}{v:g}", "field": field, "value": float(v),
                 "radius": r0, "sigma": 0.0, "strength": 1.0} for v in values]
    for st in s["strengths"]:
        out += [{"part": "strength", "solver": sv, "method": sv, "radius": r0, "sigma": 0.0, "strength": float(st)}
                for sv in s["strength_solvers"]]
    for cond in out:
        cond["operator"] = condition_name(cond)
    return out


def condition_name(cond: dict) -> str:
    name = f"circle{cond['radius']:.2f}"
    if cond["sigma"] > 0:
        name += f"-sigma{cond['sigma']:g}"
    if cond["strength"] < 1.0:
        name += f"-strength{cond['strength']:g}"
    return name


def circle_mask(shape: tuple[int, ...], radius: float) -> np.ndarray:
    """(B, H, W, 1) masks (1 = known) with a centred disc of ``radius`` x half the shorter side missing."""
    from operators import masks

    b, h, w = shape[:3]
    m = np.asarray(masks.circle(h, w, radius=radius * min(h, w) / 2), np.float32)
    return np.ascontiguousarray(np.broadcast_to(m[None, :, :, None], (b, h, w, 1)))


def build(cond: dict, steps: int | None) -> Any:
    import solvers

    solver = solvers.make(cond["solver"], steps)
    if "field" in cond:
        old = getattr(solver, cond["field"])  # the same abstract type (weak or not): no recompilation
        solver = solver.replace(**{cond["field"]: jnp.full_like(old, cond["value"])})
    return solver


def check(model: Any, images: Any, labels: Any, settings: dict) -> None:
    import dataclasses

    import solvers

    for sv in list(settings["solvers"]) + list(settings["strength_solvers"]):
        solvers.get(sv)
    for sv, (field, _) in settings["guidance"].items():
        if field not in {f.name for f in dataclasses.fields(solvers.get(sv))}:
            raise ValueError(f"guidance: {sv} has no hyperparameter {field!r}")
    for r in list(settings["radii"]) + [settings["radius"]]:
        if not 0 < float(r) <= 1:
            raise ValueError(f"radii are fractions of half the shorter side, in (0, 1]; got {r}")
    for st in settings["strengths"]:
        if not 0 < float(st) < 1:
            raise ValueError(f"strengths are fractions of the walk in (0, 1) (1 = the full solve); got {st}")
    if any(float(sg) < 0 for sg in settings["sigmas"]):
        raise ValueError("sigmas must be >= 0")


def change_stats(x: np.ndarray, y: np.ndarray, mask: np.ndarray, edge: int) -> dict[str, np.ndarray]:
    """Change of the known pixels against the input y, per image: MSE, and the mean absolute change
    within ``edge`` pixels of the hole (chessboard distance) and farther away."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    known = np.asarray(mask)[..., 0] > 0.5
    near = ~known
    for _ in range(edge):  # dilate the hole by one pixel (8-neighbourhood) per pass
        p = np.pad(near, ((0, 0), (1, 1), (1, 1)))
        near = np.max([p[:, 1 + dy:p.shape[1] - 1 + dy, 1 + dx:p.shape[2] - 1 + dx]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    band, far = near & known, ~near & known
    absd = np.abs(x - y).mean(axis=-1)
    sq = ((x - y) ** 2).mean(axis=-1)

    def mean_over(a: np.ndarray, where: np.ndarray) -> np.ndarray:
        return (a * where).sum(axis=(1, 2)) / np.maximum(where.sum(axis=(1, 2)), 1)

    drift = mean_over(sq, known)
    return {"drift": drift, "drift_255": drift * 127.5**2, "max_change": (absd * known).max(axis=(1, 2)),
            "edge_change": mean_over(absd, band), "far_change": mean_over(absd, far)}


def sdedit_start(model: Any, steps: int, start: int, x0: jax.Array, keys: jax.Array) -> jax.Array:
    """Each image of ``x0`` noised with its own key to respaced index ``start`` of a
    ``steps``-step chain (:func:`invdiff.noised`): the x_init of an SDEdit solve."""
    from invdiff import noised

    return jax.vmap(lambda xi, k: noised(xi[None], model, steps, start, k)[0])(jnp.asarray(x0), keys)


def run(ctx: c.Context) -> None:
    from operators.inpainting import Inpainting
    from operators.named import Degradation

    s = ctx.settings
    plan = conditions(s)
    steps = s.get("steps")
    for real, padded in ctx.chunks():
        todo = [cond for cond in plan if ctx.missing(cond["method"], cond["operator"], real)]
        if not todo:
            continue
        x = ctx.images.read(padded)
        ids = [ctx.images.ids[i] for i in padded]
        label = ctx.label_array(padded)
        measured: dict[tuple[float, float], Any] = {}
        for cond in todo:
            key = (cond["radius"], cond["sigma"])
            if key not in measured:
                mask = circle_mask(x.shape, cond["radius"])
                deg = Degradation(f"circle{cond['radius']:.2f}", Inpainting(jnp.asarray(mask)), cond["sigma"], mask)
                measured[key] = cells.measure("inpaint-circle", x, ids, ctx.seed, deg=deg)  # one key per image
            m = measured[key]
            solver = build(cond, steps)
            kw = {}
            if cond["strength"] < 1.0:  # SDEdit: start from the masked input noised to this part of the walk
                start = max(0, int(round(cond["strength"] * solver.steps)) - 1)
                kw = {"x_init": sdedit_start(ctx.model, solver.steps, start, m.pinv_y, c.fold(m.keys, STRENGTH)),
                      "start_step": start, "walk": np.asarray(solver.walk())}
            t0 = time.perf_counter()
            xr, nfe, vjp = cells.solve_each(solver, ctx.model, m.deg.op, m.y, m.keys, sigma_y=m.deg.sigma_y,
                                            label=label, **kw)
            xr = np.asarray(xr)
            seconds = (time.perf_counter() - t0) / len(real)
            ch = change_stats(xr, np.asarray(m.pinv_y), m.deg.mask, int(s["edge"]))
            q = c.quality(xr, x, m.deg, m.y, ctx.lpips)
            results = []
            for j, i in enumerate(real):
                ctx.save_png("truth", "circle", i, x[j])
                ctx.save_png("measurement", cond["operator"], i, np.asarray(m.pinv_y[j]))
                ctx.save_png(cond["method"], cond["operator"], i, xr[j])
                extra = {k: cond[k] for k in ("part", "radius", "sigma", "strength", "field", "value") if k in cond}
                results.append({**ctx.base(cond["method"], cond["operator"], i), **extra, "nfe": nfe, "vjp": vjp,
                                "seconds": seconds, **{k: float(v[j]) for k, v in {**q, **ch}.items()}})
            ctx.save(results)


def report(rep: c.Report) -> c.Verdict:
    s = rep.settings
    plan = conditions(s)
    rows = []
    for cond in plan:
        rs = rep.select(solver=cond["method"], operator=cond["operator"])
        if not rs:
            continue
        row = c.add_stats({k: cond.get(k) for k in ("part", "method", "radius", "sigma", "strength")} | {
            "nfe": rs[0]["nfe"]}, rs, ["drift", "drift_255", "outside_mse", "edge_change", "far_change", "psnr",
                                       "consistency"])
        row["exact"] = "yes" if max(r["drift"] for r in rs) < EXACT else "no"
        rows.append(row)
    columns = [c.Column("part", "part"), c.Column("method", "solver"), c.Column("radius", "radius", ".2f"),
               c.Column("sigma", "σ_y", "g"), c.Column("strength", "strength", "g"), c.Column("n", "n", "d"),
               c.Column("drift", "change of known pixels (MSE)", ".2e", True),
               c.Column("drift_255", "same, 0–255 scale", ".3g", True), c.Column("exact", "A x = y kept"),
               c.Column("edge_change", f"|change| ≤ {s['edge']} px from hole", ".2e", True),
               c.Column("far_change", "|change| farther", ".2e", True),
               c.Column("outside_mse", "MSE to truth outside", ".2e", True), c.Column("psnr", "PSNR (dB)", ".2f", True)]
    notes = ["change of known pixels = Σ m (x − y)² / Σ m against the input y the solver was given (model units, "
             "[-1, 1]²; the 0–255 column multiplies by 127.5², the thesis's scale); 'A x = y kept' = every image's "
             f"change is below {EXACT:g} (float32 rounding of an exact copy). |change| near/far: mean absolute change "
             f"of the known pixels within {s['edge']} pixels of the hole and farther. MSE to truth outside: against "
             "the clean image (with σ_y > 0 a solver that keeps y exactly keeps its noise). radius: fraction of half "
             "the shorter side; strength < 1: SDEdit start from the masked input noised to that fraction of the "
             "walk."]
    table = c.write_table(rep.out, "table", "Change of the known pixels", rows, columns, notes)
    _plot(rep, rows, s)
    _heatmaps(rep, s)
    verdict = _verdict(rep, rows, s)
    setup = [f"solvers {', '.join(s['solvers'])} at {s.get('steps') or 'each paper’s'} steps (RePaint with "
             f"resampling: `solvers.make`)",
             f"centred discs of radius {', '.join(f'{r:g}' for r in s['radii'])} x half the shorter side, σ_y = 0; at "
             f"radius {s['radius']:g}: σ_y = {', '.join(f'{v:g}' for v in s['sigmas'])}; guidance "
             + "; ".join(f"{sv} {f} = {', '.join(f'{v:g}' for v in vals)}" for sv, (f, vals) in s["guidance"].items())
             + f"; SDEdit strength {', '.join(f'{v:g}' for v in s['strengths'])} for "
             f"{', '.join(s['strength_solvers'])} (from the masked input, hole = 0, noised with invdiff.noised)",
             "every condition sees the same images, noise draws and solver keys (one key per image)"]
    limits = ["The thesis measured Stable Diffusion's latent inpainting, whose VAE encode/decode round trip alone "
              "changes every pixel; these solvers work in pixel space, so an exact projection keeps the known pixels "
              "bit for bit. The comparison is about solvers, not about that pipeline.",
              f"{rep.images()} emoji images at 64 x 64 (the thesis: 20 landscape photographs up to 650 pixels).",
              f"{s.get('steps')} steps instead of each paper's (DPS: 1000); the gradient solvers' pull towards y "
              f"depends on the number of steps."]
    return c.write_summary(rep, sys.modules[__name__], setup=setup, table=table,
                           figures=[("drift.png", "Change of the known pixels against radius, guidance and strength "
                                     "(mean ± 95 % CI; exact solvers at 0)"),
                                    ("heatmaps.png", "Heat maps of |x − y| on the known pixels, radius "
                                     f"{s['radius']:g}, σ_y = 0 (hole in grey)"),
                                    ("heatmaps_strength.png", "The same against SDEdit strength, first image")],
                           verdict=verdict, limits=limits)


def _verdict(rep: c.Report, rows: list[dict], s: dict) -> c.Verdict:
    r0 = float(s["radius"])
    main = [r for r in rows if r["part"] == "radius" and r["radius"] == r0]
    exact = [r["method"] for r in main if r["exact"] == "yes"]
    drifting = [r for r in main if r["exact"] == "no"]
    reasons = [f"at radius {r0:g} and σ_y = 0, the known pixels are kept exactly by {', '.join(exact) or 'no solver'} "
               f"and changed by " + (", ".join(f"{r['method']} (MSE {c.pm(r['drift'], r['drift_ci95'], '.2e')}, "
                                                f"{r['drift_255']:.3g} on 0–255)" for r in drifting) or "none")]
    signs = []
    for r in drifting:
        sv = r["method"]
        base = rep.select(solver=sv, operator=condition_name({"radius": r0, "sigma": 0.0, "strength": 1.0}))
        edge = c.stats([{"d": x["edge_change"] - x["far_change"]} for x in base], "d")
        signs.append(c.sign(edge[0], edge[1]))
        reasons.append(f"{sv}: change near the hole minus farther {c.pm(edge[0], edge[1], '.2e')}")
        st = sorted(float(v) for v in s["strengths"])
        if sv in s["strength_solvers"] and st:
            low = rep.select(solver=sv, operator=condition_name({"radius": r0, "sigma": 0.0, "strength": st[0]}))
            d, ci, _ = c.paired(base, low, "drift")
            signs.append(c.sign(d, ci))
            reasons.append(f"{sv}: change at strength 1 minus at strength {st[0]:g}: {c.pm(d, ci, '.2e')}")
        radii = sorted(float(v) for v in s["radii"])
        if len(radii) > 1:
            big = rep.select(solver=sv, operator=condition_name({"radius": radii[-1], "sigma": 0.0, "strength": 1.0}))
            small = rep.select(solver=sv, operator=condition_name({"radius": radii[0], "sigma": 0.0, "strength": 1.0}))
            d, ci, _ = c.paired(big, small, "drift")
            reasons.append(f"{sv}: change at radius {radii[-1]:g} minus at {radii[0]:g}: {c.pm(d, ci, '.2e')} "
                           f"(the thesis: no significant effect)")
    for sv, (field, _) in s["guidance"].items():
        gr = sorted((r for r in rows if r["part"] == "guidance" and r["method"].startswith(sv + "-")),
                    key=lambda r: r["method"])
        default = next((r for r in main if r["method"] == sv), None)
        if gr:
            reasons.append(f"{sv} by {field}: " + ", ".join(f"{r['method'].split('-', 1)[1]}: {r['drift']:.2e}"
                                                           for r in gr)
                           + ("" if default is None else f" (default {field}: {default['drift']:.2e})"))
    noisy = [r for r in rows if r["part"] == "noise"]
    if noisy:
        reasons.append("with σ_y > 0, kept exactly: " + (", ".join(f"{r['method']} (σ_y {r['sigma']:g})" for r in noisy
                                                                    if r["exact"] == "yes") or "none")
                       + "; changed: " + (", ".join(f"{r['method']} {r['drift']:.2e}" for r in noisy
                                                    if r["exact"] == "no") or "none"))
    if not drifting:
        word, line = "contradicts", "no solver here changes the known pixels: exact projection keeps them"
    elif not exact:
        word = "supports" if all(v >= 0 for v in signs) else "mixed"
        line = "every solver changes the known pixels"
    else:
        word = "partly supports"
        line = (f"drift is a property of the solver, not of diffusion inpainting: {', '.join(exact)} keep the known "
                f"pixels exactly; {', '.join(r['method'] for r in drifting)} change them"
                + (", most near the hole and more at full strength" if signs and all(v > 0 for v in signs) else ""))
    return c.Verdict(word, line + ".", tuple(reasons))


def _plot(rep: c.Report, rows: list[dict], s: dict) -> None:
    def series_for(part: str, xkey: str, methods: list[str]) -> list[dict]:
        out = []
        for mth in methods:
            rr = sorted((r for r in rows if r["part"] == part and r["method"] == mth), key=lambda r: r[xkey])
            if rr:
                out.append({"x": [r[xkey] for r in rr], "y": [r["drift"] for r in rr],
                            "err": [r["drift_ci95"] for r in rr], "label": mth, "style": "o-"})
        return out

    panels = [{"xlabel": "radius (fraction of half the shorter side)", "ylabel": "change of known pixels (MSE)",
               "series": series_for("radius", "radius", list(s["solvers"])), "ylog": True}]
    gseries = []
    for sv, (field, _) in s["guidance"].items():
        rr = [r for r in rows if r["part"] == "guidance" and r["method"].startswith(sv + "-")]
        default = [r for r in rows if r["part"] == "radius" and r["method"] == sv and r["radius"] == float(s["radius"])]
        import solvers

        dv = float(np.asarray(getattr(solvers.get(sv)(), field)))
        pts = sorted([(r["drift"], r["drift_ci95"], float(r["method"].split(field, 1)[1])) for r in rr]
                     + [(r["drift"], r["drift_ci95"], dv) for r in default], key=lambda p: p[2])
        if pts:
            gseries.append({"x": [p[2] for p in pts], "y": [p[0] for p in pts], "err": [p[1] for p in pts],
                            "label": f"{sv} {field}", "style": "o-"})
    panels.append({"xlabel": "guidance strength (the solver's step size)", "ylabel": "change of known pixels (MSE)",
                   "series": gseries, "xlog": True, "ylog": True})
    sseries = []
    for sv in s["strength_solvers"]:
        rr = sorted([r for r in rows if r["method"] == sv and r["radius"] == float(s["radius"]) and r["sigma"] == 0
                     and r["part"] in ("strength", "radius")], key=lambda r: r["strength"])
        if rr:
            sseries.append({"x": [r["strength"] for r in rr], "y": [r["drift"] for r in rr],
                            "err": [r["drift_ci95"] for r in rr], "label": sv, "style": "o-"})
    panels.append({"xlabel": "SDEdit strength", "ylabel": "change of known pixels (MSE)", "series": sseries,
                   "ylog": True})
    c.line_plot(rep.out / "drift.png", f"Change of the known pixels ({rep.images()} images; log axis, solvers that "
                "keep A x = y on the floor)", panels, width=14.0)


def _change(rep: c.Report, method: str, operator: str, image: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    x = c.load_png(rep.out, method, operator, image)
    y = c.load_png(rep.out, "measurement", operator, image)
    if x is None or y is None:
        return None, None
    r0 = float(operator.split("circle", 1)[1].split("-")[0])
    hole = circle_mask((1,) + x.shape, r0)[0, ..., 0] < 0.5
    return x, np.where(hole, np.nan, np.abs(x - y).mean(axis=-1))


def _heatmaps(rep: c.Report, s: dict) -> None:
    import matplotlib

    from invdiff.bench.report import figure, save_figure

    ids = [r["image"] for r in sorted(rep.select(part="radius"), key=lambda r: r["index"])
           if r["index"] < c.SAVED_IMAGES]
    ids = list(dict.fromkeys(ids))
    if not ids:
        return
    main = condition_name({"radius": float(s["radius"]), "sigma": 0.0, "strength": 1.0})
    cells_ = [[_change(rep, sv, main, i) for i in ids] for sv in s["solvers"]]
    strengths = sorted(float(v) for v in s["strengths"]) + [1.0]
    scells = [[_change(rep, sv, condition_name({"radius": float(s["radius"]), "sigma": 0.0, "strength": st}), ids[0])
               for st in strengths] for sv in s["strength_solvers"]]
    maps = [m for row in cells_ + scells for (_, m) in row if m is not None]
    if not maps:  # no saved images (e.g. a checkout without images/): keep the heat maps there are
        return
    vmax = max(float(np.nanpercentile(np.concatenate([m[np.isfinite(m)] for m in maps]), 99.5)) if maps else 1.0,
               2.0 / 255)
    for path, grid, labels, cols in (
            (rep.out / "heatmaps.png", cells_, list(s["solvers"]), [f"{i}" for i in ids]),
            (rep.out / "heatmaps_strength.png", scells, list(s["strength_solvers"]),
             [f"strength {v:g}" for v in strengths])):
        if not grid:
            continue
        ncol = len(grid[0])
        fig = figure(2.0 * 2 * ncol + 0.8, 1.9 * len(grid) + 0.7)
        axes = np.asarray(fig.subplots(len(grid), 2 * ncol, squeeze=False))
        im = None
        for a, row in enumerate(grid):
            for b, (x, m) in enumerate(row):
                ax_img, ax_map = axes[a, 2 * b], axes[a, 2 * b + 1]
                if x is not None:
                    ax_img.imshow(np.clip((x + 1) / 2, 0, 1))
                    cmap = matplotlib.colormaps["magma"].with_extremes(bad="lightgrey")
                    im = ax_map.imshow(m, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
                if a == 0:
                    ax_img.set_title(cols[b][:18], fontsize=7)
                    ax_map.set_title("|x − y| known", fontsize=7)
            axes[a, 0].set_ylabel(labels[a], fontsize=8)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        if im is not None:
            fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.8, label="mean |change| (model units)")
        fig.suptitle(f"Change of the known pixels (radius {s['radius']:g}; colour scale 0–{vmax:.3f}, 1/255 = "
                     f"{2 / 255:.4f})", fontsize=9)
        save_figure(fig, path)
