"""Forward speed and memory of the ADM UNet (invdiff.nets), random weights, no download.

    python3 benchmarks/network_speed.py                       # imagenet256-uncond, see defaults
    python3 benchmarks/network_speed.py --batches 1,8 --dtypes float32,bfloat16 --repeats 5
    python3 benchmarks/network_speed.py --preset ffhq256
    python3 benchmarks/network_speed.py --flags image_size=64,num_channels=64,channel_mult=1,2,2,\
        attention_resolutions=16,8,num_res_blocks=1,learn_sigma=True,class_cond=True,num_classes=10
    python3 benchmarks/network_speed.py --candidates64        # sizes for a bundled 64x64 model

Reports per (batch, dtype): compile time, median forward time, FLOPs from XLA's cost analysis
(``jax.jit(f).lower(...).compile().cost_analysis()``), achieved FLOP/s, XLA's memory analysis
(arguments, outputs, temporaries) and the device's peak bytes in use where the backend reports
it (GPUs; on CPU the process's peak RSS instead). Writes
``benchmarks/results/network_speed_<device>[_<tag>].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from invdiff.nets import ADMConfig, ADMModel, abstract_params, preset_flags  # noqa: E402
from invdiff.nets.convert import parse_value

RESULTS = Path(__file__).resolve().parent / "results"

# Candidate architectures for a small bundled 64x64 model (class-conditional, 10 classes,
# learned sigma, head channels 32, scale-shift norm; resblock_updown unless "_noud", which
# uses guided-diffusion's conv Upsample/Downsample instead); --candidates64 times them at
# batch 4.
CANDIDATES64: dict[str, dict[str, Any]] = {
    "c32_m122_r1_a16": dict(num_channels=32, channel_mult="1,2,2", num_res_blocks=1,
                            attention_resolutions="16"),
    "c32_m112_r1_a16": dict(num_channels=32, channel_mult="1,1,2", num_res_blocks=1,
                            attention_resolutions="16"),
    "c32_m1222_r1_a16,8": dict(num_channels=32, channel_mult="1,2,2,2", num_res_blocks=1,
                               attention_resolutions="16,8"),
    "c32_m122_r2_a16": dict(num_channels=32, channel_mult="1,2,2", num_res_blocks=2,
                            attention_resolutions="16"),
    "c32_m112_r1_a16_noud": dict(num_channels=32, channel_mult="1,1,2", num_res_blocks=1,
                                 attention_resolutions="16", resblock_updown=False),
    "c32_m1122_r1_a8_noud": dict(num_channels=32, channel_mult="1,1,2,2", num_res_blocks=1,
                                 attention_resolutions="8", resblock_updown=False),
    "c64_m122_r1_a16": dict(num_channels=64, channel_mult="1,2,2", num_res_blocks=1,
                            attention_resolutions="16"),
    "c64_m1222_r1_a16,8": dict(num_channels=64, channel_mult="1,2,2,2", num_res_blocks=1,
                               attention_resolutions="16,8"),
}
_CAND_BASE = dict(image_size=64, learn_sigma=True, class_cond=True, num_classes=10,
                  num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True)


def parse_flags(text: str) -> dict[str, Any]:
    """``"image_size=64,channel_mult=1,2,2,learn_sigma=True"`` -> flags. A comma-separated
    piece without ``=`` continues the previous value (so lists need no quoting)."""
    out: dict[str, Any] = {}
    last = None
    for piece in [p for p in re.split(r"[,;]", text) if p.strip()]:
        if "=" in piece:
            last, v = (s.strip() for s in piece.split("=", 1))
            out[last] = v
        elif last is None:
            raise ValueError(f"cannot parse flags {text!r}: expected name=value pairs")
        else:
            out[last] = f"{out[last]},{piece.strip()}"
    return {k: parse_value(k, v) for k, v in out.items()}


def random_model(config: ADMConfig, dtype: Any, seed: int = 0) -> ADMModel:
    """Random weights (std 0.02, norms scale 1) straight on the device: no init compile."""
    shapes = abstract_params(config)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    normal = jax.jit(lambda k, shape: 0.02 * jax.random.normal(k, shape), static_argnums=1)
    vals = [normal(k, s.shape) if len(s.shape) > 1 else jnp.ones(s.shape) for k, s in
            zip(keys, leaves)]
    return ADMModel.create(config, jax.tree.unflatten(treedef, vals), dtype)


def jaxpr_flops(fn: Any, *args: Any) -> float:
    """Multiply-add FLOPs (2 per MAC) of every convolution and dot in ``fn``'s jaxpr.

    Backend-independent; XLA's cost analysis on GPUs skips cuDNN convolutions. Elementwise
    work (norms, activations, softmax) is not counted; it is a few percent of the total.
    """
    def count(jaxpr: Any) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                lhs, rhs = (v.aval for v in eqn.invars[:2])
                out = eqn.outvars[0].aval
                dn = eqn.params["dimension_numbers"]
                k_in = rhs.shape[dn.rhs_spec[1]]
                k_sp = np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]])
                total += 2.0 * np.prod(out.shape) * k_in * k_sp
            elif name == "dot_general":
                lhs = eqn.invars[0].aval
                (lc, _), _ = eqn.params["dimension_numbers"]
                total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
                    [lhs.shape[d] for d in lc])
            for sub in _subjaxprs(eqn.params):
                total += count(sub)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def _subjaxprs(params: dict[str, Any]) -> list[Any]:
    out = []
    for v in params.values():
        for item in v if isinstance(v, (list, tuple)) else [v]:
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                out.append(item.jaxpr)
            elif hasattr(item, "eqns"):
                out.append(item)
    return out


def _peak_device_bytes(dev: Any) -> int | None:
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def bench_one(config: ADMConfig, batch: int, dtype: str, repeats: int, warmup: int = 1
              ) -> dict[str, Any]:
    dev = jax.devices()[0]
    model = random_model(config, jnp.dtype(dtype))
    s, c = config.image_size, config.in_channels
    x = jax.random.normal(jax.random.key(1), (batch, s, s, c), jnp.float32)
    t = jnp.full((batch,), 500, jnp.int32)
    y = jnp.zeros((batch,), jnp.int32) if config.class_cond else None

    # Parameters are the jit argument (not constants); the static parts are closed over.
    fwd = jax.jit(lambda p, x, t, y: model.replace(params=p).raw(x, t, y))
    t0 = time.perf_counter()
    lowered = fwd.lower(model.params, x, t, y)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    conv_flops = jaxpr_flops(lambda p, x, t, y: model.replace(params=p).raw(x, t, y),
                             model.params, x, t, y)
    # XLA's count on GPUs misses cuDNN convolutions (custom calls): trust the larger one.
    flops = xla_flops if xla_flops >= 0.9 * conv_flops else conv_flops
    mem = compiled.memory_analysis()
    mem_info = {}
    if mem is not None:
        for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes"):
            mem_info[k] = int(getattr(mem, k, 0) or 0)

    for _ in range(warmup):
        jax.block_until_ready(compiled(model.params, x, t, y))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(model.params, x, t, y))
        times.append(time.perf_counter() - t0)
        print(f"    repeat {i + 1}/{repeats}: {times[-1] * 1e3:.1f} ms", flush=True)
    med = statistics.median(times)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(model.params))
    return dict(
        batch=batch, dtype=dtype, compile_s=compile_s, median_ms=med * 1e3,
        min_ms=min(times) * 1e3, times_ms=[round(v * 1e3, 3) for v in times],
        flops=flops, xla_cost_analysis_flops=xla_flops, conv_dot_flops=conv_flops,
        tflops_per_s=flops / med / 1e12 if med > 0 else float("nan"),
        params=n_params, xla_memory=mem_info, device_peak_bytes=_peak_device_bytes(dev),
        process_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


def _device_name() -> tuple[str, str]:
    dev = jax.devices()[0]
    kind = dev.device_kind if dev.platform != "cpu" else f"cpu ({platform.processor() or 'x86'})"
    slug = "cpu" if dev.platform == "cpu" else re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind)
    return kind, slug.strip("_").lower()


def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f}"


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], tag: str | None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"network_speed_{meta['device_slug']}" + (f"_{tag}" if tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [f"# ADM UNet forward speed — {meta['device']}", "",
             f"- jax {meta['jax']}, {meta['cpu_count']} CPU cores visible, "
             f"date {meta['date']}, load average at the end {meta['load_average']} (the machine "
             "may be shared: compare only rows from one file)", f"- command: `{meta['command']}`",
             "- random weights; x float32 NHWC; median of the repeats after one warm-up call;",
             "  FLOPs per call (whole batch): XLA's cost analysis of the compiled forward, or where that",
             "  misses cuDNN convolutions (GPUs) the conv+matmul FLOPs counted from the jaxpr;",
             "  memory: XLA's buffer assignment (temporaries: the activation memory of one call)",
             "  and the device's peak bytes in use since the process started (GPU; includes the",
             "  compile-time autotuning scratch and is cumulative over the rows) or the",
             "  process's peak RSS (CPU).",
             "- float32 rows use the backend's default matmul/conv precision (TF32 on recent",
             "  NVIDIA GPUs); ADMModel(precision='highest') gives true float32 there.", ""]
    lines.append("| model | batch | dtype | params | compile s | median ms | ms/image | GFLOP "
                 "| achieved TFLOP/s | XLA temp MiB | peak MiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = r["device_peak_bytes"] if r["device_peak_bytes"] is not None \
            else r["process_peak_rss_bytes"]
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['dtype']} | {r['params'] / 1e6:.1f} M | "
            f"{r['compile_s']:.1f} | {r['median_ms']:.1f} | {r['median_ms'] / r['batch']:.1f} | "
            f"{r['flops'] / 1e9:,.1f} | {r['tflops_per_s']:.3f} | "
            f"{_mb(r['xla_memory'].get('temp_size_in_bytes'))} | {_mb(peak)} |"
        )
    lines += ["", "Configurations:", ""]
    for name, flags in meta["configs"].items():
        lines.append(f"- `{name}`: {flags}")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return RESULTS / f"{stem}.md"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="imagenet256-uncond")
    ap.add_argument("--flags", default="", help="create_model flags overriding the preset, "
                    "e.g. image_size=64,num_channels=64,channel_mult=1,2,2")
    ap.add_argument("--batches", default=None, help="comma-separated (default: 1,8 on "
                    "accelerators, 1 on CPU)")
    ap.add_argument("--dtypes", default=None, help="comma-separated (default: float32,bfloat16 "
                    "on accelerators, float32 on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 10 on "
                    "accelerators, 2 on CPU)")
    ap.add_argument("--candidates64", action="store_true",
                    help="time the small 64x64 candidates (batch 4) instead of the preset")
    ap.add_argument("--tag", default=None, help="suffix for the result file names")
    args = ap.parse_args(argv)

    on_cpu = jax.devices()[0].platform == "cpu"
    batches = [int(b) for b in (args.batches or ("1" if on_cpu else "1,8")).split(",")]
    dtypes = (args.dtypes or ("float32" if on_cpu else "float32,bfloat16")).split(",")
    repeats = args.repeats or (2 if on_cpu else 10)

    if args.candidates64:
        configs = {name: {**_CAND_BASE, **f} for name, f in CANDIDATES64.items()}
        if args.batches is None:
            batches = [4]
        if args.repeats is None:
            repeats = 10
        tag = args.tag or "candidates64"
    else:
        flags = preset_flags(args.preset) if args.preset else {}
        flags.update(parse_flags(args.flags))
        name = args.preset + (" + " + args.flags if args.flags else "") if args.preset \
            else args.flags
        configs = {name: flags}
        tag = args.tag

    device, slug = _device_name()
    print(f"device: {device}; batches {batches}, dtypes {dtypes}, repeats {repeats}", flush=True)
    rows = []
    for name, flags in configs.items():
        config = ADMConfig.from_flags(**flags)
        for dtype in dtypes:
            for batch in batches:
                print(f"{name}: batch {batch}, {dtype} ...", flush=True)
                r = bench_one(config, batch, dtype, repeats)
                r["name"] = name
                rows.append(r)
                print(f"  compile {r['compile_s']:.1f} s, median {r['median_ms']:.1f} ms, "
                      f"{r['flops'] / 1e9:,.1f} GFLOP, {r['tflops_per_s']:.3f} TFLOP/s, "
                      f"{r['params'] / 1e6:.2f} M params", flush=True)
    meta = dict(device=device, device_slug=slug, jax=jax.__version__,
                load_average=[round(v, 2) for v in __import__("os").getloadavg()],
                cpu_count=__import__("os").cpu_count(),
                date=time.strftime("%Y-%m-%d %H:%M"),
                command="python3 benchmarks/network_speed.py " + " ".join(argv or sys.argv[1:]),
                configs={k: {kk: vv for kk, vv in v.items()} for k, v in configs.items()})
    path = write_results(rows, meta, tag)
    print(f"wrote {path} and .json")


if __name__ == "__main__":
    main()
