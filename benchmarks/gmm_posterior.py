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
from invdiff.priors import mcg_gmm_problem  # noqa: E402

ALL_SOLVERS = ["RePaint", "ILVR", "DDNM", "MCG", "PiGDM", "DiffPIR", "DPS", "DDRM", "DDPM", "DDIM"]
REFERENCE_ROWS = ["exact", "prior"]


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = args.solvers.split(",") if args.solvers else ALL_SOLVERS
    found: dict[str, type] = {}
    for name in names:
        cls = _find_solver(name)
        if cls is None:
            print(f"note: solver {name} is not available yet; skipped", flush=True)
        else:
            found[name] = cls
    rows = REFERENCE_ROWS + list(found)
    results: dict[str, dict[str, Any]] = {}
    for d in args.dims:
        for dy in args.dys:
            cell = f"d={d},dy={dy}"
            per_row: dict[str, list[float]] = {r: [] for r in rows}
            extra: dict[str, dict[str, Any]] = {r: {} for r in rows}
            for inst in range(args.instances):
                key = jax.random.fold_in(jax.random.key(args.seed), 1000 * d + 10 * dy + inst)
                k_prob, k_ex1, k_ex2, k_prior, k_sw, k_solve = jax.random.split(key, 6)
                prob = mcg_gmm_problem(k_prob, d=d, dy=dy, sigma_y=args.sigma_y)
                post = prob.prior.posterior(prob.A, prob.y, prob.sigma_y)
                ref = post.sample(k_ex1, args.samples)

                def sw(x: jax.Array, _ref: jax.Array = ref, _k: jax.Array = k_sw) -> float:
                    return float(sliced_wasserstein(x, _ref, _k, args.projections))

                per_row["exact"].append(sw(post.sample(k_ex2, args.samples)))
                per_row["prior"].append(sw(prob.prior.sample(k_prior, args.samples)))
                op = _dense(prob.A)
                extra["exact"]["operator"] = type(op).__name__
                y = jnp.broadcast_to(prob.y, (args.samples, dy))
                for name, cls in found.items():
                    try:
                        solver = cls() if args.steps is None else cls(steps=args.steps)
                        t0 = time.perf_counter()
                        sol = invdiff.solve(solver, prob.prior, op, y, key=k_solve, sigma_y=prob.sigma_y)
                        x = jax.block_until_ready(sol.x)
                        seconds = time.perf_counter() - t0
                        value = sw(x)
                        extra[name].update(nfe=sol.nfe, steps=solver.steps)
                        extra[name].setdefault("seconds", []).append(round(seconds, 3))
                        if not np.isfinite(value):
                            extra[name]["nonfinite"] = extra[name].get("nonfinite", 0) + 1
                    except Exception as e:  # a broken solver must not stop the benchmark
                        value = float("nan")
                        extra[name]["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                        print(f"  {name} failed on {cell} #{inst}: {extra[name]['error']}", flush=True)
                    per_row[name].append(value)
                print(f"{cell} #{inst}: " + ", ".join(f"{r}={per_row[r][-1]:.3f}" for r in rows), flush=True)
            results[cell] = {
                r: {"values": per_row[r], "mean": _ci95(per_row[r])[0], "ci95": _ci95(per_row[r])[1],
                    **extra[r]} for r in rows
            }
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
        "Steps: each solver's default" + (f" overridden to {cfg['steps']}" if cfg["steps"] else "") + ".",
        "`exact`: a second exact sample set (Monte Carlo floor); `prior`: prior samples (ceiling)."
        + (" DDPM/DDIM ignore y (sanity rows, expected near the ceiling)."
           if {"DDPM", "DDIM"} & set(report["rows"]) else ""),
        "",
    ]
    cells = report["cells"]
    lines.append("| solver | " + " | ".join(cells) + " |")
    lines.append("|---" * (len(cells) + 1) + "|")
    for r in report["rows"]:
        vals = []
        for c in cells:
            e = res[c][r]
            if "error" in e and not np.isfinite(e["mean"]):
                vals.append("error")
            elif np.isfinite(e["ci95"]):
                vals.append(f"{e['mean']:.3f} ± {e['ci95']:.3f}")
            else:
                vals.append(f"{e['mean']:.3f}")
        lines.append(f"| {r} | " + " | ".join(vals) + " |")
    errors = [(r, c, res[c][r]["error"]) for c in cells for r in report["rows"] if "error" in res[c][r]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r} on {c}: `{e}`" for r, c, e in errors]
    m = report["machine"]
    lines += ["", f"Machine: {m['platform']}, {m['cpu_count']} CPUs, jax {m['jax']}, {m['device']}; "
              f"total {report['seconds']:.0f} s; {m['date']}.", ""]
    return "\n".join(lines)


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: d=8, dy=2, 2 instances, 200 samples, 200 projections")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "gmm_posterior"),
                   help="output path without extension (.md and .json are written)")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.dys, args.instances, args.samples, args.projections = [8], [2], 2, 200, 200
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    report = run(args)
    report["seconds"] = time.perf_counter() - t0
    report["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    report["machine"] = machine_info()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    md = to_markdown(report)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
