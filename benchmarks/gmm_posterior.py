"""GMM posterior benchmark: how close is each solver's sample set to the exact posterior?

The Gaussian-mixture experiment of MCGdiff (Cardoso, Janati, Le Corff, Moulines, "Monte Carlo
guided diffusion for Bayesian linear inverse problems", ICLR 2024, sec. 4.1): a 25-component
unit-covariance mixture on R^d, y = A x + σ_y n with a random A (dy x d), and the prior's
EXACT noise prediction as the "network" (:class:`invdiff.priors.GaussianMixture`), so every
difference from the exact posterior is the solver's. For each (d, dy) and each instance, every
solver draws ``--samples`` posterior samples (y replicated along the batch) and we report the
sliced Wasserstein distance SW₂ (:func:`invdiff.metrics.sliced_wasserstein`) to a set of exact
posterior samples, as mean ± 95% CI (Student t) over instances. Reference rows: ``exact``, a
second independent exact sample set (the Monte Carlo floor), and ``prior``, samples of the
prior (the ceiling: a solver that ignores y). DDPM / DDIM are unconditional samplers and
should score near the ceiling.

    python benchmarks/gmm_posterior.py                 # d ∈ {8, 80, 800}, dy ∈ {1, 2, 4}, 5 seeds
    python benchmarks/gmm_posterior.py --quick         # a smoke run of the harness
    python benchmarks/gmm_posterior.py --solvers DDNM,PiGDM --steps 100 --instances 10

Writes ``benchmarks/results/gmm_posterior.md`` and ``.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

# Run from a checkout: the repository root first, so solvers/ and operators/ are this tree's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invdiff  # noqa: E402
import solvers  # noqa: E402
from invdiff.metrics import sliced_wasserstein  # noqa: E402
from invdiff.priors import GaussianMixture, mcg_gmm_problem  # noqa: E402

ALL_SOLVERS = ["RePaint", "ILVR", "DDNM", "MCG", "PiGDM", "DiffPIR", "DPS", "DDRM", "MCGdiff", "TDS", "DDPM",
               "DDIM"]
REFERENCE_ROWS = ["exact", "prior"]


class IsotropicMixture(invdiff.Model):
    """Σ_k w_k N(μ_k, v_k I) with the exact ε̂ of :class:`~invdiff.priors.GaussianMixture`, by
    matrix products: ||x − √ᾱ μ_k||² = ||x||² − 2√ᾱ x·μ_k + ᾱ||μ_k||² and
    ε̂ = √(1 − ᾱ) (x Σ_k r_k / c_k − √ᾱ (r / c) μ), c_k = ᾱ v_k + 1 − ᾱ (float32 agrees with
    the reference to ~1e-5 relative at d = 800, checked by :func:`check_fast_prior`)."""

    weights: jax.Array
    means: jax.Array
    var: jax.Array

    @classmethod
    def of(cls, prior: GaussianMixture) -> IsotropicMixture:
        return cls(schedule=prior.schedule, weights=prior.weights, means=prior.means, var=prior.var)

    def eps(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None) -> jax.Array:
        abar = jnp.asarray(self.schedule.alphas_cumprod, jnp.float32)[t]
        oma = jnp.asarray(1.0 - self.schedule.alphas_cumprod, jnp.float32)[t]
        sab = jnp.sqrt(abar)
        d = x.shape[1]
        c = abar[:, None] * self.var[None] + oma[:, None]                                  # (B, K)
        quad = (jnp.sum(x * x, axis=1)[:, None] - 2 * sab[:, None] * (x @ self.means.T)
                + abar[:, None] * jnp.sum(self.means**2, axis=1)[None]) / c
        logp = jnp.log(self.weights)[None] - 0.5 * (quad + d * jnp.log(c))
        rc = jax.nn.softmax(logp, axis=-1) / c
        return jnp.sqrt(oma)[:, None] * (x * jnp.sum(rc, axis=1)[:, None] - sab[:, None] * (rc @ self.means))


def check_fast_prior(prior: GaussianMixture, key: jax.Array) -> float:
    """Largest relative difference between :class:`IsotropicMixture` and the reference ε̂."""
    fast = IsotropicMixture.of(prior)
    worst = 0.0
    for t in (0, 50, 300, 999):
        x = jnp.sqrt(prior.schedule.alphas_cumprod[t]) * prior.sample(key, 64) + jax.random.normal(
            key, (64, prior.dim)) * np.sqrt(1 - prior.schedule.alphas_cumprod[t])
        tt = jnp.full((64,), t, jnp.int32)
        ref, got = prior.eps(x, tt), fast.eps(x, tt)
        worst = max(worst, float(jnp.max(jnp.linalg.norm(got - ref, axis=1) / jnp.linalg.norm(ref, axis=1))))
    return worst


def _dense(matrix: jax.Array) -> invdiff.LinearOperator:
    try:
        from operators import Dense

        return Dense(matrix)
    except ImportError as e:  # operators.Dense not available: a matrix-free stand-in
        print(f"note: operators.Dense unavailable ({e}); using invdiff.LinearFunction", flush=True)
        return invdiff.LinearFunction(lambda x: x @ matrix.T, in_shape=(int(matrix.shape[1]),))


def _find_solver(name: str) -> type | None:
    cls = getattr(solvers, name, None)
    if cls is None:  # written but not yet exported from solvers/__init__.py
        try:
            cls = getattr(importlib.import_module(f"solvers.{name.lower()}"), name, None)
        except ImportError:
            cls = None
    return cls


def _ci95(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def machine_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "device": f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run(args: argparse.Namespace, on_instance: Any = None) -> dict[str, Any]:
    """The benchmark; ``on_instance(report)`` is called with the results so far after every
    instance of every cell (``main`` writes them, so a stopped run keeps what it finished)."""
    names = args.solvers.split(",") if args.solvers else ALL_SOLVERS
    found: dict[str, Any] = {}
    for name in names:
        cls = _find_solver(name)
        if cls is None:
            print(f"note: solver {name} is not available yet; skipped", flush=True)
            continue
        kw = {} if args.steps is None else {"steps": args.steps}
        if cls(**kw).particle_count() > 1:
            for n in args.particles:
                found[f"{name} N={n}"] = cls(particles=n, **kw)
        else:
            found[name] = cls(**kw)
    rows = REFERENCE_ROWS + list(found)
    results: dict[str, dict[str, Any]] = {}
    cells = [(d, dy) for d in args.dims for dy in args.dys]
    per_row = {f"d={d},dy={dy}": {r: [] for r in rows} for d, dy in cells}
    extras = {f"d={d},dy={dy}": {r: {} for r in rows} for d, dy in cells}
    # instances outermost: a run stopped early still has every cell (with fewer instances)
    for inst in range(args.instances):
        for d, dy in cells:
            cell = f"d={d},dy={dy}"
            values, extra = per_row[cell], extras[cell]
            key = jax.random.fold_in(jax.random.key(args.seed), 1000 * d + 10 * dy + inst)
            k_prob, k_ex1, k_ex2, k_prior, k_sw, k_solve = jax.random.split(key, 6)
            prob = mcg_gmm_problem(k_prob, d=d, dy=dy, sigma_y=args.sigma_y)
            model = IsotropicMixture.of(prob.prior)
            post = prob.prior.posterior(prob.A, prob.y, prob.sigma_y)
            ref = post.sample(k_ex1, args.samples)

            def sw(x: jax.Array, _ref: jax.Array = ref, _k: jax.Array = k_sw) -> float:
                return float(sliced_wasserstein(x, _ref, _k, args.projections))

            values["exact"].append(sw(post.sample(k_ex2, args.samples)))
            values["prior"].append(sw(prob.prior.sample(k_prior, args.samples)))
            # A padded with zero rows (and y with zeros) to max(dys) rows: the same posterior for
            # every solver (a zero singular value is an unobserved direction), one compile per d
            rows_a = max(args.dys) if args.pad else dy
            op = _dense(jnp.zeros((rows_a, d), jnp.float32).at[:dy].set(prob.A))
            extra["exact"]["operator"] = type(op).__name__
            extra["exact"]["fast_prior_rel_error"] = max(extra["exact"].get("fast_prior_rel_error", 0.0),
                                                         check_fast_prior(prob.prior, k_sw))
            y = jnp.broadcast_to(jnp.zeros((rows_a,), jnp.float32).at[:dy].set(prob.y), (args.samples, rows_a))
            for name, solver in found.items():
                try:
                    t0 = time.perf_counter()
                    sol = invdiff.solve(solver, model, op, y, key=k_solve, sigma_y=prob.sigma_y)
                    x = jax.block_until_ready(sol.x)
                    seconds = time.perf_counter() - t0
                    value = sw(x)
                    extra[name].update(nfe=sol.nfe, steps=solver.steps, particles=solver.particle_count())
                    extra[name].setdefault("seconds", []).append(round(seconds, 3))
                    if not np.isfinite(value):
                        extra[name]["nonfinite"] = extra[name].get("nonfinite", 0) + 1
                except Exception as e:  # a broken solver must not stop the benchmark
                    value = float("nan")
                    extra[name]["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    print(f"  {name} failed on {cell} #{inst}: {extra[name]['error']}", flush=True)
                values[name].append(value)
            print(f"{cell} #{inst}: " + ", ".join(f"{r}={values[r][-1]:.3f}" for r in rows), flush=True)
            results[cell] = {
                r: {"values": values[r], "mean": _ci95(values[r])[0], "ci95": _ci95(values[r])[1],
                    **extra[r]} for r in rows
            }
            if on_instance is not None:
                on_instance({"rows": rows, "cells": list(results), "results": results})
    return {"rows": rows, "cells": list(results), "results": results}


def to_markdown(report: dict[str, Any]) -> str:
    cfg, res = report["config"], report["results"]
    lines = ["# GMM posterior benchmark (MCGdiff, Cardoso et al. ICLR 2024, sec. 4.1)", ""]
    if cfg["quick"]:
        lines += ["**Quick smoke run of the harness (`--quick`): few instances and samples; not the "
                  "benchmark's numbers.**", ""]
    sig = "σ_y = u · max(s), u ~ U[0, 1] per instance (the authors' script)" if cfg["sigma_y"] is None \
        else f"σ_y = {cfg['sigma_y']}"
    lines += [
        f"SW₂ to {cfg['samples']} exact posterior samples ({cfg['projections']} random projections), "
        f"mean ± 95% CI over {cfg['instances']} instances; lower is better. 25 unit-covariance components "
        f"(means (8i, 8j, …)), A = U diag(s) V[:dy] with Haar U, V and s ~ U[0, 1]; {sig}. "
        "Steps: each solver's default" + (f" overridden to {cfg['steps']}" if cfg["steps"] else "") + "."
        + (f" Every A is padded with zero rows to {max(cfg['dys'])} rows (y = 0 there): the same posterior, one "
           "compiled program per solver and d." if cfg.get("pad", False) else ""),
        "`exact`: a second exact sample set (Monte Carlo floor); `prior`: prior samples (ceiling)."
        + (" DDPM/DDIM ignore y (sanity rows, expected near the ceiling)."
           if {"DDPM", "DDIM"} & set(report["rows"]) else ""),
        "",
    ]
    cells = report["cells"]
    lines.append("| solver | NFE | " + " | ".join(cells) + " |")
    lines.append("|---" * (len(cells) + 2) + "|")
    for r in report["rows"]:
        nfe = next((res[c][r]["nfe"] for c in cells if "nfe" in res[c].get(r, {})), None)
        vals = ["" if nfe is None else str(nfe)]
        for c in cells:
            if r not in res[c]:
                vals.append("–")
                continue
            e = res[c][r]
            fewer = f" (n={len(e['values'])})" if len(e["values"]) < cfg["instances"] else ""
            if "error" in e and not np.isfinite(e["mean"]):
                vals.append("error")
            elif np.isfinite(e["ci95"]):
                vals.append(f"{e['mean']:.3f} ± {e['ci95']:.3f}{fewer}")
            else:
                vals.append(f"{e['mean']:.3f}{fewer}")
        lines.append(f"| {r} | " + " | ".join(vals) + " |")
    errors = [(r, c, res[c][r]["error"]) for c in cells for r in report["rows"] if "error" in res[c].get(r, {})]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r} on {c}: `{e}`" for r, c, e in errors]
    m = report["machine"]
    lines += ["", f"Commands: {'; '.join(f'`{c}`' for c in report.get('commands', []))}.", "",
              f"Machine: {m['platform']}, {m['cpu_count']} CPUs (shared with other jobs), jax {m['jax']}, "
              f"{m['device']}; total {report['seconds']:.0f} s; {m['date']}.", ""]
    return "\n".join(lines)


def report_from_log(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Rebuild a report from the per-instance lines a run printed ("d=8,dy=1 #0: exact=…, …"),
    for a run stopped before it wrote its .json. NFE comes from each solver's walk."""
    per_cell: dict[str, dict[str, list[float]]] = {}
    rows: list[str] = []
    with open(path) as f:
        for line in f:
            if not line.startswith("d=") or " #" not in line:
                continue
            cell, rest = line.split(" #", 1)
            for item in rest.split(": ", 1)[1].strip().split(", "):
                name, value = item.rsplit("=", 1)
                per_cell.setdefault(cell, {}).setdefault(name, []).append(float(value))
                if name not in rows:
                    rows.append(name)
    results: dict[str, dict[str, Any]] = {}
    for cell, by_row in per_cell.items():
        results[cell] = {}
        for r, values in by_row.items():
            entry = {"values": values, "mean": _ci95(values)[0], "ci95": _ci95(values)[1]}
            if r not in REFERENCE_ROWS:
                name, _, n = r.partition(" N=")
                solver = _find_solver(name)(**({"particles": int(n)} if n else {}))
                down = int(np.sum(np.diff(solver.walk()) < 0))
                entry["nfe"] = down * solver.nfe_per_step * solver.particle_count()
            results[cell][r] = entry
    config = {k: v for k, v in vars(args).items() if k not in ("out", "merge", "from_log")}
    return {"rows": rows, "cells": list(results), "results": results, "config": config, "seconds": 0.0,
            "machine": machine_info(), "commands": [f"(recovered from the log of) {args.from_log_command}"]}


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs with different solvers or cells (same instances, samples and seed, so
    the reference rows agree); a cell a run did not cover shows "–" for its rows."""
    out = json.loads(json.dumps(reports[0]))
    for rep in reports[1:]:
        if any(rep["config"][k] != out["config"][k] for k in ("instances", "samples", "seed", "projections")):
            raise ValueError("can only merge runs with the same instances, samples, projections and seed")
        for c in rep["cells"]:
            if c not in out["cells"]:
                out["cells"].append(c)
                out["results"][c] = {r: rep["results"][c][r] for r in REFERENCE_ROWS}
        for r in rep["rows"]:
            if r not in out["rows"]:
                out["rows"].append(r)
            if r not in REFERENCE_ROWS:
                for c in rep["cells"]:
                    out["results"][c][r] = rep["results"][c][r]
        out["seconds"] += rep["seconds"]
        out["commands"] = out.get("commands", []) + rep.get("commands", [])
    key = lambda c: tuple(int(v.split("=")[1]) for v in c.split(","))
    out["cells"].sort(key=key)
    return out


def plot(report: dict[str, Any], path: str) -> None:
    """SW against NFE per sample, one panel per d (mean over dy and instances, log-log); the
    particle samplers are lines through their particle counts, the references horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, cells = report["results"], report["cells"]
    dims = sorted({int(c.split(",")[0][2:]) for c in cells})
    fig, axes = plt.subplots(1, len(dims), figsize=(5.2 * len(dims), 4.4), squeeze=False)
    families: dict[str, list[tuple[int, float]]] = {}
    for ax, d in zip(axes[0], dims):
        mine = [c for c in cells if c.startswith(f"d={d},")]

        def mean(r, _mine=mine):
            vals = [v for c in _mine if r in res[c] for v in res[c][r]["values"] if np.isfinite(v)]
            return float(np.mean(vals)) if vals else float("nan")

        families = {}
        for r in report["rows"]:
            if r in REFERENCE_ROWS:
                continue
            nfe = next((res[c][r]["nfe"] for c in mine if "nfe" in res[c].get(r, {})), None)
            if nfe is not None:
                families.setdefault(r.split(" N=")[0], []).append((nfe, mean(r)))
        for i, (name, pts) in enumerate(sorted(families.items())):
            pts.sort()
            style = "o-" if len(pts) > 1 else "o"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i % 10}", label=name,
                    ms=6 if len(pts) > 1 else 7, lw=2)
        for r, ls in (("exact", "--"), ("prior", ":")):
            ax.axhline(mean(r), color="k", ls=ls, lw=1, label=f"{r} ({'floor' if r == 'exact' else 'ceiling'})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_ylabel("sliced Wasserstein to the exact posterior")
        dys = ", ".join(c.split("dy=")[1] for c in mine)
        ax.set_title(f"d = {d} (mean over dy ∈ {{{dys}}} and instances)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out: str) -> str:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    md = to_markdown(report)
    with open(out + ".md", "w") as f:
        f.write(md)
    plot(report, out + ".png")
    return md


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]
    p.add_argument("--dims", type=ints, default=[8, 80, 800], help="data dimensions d (comma list)")
    p.add_argument("--dys", type=ints, default=[1, 2, 4], help="measurement dimensions dy (comma list)")
    p.add_argument("--instances", type=int, default=5, help="random problems per (d, dy)")
    p.add_argument("--samples", type=int, default=1000, help="posterior samples per solver and instance")
    p.add_argument("--projections", type=int, default=1000, help="random directions of the SW estimate")
    p.add_argument("--steps", type=int, default=None, help="override every solver's default steps")
    p.add_argument("--sigma-y", type=float, default=None,
                   help="measurement noise std; default: drawn per instance as in the MCGdiff script")
    p.add_argument("--solvers", default="", help=f"comma list (default: {','.join(ALL_SOLVERS)})")
    p.add_argument("--particles", type=ints, default=[4, 16, 64],
                   help="particle counts N of the particle samplers (MCGdiff, TDS), comma list")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge earlier runs' .json reports into one table and plot (runs nothing)")
    p.add_argument("--from-log", default=None, metavar="LOG",
                   help="rebuild the .json/.md/.png of a stopped run from its printed lines (give the run's "
                        "own options too; runs nothing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pad", dest="pad", action="store_false",
                   help="pose each dy with its own dy x d matrix (default: zero rows up to max(dys), which "
                        "leaves every posterior unchanged and compiles each solver once per d)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: d=8, dy=2, 2 instances, 200 samples, 200 projections")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "gmm_posterior"),
                   help="output path without extension (.md, .json and .png are written)")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.dys, args.instances, args.samples, args.projections = [8], [2], 2, 200, 200
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_log:
        args.from_log_command = "python benchmarks/gmm_posterior.py " + " ".join(
            a for a in (sys.argv[1:] if argv is None else argv) if a != args.from_log and a != "--from-log")
        report = report_from_log(args.from_log, args)
        del args.from_log_command
        print(write(report, args.out))
        return
    if args.merge:
        reports = []
        for path in args.merge:
            with open(path) as f:
                reports.append(json.load(f))
        print(write(merge(reports), args.out))
        return
    t0 = time.perf_counter()
    meta = {"config": {k: v for k, v in vars(args).items() if k not in ("out", "merge")},
            "machine": machine_info(),
            "commands": ["python benchmarks/gmm_posterior.py " + " ".join(sys.argv[1:] if argv is None else argv)]}

    def checkpoint(partial: dict[str, Any]) -> None:
        write({**partial, **meta, "seconds": time.perf_counter() - t0}, args.out)

    report = run(args, checkpoint)
    print(write({**report, **meta, "seconds": time.perf_counter() - t0}, args.out))


if __name__ == "__main__":
    main()
