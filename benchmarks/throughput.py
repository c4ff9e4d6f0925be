"""Throughput of ``invdiff.solve``: how close one compiled solve comes to its bare network calls.

GPU (H100; results go to ``benchmarks/results/throughput_<machine>_<model>[_bf16][_repaint_paper].md``
and ``.json``; not yet run on a GPU: from the H100 forward times of network_speed.py, 45-77 ms
per ADM-256 batch-8 call, each of the first two should take about 5-8 minutes, the third about
4-5; on accelerators the default ``--budget-s 480`` skips the solvers that would end after 8
minutes, by an estimate from the solvers already measured, and the results are written after
every solver, so a run ends within 9 minutes unless one solver alone overruns; rerun skipped
solvers with ``--solvers NAMES --tag NAME``)::

    python3 benchmarks/throughput.py --model adm256 --batch 8 --dtype float32
    python3 benchmarks/throughput.py --model adm256 --batch 8 --dtype bfloat16
    python3 benchmarks/throughput.py --model adm256 --batch 8 --dtype bfloat16 --paper-repaint

CPU (2 cores)::

    python3 benchmarks/throughput.py --model emoji64 --batch 1 --steps 20
    python3 benchmarks/throughput.py --model tiny32 --batch 1 --steps 20
    python3 benchmarks/throughput.py --model tiny32 --batch 1 --steps 20 --paper-repaint   # smoke test

For every solver (default: all of ``solvers.SOLVERS``, each with ``steps=--steps`` and its
other defaults, so RePaint keeps its 10 x 10 resampling) on a box-inpainting problem:

* ``t_net``: one network call ``model.eps_and_v(x, t=500)`` at the batch, jitted, median of
  ``--net-repeats`` calls, re-measured right before every timed solve call (so that load
  drift on a shared machine affects both sides of the ratio alike); for gradient solvers (``vjp_per_step > 0``:
  MCG, PiGDM, DPS) also ``t_fwd_vjp``, one forward plus one VJP through x -> x̂0(x), as
  :func:`invdiff.solve.denoise_vjp` computes it.
* ``t_solve``: wall time of ``invdiff.solve(...)`` with ``block_until_ready(sol.x)``, median
  of ``--repeats`` calls after a first (compiling) call.
* overhead ratio = ``t_solve / (network steps x per-step cost)``, the median over the
  rounds (each round: network timing, then one solve), network steps = down
  transitions of the walk (RePaint's up-steps re-noise without a network call), per-step cost
  = ``t_net`` for gradient-free solvers, ``t_fwd_vjp`` for gradient solvers. Targets: <= 1.10
  on CPU and <= 1.05 on accelerators for gradient-free solvers; <= 1.10 for gradient solvers.
* for gradient solvers also forward + VJP per step inside a bare 5-step ``lax.scan`` (no
  solver, no ``lax.cond``) and the ratio of the solve to that: on XLA:CPU a VJP inside a loop
  compiles to slower convolutions than a standalone VJP, which this separates from the driver.
* compile s = first call - median warm call (tracing, lowering, XLA compilation and, on
  GPUs, autotuning). JAX's persistent compilation cache is switched off for the run (unless
  ``--disk-cache``) so that this is a real compilation.
* peak memory: on GPUs the device's ``peak_bytes_in_use`` (it cannot be reset: the value after
  each solver is the peak since the process started, solvers run in the table's order); on
  CPU the process's peak resident set size (``ru_maxrss``, also cumulative).

``--paper-repaint`` instead runs RePaint at the paper's setting (steps=250, jump_length=10,
jump_n_sample=10: 2410 network calls, 4570 transitions) and reports seconds per image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import network_speed  # noqa: E402  (benchmarks/network_speed.py: random weights, flag parsing)

import invdiff  # noqa: E402
import solvers as solver_registry  # noqa: E402
from invdiff import noise  # noqa: E402
from invdiff.images import atomic_write_bytes  # noqa: E402
from invdiff.nets import BUNDLED, PRESETS, ADMConfig, preset_flags  # noqa: E402
from invdiff.schedule import transitions  # noqa: E402
from invdiff.solve import trace_count  # noqa: E402
from operators import Inpainting, masks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: Short names for architectures built with random weights: ``adm256`` is guided-diffusion's
#: ImageNet 256x256 unconditional UNet (552.8 M parameters, the model of RePaint, DDNM, ΠGDM
#: and DiffPIR); ``tiny32`` a small 32x32 ADM where per-step overheads are visible on a CPU.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "adm256": ("imagenet256-uncond", {}),
    "tiny32": ("imagenet256-uncond", dict(image_size=32, num_channels=32, channel_mult="1,2",
                                          num_res_blocks=1, attention_resolutions="16",
                                          num_head_channels=32)),
}

#: The timestep of the standalone network call (original, un-respaced index).
NET_T = 500


# ---------------------------------------------------------------------------------------
# machine and model


def machine() -> dict[str, str]:
    """``{"name": human-readable machine, "slug": for file names, "platform": jax backend}``.

    CPU: the model name from /proc/cpuinfo and the cores this process may use; slug "cpu".
    Accelerators: the device kind (e.g. "NVIDIA H100 80GB HBM3"), slug from network_speed.py.
    """
    dev = jax.devices()[0]
    _, slug = network_speed._device_name()
    if dev.platform == "cpu":
        cpu = platform.processor() or "unknown CPU"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        name = f"CPU: {cpu}, {cores} cores"
    else:
        name = f"{dev.device_kind} ({dev.platform}, {len(jax.devices())} device(s) visible, 1 used)"
    return {"name": name, "slug": slug, "platform": dev.platform}


def load_benchmark_model(spec: str, dtype: str, flags_text: str = "", preset: str | None = None
                         ) -> tuple[Any, str, dict[str, Any]]:
    """Build the model named by ``spec``; returns (model, file-name slug, description).

    ``spec``: a bundled model (``emoji64``: its trained weights), an alias of :data:`ALIASES`
    or a preset of :data:`invdiff.nets.PRESETS` (random weights, std 0.02, built on the device
    by ``network_speed.random_model``), or a path to a checkpoint (``.pt`` with ``preset``, or an
    orbax directory). ``flags_text`` (``"image_size=64,num_channels=64"``) overrides the
    architecture flags of an alias or preset. ``dtype``: the network's compute dtype
    (``float32`` or ``bfloat16``); weights stay float32, images float32.
    """
    jdtype = jnp.dtype(dtype)
    if spec in ALIASES or spec in PRESETS:
        base, extra = ALIASES.get(spec, (spec, {}))
        flags = {**preset_flags(base), **extra, **network_speed.parse_flags(flags_text)}
        config = ADMConfig.from_flags(**flags)
        model = network_speed.random_model(config, jdtype)
        slug = ("adm256" if spec == "imagenet256-uncond" else spec) + ("_custom" if flags_text else "")
        weights = "random (std 0.02)"
    else:
        if flags_text:
            raise ValueError("--flags applies to presets and aliases only; a checkpoint brings its own flags")
        if spec not in BUNDLED and not Path(spec).exists():
            raise FileNotFoundError(
                f"--model {spec!r} is neither a bundled model ({', '.join(sorted(BUNDLED))}), an alias "
                f"({', '.join(ALIASES)}), a preset ({', '.join(PRESETS)}) nor an existing path")
        model = invdiff.load_model(spec, preset=preset, dtype=jdtype)
        slug = spec if spec in BUNDLED else Path(spec).stem
        weights = "trained (bundled)" if spec in BUNDLED else f"checkpoint {spec}"
        flags = model.config.to_flags()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", slug).strip("_").lower()
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(model.params))
    desc = dict(spec=spec, weights=weights, params=n_params, dtype=dtype,
                flags={k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()})
    return model, slug, desc


def make_problem(model: Any, batch: int, seed: int = 0) -> dict[str, Any]:
    """A box-inpainting problem for ``model``: images uniform in [-1, 1], a centred box mask
    (shared by the batch), y = A x, class labels 0, 1, … for class-conditional models."""
    cfg = model.config
    s, c = cfg.image_size, cfg.in_channels
    x = jax.random.uniform(jax.random.key(seed), (batch, s, s, c), jnp.float32, -1.0, 1.0)
    op = Inpainting(masks.by_name("box", jax.random.key(seed + 1), s, s))
    label = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes if cfg.class_cond else None
    return dict(op=op, y=op.A(x), x=x, label=label, key=jax.random.key(seed + 2))


# ---------------------------------------------------------------------------------------
# timing


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` (each blocked until its outputs are ready)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


@jax.jit
def _net(model: Any, x: jax.Array, t: jax.Array, label: jax.Array | None) -> Any:
    return model.eps_and_v(x, t, label)


@jax.jit
def _fwd_vjp(model: Any, x: jax.Array, t: jax.Array, label: jax.Array | None, g: jax.Array,
             abar: jax.Array, omab: jax.Array) -> Any:
    """One forward and one VJP through x -> x̂0(x), as invdiff.solve.denoise_vjp computes it."""

    def f(x_):
        eps, v = model.eps_and_v(x_, t, label)
        eps = eps.astype(x_.dtype)
        return noise.x0_from_eps(x_, eps, abar, omab), (eps, v)

    x0, vjp_fn, aux = jax.vjp(f, x, has_aux=True)
    return x0, aux, vjp_fn(g)[0]


#: Steps of the bare scan of forward + VJP (see :func:`_fwd_vjp_scan`).
SCAN_LEN = 5


@jax.jit
def _fwd_vjp_scan(model: Any, x: jax.Array, t: jax.Array, label: jax.Array | None, g: jax.Array,
                  abar: jax.Array, omab: jax.Array) -> jax.Array:
    """:data:`SCAN_LEN` forward + VJP steps in a bare ``lax.scan`` (no solver, no ``lax.cond``):
    separates what a compiled loop costs on this backend from what the solve driver adds."""

    def body(x_, _):
        x0, _, gx = _fwd_vjp(model, x_, t, label, g, abar, omab)
        return x_ + 1e-3 * (gx + x0), None

    return jax.lax.scan(body, x, None, length=SCAN_LEN)[0]


class NetworkTimer:
    """Times the bare network call and forward + VJP of ``model`` at a fixed batch."""

    def __init__(self, model: Any, batch: int, label: jax.Array | None):
        cfg = model.config
        s, c = cfg.image_size, cfg.in_channels
        self.model, self.label = model, label
        self.x = jax.random.normal(jax.random.key(7), (batch, s, s, c), jnp.float32)
        self.g = jax.random.normal(jax.random.key(8), (batch, s, s, c), jnp.float32)
        self.t = jnp.full((batch,), NET_T, jnp.int32)
        ab = float(model.schedule.alphas_cumprod[NET_T])
        self.abar, self.omab = jnp.float32(ab), jnp.float32(1.0 - ab)
        self.compile_s: dict[str, float] = {}

    def _call(self, kind: str) -> Callable[[], Any]:
        args = (self.model, self.x, self.t, self.label)
        if kind == "net":
            return lambda: _net(*args)
        if kind == "fwd_vjp":
            return lambda: _fwd_vjp(*args, self.g, self.abar, self.omab)
        if kind == "fwd_vjp_scan":
            return lambda: _fwd_vjp_scan(*args, self.g, self.abar, self.omab)
        raise ValueError(f"unknown kind {kind!r}")

    def measure(self, kind: str, repeats: int) -> list[float]:
        """Seconds per step of ``kind``: "net" (one network call), "fwd_vjp" (one forward + VJP) or
        "fwd_vjp_scan" (one step of a bare scan of forward + VJP, i.e. the call / SCAN_LEN).
        Compiles (and warms) on first use."""
        fn = self._call(kind)
        per = SCAN_LEN if kind == "fwd_vjp_scan" else 1
        if kind not in self.compile_s:
            first = time_calls(fn, 1)[0]
            warm = statistics.median(time_calls(fn, 2 if per == 1 else 1))
            self.compile_s[kind] = max(first - warm, 0.0)
        else:
            time_calls(fn, 1)  # one warm-up call after the previous solver's work
        return [v / per for v in time_calls(fn, repeats)]


def peak_memory() -> dict[str, Any]:
    """Peak memory so far: the device's peak bytes in use (accelerators) or the process's peak
    RSS (CPU). Both are cumulative since the process started."""
    dev = jax.devices()[0]
    peak = network_speed._peak_device_bytes(dev) if dev.platform != "cpu" else None
    if peak is not None:
        return {"bytes": int(peak), "what": "device peak_bytes_in_use since process start"}
    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "what": "process peak RSS since process start (host memory: weights, XLA buffers, "
                    "compiler, Python)"}


def network_steps(solver: Any, model: Any) -> tuple[int, int]:
    """(down transitions = network-calling steps, all transitions) of ``solver``'s walk."""
    tr = transitions(model.schedule, solver.steps, solver.walk())
    return tr.num_down, len(tr)


def bench_solver(name: str, solver: Any, model: Any, problem: dict[str, Any], timer: NetworkTimer,
                 repeats: int, net_repeats: int, on_accel: bool, sigma_y: float, scan_check: bool = True,
                 progress: bool = False) -> dict[str, Any]:
    """Time one solver (see the module docstring); returns one result row.

    ``scan_check``: for gradient solvers also time forward + VJP inside a bare ``lax.scan``
    (``_fwd_vjp_scan``), once per round. ``progress``: solve with a (no-op) progress callback,
    to measure what the in-loop ``jax.debug.callback`` costs.

    After the compiling call, each of the ``repeats`` rounds times the network (and forward +
    VJP for gradient solvers), then one solve; the ratio is the median over the rounds of
    solve time / (network steps x per-step cost of the same round), so that load drift on a
    shared machine hits both sides alike.
    """
    cls = type(solver)
    nfe_ps, vjp_ps = cls.nfe_per_step, cls.vjp_per_step
    down, n_trans = network_steps(solver, model)

    def run():
        sol = invdiff.solve(solver, model, problem["op"], problem["y"], key=problem["key"],
                            sigma_y=sigma_y, label=problem["label"], progress=(lambda n: None) if progress else None)
        jax.block_until_ready(sol.x)
        return sol

    traces0 = trace_count()
    t0 = time.perf_counter()
    sol = run()
    first = time.perf_counter() - t0
    traces1 = trace_count()
    warm, nets, fvs, fv_scans, ratios = [], [], [], [], []
    for _ in range(repeats):
        t_net = statistics.median(timer.measure("net", net_repeats))
        t_fv = statistics.median(timer.measure("fwd_vjp", net_repeats)) if vjp_ps else 0.0
        if vjp_ps and scan_check:
            fv_scans.append(timer.measure("fwd_vjp_scan", 1)[0])
        per_step = (nfe_ps - vjp_ps) * t_net + vjp_ps * t_fv
        t0 = time.perf_counter()
        sol = run()
        warm.append(time.perf_counter() - t0)
        nets.append(t_net)
        fvs.append(t_fv)
        ratios.append(warm[-1] / (down * per_step))
    retraced = trace_count() - traces1
    if sol.nfe != down * nfe_ps:
        raise RuntimeError(f"{name}: Solution.nfe = {sol.nfe} but the walk has {down} down steps "
                           f"x {nfe_ps} network calls")
    t_solve, t_net = statistics.median(warm), statistics.median(nets)
    t_fv = statistics.median(fvs) if vjp_ps else None
    t_fv_scan = statistics.median(fv_scans) if fv_scans else None
    per_step = (nfe_ps - vjp_ps) * t_net + (vjp_ps * t_fv if vjp_ps else 0.0)
    ideal = down * per_step
    ratio = statistics.median(ratios)
    target = 1.10 if (vjp_ps or not on_accel) else 1.05
    batch = int(problem["y"].shape[0])
    return dict(
        solver=name, cls=cls.__name__, steps=solver.steps, jump_length=solver.jump_length,
        jump_n_sample=solver.jump_n_sample, transitions=n_trans, network_steps=down, nfe=sol.nfe,
        vjp=sol.vjp, gradient=bool(vjp_ps), t_net_s=t_net, t_fwd_vjp_s=t_fv, t_fwd_vjp_scan_s=t_fv_scan,
        ratio_vs_bare_scan=t_solve / (down * vjp_ps * t_fv_scan) if t_fv_scan else None, per_step_s=per_step,
        t_net_rounds_s=nets, t_fwd_vjp_rounds_s=fvs if vjp_ps else None, t_solve_s=t_solve,
        t_solve_all_s=warm, first_call_s=first, compile_s=max(first - t_solve, 0.0),
        s_per_image=t_solve / batch, ideal_s=ideal, overhead_ratio=ratio, ratio_rounds=ratios,
        ratio_of_medians=t_solve / ideal, target=target, passed=bool(ratio <= target),
        traced_first=traces1 - traces0, retraced_warm=retraced, finite=bool(jnp.all(jnp.isfinite(sol.x))),
        peak_memory=peak_memory(), load_average=[round(v, 2) for v in os.getloadavg()],
    )


def estimate_seconds(solver: Any, model: Any, rows: list[dict[str, Any]], repeats: int) -> float:
    """Rough seconds ``bench_solver`` will take, from the rows measured so far (0 for the first):
    the largest compile time seen (doubled for a gradient solver) plus 1 + ``repeats`` solves at
    the measured per-step cost (forward + VJP estimated as 3 network calls until measured)."""
    if not rows:
        return 0.0
    down, _ = network_steps(solver, model)
    t_net = rows[-1]["t_net_s"]
    fv = [r["t_fwd_vjp_s"] for r in rows if r["t_fwd_vjp_s"]]
    grad = bool(type(solver).vjp_per_step)
    per_step = (fv[-1] if fv else 3 * t_net) if grad else t_net
    compile_s = max(r["compile_s"] for r in rows) * (1 if fv or not grad else 2)
    return compile_s + (1 + repeats) * down * per_step


# ---------------------------------------------------------------------------------------
# results


def _fmt_ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1e3:.2f}"


def _mib(v: int) -> str:
    return f"{v / 2**20:,.0f}"


def write_results(stem: str, meta: dict[str, Any], rows: list[dict[str, Any]], title: str) -> Path:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``meta['out']`` (atomically)."""
    out = Path(meta["out"])
    atomic_write_bytes(out / f"{stem}.json", json.dumps({"meta": meta, "results": rows}, indent=2).encode())
    m, mod = meta["machine"], meta["model"]
    lines = [
        f"# {title} — {m['name']}", "",
        f"- machine: {m['name']}; jax {meta['jax']} ({m['platform']} backend); date {meta['date']}; "
        f"load average at the end {meta['load_average']} (the machine may be shared)",
        f"- command: `{meta['command']}`",
        f"- model: `{mod['spec']}` ({mod['params'] / 1e6:.2f} M parameters, {mod['weights']} weights), "
        f"compute dtype {mod['dtype']}, image {mod['flags'].get('image_size')}x{mod['flags'].get('image_size')}; "
        f"batch {meta['batch']}; steps {meta['steps']}; sigma_y {meta['sigma_y']}; box inpainting",
        f"- repeats: {meta['repeats']} rounds after one compiling solve call, each round: {meta['net_repeats']} "
        "network calls (median), then one solve; JAX persistent compilation "
        f"cache {'on' if meta['disk_cache'] else 'off'}",
        f"- network compile s: {', '.join(f'{k} {v:.1f}' for k, v in meta.get('net_compile_s', {}).items())}",
        "",
        "Definitions: *net ms* = one jitted `model.eps_and_v(x, t=500)` at the batch; *fwd+VJP ms* = one "
        "forward and one VJP through x -> x̂0 (gradient solvers); *ideal s* = network steps x per-step "
        "cost (net for gradient-free, fwd+VJP for gradient solvers); *ratio* = median over the rounds of "
        "solve s / ideal s, each round timing the network right before its solve (the columns show medians); "
        "*compile s* = first call - median warm call; *fwd+VJP in bare scan ms*: per step of a "
        f"{SCAN_LEN}-step `lax.scan` of forward + VJP alone (no solver, no `lax.cond`), and *ratio vs bare scan* "
        "= solve s / (network steps x that): what a compiled loop of forward + VJP costs on this backend "
        "vs what the solve driver adds; *peak MiB*: "
        f"{rows[0]['peak_memory']['what'] if rows else ''}, read after each row (cumulative, in row order).",
        "",
    ]
    if meta.get("skipped"):
        lines += [f"Skipped (they would have overrun the time budget of {meta['budget_s']:.0f} s, --budget-s): "
                  f"{', '.join(meta['skipped'])}", ""]
    lines.append("| solver | steps | transitions | network steps | NFE | VJP | net ms | fwd+VJP ms | solve s "
                 "| s/image | ideal s | ratio | target | pass | compile s | peak MiB | finite "
                 "| fwd+VJP in bare scan ms | ratio vs bare scan |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['cls']} | {r['steps']} | {r['transitions']} | {r['network_steps']} | {r['nfe']} | {r['vjp']} | "
            f"{_fmt_ms(r['t_net_s'])} | {_fmt_ms(r['t_fwd_vjp_s'])} | {r['t_solve_s']:.3f} | "
            f"{r['s_per_image']:.3f} | {r['ideal_s']:.3f} | {r['overhead_ratio']:.3f} | <= {r['target']:.2f} | "
            f"{'yes' if r['passed'] else 'NO'} | {r['compile_s']:.1f} | {_mib(r['peak_memory']['bytes'])} | "
            f"{'yes' if r['finite'] else 'no'} | {_fmt_ms(r['t_fwd_vjp_scan_s'])} | "
            f"{'–' if r['ratio_vs_bare_scan'] is None else format(r['ratio_vs_bare_scan'], '.3f')} |")
    warn = [r["cls"] for r in rows if r["retraced_warm"]]
    if warn:
        lines += ["", f"Warning: warm calls recompiled for {', '.join(warn)} (timings include compilation)."]
    atomic_write_bytes(out / f"{stem}.md", ("\n".join(lines) + "\n").encode())
    return out / f"{stem}.md"


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="emoji64", help="emoji64 (bundled), an alias (adm256, tiny32), "
                    "a preset name (random weights) or a checkpoint path (default: emoji64)")
    ap.add_argument("--preset", default=None, help="preset describing a .pt checkpoint given as --model")
    ap.add_argument("--flags", default="", help="architecture flags overriding an alias/preset, "
                    "e.g. image_size=64,num_channels=64,channel_mult=1,2,2")
    ap.add_argument("--batch", type=int, default=1, help="images per solve (default 1)")
    ap.add_argument("--steps", type=int, default=None, help="respaced steps of every solver (default 20; "
                    "250 with --paper-repaint)")
    ap.add_argument("--solvers", default=None, help="comma-separated names from solvers.SOLVERS (default: all)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="network compute dtype (default float32; weights and images stay float32)")
    ap.add_argument("--repeats", type=int, default=None, help="warm solve calls, median reported "
                    "(default 3; 1 with --paper-repaint)")
    ap.add_argument("--net-repeats", type=int, default=None, help="network calls timed before each solve call "
                    "(default 5)")
    ap.add_argument("--no-scan-check", action="store_true", help="skip timing forward + VJP in a bare lax.scan "
                    "for gradient solvers (saves one compilation)")
    ap.add_argument("--sigma-y", type=float, default=0.0, help="measurement noise, model units (default 0)")
    ap.add_argument("--paper-repaint", action="store_true", help="only RePaint at the paper setting "
                    "(250 steps, jump_length 10, jump_n_sample 10); --steps overrides the 250 for smoke tests")
    ap.add_argument("--budget-s", type=float, default=None, help="skip the remaining solvers once the next one "
                    "would end after this many seconds, by an estimate from the solvers measured so far (default 480 "
                    "on accelerators, none on CPU; results are written after every solver)")
    ap.add_argument("--disk-cache", action="store_true", help="keep JAX's persistent compilation cache on "
                    "(then compile s may measure a cache read)")
    ap.add_argument("--out", default=str(RESULTS), help="results directory (default benchmarks/results)")
    ap.add_argument("--progress", action="store_true", help="solve with a no-op progress callback (its cost)")
    ap.add_argument("--tag", default=None, help="suffix for the result file names")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    if not args.disk_cache:
        jax.config.update("jax_enable_compilation_cache", False)
    if args.batch < 1:
        raise ValueError("--batch must be >= 1")
    mach = machine()
    on_accel = mach["platform"] != "cpu"
    steps = args.steps or (250 if args.paper_repaint else 20)
    repeats = args.repeats or (1 if args.paper_repaint else 3)
    net_repeats = args.net_repeats or 5
    budget_s = args.budget_s if args.budget_s is not None else (480.0 if on_accel else float("inf"))
    if args.paper_repaint:
        names = ["repaint"]
        make = {"repaint": lambda: solver_registry.RePaint(steps=steps, jump_length=10, jump_n_sample=10)}
    else:
        names = [n.strip().lower() for n in args.solvers.split(",")] if args.solvers else list(solver_registry.SOLVERS)
        make = {n: (lambda cls: (lambda: cls(steps=steps)))(solver_registry.get(n)) for n in names}

    model, slug, desc = load_benchmark_model(args.model, args.dtype, args.flags, args.preset)
    stem = f"throughput_{mach['slug']}_{slug}" + ("_bf16" if args.dtype == "bfloat16" else "") \
        + ("_repaint_paper" if args.paper_repaint else "") + (f"_{args.tag}" if args.tag else "")
    problem = make_problem(model, args.batch)
    timer = NetworkTimer(model, args.batch, problem["label"])
    print(f"{mach['name']}; model {args.model} ({desc['params'] / 1e6:.2f} M params, {args.dtype}); "
          f"batch {args.batch}; steps {steps}; solvers {', '.join(names)}", flush=True)

    meta: dict[str, Any] = dict(
        machine=mach, jax=jax.__version__, python=platform.python_version(), model=desc, batch=args.batch, steps=steps,
        sigma_y=args.sigma_y, repeats=repeats, net_repeats=net_repeats, disk_cache=args.disk_cache,
        budget_s=budget_s, out=args.out, date=time.strftime("%Y-%m-%d %H:%M"),
        command="python3 benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        paper_repaint=args.paper_repaint, progress_callback=args.progress, skipped=[],
    )
    rows: list[dict[str, Any]] = []
    path = None
    title = "invdiff.solve throughput"
    if args.paper_repaint:
        title = ("RePaint at the paper setting (250 steps, jump_length 10, jump_n_sample 10)" if steps == 250 else
                 f"RePaint with the paper's resampling (jump_length 10, jump_n_sample 10) at steps={steps}: "
                 "a smoke test, not the paper's 250 steps")
    for i, name in enumerate(names):
        solver = make[name]()
        elapsed = time.perf_counter() - start
        if elapsed + estimate_seconds(solver, model, rows, repeats) > budget_s:
            meta["skipped"] = names[i:]
            print(f"time budget: {elapsed:.0f} s used, skipping {', '.join(names[i:])}", flush=True)
            break
        print(f"{name}: ...", flush=True)
        r = bench_solver(name, solver, model, problem, timer, repeats, net_repeats, on_accel, args.sigma_y,
                         scan_check=not args.no_scan_check, progress=args.progress)
        rows.append(r)
        print(f"  NFE {r['nfe']} (VJP {r['vjp']}), solve {r['t_solve_s']:.3f} s, ideal {r['ideal_s']:.3f} s, "
              f"ratio {r['overhead_ratio']:.3f} ({'pass' if r['passed'] else 'FAIL'} <= {r['target']}), "
              f"compile {r['compile_s']:.1f} s, {r['s_per_image']:.3f} s/image", flush=True)
        meta["net_compile_s"] = dict(timer.compile_s)
        meta["load_average"] = [round(v, 2) for v in os.getloadavg()]
        meta["total_s"] = time.perf_counter() - start
        path = write_results(stem, meta, rows, title)
    print(f"wrote {path} and .json ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
