"""Quality of the bundled ``emoji64`` model on the held-out validation split.

    python benchmarks/emoji64_quality.py --val ../shared/datasets/emoji64_val.npz \\
        --train ../shared/datasets/emoji64_train.npz [--model emoji64] [--tag v2] \\
        [--baseline benchmarks/results/emoji64_quality_v1.json] [--out benchmarks/results]

Writes ``emoji64_quality_<tag>.md`` / ``.json``, ``emoji64_samples_<tag>.png`` and
``emoji64_inpainting_<tag>.png`` into ``--out``. The JSON is rewritten after every part, and
``--parts`` runs a subset (the others are kept from an earlier JSON of the same tag), so a
long CPU run can be done in pieces. Modes: ``cond`` (each image's true class), ``uncond``
(the null class; models with one), ``guided`` (classifier-free guidance, ``invdiff.guided``,
weight ``--guidance-w``, or chosen by ``--w-sweep`` on other validation images).

1. x0-prediction error (part ``x0``): the MSE of x̂0(x_t) against the clean validation image
   at several noise levels, on every validation image, next to the optimal
   *independent-pixel Gaussian* denoiser fitted on the training split (per-pixel,
   per-channel mean and variance; its x̂0 is the Wiener estimate
   μ + σ²√ᾱ (x_t − √ᾱ μ) / (ᾱ σ² + 1 − ᾱ)). Same x_t for both and for every model.
2. Samples (part ``samples``): DDPM ancestral sampling with the learned variance,
   class-conditional (one row per category) and unconditional.
3. Inpainting (part ``inpaint``): PSNR / SSIM of the whole image and PSNR of the hole, for
   the box, half and thick masks, DDNM and RePaint, in each mode.

``--baseline`` adds the baseline model's figures (same settings) to the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import invdiff
from invdiff import metrics
from invdiff.images import grid, save_image, to_model

NOISE_LEVELS = (10, 50, 100, 250, 500, 600, 700, 750, 800, 900)
MASKS = ("box", "half", "thick")
MODES = ("cond", "uncond", "guided")


def x0_row(model, modes, t: int, x0: np.ndarray, labels: np.ndarray, mu: np.ndarray, var: np.ndarray, key,
           batch: int = 107) -> dict:
    """The x0-prediction errors at timestep t on all of ``x0`` (one row of the table)."""
    a = float(model.schedule.alphas_cumprod[t])
    f = jax.jit(lambda m, x, t, lab: m.eps(x, t, lab))
    errs = {m: [] for m in modes}
    errs_gauss, errs_id = [], []
    for i in range(0, len(x0), batch):
        xb, lb = x0[i:i + batch], labels[i:i + batch]
        z = np.asarray(jax.random.normal(jax.random.fold_in(key, t * 100000 + i), xb.shape))
        xt = np.sqrt(a) * xb + np.sqrt(1 - a) * z
        tt = jnp.full((len(xb),), t, jnp.int32)
        for m in modes:
            eps = np.asarray(f(model, jnp.asarray(xt), tt, None if m == "uncond" else jnp.asarray(lb)))
            x0_net = (xt - np.sqrt(1 - a) * eps) / np.sqrt(a)
            errs[m].append(((np.clip(x0_net, -1, 1) - xb) ** 2).mean(axis=(1, 2, 3)))
        x0_gauss = mu + var * np.sqrt(a) * (xt - np.sqrt(a) * mu) / (a * var + 1 - a)
        errs_gauss.append(((np.clip(x0_gauss, -1, 1) - xb) ** 2).mean(axis=(1, 2, 3)))
        errs_id.append(((np.clip(xt / np.sqrt(a), -1, 1) - xb) ** 2).mean(axis=(1, 2, 3)))
    row = dict(t=t, abar=a, snr_db=10 * np.log10(a / (1 - a)),
               mse_gaussian=float(np.concatenate(errs_gauss).mean()),
               mse_rescaled_input=float(np.concatenate(errs_id).mean()))
    row.update({f"mse_{m}": float(np.concatenate(errs[m]).mean()) for m in modes})
    print(f"t={t}: " + "  ".join(f"{m} {row[f'mse_{m}']:.4f}" for m in modes)
          + f"  gaussian {row['mse_gaussian']:.4f}", flush=True)
    return row


def hole_psnr(x, ref, mask) -> np.ndarray:
    """PSNR over the missing pixels only (data range 2)."""
    miss = 1.0 - np.broadcast_to(np.asarray(mask, np.float32)[..., None], np.shape(x))
    mse = (((np.asarray(x) - np.asarray(ref)) ** 2) * miss).sum(axis=(1, 2, 3)) / miss.sum(axis=(1, 2, 3))
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def inpaint_one(model, solver, mode, w, mask, x, lab, key):
    from operators import Inpainting

    op = Inpainting(mask)
    y = op.A(x)
    net = invdiff.guided(model, w) if mode == "guided" else model
    s = invdiff.solve(solver, net, op, y, key=key, label=None if mode == "uncond" else lab)
    xr = np.clip(np.asarray(s.x), -1, 1)
    return xr, dict(psnr=float(metrics.psnr(jnp.asarray(xr), x).mean()),
                    ssim=float(metrics.ssim(jnp.asarray(xr), x).mean()),
                    psnr_hole=float(hole_psnr(xr, x, mask).mean()), nfe=int(s.nfe),
                    psnr_masked_baseline=float(metrics.psnr(op.pinv(y), x).mean()))


def parse_solver(name: str, a):
    from solvers import DDNM, RePaint

    if name == "DDNM":
        return DDNM(steps=a.ddnm_steps)
    st, jl, jn = (int(v) for v in a.repaint.split("/"))
    return RePaint(steps=st, jump_length=jl, jump_n_sample=jn)


class Store:
    """The JSON of one tag, updated row by row under a file lock, so parts can run in several
    processes at once and a killed run resumes where it stopped."""

    def __init__(self, path: Path):
        self.path = path

    def update(self, fn) -> dict:
        import fcntl

        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            d = json.loads(self.path.read_text()) if self.path.exists() else {}
            fn(d)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(d, indent=2) + "\n")
            tmp.replace(self.path)
            return d

    def read(self) -> dict:
        return self.update(lambda d: None)

    def put_row(self, section: str, row: dict, key: tuple[str, ...]) -> dict:
        def fn(d):
            rows = [r for r in d.setdefault(section, []) if tuple(r[k] for k in key) != tuple(row[k] for k in key)]
            d[section] = rows + [row]
        return self.update(fn)

    def has_row(self, section: str, match: dict) -> bool:
        return any(all(r.get(k) == v for k, v in match.items()) for r in self.read().get(section, []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--model", default="emoji64")
    p.add_argument("--tag", default="v2", help="file name suffix: emoji64_quality_<tag>.md")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--parts", default="x0,samples,inpaint")
    p.add_argument("--levels", default=",".join(map(str, NOISE_LEVELS)), help="x0 part: the timesteps")
    p.add_argument("--masks", default=",".join(MASKS), help="inpaint part: the mask families")
    p.add_argument("--redo", action="store_true", help="recompute rows that the JSON already has")
    p.add_argument("--baseline", help="a JSON of this script for another model, shown next to this one")
    p.add_argument("--samples-per-class", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--inpaint-images", type=int, default=32)
    p.add_argument("--ddnm-steps", type=int, default=25)
    p.add_argument("--repaint", default="25/5/2", help="RePaint steps/jump_length/jump_n_sample")
    p.add_argument("--guidance-w", type=float, default=None, help="guidance weight (default: --w-sweep)")
    p.add_argument("--w-sweep", default="0.5,1,2,4",
                   help="weights tried with DDNM on the box mask of --w-images other validation images")
    p.add_argument("--w-images", type=int, default=16)
    p.add_argument("--val-images", type=int, default=None, help="use only the first N (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from operators import Inpainting, masks
    from solvers import DDPM

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / f"emoji64_quality_{a.tag}.json")
    examples = out / f".emoji64_{a.tag}_examples"
    model = invdiff.load_model(a.model)
    has_null = getattr(model, "null_label", None) is not None
    modes = MODES if has_null else ("cond",)
    key = jax.random.key(a.seed)
    with np.load(a.train) as d:
        train = to_model(d["images"])
    with np.load(a.val) as d:
        val, vlab, cats = to_model(d["images"]), d["labels"].astype(np.int32), [str(c) for c in d["categories"]]
    val, vlab = val[:a.val_images], vlab[:a.val_images]
    mu, var = train.mean(axis=0), train.var(axis=0) + 1e-6
    parts = a.parts.split(",")
    meta = {"model": a.model, "config": model.config.to_flags(), "machine": platform.platform(),
            "jax": jax.__version__, "device": str(jax.devices()[0].device_kind), "validation_images": len(val),
            "parameters": int(sum(np.size(v) for v in jax.tree.leaves(model.params)))}
    store.update(lambda d: d.update(meta))

    def add_seconds(part: str, sec: float) -> None:
        store.update(lambda d: d.setdefault("seconds", {}).update({part: d.get("seconds", {}).get(part, 0) + sec}))

    if "x0" in parts:
        for t in (int(v) for v in a.levels.split(",")):
            if not a.redo and store.has_row("x0_prediction", {"t": t}):
                continue
            t0 = time.time()
            store.put_row("x0_prediction", x0_row(model, [m for m in modes if m != "guided"], t, val, vlab, mu, var,
                                                  key), ("t",))
            add_seconds("x0", time.time() - t0)

    if "samples" in parts and (a.redo or "samples" not in store.read()):
        t0 = time.time()
        n = a.samples_per_class
        dummy = Inpainting(jnp.zeros((64, 64, 1)))
        labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), n)
        rows, names = [], []
        for mode in [m for m in modes if m != "guided"]:
            sol = invdiff.solve(DDPM(steps=a.sample_steps), model, dummy, jnp.zeros((10 * n, 64, 64, 3)),
                                key=jax.random.fold_in(key, 1), label=labels if mode == "cond" else None)
            imgs = np.asarray(sol.x).reshape(10, n, 64, 64, 3)
            if mode == "cond":
                rows += [list(r) for r in imgs]
                names += [c[:16] for c in cats]
            else:  # 10 * n unconditional samples, as n rows of 10
                rows += [list(r) for r in imgs.transpose(1, 0, 2, 3, 4)]
                names += ["unconditional"] * n
        save_image(out / f"emoji64_samples_{a.tag}.png", grid(rows, names))
        samples = {"sampler": f"DDPM, {a.sample_steps} respaced steps, learned variance",
                   "per_class": n, "unconditional": 10 * n if has_null else 0, "file": f"emoji64_samples_{a.tag}.png"}
        store.update(lambda d: d.update(samples=samples))
        add_seconds("samples", time.time() - t0)

    if "inpaint" in parts:
        rng = np.random.default_rng(a.seed)
        perm = rng.permutation(len(val))
        idx, idx_w = perm[:a.inpaint_images], perm[a.inpaint_images:a.inpaint_images + a.w_images]
        fam_masks = {f: masks.by_name(f, jax.random.fold_in(key, 2), 64, 64) for f in MASKS}
        settings = dict(images=a.inpaint_images, ddnm_steps=a.ddnm_steps, repaint=a.repaint)
        known = store.read().get("inpainting_settings")
        if known is not None and known != settings:
            raise SystemExit(f"{store.path} holds inpainting rows for {known}; use another --tag or the same settings")
        store.update(lambda d: d.update(inpainting_settings=settings))
        w = a.guidance_w if a.guidance_w is not None else store.read().get("guidance_w")
        if a.guidance_w is not None:
            store.update(lambda d: d.update(guidance_w=w))  # given, not swept: the report says which
        if "guided" in modes and w is None:  # pick w on other images: DDNM, box mask
            t0 = time.time()
            sweep = []
            for wi in (float(v) for v in a.w_sweep.split(",")):
                _, r = inpaint_one(model, parse_solver("DDNM", a), "guided", wi, fam_masks["box"],
                                   jnp.asarray(val[idx_w]), jnp.asarray(vlab[idx_w]), jax.random.fold_in(key, 4))
                sweep.append(dict(w=wi, **r))
                print("w sweep", sweep[-1], flush=True)
            w = max(sweep, key=lambda r: r["psnr"])["w"]
            gs = dict(images=len(idx_w), solver="DDNM", mask="box", rows=sweep, chosen=w)
            store.update(lambda d: d.update(guidance_sweep=gs, guidance_w=w))
            add_seconds("inpaint", time.time() - t0)
        x, lab = jnp.asarray(val[idx]), jnp.asarray(vlab[idx])
        examples.mkdir(exist_ok=True)
        for fam in a.masks.split(","):
            m = fam_masks[fam]
            np.save(examples / f"{fam}_input.npy", np.asarray(Inpainting(m).pinv(Inpainting(m).A(x)))[:4])
            for sname in ("DDNM", "RePaint"):
                solver = parse_solver(sname, a)
                for mode in modes:
                    if not a.redo and store.has_row("inpainting", {"mask": fam, "solver": sname, "mode": mode}):
                        continue
                    t0 = time.time()
                    xr, r = inpaint_one(model, solver, mode, w, m, x, lab, jax.random.fold_in(key, 3))
                    row = dict(mask=fam, solver=sname, mode=mode, steps=solver.steps, **r)
                    if mode == "guided":
                        row["w"] = w
                    store.put_row("inpainting", row, ("mask", "solver", "mode"))
                    add_seconds("inpaint", time.time() - t0)
                    print(row, flush=True)
                    if sname == "DDNM":
                        np.save(examples / f"{fam}_{mode}.npy", xr[:4])
        show, show_names = [], []
        for fam in MASKS:
            for name in ("input",) + modes:
                f = examples / f"{fam}_{name}.npy"
                if f.exists():
                    show.append(list(np.load(f)))
                    show_names.append(f"{fam}: " + ("input" if name == "input" else f"DDNM {name}"))
        save_image(out / f"emoji64_inpainting_{a.tag}.png", grid(show, show_names))
    write_markdown(store.read(), a, out, json.loads(Path(a.baseline).read_text()) if a.baseline else None)


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def write_markdown(report: dict, a, out: Path, base: dict | None) -> None:
    bname = f"`{base['model']}` (baseline)" if base else ""
    md = ["# emoji64: quality on the held-out validation split", "",
          f"Model `{report['model']}` ({report['parameters'] / 1e6:.2f}M parameters); {report['validation_images']} "
          f"validation images (never trained on); {report['device']}, jax {report['jax']}, {report['machine']} "
          f"(the machine may have been shared: seconds are indicative). Seconds per part: "
          + ", ".join(f"{k} {v:.0f}" for k, v in report.get("seconds", {}).items()) + ".", ""]
    if "x0_prediction" in report:
        brows = {r["t"]: r for r in base.get("x0_prediction", [])} if base else {}
        md += ["## x0-prediction error (MSE in [-1, 1] units, x̂0 clipped to [-1, 1], all validation images)", "",
               "cond: each image's true class; uncond: the null class." + (f" Baseline: {bname}." if base else ""), "",
               "| t | ᾱ_t | SNR (dB) | " + ("baseline cond | " if base else "") + "cond | uncond | "
               "independent-pixel Gaussian | x_t/√ᾱ_t |", "|---|---|---|---|---|---|---|" + ("---|" if base else "")]
        for r in sorted(report["x0_prediction"], key=lambda r: r["t"]):
            br = brows.get(r["t"], {})
            b = f"{_fmt(br.get('mse_cond', br.get('mse_model')))} | " if base else ""
            md.append(f"| {r['t']} | {r['abar']:.4f} | {r['snr_db']:.1f} | {b}{_fmt(r.get('mse_cond'))} | "
                      f"{_fmt(r.get('mse_uncond'))} | {r['mse_gaussian']:.4f} | {r['mse_rescaled_input']:.4f} |")
    if "inpainting" in report:
        inp = {**report["inpainting_settings"], "rows": sorted(
            report["inpainting"], key=lambda r: (MASKS.index(r["mask"]), r["solver"], MODES.index(r["mode"])))}
        brows = {(r["mask"], r["solver"], r["mode"]): r for r in base["inpainting"]} \
            if base and "inpainting" in base else {}
        md += ["", f"## Inpainting ({inp['images']} validation images; DDNM {inp['ddnm_steps']} steps, RePaint "
               f"{inp['repaint']} (steps/jump length/jump samples); guided: w = {report.get('guidance_w')})", "",
               "PSNR / SSIM of the whole image, PSNR of the hole alone; same images, masks and keys for every row."
               + (f" Baseline: {bname}, class-conditional." if brows else ""), "",
               "| mask | solver | mode | NFE | PSNR | SSIM | hole PSNR | "
               + ("baseline PSNR / SSIM / hole | " if brows else "") + "masked input PSNR |",
               "|---|---|---|---|---|---|---|---|" + ("---|" if brows else "")]
        for r in inp["rows"]:
            b = brows.get((r["mask"], r["solver"], "cond")) if brows else None
            bs = (f"{b['psnr']:.2f} / {b['ssim']:.3f} / {b['psnr_hole']:.2f} | " if b else "– | ") if brows else ""
            md.append(f"| {r['mask']} | {r['solver']} | {r['mode']} | {r['nfe']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                      f"{r['psnr_hole']:.2f} | {bs}{r['psnr_masked_baseline']:.2f} |")
        if "guidance_sweep" in report:
            gs = report["guidance_sweep"]
            md += ["", f"Guidance weight chosen by DDNM box-inpainting PSNR on {gs['images']} other validation images: "
                   + ", ".join(f"w = {r['w']:g}: {r['psnr']:.2f} dB" for r in gs["rows"]) + f" → w = {gs['chosen']:g}."]
    if "samples" in report:
        md += ["", f"Samples: `{report['samples']['file']}` ({report['samples']['sampler']}; one row per category, "
               "then the unconditional samples if the model has a null class). Inpainting examples: "
               f"`emoji64_inpainting_{a.tag}.png`.", ""]
    (out / f"emoji64_quality_{a.tag}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / f'emoji64_quality_{a.tag}.md'}")


if __name__ == "__main__":
    main()
