"""Compile time of a solver program on the bundled model, cold, for one or more checkouts.

    python benchmarks/compile_time.py --repos before=/path/to/old/checkout,after=. \
        [--solvers ddnm,repaint,dps] [--steps 20] [--rounds 3] [--out benchmarks/results/compile_time_cpu]

Every measurement is a fresh Python process, run in the checkout's root (so that checkout's
``invdiff`` is imported), with JAX's persistent compilation cache switched off. It builds the
demo's box-inpainting problem on two validation emoji, calls ``invdiff.solve`` twice and
reports:

* *first s*: the first call (tracing, lowering, XLA compilation, one solve);
* *compile s*: first call - second call (what compiling costs), median over rounds;
* *trace/lower/XLA s*: the ``jax.monitoring`` compile events of the first call, summed;
* *compile CPU s*: the same difference in the process's CPU time (all threads): on a shared
  machine it does not count time the process waited for a core, so it varies less than wall
  time between runs (XLA compiles on two threads, so it exceeds the wall-time figure).

Checkouts and solvers are interleaved round by round, so a shared machine's load falls on all
of them alike; the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_compilation_cache", False)
import jax.numpy as jnp
import numpy as np
import invdiff
import solvers
from operators import Inpainting, masks

events = {}
def on(name, secs, **kw):
    if name.startswith("/jax/core/compile/"):
        events[name] = events.get(name, 0.0) + secs
jax.monitoring.register_event_duration_secs_listener(on)

name, steps = sys.argv[1], int(sys.argv[2])
model = invdiff.load_model("emoji64")
with np.load(sys.argv[3]) as d:
    x = jnp.asarray(d["images"][:2].astype(np.float32) / 127.5 - 1)
    labels = jnp.asarray(d["labels"][:2].astype(np.int32))
op = Inpainting(masks.by_name("box", jax.random.key(0), 64, 64))
y = op.A(x)
solver = solvers.make(name, steps)
jax.block_until_ready(y)
events.clear()  # the first call's events only (not loading the model)
t0, c0 = time.perf_counter(), time.process_time()
jax.block_until_ready(invdiff.solve(solver, model, op, y, key=jax.random.key(0), label=labels).x)
first, cpu_first = time.perf_counter() - t0, time.process_time() - c0
first_events = dict(events)
t0, c0 = time.perf_counter(), time.process_time()
jax.block_until_ready(invdiff.solve(solver, model, op, y, key=jax.random.key(1), label=labels).x)
second, cpu_second = time.perf_counter() - t0, time.process_time() - c0
short = {k.rsplit("/", 1)[-1]: v for k, v in first_events.items()}
print(json.dumps(dict(first=first, second=second, cpu_first=cpu_first, cpu_second=cpu_second,
                      trace=short.get("jaxpr_trace_duration", 0.0),
                      lower=short.get("jaxpr_to_mlir_module_duration", 0.0),
                      xla=short.get("backend_compile_duration", 0.0))))
"""


def run_one(repo: Path, solver: str, steps: int, val: Path, xla_flags: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), INVDIFF_COMPILATION_CACHE="0", JAX_ENABLE_COMPILATION_CACHE="false")
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    env.pop("INVDIFF_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", CHILD, solver, str(steps), str(val)], cwd=repo, env=env,
                         capture_output=True, text=True)
    if out.returncode:  # e.g. an XLA flag this jaxlib does not know
        raise SystemExit(f"{solver} in {repo} (XLA_FLAGS={env.get('XLA_FLAGS')!r}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repos", default="this=.",
                   help="name=path[@XLA_FLAGS],... of checkouts to compare (a checkout may be listed with several "
                        "XLA_FLAGS under different names)")
    p.add_argument("--solvers", default="ddnm,repaint,dps")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--val", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/emoji64_val.npz")
    p.add_argument("--out", default="benchmarks/results/compile_time_cpu")
    a = p.parse_args()
    specs = {k: (v.split("@", 1) + [None])[:2] for k, v in (kv.split("=", 1) for kv in a.repos.split(","))}
    repos = {k: Path(v[0]).resolve() for k, v in specs.items()}
    commits = {k: subprocess.run(["git", "-C", str(r), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() for k, r in repos.items()}
    rows: dict[tuple[str, str], list[dict]] = {}
    load_before = os.getloadavg()
    for rnd in range(a.rounds):
        for solver in a.solvers.split(","):
            for name, repo in (repos.items() if rnd % 2 == 0 else reversed(list(repos.items()))):
                r = run_one(repo, solver, a.steps, a.val, specs[name][1])
                rows.setdefault((solver, name), []).append(r)
                print(f"round {rnd} {solver} {name}: first {r['first']:.1f} s, second {r['second']:.2f} s, "
                      f"xla {r['xla']:.1f} s", flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in rows.items()}

    def compile_s(solver: str, name: str, kind: str = "") -> float:
        """The median over rounds of first - second (wall time, or CPU time for kind "cpu_")."""
        return statistics.median(r[kind + "first"] - r[kind + "second"] for r in rows[(solver, name)])

    names = list(repos)
    from invdiff.bench.timing import cpu_name

    md = [f"# Compile time per solver program, bundled model (cold, persistent cache off) — {cpu_name()}, "
          f"{platform.machine()}, {os.cpu_count()} cores", "",
          f"- command: `python benchmarks/compile_time.py --repos {a.repos} --solvers {a.solvers} --steps {a.steps} "
          f"--rounds {a.rounds}`; date {time.strftime('%Y-%m-%d %H:%M')}",
          "- checkouts: " + ", ".join(
              f"{k} = {commits[k]}" + (f" with XLA_FLAGS='{specs[k][1]}'" if specs[k][1] else "") for k in names),
          f"- load average before {[round(v, 1) for v in load_before]}, after "
          f"{[round(v, 1) for v in os.getloadavg()]} (the machine may be shared: checkouts were interleaved)",
          f"- problem: box inpainting of 2 validation emoji, {a.steps} steps (RePaint: `solvers.make`'s "
          f"resampling walk); medians of {a.rounds} fresh processes each", "",
          "| solver | checkout | first call s | second call s | compile s (first - second) | compile CPU s "
          "| trace s | lower s | XLA s |", "|---|---|---|---|---|---|---|---|---|"]
    for solver in a.solvers.split(","):
        for name in names:
            m = med[(solver, name)]
            md.append(f"| {solver} | {name} | {m['first']:.1f} | {m['second']:.2f} | {compile_s(solver, name):.1f} "
                      f"| {compile_s(solver, name, 'cpu_'):.1f} | {m['trace']:.1f} | {m['lower']:.1f} "
                      f"| {m['xla']:.1f} |")

    md += [""] + [f"Ratio of compile s, {n} / {names[0]}: " + ", ".join(
        f"{s} {compile_s(s, n) / compile_s(s, names[0]):.2f}" for s in a.solvers.split(",")) + "; of compile CPU s: "
        + ", ".join(f"{s} {compile_s(s, n, 'cpu_') / compile_s(s, names[0], 'cpu_'):.2f}" for s in a.solvers.split(","))
        for n in names[1:]]
    out = Path(a.out)
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(json.dumps(dict(commits=commits, rows={f"{s}|{n}": v for (s, n), v in
                                                                                rows.items()}), indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
