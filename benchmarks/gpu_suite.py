"""The GPU figures in one command: what compiling the whole sampling loop buys on an accelerator.

One NVIDIA GPU, under 8 minutes, every result under ``$OUT`` (``gpu_suite.md`` and
``gpu_suite.json``, rewritten after every section, so a run cut short keeps what it measured)::

    python3 benchmarks/gpu_suite.py --out "$OUT" 2>&1 | tee "$OUT/gpu_suite.log"

On this workplace's H200 machine (jax, flax, optax, orbax, pillow, tqdm and matplotlib are
installed there; nothing to install), as one device call with ``timeout_s`` 560::

    export PYTHONUNBUFFERED=1; set -o pipefail; python3 benchmarks/gpu_suite.py --out $OUT 2>&1 | tee $OUT/gpu_suite.log

then copy ``gpu_suite.md``/``.json`` to ``benchmarks/results/gpu_suite_<gpu>.md``/``.json``.

CPU smoke test at toy size (a 32x32 ADM instead of ADM-256, a few steps, about 2 minutes)::

    python3 benchmarks/gpu_suite.py --toy --out /tmp/gpu_suite_toy

Sections, in priority order (a section that would not end inside ``--budget-s`` is skipped and
listed, with the command to run it alone via ``--sections``):

1. ``ratio-bf16-b8``, ``ratio-f32-b8``, ``ratio-bf16-b1``, ``ratio-f32-b1`` — DDNM, RePaint, DiffPIR,
   DPS and MCG on the ADM-256 architecture (ImageNet-256 unconditional preset, random weights)
   at ``--steps`` (20; RePaint with jumps 5 x 2, as ``solvers.make``): time(solve) / (NFE x one
   network call), over forward + VJP for DPS and MCG (see ``benchmarks/throughput.py``), compile
   seconds, and memory (the program's XLA argument + temporary bytes, and the device's peak).
2. ``repaint-paper`` — RePaint at its paper setting (250 steps, jumps 10 x 10: 2,410 network calls)
   at batch 8 in bfloat16: seconds per image and the overhead ratio (targets: <= 15 s/image,
   <= 1.05).
3. ``python-loop`` — a Python loop over a jitted step (how the reference implementations run)
   against the compiled scan, DDNM at 50 steps, at ADM-256 (bfloat16, batch 8) and at the bundled
   model (float32, batch 8); see ``benchmarks/python_loop.py``.
4. ``quality`` — bfloat16 against float32 on the bundled model: PSNR of DDNM and RePaint on
   validation images (box inpainting) with the same keys, and the difference. The images are
   ``../shared/datasets/emoji64_val.npz`` when it is there, else the 10 that ship with the package.

Compilation: the programs of a section are lowered one after another (tracing holds Python's
lock), then compiled concurrently in ``--compile-workers`` threads (XLA compiles outside the
lock); the jit cache then holds them, so the timed calls never compile. *compile s* is that
concurrent compile's wall time (it would be somewhat shorter alone) and *lower s* the tracing and
lowering; nothing is timed while anything compiles. JAX's persistent compilation cache is off.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import python_loop  # noqa: E402  (benchmarks/python_loop.py)
import throughput  # noqa: E402  (benchmarks/throughput.py)

import invdiff  # noqa: E402
import solvers as solver_registry  # noqa: E402
from invdiff import metrics  # noqa: E402
from invdiff.images import atomic_write_bytes, to_model  # noqa: E402
from operators import Inpainting, masks  # noqa: E402

#: the module (``invdiff.solve`` names the function in the package namespace)
solve_module = importlib.import_module("invdiff.solve")

RATIO_SOLVERS = ("ddnm", "repaint", "diffpir", "dps", "mcg")
SECTIONS = ("ratio-bf16-b8", "repaint-paper", "python-loop", "quality", "ratio-f32-b8", "ratio-bf16-b1",
            "ratio-f32-b1")
VAL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "emoji64_val.npz"


# ---------------------------------------------------------------------------------------
# Ahead-of-time compilation of invdiff.solve programs


class _Reached(Exception):
    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("captured")
        self.call = (args, kwargs)


def lower_solve(*args: Any, **kwargs: Any) -> Any:
    """The ``jax.stages.Lowered`` program that ``invdiff.solve(*args, **kwargs)`` would run.

    ``solve`` checks and prepares its arguments as usual, but its compiled program is lowered
    instead of called; compiling the result puts the executable into the jit cache, so the next
    identical ``solve`` call neither traces nor compiles.
    """
    real = solve_module._run_compiled

    def reach(*a: Any, **k: Any) -> Any:
        raise _Reached(a, k)

    solve_module._run_compiled = reach
    try:
        invdiff.solve(*args, **kwargs)
    except _Reached as r:
        a, k = r.call
        return real.lower(*a, **k)
    finally:
        solve_module._run_compiled = real
    raise RuntimeError("invdiff.solve returned without reaching its compiled program")


def compile_all(lowerers: dict[str, Callable[[], Any]], workers: int) -> dict[str, dict[str, Any]]:
    """Lower each program (serially), then compile them all in ``workers`` threads. Returns per name
    lower/compile seconds and the program's XLA memory analysis (bytes)."""
    lowered, info = {}, {}
    for name, fn in lowerers.items():
        t0 = time.perf_counter()
        lowered[name] = fn()
        info[name] = {"lower_s": time.perf_counter() - t0}

    def comp(name: str) -> tuple[str, Any, float]:
        t0 = time.perf_counter()
        c = lowered[name].compile()
        return name, c, time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, compiled, secs in pool.map(comp, list(lowered)):
            info[name]["compile_s"] = secs
            info[name]["concurrent"] = min(workers, len(lowered))
            try:
                m = compiled.memory_analysis()
                info[name]["xla_bytes"] = {k: int(getattr(m, k)) for k in
                                           ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")}
            except Exception:  # noqa: BLE001 - backends without a memory analysis
                info[name]["xla_bytes"] = None
    return info


# ---------------------------------------------------------------------------------------
# Sections


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.start = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.machine = throughput.machine()
        self.models: dict[tuple[str, str], Any] = {}
        self.result: dict[str, Any] = {
            "meta": dict(machine=self.machine, jax=jax.__version__, python=platform.python_version(),
                         date=time.strftime("%Y-%m-%d %H:%M"), toy=args.toy, steps=args.steps,
                         budget_s=args.budget_s, compile_workers=args.compile_workers,
                         command="python3 benchmarks/gpu_suite.py " + " ".join(args.argv)),
            "sections": {}, "skipped": [],
        }

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def big(self) -> str:
        return "tiny32" if self.args.toy else "adm256"

    def model(self, spec: str, dtype: str) -> Any:
        """Models are built once; the bfloat16 ADM shares the float32 one's weights."""
        key = (spec, dtype)
        if key not in self.models:
            other = next((m for (s, _), m in self.models.items() if s == spec), None)
            if other is not None:
                self.models[key] = type(other).create(other.config, other.params, dtype=jnp.dtype(dtype))
            else:
                self.models[key] = throughput.load_benchmark_model(spec, dtype)[0]
        return self.models[key]

    def describe(self, spec: str) -> dict[str, Any]:
        m = self.model(spec, "float32")
        return dict(spec=spec, params=int(sum(np.prod(a.shape) for a in jax.tree.leaves(m.params))),
                    image_size=m.config.image_size)

    # -- ratio ---------------------------------------------------------------------------
    def ratio(self, dtype: str, batch: int) -> dict[str, Any]:
        a = self.args
        spec = self.big()
        model = self.model(spec, dtype)
        problem = throughput.make_problem(model, batch)
        timer = throughput.NetworkTimer(model, batch, problem["label"])
        names = [n for n in a.solvers.split(",") if n]
        built = {n: solver_registry.make(n, a.steps) for n in names}

        def lowerer(solver: Any) -> Callable[[], Any]:
            return lambda: lower_solve(solver, model, problem["op"], problem["y"], key=problem["key"],
                                       label=problem["label"])

        info = compile_all({n: lowerer(s) for n, s in built.items()}, a.compile_workers)
        rows = []
        for n, solver in built.items():
            r = throughput.bench_solver(n, solver, model, problem, timer, a.repeats, a.net_repeats,
                                        self.machine["platform"] != "cpu", 0.0, scan_check=False)
            r.update(info[n], dtype=dtype, batch=batch, program_gib=_gib(info[n]["xla_bytes"]))
            rows.append(r)
            print(f"  {n}: ratio {r['overhead_ratio']:.3f} (target {r['target']}), solve {r['t_solve_s']:.3f} s, "
                  f"compile {r['compile_s']:.1f} s", flush=True)
        return dict(model=self.describe(spec), dtype=dtype, batch=batch, steps=a.steps,
                    net_compile_s=dict(timer.compile_s), rows=rows)

    # -- RePaint at the paper setting ----------------------------------------------------
    def repaint_paper(self) -> dict[str, Any]:
        a = self.args
        spec, dtype, batch = self.big(), "bfloat16", a.paper_batch
        model = self.model(spec, dtype)
        problem = throughput.make_problem(model, batch)
        timer = throughput.NetworkTimer(model, batch, problem["label"])
        solver = solver_registry.RePaint(steps=a.paper_steps, jump_length=10, jump_n_sample=10)
        info = compile_all({"repaint": lambda: lower_solve(solver, model, problem["op"], problem["y"],
                                                            key=problem["key"], label=problem["label"])}, 1)
        r = throughput.bench_solver("repaint", solver, model, problem, timer, 1, a.net_repeats,
                                    self.machine["platform"] != "cpu", 0.0, scan_check=False)
        r.update(info["repaint"], dtype=dtype, batch=batch, program_gib=_gib(info["repaint"]["xla_bytes"]))
        print(f"  {r['nfe']} NFE: {r['s_per_image']:.2f} s/image, ratio {r['overhead_ratio']:.3f}", flush=True)
        return dict(model=self.describe(spec), dtype=dtype, batch=batch, steps=a.paper_steps,
                    targets=dict(s_per_image=15.0, ratio=1.05), rows=[r])

    # -- Python loop vs scan -------------------------------------------------------------
    def python_loop(self) -> dict[str, Any]:
        a = self.args
        rows = []
        for spec, dtype in ((self.big(), "bfloat16"), ("emoji64", "float32")):
            cache = {spec: self._loop_cache(spec, dtype, a.loop_batch)}
            r = python_loop.bench(spec, "ddnm", a.loop_batch, a.loop_steps, dtype, a.repeats, a.net_repeats, cache)
            rows.append(r)
            print(f"  {spec} {dtype}: loop/scan {r['loop_over_scan']:.3f} ({r['loop_step_ms']:.2f} vs "
                  f"{r['scan_step_ms']:.2f} ms/step)", flush=True)
        return dict(batch=a.loop_batch, steps=a.loop_steps, rows=rows)

    def _loop_cache(self, spec: str, dtype: str, batch: int) -> tuple:
        model = self.model(spec, dtype)
        problem = throughput.make_problem(model, batch)
        return model, dict(params=self.describe(spec)["params"], flags=model.config.to_flags()), problem, \
            throughput.NetworkTimer(model, batch, problem["label"])

    # -- bfloat16 vs float32 quality ------------------------------------------------------
    def quality(self) -> dict[str, Any]:
        a = self.args
        if VAL.exists():
            with np.load(VAL) as d:
                x = jnp.asarray(to_model(d["images"][: a.quality_images]))
                labels = jnp.asarray(d["labels"][: a.quality_images].astype(np.int32))
        else:  # the validation emoji that ship with the package (10)
            from invdiff.demo import bundled_samples

            imgs, labs, _ = bundled_samples()
            x, labels = jnp.asarray(imgs[: a.quality_images]), jnp.asarray(labs[: a.quality_images])
        n, h, w, _ = x.shape
        op = Inpainting(masks.by_name("box", jax.random.key(1), h, w))
        y = op.A(x)
        rows = []
        for name in ("ddnm", "repaint"):
            solver = solver_registry.make(name, a.quality_steps)
            psnr = {}
            for dtype in ("float32", "bfloat16"):
                model = self.model("emoji64", dtype)
                sol = invdiff.solve(solver, model, op, y, key=jax.random.key(3), label=labels)
                psnr[dtype] = np.asarray(metrics.psnr(jnp.clip(sol.x, -1, 1), x), np.float64)
            d = psnr["bfloat16"] - psnr["float32"]
            rows.append(dict(solver=name, steps=solver.steps, nfe=sol.nfe, images=n,
                             psnr_float32=float(psnr["float32"].mean()), psnr_bfloat16=float(psnr["bfloat16"].mean()),
                             diff_mean=float(d.mean()), diff_abs_max=float(np.abs(d).max())))
            print(f"  {name}: float32 {rows[-1]['psnr_float32']:.2f} dB, bfloat16 {rows[-1]['psnr_bfloat16']:.2f} dB",
                  flush=True)
        return dict(model="emoji64 (bundled)", operator="inpaint-box", rows=rows)

    # -- driver ----------------------------------------------------------------------------
    def run_section(self, name: str) -> dict[str, Any]:
        if name.startswith("ratio-"):
            _, dt, b = name.split("-")
            batch = int(b[1:])
            if self.args.toy:
                batch = min(batch, 2)
            return self.ratio({"bf16": "bfloat16", "f32": "float32"}[dt], batch)
        return {"repaint-paper": self.repaint_paper, "python-loop": self.python_loop,
                "quality": self.quality}[name]()

    def run(self, sections: list[str]) -> None:
        durations: list[float] = []
        for i, name in enumerate(sections):
            # skip when the section would end after the budget, judged by the slowest section so far
            guess = max(durations, default=0.0)
            if self.elapsed + guess > self.args.budget_s:
                self.result["skipped"] = sections[i:]
                print(f"time budget: {self.elapsed:.0f} s used, skipping {', '.join(sections[i:])}", flush=True)
                break
            print(f"[{self.elapsed:.0f} s] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                res = self.run_section(name)
            except Exception as e:  # noqa: BLE001 - keep the other sections' figures
                res = {"error": f"{type(e).__name__}: {e}"}
                print(f"  FAILED: {res['error']}", flush=True)
            res["seconds"] = time.perf_counter() - t0
            durations.append(res["seconds"])
            self.result["sections"][name] = res
            self.write()
        self.write()

    def write(self) -> None:
        self.result["meta"]["total_s"] = self.elapsed
        self.result["meta"]["load_average"] = [round(v, 2) for v in os.getloadavg()]
        self.result["meta"]["peak_memory"] = throughput.peak_memory()
        text = json.dumps(self.result, indent=1, default=str) + "\n"
        atomic_write_bytes(self.out / "gpu_suite.json", text.encode())
        atomic_write_bytes(self.out / "gpu_suite.md", render(self.result).encode())


def _gib(b: dict[str, int] | None) -> float | None:
    return None if b is None else (b["argument_size_in_bytes"] + b["temp_size_in_bytes"]) / 2**30


def _f(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def render(result: dict[str, Any]) -> str:
    """The markdown report."""
    meta, secs = result["meta"], result["sections"]
    m = meta["machine"]
    lines = [f"# invdiff on the GPU — {m['name']}", "",
             f"- jax {meta['jax']} ({m['platform']} backend), python {meta['python']}, {meta['date']}; "
             f"{meta['total_s']:.0f} s in all; load average {meta.get('load_average')}",
             f"- command: `{meta['command']}`" + (" — TOY SIZE (CPU smoke test), not the real figures" if meta["toy"]
                                                   else ""),
             f"- programs compiled ahead, {meta['compile_workers']} at a time; nothing timed while compiling; "
             "persistent compilation cache off", ""]
    for name, s in secs.items():
        lines.append(f"## {name}")
        if "error" in s:
            lines += ["", f"FAILED: {s['error']}", ""]
            continue
        if name.startswith("ratio-") or name == "repaint-paper":
            mod = s["model"]
            lines += ["", f"Model {mod['spec']} ({mod['params'] / 1e6:.1f} M parameters, random weights), "
                      f"{s['dtype']}, batch {s['batch']}, {s['steps']} steps; box inpainting. ratio = "
                      "time(solve) / (network steps x one network call; forward + VJP for DPS and MCG), median "
                      "over rounds that each time the network right before the solve. program GiB = XLA's "
                      "argument + temporary bytes of the solve program.", "",
                      "| solver | NFE | VJP | net ms | fwd+VJP ms | solve s | s/image | ratio | target | lower s "
                      "| compile s | program GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in s["rows"]:
                lines.append(
                    f"| {r['cls']} | {r['nfe']} | {r['vjp']} | {r['t_net_s'] * 1e3:.2f} | "
                    f"{_f(r['t_fwd_vjp_s'] and r['t_fwd_vjp_s'] * 1e3, '.2f')} | {r['t_solve_s']:.3f} | "
                    f"{r['s_per_image']:.3f} | {r['overhead_ratio']:.3f} | <= {r['target']:.2f} | {r['lower_s']:.1f} | "
                    f"{r['compile_s']:.1f} | {_f(r['program_gib'], '.2f')} |")
            if name == "repaint-paper":
                r = s["rows"][0]
                ok = r["s_per_image"] <= 15.0 and r["overhead_ratio"] <= 1.05
                lines += ["", f"Targets: <= 15 s/image and ratio <= 1.05: {'met' if ok else 'NOT met'}."]
        elif name == "python-loop":
            lines += ["", f"DDNM, {s['steps']} steps, batch {s['batch']}; loop = Python for over jax.jit(step), "
                      "scan = invdiff.solve.", "",
                      "| model | dtype | net ms | scan ms/step | loop ms/step | loop / scan | max diff |",
                      "|---|---|---|---|---|---|---|"]
            for r in s["rows"]:
                lines.append(f"| {r['model']} | {r['dtype']} | {r['net_ms']:.2f} | {r['scan_step_ms']:.2f} | "
                             f"{r['loop_step_ms']:.2f} | {r['loop_over_scan']:.3f} | {r['max_abs_diff']:.1e} |")
        elif name == "quality":
            lines += ["", f"{s['model']}, {s['operator']}, same keys in both dtypes.", "",
                      "| solver | steps | images | PSNR float32 | PSNR bfloat16 | mean diff | max abs diff |",
                      "|---|---|---|---|---|---|---|"]
            for r in s["rows"]:
                lines.append(f"| {r['solver']} | {r['steps']} | {r['images']} | {r['psnr_float32']:.2f} | "
                             f"{r['psnr_bfloat16']:.2f} | {r['diff_mean']:+.3f} | {r['diff_abs_max']:.3f} |")
        lines += ["", f"({s['seconds']:.0f} s)", ""]
    if result["skipped"]:
        lines += ["## Skipped (time budget)", "",
                  f"{', '.join(result['skipped'])}: run them with `python3 benchmarks/gpu_suite.py --sections "
                  f"{','.join(result['skipped'])} --out DIR`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_suite_out", help="results directory (default $OUT)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in order (default: all: "
                    + ",".join(SECTIONS) + ")")
    ap.add_argument("--solvers", default=",".join(RATIO_SOLVERS), help="solvers of the ratio sections")
    ap.add_argument("--steps", type=int, default=20, help="steps of the ratio sections (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per solver (default 3)")
    ap.add_argument("--net-repeats", type=int, default=5, help="network calls timed per round (default 5)")
    ap.add_argument("--paper-steps", type=int, default=250, help="RePaint paper section: steps (default 250)")
    ap.add_argument("--paper-batch", type=int, default=8)
    ap.add_argument("--loop-steps", type=int, default=50)
    ap.add_argument("--loop-batch", type=int, default=8)
    ap.add_argument("--quality-images", type=int, default=32)
    ap.add_argument("--quality-steps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip sections that would end after this "
                    "(default 450)")
    ap.add_argument("--compile-workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) // 2)))
    ap.add_argument("--toy", action="store_true", help="CPU smoke test: a 32x32 ADM, 3 steps, RePaint paper "
                    "setting at 20 steps, small batches")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.toy:
        args.steps, args.repeats, args.net_repeats = 3, 1, 2
        args.paper_steps, args.paper_batch = 20, 2
        args.loop_steps, args.loop_batch = 3, 1
        args.quality_images, args.quality_steps = 2, 3
        args.budget_s = max(args.budget_s, 1e9)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    jax.config.update("jax_enable_compilation_cache", False)
    suite = Suite(args)
    print(f"{suite.machine['name']}; sections {', '.join(sections)}", flush=True)
    suite.run(sections)
    print(f"wrote {suite.out / 'gpu_suite.md'} and gpu_suite.json ({suite.elapsed:.0f} s)")


if __name__ == "__main__":
    main()
