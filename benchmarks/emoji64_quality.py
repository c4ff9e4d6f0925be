"""Quality of the bundled ``emoji64`` model on the held-out validation split.

    python benchmarks/emoji64_quality.py --val ../shared/datasets/emoji64_val.npz \\
        --train ../shared/datasets/emoji64_train.npz [--model emoji64] [--out benchmarks/results]

Writes ``emoji64_quality.md`` / ``.json``, ``emoji64_samples.png`` (class-conditional samples,
one row per category) and ``emoji64_inpainting.png`` into ``--out``:

1. x0-prediction error: the mean squared error of x̂0(x_t) against the clean validation image
   at several noise levels, next to the optimal *independent-pixel Gaussian* denoiser fitted
   on the training split (per-pixel, per-channel mean and variance; its x̂0 is the Wiener
   estimate μ + σ²√ᾱ (x_t − √ᾱ μ) / (ᾱ σ² + 1 − ᾱ)). Same x_t for both.
2. Class-conditional samples: DDPM ancestral sampling with the learned variance.
3. Inpainting PSNR/SSIM on validation images for several mask families.
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

NOISE_LEVELS = (10, 50, 100, 250, 500, 750, 900)


def x0_errors(model, x0: np.ndarray, labels: np.ndarray, mu: np.ndarray, var: np.ndarray, key, batch: int = 64):
    abar_all = model.schedule.alphas_cumprod
    rows = []
    f = jax.jit(lambda x, t, lab: model.eps(x, t, lab))
    for t in NOISE_LEVELS:
        a = float(abar_all[t])
        errs_net, errs_gauss, errs_id = [], [], []
        for i in range(0, len(x0), batch):
            xb, lb = x0[i:i + batch], labels[i:i + batch]
            z = np.asarray(jax.random.normal(jax.random.fold_in(key, t * 100000 + i), xb.shape))
            xt = np.sqrt(a) * xb + np.sqrt(1 - a) * z
            eps = np.asarray(f(jnp.asarray(xt), jnp.full((len(xb),), t, jnp.int32),
                               jnp.asarray(lb) if model.config.class_cond else None))
            x0_net = (xt - np.sqrt(1 - a) * eps) / np.sqrt(a)
            x0_gauss = mu + var * np.sqrt(a) * (xt - np.sqrt(a) * mu) / (a * var + 1 - a)
            errs_net.append(((np.clip(x0_net, -1, 1) - xb) ** 2).mean(axis=(1, 2, 3)))
            errs_gauss.append(((np.clip(x0_gauss, -1, 1) - xb) ** 2).mean(axis=(1, 2, 3)))
            errs_id.append(((np.clip(xt / np.sqrt(a), -1, 1) - xb) ** 2).mean(axis=(1, 2, 3)))
        rows.append(dict(t=t, abar=a, snr_db=10 * np.log10(a / (1 - a)),
                         mse_model=float(np.concatenate(errs_net).mean()),
                         mse_gaussian=float(np.concatenate(errs_gauss).mean()),
                         mse_rescaled_input=float(np.concatenate(errs_id).mean())))
        print(f"t={t}: model {rows[-1]['mse_model']:.4f}  gaussian {rows[-1]['mse_gaussian']:.4f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--model", default="emoji64")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--samples-per-class", type=int, default=6)
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--inpaint-images", type=int, default=16)
    p.add_argument("--inpaint-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from operators import Inpainting, masks
    from solvers import DDNM, DDPM, RePaint

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = invdiff.load_model(a.model)
    key = jax.random.key(a.seed)
    with np.load(a.train) as d:
        train = to_model(d["images"])
    with np.load(a.val) as d:
        val, vlab, cats = to_model(d["images"]), d["labels"].astype(np.int32), [str(c) for c in d["categories"]]
    mu, var = train.mean(axis=0), train.var(axis=0) + 1e-6
    t0 = time.time()
    report: dict = {"model": a.model, "config": model.config.to_flags(), "machine": platform.platform(),
                    "jax": jax.__version__, "device": str(jax.devices()[0].device_kind), "validation_images": len(val)}
    report["x0_prediction"] = x0_errors(model, val, vlab, mu, var, key)

    # class-conditional samples: one row per category
    n = a.samples_per_class
    labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), n)
    dummy = Inpainting(jnp.zeros((64, 64, 1)))
    sol = invdiff.solve(DDPM(steps=a.sample_steps), model, dummy, jnp.zeros((10 * n, 64, 64, 3)),
                        key=jax.random.fold_in(key, 1), label=labels)
    samples = np.asarray(sol.x).reshape(10, n, 64, 64, 3)
    save_image(out / "emoji64_samples.png", grid([list(r) for r in samples], [c[:16] for c in cats]))
    report["samples"] = {"sampler": f"DDPM, {a.sample_steps} respaced steps, learned variance",
                         "per_class": n, "file": "emoji64_samples.png"}

    # inpainting on validation images
    rng = np.random.default_rng(a.seed)
    idx = rng.choice(len(val), a.inpaint_images, replace=False)
    x, lab = jnp.asarray(val[idx]), jnp.asarray(vlab[idx])
    inp = []
    show = []
    for fam in ("box", "thick", "half", "random"):
        m = masks.by_name(fam, jax.random.fold_in(key, 2), 64, 64, **({"missing": 0.7} if fam == "random" else {}))
        op = Inpainting(m)
        y = op.A(x)
        for solver in (DDNM(steps=a.inpaint_steps), RePaint(steps=a.inpaint_steps, jump_length=5, jump_n_sample=2)):
            s = invdiff.solve(solver, model, op, y, key=jax.random.fold_in(key, 3), label=lab)
            xr = jnp.clip(s.x, -1, 1)
            inp.append(dict(mask=fam, solver=type(solver).__name__, steps=solver.steps, nfe=s.nfe,
                            psnr=float(metrics.psnr(xr, x).mean()), ssim=float(metrics.ssim(xr, x).mean()),
                            psnr_masked_baseline=float(metrics.psnr(op.pinv(y), x).mean())))
            print(inp[-1], flush=True)
            if type(solver).__name__ == "DDNM":
                show.append([np.asarray(op.pinv(y))[j] for j in range(4)] + [np.asarray(xr)[j] for j in range(4)])
    save_image(out / "emoji64_inpainting.png",
               grid(show, ["box", "thick", "half", "random 70%"], ["measurement"] * 4 + ["DDNM"] * 4))
    report["inpainting"] = inp
    report["seconds"] = time.time() - t0
    (out / "emoji64_quality.json").write_text(json.dumps(report, indent=2) + "\n")

    md = ["# emoji64: quality on the held-out validation split", "",
          f"Model `{a.model}` ({sum(np.size(v) for v in jax.tree.leaves(model.params)) / 1e6:.2f}M parameters); "
          f"{len(val)} validation images (never trained on); {report['device']}, jax {jax.__version__}.", "",
          "## x0-prediction error (MSE in [-1, 1] units, x̂0 clipped to [-1, 1])", "",
          "| t | ᾱ_t | SNR (dB) | model | independent-pixel Gaussian | x_t/√ᾱ_t |", "|---|---|---|---|---|---|"]
    for r in report["x0_prediction"]:
        md.append(f"| {r['t']} | {r['abar']:.4f} | {r['snr_db']:.1f} | {r['mse_model']:.4f} | "
                  f"{r['mse_gaussian']:.4f} | {r['mse_rescaled_input']:.4f} |")
    md += ["", f"## Inpainting ({a.inpaint_images} validation images, class label given)", "",
           "| mask | solver | steps | NFE | PSNR | SSIM | PSNR of the masked input |", "|---|---|---|---|---|---|---|"]
    for r in inp:
        md.append(f"| {r['mask']} | {r['solver']} | {r['steps']} | {r['nfe']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                  f"{r['psnr_masked_baseline']:.2f} |")
    md += ["", "Samples: `emoji64_samples.png` (one row per category, DDPM with the learned variance); "
           "inpainting examples: `emoji64_inpainting.png`.", ""]
    (out / "emoji64_quality.md").write_text("\n".join(md))
    print(f"wrote {out / 'emoji64_quality.md'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
