"""``labels``: one masked input completed under every class label.

For each image the same masked input is inpainted under every class of a class-conditional
model (and unconditionally, through the null class, when the model has one), with
``seeds`` seeds; the seeds are shared across labels (common random numbers), so two
completions with the same seed differ only by their label. The study compares how much the
hole changes from label to label (same seed) with how much it changes from seed to seed
(same label), and the fidelity under the true label with that under the others.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from invdiff.bench import cells
from invdiff.studies import common as c

NAME = "labels"
SEED = "000 — *Inpainting with denoising diffusion probabilistic models* (the RePaint study), §6"
CLAIM = """> "To address the issue of inconsistent inpainted samples, we also tested class-conditioned inpainting (CCI)
> using the 256COND model and the *seashore* Imagenet category […]. Without CCI, the inpainted image's
> unmasked region varied between depicting water, sky, or white surfaces. With CCI, the unmasked region
> consistently depicted either foam or water." (000, §6: RePaint, square mask, one image, judged by eye)

That is: the class label steers what fills the hole — completions under one label agree with each other
more than completions under different labels do."""

SCALES: dict[str, dict[str, Any]] = {
    "cpu": {"images": 3, "batch": 1, "steps": 20, "solver": "repaint", "operator": "inpaint-box", "seeds": 3},
    "paper": {"images": 10, "batch": 1, "steps": 250, "solver": "repaint", "operator": "inpaint-box", "seeds": 5},
}
OUTPUTS = ["table.md", "table.csv", "table.json", "table_labels.md", "table_labels.csv", "table_labels.json",
           "grid.png"]
UNCONDITIONAL = "unconditional"


def classes(model: Any) -> list[int | None]:
    """The labels every image is completed under: each class, then None (the null class) when the model has one."""
    null = getattr(model, "null_label", None)
    n = int(model.config.num_classes)
    return [k for k in range(n) if k != null] + ([None] if null is not None else [])


def label_name(k: int | None) -> str:
    return UNCONDITIONAL if k is None else f"label-{k}"


def check(model: Any, images: Any, labels: Any, settings: dict) -> None:
    from invdiff.bench.models import is_conditional
    from operators import named

    if not is_conditional(model) or getattr(getattr(model, "config", None), "num_classes", None) is None:
        raise ValueError("the labels study completes an image under every class: it needs a class-conditional ADM "
                         "network (class_cond=True), got " + type(model).__name__)
    if not str(settings["operator"]).startswith("inpaint"):
        raise ValueError(f"the labels study inpaints: operator must be an inpaint-<mask> name, got "
                         f"{settings['operator']!r}")
    named.make(settings["operator"], (1,) + tuple(images.shape), 0)
    if int(settings["seeds"]) < 2:
        raise ValueError("seeds must be at least 2 (the spread between seeds needs two)")


def run(ctx: c.Context) -> None:
    import jax.numpy as jnp

    import solvers

    s = ctx.settings
    ks = classes(ctx.model)
    null = getattr(ctx.model, "null_label", None)
    solver = solvers.make(s["solver"], int(s["steps"]))
    name, op_name, n_seeds = s["solver"], s["operator"], int(s["seeds"])
    for i in range(len(ctx.images)):
        ops = [label_name(k) for k in ks] + ["labels-vs-seeds"]
        if not any(ctx.missing(name, o, [i]) for o in ops):
            continue
        x1 = ctx.images.read([i])
        x = np.repeat(x1, len(ks), axis=0)
        m = cells.measure(op_name, x, [ctx.images.ids[i]] * len(ks), ctx.seed)  # one mask and key for all rows
        lab = jnp.asarray([null if k is None else k for k in ks], jnp.int32)
        hole = c.hole_of(m.deg.mask, x.shape)
        t0 = time.perf_counter()
        outs = []
        for j in range(n_seeds):
            xr, nfe, _ = cells.solve_each(solver, ctx.model, m.deg.op, m.y, c.fold(m.keys, j), label=lab)
            outs.append(np.clip(np.asarray(xr), -1, 1))
        seconds = (time.perf_counter() - t0) / (len(ks) * n_seeds)
        outs = np.stack(outs)  # (seeds, labels, H, W, C)
        ctx.save_png("truth", op_name, i, x1[0])
        ctx.save_png("measurement", op_name, i, np.asarray(m.pinv_y[0]))
        results = []
        q = [c.quality(outs[j], x, m.deg, m.y, None) for j in range(n_seeds)]
        per_label_spread = c.spread(outs, hole)  # (labels,): std across seeds under each label
        for a, k in enumerate(ks):
            for j in range(n_seeds):
                ctx.save_png(f"{name}-s{j}", label_name(k), i, outs[j, a])
            results.append({**ctx.base(name, label_name(k), i), "class": k, "true_class": k is not None and ctx.labels
                            is not None and k == int(ctx.labels[i]), "nfe": nfe, "seconds": seconds,
                            "seed_spread": float(per_label_spread[a]),
                            **{key: float(np.mean([qq[key][a] for qq in q])) for key in ("psnr", "ssim", "seam")}})
        cond = [a for a, k in enumerate(ks) if k is not None]
        h1 = hole[:1]
        d_label = np.mean([c.hole_rms(outs[j, a:a + 1], outs[j, b:b + 1], h1)[0]
                           for j in range(n_seeds) for a in cond for b in cond if a < b])
        d_seed = np.mean([c.hole_rms(outs[j, a:a + 1], outs[jj, a:a + 1], h1)[0]
                          for a in cond for j in range(n_seeds) for jj in range(n_seeds) if j < jj])
        summary = {"d_label": float(d_label), "d_seed": float(d_seed), "ratio": float(d_label / d_seed)}
        if ctx.labels is not None:
            true = int(ctx.labels[i])
            psnr = {r["class"]: r["psnr"] for r in results}
            if true in psnr:
                summary["true_gain"] = psnr[true] - float(np.mean([v for k, v in psnr.items()
                                                                    if k is not None and k != true]))
                summary["true_psnr"] = psnr[true]
            if null is not None and true in psnr:
                spread = {r["class"]: r["seed_spread"] for r in results}
                summary["uncond_minus_true_spread"] = spread[None] - spread[true]
        if ctx.lpips is not None:
            def lp(a: np.ndarray, b: np.ndarray) -> float:
                return float(np.asarray(ctx.lpips(jnp.asarray(a), jnp.asarray(b)))[0])

            summary["lpips_label"] = float(np.mean([lp(outs[j, a:a + 1], outs[j, b:b + 1])
                                                    for j in range(n_seeds) for a in cond for b in cond if a < b]))
            summary["lpips_seed"] = float(np.mean([lp(outs[j, a:a + 1], outs[jj, a:a + 1]) for a in cond
                                                   for j in range(n_seeds) for jj in range(n_seeds) if j < jj]))
        results.append({**ctx.base(name, "labels-vs-seeds", i), "seconds": seconds, **summary})
        ctx.save(results)


def category_names(rep: c.Report) -> dict[int, str]:
    """Class names of the bundled model (its data set's categories), else none."""
    if rep.config["model"].get("model") != "emoji64":
        return {}
    import io
    from importlib.resources import files

    with np.load(io.BytesIO(files("invdiff").joinpath("assets/emoji64/val_samples.npz").read_bytes())) as d:
        return {k: str(v) for k, v in enumerate(d["categories"])} if "categories" in d.files else {}


def report(rep: c.Report) -> c.Verdict:
    s = rep.settings
    names = category_names(rep)
    summ = rep.select(operator="labels-vs-seeds")
    keys = ["d_label", "d_seed", "ratio", "true_gain", "true_psnr", "uncond_minus_true_spread", "lpips_label",
            "lpips_seed"]
    present = [k for k in keys if any(k in r for r in summ)]
    row = c.add_stats({"what": "all images"}, summ, present)
    per_image = [c.add_stats({"what": r["image"]}, [r], present) for r in summ]
    cols = [c.Column("what", "images"), c.Column("n", "n", "d"),
            c.Column("d_label", "hole RMS between labels (same seed)", ".3f", True),
            c.Column("d_seed", "hole RMS between seeds (same label)", ".3f", True),
            c.Column("ratio", "ratio", ".2f", True)]
    if "true_gain" in present:
        cols += [c.Column("true_psnr", "PSNR, true label", ".2f", True),
                 c.Column("true_gain", "PSNR true − other labels", ".2f", True)]
    if "uncond_minus_true_spread" in present:
        cols.append(c.Column("uncond_minus_true_spread", "seed spread: unconditional − true label", ".3f", True))
    if "lpips_label" in present:
        cols += [c.Column("lpips_label", "LPIPS between labels", ".3f", True),
                 c.Column("lpips_seed", "LPIPS between seeds", ".3f", True)]
    notes = [f"Every image inpainted under each label with {s['seeds']} seeds shared across labels. hole RMS between "
             "labels: root-mean-square difference in the hole between two completions with the same seed and different "
             "labels, averaged over label pairs and seeds; between seeds: same label, different seeds; "
             "ratio = the first "
             "over the second, per image. PSNR true − other: PSNR (whole image) under the image's own label minus the "
             "mean over the other labels."]
    table = c.write_table(rep.out, "table", "Label against seed", [row] + per_image, cols, notes)
    lrows = []
    for k in sorted({r["class"] for r in rep.results if "class" in r}, key=lambda v: (v is None, v)):
        rs = rep.select(operator=label_name(k))
        lrows.append(c.add_stats({"label": UNCONDITIONAL if k is None else f"{k} {names.get(k, '')}".strip()}, rs,
                                 ["psnr", "ssim", "seam", "seed_spread"]))
    c.write_table(rep.out, "table_labels", "Completions per label", lrows,
                  [c.Column("label", "label"), c.Column("n", "n", "d"), c.Column("psnr", "PSNR (dB)", ".2f", True),
                   c.Column("ssim", "SSIM", ".3f", True), c.Column("seam", "seam error", ".3f", True),
                   c.Column("seed_spread", "seed spread (std in hole)", ".3f", True)])
    _grid(rep, names)
    verdict = _verdict(row, present)
    setup = [f"{s['solver']} (`solvers.make`, {s['steps']} steps) on `{s['operator']}`; every class label"
             + (" and the null class" if any(r.get("class", 0) is None for r in rep.results) else "")
             + f"; {s['seeds']} seeds per label, shared across labels"]
    limits = ["emoji64's classes are the 10 Unicode emoji categories, broad groups of shapes rather than ImageNet "
              "classes; the model's label embedding was trained on 6782 images.",
              f"{rep.images()} images: the ratio's CI is wide; each image contributes many label and seed pairs.",
              "The hole RMS compares pixels; two different but equally plausible fills count as far apart. The seed "
              "judged consistency by eye."]
    return c.write_summary(rep, sys.modules[__name__], setup=setup, table=table,
                           figures=[("grid.png", "First image under every label (rows) and seed (columns)")],
                           verdict=verdict, limits=limits)


def _verdict(row: dict, present: list[str]) -> c.Verdict:
    ratio, ci = row["ratio"], row["ratio_ci95"]
    d = c.sign(ratio - 1.0, ci)
    reasons = [f"hole RMS between labels {c.pm(row['d_label'], row['d_label_ci95'], '.3f')}, between seeds "
               f"{c.pm(row['d_seed'], row['d_seed_ci95'], '.3f')}; ratio {c.pm(ratio, ci, '.2f')} ({row['n']} images)"]
    if "true_gain" in present:
        reasons.append(f"PSNR under the true label minus under the others: "
                       f"{c.pm(row['true_gain'], row['true_gain_ci95'], '.2f')} dB")
    if "uncond_minus_true_spread" in present:
        reasons.append("seed spread unconditional minus under the true label: "
                       f"{c.pm(row['uncond_minus_true_spread'], row['uncond_minus_true_spread_ci95'], '.3f')}")
    word = {1: "supports", -1: "contradicts"}.get(d, "inconclusive at this scale")
    line = {1: "the label changes the hole more than the seed does",
            -1: "the seed changes the hole more than the label does: the label barely steers the fill"}.get(
        d, "the label and the seed change the hole by amounts the 95 % CI cannot tell apart")
    return c.Verdict(word, f"{line} (ratio {c.pm(ratio, ci, '.2f')}).", tuple(reasons))


def _grid(rep: c.Report, names: dict[int, str]) -> None:
    first = rep.select(index=0, operator="labels-vs-seeds")
    if not first:
        return
    image, s = first[0]["image"], rep.settings
    op = s["operator"]
    ks = sorted({r["class"] for r in rep.results if "class" in r}, key=lambda v: (v is None, v))
    rows = [[c.load_png(rep.out, "truth", op, image), c.load_png(rep.out, "measurement", op, image)]
            + [None] * (int(s["seeds"]) - 2)]
    labels = ["truth, input"]
    for k in ks:
        rows.append([c.load_png(rep.out, f"{s['solver']}-s{j}", label_name(k), image) for j in range(int(s["seeds"]))])
        labels.append(UNCONDITIONAL if k is None else f"{k} {names.get(k, '')}"[:16])
    c.image_grid(rep.out / "grid.png", rows, labels, [f"seed {j}" for j in range(int(s["seeds"]))])
