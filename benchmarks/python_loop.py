"""One compiled ``invdiff.solve`` program vs a Python loop over a jitted single step.

GPU (H100; writes ``benchmarks/results/python_loop_<machine>.md`` and ``.json``; not yet run on
a GPU, estimated at about 4 minutes from the H100 forward times of network_speed.py)::

    python3 benchmarks/python_loop.py --models tiny32,emoji64,adm256 --batch 8

CPU (2 cores, about 2.5 minutes)::

    python3 benchmarks/python_loop.py --models tiny32,emoji64 --batch 1

The reference implementations of the papers run a Python ``for`` loop that calls the network
and the update once per step. Here the loop is built from the *same* solver's ``step`` method
and the same per-transition data (:func:`invdiff.schedule.transitions`, float32 as
``invdiff.solve`` passes it, the same PRNG keys), jitted as one program per step
(``jax.jit(solver.step)`` with the solver, the problem and the network weights as arguments,
as ``invdiff.solve`` passes them); RePaint-style up-steps would be a second jitted function
chosen in Python. The per-step inputs are put on the device before the timed loop and the loop
blocks only at the end, so the loop is timed at its best (dispatch of step i+1 overlaps the
compute of step i). Both results are compared (max |x_scan - x_loop|; the maths is identical,
only XLA's fusion of the two programs differs). Scan and loop runs alternate, so that the
load of a shared machine affects both alike.

Reported per model and solver: seconds per step of each (median of ``--repeats`` warm runs
after one compiling run, divided by the number of transitions), the bare network call for
reference, and the ratio loop / scan (> 1: the compiled program is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/throughput.py: machine name, models, network timer)

import invdiff  # noqa: E402
import solvers as solver_registry  # noqa: E402
from invdiff import noise  # noqa: E402
from invdiff.images import atomic_write_bytes  # noqa: E402
from invdiff.schedule import transitions  # noqa: E402
from invdiff.solve import Problem, Step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: scan and loop results agree when max |x_scan - x_loop| <= AGREE_TOL * max(|x|, 1).
AGREE_TOL = 1e-5


@jax.jit
def _down(solver: Any, problem: Problem, st: Step, x: jax.Array, state: Any, key: jax.Array) -> Any:
    x, state, _ = solver.step(problem, st, x, state, key)
    return x, state


@jax.jit
def _up(x: jax.Array, beta: jax.Array, key: jax.Array) -> jax.Array:
    return noise.renoise(x, beta, jax.random.normal(key, x.shape, x.dtype))


class PythonLoop:
    """``solver`` on (model, op, y) as a Python loop over jitted steps, starting from ``x_init``.

    Reproduces ``invdiff.solve(solver, model, op, y, key=key, x_init=x_init, ...)``: the same
    transitions (float32 coefficients), the same key splits (init key, then one key per
    transition) and the same x̂0 clipping range.
    """

    def __init__(self, solver: Any, model: Any, op: Any, y: jax.Array, *, key: jax.Array,
                 x_init: jax.Array, sigma_y: float = 0.0, label: jax.Array | None = None):
        self.solver = solver
        self.problem = Problem(model=model, op=op, y=y, sigma_y=jnp.asarray(sigma_y, jnp.float32), label=label,
                               x0_range=getattr(model, "data_range", None))
        tr = transitions(model.schedule, solver.steps, solver.walk())
        arrays = [jnp.asarray(a, jnp.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
                  else jnp.asarray(a) for a in tr.arrays()]
        key_init, key_steps = jax.random.split(key)
        keys = jax.random.split(key_steps, len(tr))
        self.x_init = x_init
        self.state0 = solver.init(self.problem, x_init, key_init)
        self.up = [bool(u) for u in np.asarray(tr.up)]
        # every per-step input on the device before the loop runs
        self.steps = []
        for i in range(len(tr)):
            t, s, abar_t, abar_s, omab_t, omab_s, beta, lv, up = (a[i] for a in arrays)
            self.steps.append((Step(t=t, s=s, abar_t=abar_t, abar_s=abar_s, omab_t=omab_t, omab_s=omab_s,
                                    beta=beta, log_var_clipped=lv, up=up, index=jnp.int32(i)), keys[i]))
        jax.block_until_ready(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def run(self) -> jax.Array:
        x, state = self.x_init, self.state0
        for (st, k), up in zip(self.steps, self.up):
            if up:
                x = _up(x, st.beta, k)
            else:
                x, state = _down(self.solver, self.problem, st, x, state, k)
        return x


def _timed_pair(fa: Any, fb: Any, repeats: int) -> tuple[float, list[float], Any, float, list[float], Any]:
    """Time two functions alternately (a, b, a, b, …) so that a shared machine's load drift hits
    both alike: (first call s, warm call seconds, last result) of a, then of b."""

    def once(fn):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        return time.perf_counter() - t0, out

    first_a, out_a = once(fa)
    first_b, out_b = once(fb)
    warm_a, warm_b = [], []
    for _ in range(repeats):
        ta, out_a = once(fa)
        tb, out_b = once(fb)
        warm_a.append(ta)
        warm_b.append(tb)
    return first_a, warm_a, out_a, first_b, warm_b, out_b


def bench(model_spec: str, solver_name: str, batch: int, steps: int, dtype: str, repeats: int,
          net_repeats: int, cache: dict[str, Any]) -> dict[str, Any]:
    """Scan vs Python loop for one model and solver; ``cache`` keeps models between rows."""
    if model_spec not in cache:
        model, _, desc = throughput.load_benchmark_model(model_spec, dtype)
        problem = throughput.make_problem(model, batch)
        cache[model_spec] = (model, desc, problem, throughput.NetworkTimer(model, batch, problem["label"]))
    model, desc, problem, timer = cache[model_spec]
    solver = solver_registry.get(solver_name)(steps=steps)
    op, y, label = problem["op"], problem["y"], problem["label"]
    x_init = jax.random.normal(jax.random.key(11), problem["x"].shape, jnp.float32)
    key = jax.random.key(12)

    def scan():
        return invdiff.solve(solver, model, op, y, key=key, x_init=x_init, label=label).x

    loop = PythonLoop(solver, model, op, y, key=key, x_init=x_init, label=label)
    first_s, warm_s, x_scan, first_l, warm_l, x_loop = _timed_pair(scan, loop.run, repeats)
    t_net = statistics.median(timer.measure("net", net_repeats))
    n = len(loop)
    scan_ps, loop_ps = statistics.median(warm_s) / n, statistics.median(warm_l) / n
    diff = float(jnp.max(jnp.abs(x_scan - x_loop)))
    scale = float(jnp.max(jnp.abs(x_scan)))
    if diff > AGREE_TOL * max(scale, 1.0):
        print(f"  WARNING: scan and loop differ by {diff:.2e} (> {AGREE_TOL:g} x max(|x|, 1))", flush=True)
    return dict(
        model=model_spec, params=desc["params"], image_size=desc["flags"].get("image_size"), dtype=dtype,
        solver=type(solver).__name__, steps=steps, transitions=n, batch=batch,
        scan_step_ms=scan_ps * 1e3, loop_step_ms=loop_ps * 1e3, net_ms=t_net * 1e3,
        loop_over_scan=loop_ps / scan_ps, scan_compile_s=max(first_s - statistics.median(warm_s), 0.0),
        loop_compile_s=max(first_l - statistics.median(warm_l), 0.0),
        scan_runs_s=warm_s, loop_runs_s=warm_l, max_abs_diff=diff, max_abs_x=scale,
        agree=bool(diff <= AGREE_TOL * max(scale, 1.0)),
        load_average=[round(v, 2) for v in os.getloadavg()],
    )


def write_results(stem: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    out = Path(meta["out"])
    atomic_write_bytes(out / f"{stem}.json", json.dumps({"meta": meta, "results": rows}, indent=2).encode())
    m = meta["machine"]
    lines = [
        f"# Compiled solve vs Python loop over a jitted step — {m['name']}", "",
        f"- machine: {m['name']}; jax {meta['jax']} ({m['platform']} backend); date {meta['date']}; "
        f"load average at the end {meta['load_average']} (the machine may be shared)",
        f"- command: `{meta['command']}`",
        f"- batch {meta['batch']}; steps {meta['steps']}; compute dtype {meta['dtype']}; box inpainting, "
        f"sigma_y 0; median of {meta['repeats']} warm runs after one compiling run (scan and loop "
        "alternate); JAX persistent compilation cache off",
        "- *scan*: `invdiff.solve` (one `lax.scan` program, host-side set-up included); *loop*: a Python "
        "`for` over `jax.jit(solver.step)` with every per-step input already on the device, blocking "
        "only at the end; *net*: one jitted network call at the batch (median); per-step = run time / "
        "transitions; *max diff*: max |x_scan - x_loop| (|x| up to *max |x|*); *agree*: max diff "
        f"<= {AGREE_TOL:g} x max(|x|, 1).",
        "",
        "| model | params | image | solver | transitions | net ms | scan ms/step | loop ms/step | loop / scan "
        "| scan compile s | loop compile s | max diff | max abs x | agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['image_size']} | {r['solver']} | {r['transitions']} | "
            f"{r['net_ms']:.2f} | {r['scan_step_ms']:.2f} | {r['loop_step_ms']:.2f} | {r['loop_over_scan']:.3f} | "
            f"{r['scan_compile_s']:.1f} | {r['loop_compile_s']:.1f} | {r['max_abs_diff']:.1e} | "
            f"{r['max_abs_x']:.2f} | {'yes' if r['agree'] else 'NO'} |")
    atomic_write_bytes(out / f"{stem}.md", ("\n".join(lines) + "\n").encode())
    return out / f"{stem}.md"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny32,emoji64", help="comma-separated models (see throughput.py "
                    "--model: emoji64, tiny32, adm256, a preset or a path; default tiny32,emoji64)")
    ap.add_argument("--solvers", default="ddnm,ddim", help="comma-separated solvers (default ddnm,ddim)")
    ap.add_argument("--batch", type=int, default=1, help="images per solve (default 1)")
    ap.add_argument("--steps", type=int, default=50, help="respaced steps (default 50)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="network compute dtype (default float32)")
    ap.add_argument("--repeats", type=int, default=3, help="warm runs of each, median reported (default 3)")
    ap.add_argument("--net-repeats", type=int, default=5, help="timed network calls (default 5)")
    ap.add_argument("--disk-cache", action="store_true", help="keep JAX's persistent compilation cache on")
    ap.add_argument("--out", default=str(RESULTS), help="results directory (default benchmarks/results)")
    ap.add_argument("--tag", default=None, help="suffix for the result file names")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if not args.disk_cache:
        jax.config.update("jax_enable_compilation_cache", False)

    mach = throughput.machine()
    stem = f"python_loop_{mach['slug']}" + ("_bf16" if args.dtype == "bfloat16" else "") \
        + (f"_{args.tag}" if args.tag else "")
    meta: dict[str, Any] = dict(
        machine=mach, jax=jax.__version__, python=platform.python_version(), batch=args.batch,
        steps=args.steps, dtype=args.dtype, repeats=args.repeats, out=args.out, date=time.strftime("%Y-%m-%d %H:%M"),
        command="python3 benchmarks/python_loop.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    rows: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    path = None
    for model_spec in [m.strip() for m in args.models.split(",") if m.strip()]:
        for name in [s.strip() for s in args.solvers.split(",") if s.strip()]:
            print(f"{model_spec} / {name} ...", flush=True)
            r = bench(model_spec, name, args.batch, args.steps, args.dtype, args.repeats, args.net_repeats, cache)
            rows.append(r)
            print(f"  scan {r['scan_step_ms']:.2f} ms/step, loop {r['loop_step_ms']:.2f} ms/step, "
                  f"net {r['net_ms']:.2f} ms, loop/scan {r['loop_over_scan']:.3f}, max diff {r['max_abs_diff']:.1e}",
                  flush=True)
            meta["load_average"] = [round(v, 2) for v in os.getloadavg()]
            meta["total_s"] = time.perf_counter() - start
            path = write_results(stem, meta, rows)
    print(f"wrote {path} and .json ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
