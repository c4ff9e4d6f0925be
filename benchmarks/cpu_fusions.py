"""Where the ADM network's CPU time goes: a profile of its compiled program by XLA:CPU thunk.

    python benchmarks/cpu_fusions.py [--model emoji64|adm128] [--batch 4] [--modes fwd,fwd+vjp]
        [--repeats 3] [--top 15] [--conv-shapes 4x64x128x128,16x64x128x128] [--out PREFIX]

The network is compiled as ``solve`` compiles it (``invdiff.compiler.jit``, on the model
``with_prepared``), as in ``benchmarks/vs_torch.py`` (``adm128``: the same random 128-channel ADM
at 64x64). ``jax.profiler`` traces ``--repeats`` calls; each thunk's time is summed and matched to
the compiled HLO. Thunks are grouped by what they compute:

* *conv*: a fusion holding one or more convolutions (XLA:CPU hands these to YNNPACK with the
  element-wise work around them: GroupNorm, SiLU, residual adds, and in the VJP their
  gradients);
* *dot*: holds a dot (attention, 1x1 skip projections, the time embedding);
* *other*: element-wise and data movement only.

Each convolution's multiply-adds are counted from its HLO shapes (2 x output elements x kernel
taps x input features; nominal for gradients of strided convolutions, whose dilated input is
half zeros), so the table gives the GFLOP/s each convolution thunk reached. ``--conv-shapes``
(BxHWxCINxCOUT) times single 3x3 convolutions the same way, for the speed of the convolution on
its own. Writes PREFIX.md and PREFIX.json; the machine is named in the file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_torch import MODELS, invdiff_model, invdiff_programs  # noqa: E402

from invdiff import compiler  # noqa: E402

_SHAPE = re.compile(r"[a-z]\w*\[([\d,]*)\]")
_INSTR = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([a-z][\w\-]*)\((.*)")


def _dims(text: str) -> list[int]:
    m = _SHAPE.match(text)
    return [int(v) for v in m.group(1).split(",")] if m and m.group(1) else []


def conv_flops(hlo: str) -> tuple[dict[str, float], dict[str, list[str]], dict[str, str]]:
    """Per thunk of a compiled HLO module (a fusion, or a top-level instruction): the
    convolutions' FLOPs, a short description of each (``window:in->out@HxW``), and its kind."""
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{$", line) if not line.startswith(" ") else None
        if head:
            name = head.group(1)
            comps[name] = []
        elif name and line.strip() == "}":
            name = None
        elif name:
            comps[name].append(line)
    caller: dict[str, str] = {}
    for lines in comps.values():
        for line in lines:
            m = _INSTR.match(line)
            c = re.search(r"calls=%?([\w.\-]+)", line)
            if m and c and m.group(3) == "fusion":
                caller[c.group(1)] = m.group(1)
    flops: dict[str, float] = collections.defaultdict(float)
    desc: dict[str, list[str]] = collections.defaultdict(list)
    kind: dict[str, str] = {}
    for cname, lines in comps.items():
        shapes = {}
        for line in lines:
            m = _INSTR.match(line)
            if m:
                shapes[m.group(1)] = _dims(m.group(2))
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            thunk = caller.get(cname, m.group(1))
            op = m.group(3)
            if op == "convolution":
                lhs, rhs = [a.strip().lstrip("%") for a in m.group(4).split(")")[0].split(",")[:2]]
                labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
                k = shapes.get(rhs, [])
                out = _dims(m.group(2))
                if len(k) == len(labels) and out:
                    o = k[labels.index("o")]
                    f = 2.0 * np.prod(out) * np.prod(k) / o
                    flops[thunk] += f
                    win = "x".join(str(k[labels.index(d)]) for d in "01")
                    desc[thunk].append(f"{win}:{k[labels.index('i')]}->{o}@{out[1]}x{out[2]}")
                kind[thunk] = "conv"
            elif op == "dot" and kind.get(thunk) != "conv":
                kind[thunk] = "dot"
            elif m.group(1) == thunk or cname in caller:
                kind.setdefault(thunk, "other")
    return dict(flops), dict(desc), kind


def thunk_times(fn, args, repeats: int) -> dict[str, float]:
    """Seconds per call of each thunk, summed over the threads that ran it."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        for _ in range(repeats):
            jax.block_until_ready(fn(*args))
        jax.profiler.stop_trace()
        path = sorted(Path(d).glob("plugins/profile/*/*.xplane.pb"))[-1]
        data = jax.profiler.ProfileData.from_file(str(path))
    out: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                out[ev.name] += ev.duration_ns / 1e9 / repeats
    return out


def _median_time(fn, args, n: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def profile(model_name: str, batch: int, mode: str, repeats: int, top: int) -> dict:
    model = invdiff_model(model_name)
    cfg = model.config
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.in_channels)), jnp.float32)
    t = jnp.full((batch,), 500, jnp.int32)
    label = jnp.zeros((batch,), jnp.int32) if cfg.class_cond else None
    # as solve prepares the model: the input gradient's kernels only for programs with a VJP
    fwd, fwd_vjp, rest = invdiff_programs(model, t, label, vjp=mode != "fwd")
    if mode == "fwd":
        fn, args = fwd, (x, *rest)
    else:
        g = jnp.asarray(rng.standard_normal(x.shape[:3] + (cfg.out_channels,)), jnp.float32)
        fn, args = fwd_vjp, (x, g, *rest)
    hlo = fn.lower(*args).compile().as_text()
    flops, desc, kind = conv_flops(hlo)
    call_s = _median_time(fn, args)
    times = thunk_times(fn, args, repeats)
    groups: dict[str, dict[str, float]] = {}
    for name, k in kind.items():
        if name not in times:
            continue  # not a thunk (a parameter, a bitcast, ...)
        grp = groups.setdefault(k, {"thunks": 0, "s": 0.0, "gflop": 0.0})
        grp["thunks"] += 1
        grp["s"] += times.get(name, 0.0)
        grp["gflop"] += flops.get(name, 0.0) / 1e9
    rows = sorted((n for n in kind if kind[n] == "conv"), key=lambda n: -times.get(n, 0.0))[:top]
    return {"model": model_name, "batch": batch, "mode": mode, "call_s": call_s, "groups": groups,
            "top": [{"thunk": n, "s": times.get(n, 0.0), "gflop": flops.get(n, 0.0) / 1e9, "convs": desc.get(n, [])}
                    for n in rows]}


def single_conv(spec: str) -> dict:
    b, hw, ci, co = (int(v) for v in spec.split("x"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, hw, hw, ci)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci), jnp.float32)
    fn = compiler.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                                dimension_numbers=("NHWC", "HWIO", "NHWC")))
    s = _median_time(fn, (x, k), 10)
    gflop = 2 * b * hw * hw * ci * co * 9 / 1e9
    return {"shape": spec, "s": s, "gflop": gflop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="adm128", choices=MODELS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--modes", default="fwd,fwd+vjp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--conv-shapes", default="1x64x128x128,4x64x128x128,16x64x128x128",
                    help="single 3x3 convolutions to time, BxHWxCINxCOUT, comma-separated ('' for none)")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/cpu_fusions_MODEL)")
    a = ap.parse_args()
    modes = a.modes.split(",")
    if bad := [m for m in modes if m not in ("fwd", "fwd+vjp")]:
        ap.error(f"unknown mode(s) {bad}: choose from fwd, fwd+vjp")
    out = Path(a.out or f"benchmarks/results/cpu_fusions_{a.model}")
    from invdiff.bench.timing import cpu_name

    res = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
           "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/cpu_fusions.py " + " ".join(sys.argv[1:]),
           "profiles": [], "single_convs": []}
    for spec in filter(None, a.conv_shapes.split(",")):
        print(f"timing a single 3x3 convolution {spec} ...", flush=True)
        res["single_convs"].append(single_conv(spec))
    for mode in modes:
        print(f"profiling {a.model} batch {a.batch} {mode} ...", flush=True)
        res["profiles"].append(profile(a.model, a.batch, mode, a.repeats, a.top))

    md = [f"# The ADM network's CPU time by XLA:CPU thunk — {res['machine']}", "",
          f"- jax {res['jax']}, {res['date']}; command: `{res['command']}`",
          "- compiled as `solve` compiles it (invdiff's XLA options, `with_prepared`, weights as arguments); "
          f"thunk times summed over threads, per call, from a `jax.profiler` trace of {a.repeats} calls; "
          "GFLOP counted from the HLO shapes", ""]
    for p in res["profiles"]:
        md += [f"## {p['model']}, batch {p['batch']}, {p['mode']}: {1e3 * p['call_s']:.0f} ms per call "
               "(median of 5)", "",
               "| thunks | count | ms (all threads) | GFLOP | GFLOP/s |", "|---|---|---|---|---|"]
        for k in ("conv", "dot", "other"):
            g = p["groups"].get(k)
            if g:
                rate = f"{g['gflop'] / g['s']:.0f}" if g["gflop"] and g["s"] else "-"
                md.append(f"| {k} | {g['thunks']} | {1e3 * g['s']:.1f} | {g['gflop']:.1f} | {rate} |")
        md += ["", "Slowest convolution thunks (window:in->out@output size of each convolution in it):", "",
               "| thunk | ms | GFLOP | GFLOP/s | convolutions |", "|---|---|---|---|---|"]
        for r in p["top"]:
            rate = f"{r['gflop'] / r['s']:.0f}" if r["s"] else "-"
            md.append(f"| {r['thunk']} | {1e3 * r['s']:.1f} | {r['gflop']:.2f} | {rate} | {' '.join(r['convs'])} |")
        md.append("")
    if res["single_convs"]:
        md += ["## Single 3x3 convolutions (SAME padding), median of 10", "",
               "| B x HW x in x out | ms | GFLOP | GFLOP/s |", "|---|---|---|---|"]
        for c in res["single_convs"]:
            md.append(f"| {c['shape']} | {1e3 * c['s']:.1f} | {c['gflop']:.2f} | {c['gflop'] / c['s']:.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(md))
    print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    main()
