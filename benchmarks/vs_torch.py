"""invdiff's ADM UNet against guided-diffusion's PyTorch ``UNetModel`` on the same weights (CPU).

torch is an optional benchmark extra (``pip install torch``), never a dependency of invdiff or
its tests. The reference network is guided-diffusion's own source, fetched into a scratch folder
outside this repository::

    git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion
    python3 benchmarks/vs_torch.py /tmp/guided-diffusion                  # the table
    python3 benchmarks/vs_torch.py /tmp/guided-diffusion --layers         # time per layer type
    python3 benchmarks/vs_torch.py /tmp/guided-diffusion --models emoji64 --batches 4 --repeats 40

Models: ``emoji64`` (the bundled weights) and ``adm128``, a random 128-channel ADM at 64x64
(``ADMConfig(image_size=64, num_channels=128, learn_sigma=True)``: create_model's defaults
otherwise, 2 res blocks, channel_mult 1,2,3,4, attention at 16 and 8, 4 heads, scale-shift
norm). invdiff's parameters are written into guided-diffusion's ``state_dict`` (key mapping
:func:`invdiff.nets.unet.flax_to_torch_key`, layouts transposed) and loaded strictly; the
outputs and input gradients of both are compared before anything is timed.

What is timed, per model and batch (1, 4, 16 by default):

* ``fwd``: one forward ``model(x, t, y)`` (torch under ``inference_mode``; invdiff's
  ``ADMModel.raw``);
* ``fwd+vjp``: the forward and the gradient with respect to x of <out, g> for a fixed g
  (``torch.autograd.grad`` with the weights frozen; invdiff: ``jax.vjp`` of ``raw``).

invdiff's side is compiled as invdiff compiles its own programs (``invdiff.compiler.jit``, the
wrapper of ``solve``: XLA:CPU options of :mod:`invdiff.compiler`), on the model as ``solve``
passes it (``ADMModel.with_prepared(vjp=True)``: for ``adm128``, with its 3x3 convolutions by
Winograd's F(2x2, 3x3), see ``invdiff.nets.adm.CPU_WINOGRAD_MIN_CHANNELS``), with the weights
as arguments of the program (not constants), so it times what a solver's loop runs.
``INVDIFF_XLA_OPTIONS=0`` times plain ``jax.jit`` instead.

Both sides run interleaved in one process: every repeat times invdiff, then torch at each
thread count (``torch.set_num_threads``: 1 and 2 by default), in alternating order. Below
batch 16, each timed call follows ``--settle`` (default 1) untimed calls of the same side:
after a call, torch's OpenMP workers and XLA:CPU's pool spin for a while before sleeping,
and took cores from the other side's next call (a 3x3 convolution, 128 channels at 64x64,
batch 4: invdiff 34 ms right after torch's, 26 ms with torch's OpenMP threads passive). The
figure is the ratio invdiff / torch eager at torch's best thread count (the lowest median),
of the medians, with the minima beside them. XLA:CPU runs on its own intra-op thread pool
(one thread per visible core); invdiff sets no thread option.

guided-diffusion's ``AttentionBlock`` always wraps itself in gradient checkpointing (its
``checkpoint(..., True)``), which recomputes the block in the backward pass and asks for the
weights' gradients. Here that wrapper is replaced by a plain call, so torch's backward does
only what invdiff's does (gradients with respect to x, no recomputation).

``--layers`` times each layer type of the network on its own, at every instance's real shape
and weights (the instances are recorded from one torch forward): convolutions, GroupNorm
(outside attention blocks), SiLU, attention blocks (norm, qkv, attention, proj_out) and the
time embedding (timestep features, ``time_embed`` and every ResBlock's ``emb_layers``);
invdiff's side jits all instances of one type into one program.

XLA:CPU allocates each program's temporary buffer per call, and glibc serves allocations that
large with fresh pages: every call faults them in again (the 128-channel model's forward + VJP
at batch 4: ~200,000 page faults, 0.4-0.5 s of system time), where torch reuses freed memory.
A ``solve`` loop pays this once per solve, not per step. So invdiff is also timed as a solver
runs it (``--loop``, default 4: :func:`invdiff_loop_programs`, that many calls in one compiled
loop, each at its own t; time per call), beside the same torch calls: torch eager has no
program to amortize anything over, and a torch solver calls its network from Python each step.
To time single calls of both sides without the page faults, run with glibc's
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``
(:data:`GLIBC_MALLOC`; the results file records them).

Results: ``benchmarks/results/vs_torch_<machine>[_<tag>].md`` and ``.json``, with the machine
(``invdiff.bench.machine_info``), thread settings and load averages. On a shared machine
compare only rows of one file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
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

from invdiff import compiler  # noqa: E402
from invdiff.bench import machine_info  # noqa: E402
from invdiff.nets import ADMConfig, ADMModel, load_model  # noqa: E402
from invdiff.nets.adm import init_params  # noqa: E402
from invdiff.nets.conv import Conv2d  # noqa: E402
from invdiff.nets.unet import AttentionBlock, Dense, GroupNorm32, flax_to_torch_key, silu, timestep_embedding  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("emoji64", "adm128")
#: relative tolerance of the output and input-gradient comparison before timing
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------
# The two networks on the same weights.


#: glibc's allocator settings under which freed memory stays in the process (see the docstring)
GLIBC_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
#: environment variables the results file records (threads, XLA, glibc's allocator)
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "GLIBC_TUNABLES", *GLIBC_MALLOC)


def invdiff_model(name: str) -> ADMModel:
    if name == "emoji64":
        return load_model("emoji64")
    if name == "adm128":
        config = ADMConfig(image_size=64, num_channels=128, learn_sigma=True)
        return ADMModel.create(config, init_params(config, jax.random.key(0)))
    raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def _flat(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = np.asarray(v, np.float32)
    return out


def torch_state_dict(params: dict) -> dict[str, Any]:
    """invdiff's parameters as guided-diffusion tensors (the inverse of the loader's layouts)."""
    import torch

    sd = {}
    for path, a in _flat(params).items():
        if path[-1] == "kernel":
            if a.ndim == 4:  # (kh, kw, in, out) -> Conv2d (out, in, kh, kw)
                a = a.transpose(3, 2, 0, 1)
            elif path[-2] in ("qkv", "proj_out"):  # (in, out) -> Conv1d (out, in, 1)
                a = a.T[:, :, None]
            else:  # (in, out) -> Linear (out, in)
                a = a.T
        sd[flax_to_torch_key(path)] = torch.from_numpy(np.ascontiguousarray(a))
    return sd


def torch_model(gd_path: Path, model: ADMModel) -> Any:
    sys.path.insert(0, str(gd_path))
    try:
        gd_unet = importlib.import_module("guided_diffusion.unet")
    except ImportError as e:
        raise SystemExit(f"cannot import guided_diffusion from {gd_path} ({e}): pass the folder of a "
                         "clone of https://github.com/openai/guided-diffusion") from None
    # AttentionBlock hard-codes gradient checkpointing; call the block directly (see the docstring)
    gd_unet.checkpoint = lambda func, inputs, params, flag: func(*inputs)
    net = gd_unet.UNetModel(**model.config.unet_kwargs()).eval()
    net.load_state_dict(torch_state_dict(jax.device_get(model.params)), strict=True)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def invdiff_programs(model: ADMModel, t: jax.Array, label: jax.Array | None,
                     vjp: bool = True) -> tuple[Callable, Callable, tuple]:
    """invdiff's forward ``(x, *rest) -> out`` and forward + VJP ``(x, g, *rest) -> (out, dx)``,
    compiled as ``solve`` compiles them (``invdiff.compiler.jit``), and ``rest``: the model as
    ``solve`` passes it (``ADMModel.with_prepared(vjp=vjp)``), t and the labels. These are
    arguments of the programs, as in ``solve``'s loop, not constants compiled into them: XLA:CPU
    runs some programs faster with constant weights (the bundled model's forward + VJP at batch
    16: 0.8x the time), which a solver never gets."""
    prepared = model.with_prepared(vjp=vjp) if hasattr(model, "with_prepared") else model

    def fwd(x: jax.Array, m: Any, t: jax.Array, label: jax.Array | None) -> jax.Array:
        return m.raw(x, t, label)

    def fwd_vjp(x: jax.Array, g: jax.Array, m: Any, t: jax.Array,
                label: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        out, f = jax.vjp(lambda x: m.raw(x, t, label), x)
        return out, f(g)[0]

    return compiler.jit(fwd), compiler.jit(fwd_vjp), (prepared, t, label)


def invdiff_loop_programs(model: ADMModel, t: jax.Array, label: jax.Array | None,
                          calls: int) -> tuple[Callable, Callable, tuple]:
    """:func:`invdiff_programs`' two computations, each ``calls`` times in one compiled
    ``lax.fori_loop``, as a solver's loop runs the network: call i sees t - i (so the time
    embedding is not hoisted out of the loop) and an x that depends on the previous call's
    output and gradient (so no call is skipped). Per call this pays XLA:CPU's per-execution
    costs (dispatch, the temporary buffer's fresh pages) once in ``calls`` times, as ``solve``
    pays them once per walk."""
    prepared = model.with_prepared(vjp=True) if hasattr(model, "with_prepared") else model
    c = model.config.in_channels

    def fwd(x: jax.Array, m: Any, t: jax.Array, label: jax.Array | None) -> jax.Array:
        def body(i: jax.Array, x: jax.Array) -> jax.Array:
            return x + 1e-3 * m.raw(x, t - i, label)[..., :c]
        return jax.lax.fori_loop(0, calls, body, x)

    def fwd_vjp(x: jax.Array, g: jax.Array, m: Any, t: jax.Array, label: jax.Array | None) -> jax.Array:
        def body(i: jax.Array, x: jax.Array) -> jax.Array:
            out, f = jax.vjp(lambda x: m.raw(x, t - i, label), x)
            return x + 1e-3 * (out[..., :c] + f(g)[0])
        return jax.lax.fori_loop(0, calls, body, x)

    return compiler.jit(fwd), compiler.jit(fwd_vjp), (prepared, t, label)


class Case:
    """One model at one batch size: inputs and the callables of both sides (with ``loop``, also
    invdiff's ``loop`` calls in one program), checked for agreement."""

    def __init__(self, model: ADMModel, net: Any, batch: int, loop: int = 0):
        import torch

        cfg = model.config
        s, c, oc = cfg.image_size, cfg.in_channels, cfg.out_channels
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, s, s, c)).astype(np.float32)
        g = rng.standard_normal((batch, s, s, oc)).astype(np.float32)
        t = np.full((batch,), 500, np.int64)
        y = (np.arange(batch) % cfg.num_classes) if cfg.class_cond else None

        self.x, self.g = jnp.asarray(x), jnp.asarray(g)
        tj = jnp.asarray(t, jnp.int32)
        yj = None if y is None else jnp.asarray(y, jnp.int32)
        fwd, fwd_vjp, rest = invdiff_programs(model, tj, yj)
        self.jax_fwd = lambda x: fwd(x, *rest)
        self.jax_vjp = lambda x, g: fwd_vjp(x, g, *rest)
        self.loop = loop
        if loop:
            lfwd, lvjp, lrest = invdiff_loop_programs(model, tj, yj, loop)
            self.loop_fwd = lambda x: lfwd(x, *lrest)
            self.loop_vjp = lambda x, g: lvjp(x, g, *lrest)

        self.xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        self.gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())
        self.tt = torch.from_numpy(t)
        self.yt = None if y is None else torch.from_numpy(y)
        self.net = net

        # compile, and check that both compute the same thing
        out_j = np.asarray(self.jax_fwd(self.x))
        _, dx_j = jax.tree.map(np.asarray, self.jax_vjp(self.x, self.g))
        with torch.inference_mode():
            out_t = net(self.xt, self.tt, self.yt).numpy().transpose(0, 2, 3, 1)
        dx_t = self.torch_vjp().numpy().transpose(0, 2, 3, 1)
        self.out_rel = float(np.abs(out_j - out_t).max() / np.abs(out_t).max())
        self.dx_rel = float(np.abs(dx_j - dx_t).max() / np.abs(dx_t).max())
        if not (self.out_rel <= TOLERANCE and self.dx_rel <= TOLERANCE):
            raise SystemExit(f"invdiff and torch disagree at batch {batch}: output {self.out_rel:.1e}, "
                             f"input gradient {self.dx_rel:.1e} (relative to the largest value)")

    def torch_fwd(self) -> Any:
        import torch

        with torch.inference_mode():
            return self.net(self.xt, self.tt, self.yt)

    def torch_vjp(self) -> Any:
        import torch

        x = self.xt.clone().requires_grad_(True)
        return torch.autograd.grad(self.net(x, self.tt, self.yt), x, self.gt)[0]

    def callables(self) -> dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any] | None]]:
        """mode -> (invdiff, torch, invdiff's ``loop`` calls in one program or None)."""
        loop = self.loop
        return {
            "fwd": (lambda: jax.block_until_ready(self.jax_fwd(self.x)), self.torch_fwd,
                    (lambda: jax.block_until_ready(self.loop_fwd(self.x))) if loop else None),
            "fwd+vjp": (lambda: jax.block_until_ready(self.jax_vjp(self.x, self.g)), self.torch_vjp,
                        (lambda: jax.block_until_ready(self.loop_vjp(self.x, self.g))) if loop else None),
        }


# ---------------------------------------------------------------------------------------
# Interleaved timing.


def interleaved(fns: dict[str, tuple[Callable[[], Any], int | None]], repeats: int,
                settle: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each ``name -> (fn, torch threads or None)``, one timed call of each
    per repeat, the order reversed every other repeat; one untimed warm-up call each. With
    ``settle``, each timed call follows that many untimed calls of the same function: the
    other runtime's threads spin for a while after its call (torch's OpenMP workers, XLA:CPU's
    pool) and would take cores from the first call after a switch."""
    import torch

    def run(fn: Callable[[], Any], threads: int | None) -> float:
        if threads is not None:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for fn, threads in fns.values():
        run(fn, threads)
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            for _ in range(settle):
                run(*fns[k])
            times[k].append(run(*fns[k]))
    return times


def _stats(ts: list[float]) -> dict[str, float]:
    return {"min_ms": min(ts) * 1e3, "median_ms": statistics.median(ts) * 1e3}


def compare(jax_fn: Callable[[], Any], torch_fn: Callable[[], Any], threads: list[int],
            repeats: int, settle: int = 0, loop_fn: Callable[[], Any] | None = None,
            loop: int = 0) -> dict[str, Any]:
    """Interleaved times of invdiff, torch at each thread count and, with ``loop_fn``, invdiff's
    ``loop`` calls in one program (its times divided by ``loop``: per network call)."""
    fns = {"invdiff": (jax_fn, None), **{f"torch{n}": (torch_fn, n) for n in threads}}
    if loop_fn is not None:
        fns["invdiff_loop"] = (loop_fn, None)
    times = interleaved(fns, repeats, settle)
    if loop_fn is not None:
        times["invdiff_loop"] = [v / loop for v in times["invdiff_loop"]]
    stats = {k: _stats(v) for k, v in times.items()}
    best = min(threads, key=lambda n: stats[f"torch{n}"]["median_ms"])
    tb = stats[f"torch{best}"]
    out = {
        "invdiff": stats["invdiff"], "torch": {n: stats[f"torch{n}"] for n in threads},
        "torch_best_threads": best,
        "ratio_median": stats["invdiff"]["median_ms"] / tb["median_ms"],
        "ratio_min": stats["invdiff"]["min_ms"] / tb["min_ms"],
    }
    if loop_fn is not None:
        out.update(invdiff_loop=stats["invdiff_loop"], loop_calls=loop,
                   loop_ratio_median=stats["invdiff_loop"]["median_ms"] / tb["median_ms"],
                   loop_ratio_min=stats["invdiff_loop"]["min_ms"] / tb["min_ms"])
    return out


# ---------------------------------------------------------------------------------------
# Layer types on their own (--layers).


def _flax_path(torch_name: str) -> tuple[str, ...]:
    """``"input_blocks.1.0.in_layers.2"`` -> ``("input_blocks_1_0", "in_layers_2")``."""
    parts: list[str] = []
    for tok in torch_name.split("."):
        if tok.isdigit() and parts:
            parts[-1] += f"_{tok}"
        else:
            parts.append(tok)
    return tuple(parts)


def _subtree(params: dict, path: tuple[str, ...]) -> dict:
    for p in path:
        params = params[p]
    return params


def layer_cases(model: ADMModel, net: Any, case: Case) -> dict[str, dict[str, Any]]:
    """Per layer type: the torch modules with their recorded inputs, and an invdiff program
    over the same instances. Returns type -> {"torch": [(module, input)], "jax": (fn, args)}."""
    import torch
    import torch.nn.functional as F

    gd_unet = sys.modules["guided_diffusion.unet"]
    gd_nn = sys.modules["guided_diffusion.nn"]
    names = {m: n for n, m in net.named_modules()}
    attn_names = [n for n, m in net.named_modules() if isinstance(m, gd_unet.AttentionBlock)]
    rec: dict[str, list[tuple[str, Any, Any]]] = {k: [] for k in ("conv", "groupnorm", "silu", "attention")}

    def hook(kind: str) -> Callable:
        def f(mod: Any, inputs: tuple, output: Any) -> None:
            rec[kind].append((names[mod], mod, inputs[0].detach().clone()))
        return f

    handles = []
    for n, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(hook("conv")))
        elif isinstance(m, gd_nn.GroupNorm32) and not any(n.startswith(a + ".") for a in attn_names):
            handles.append(m.register_forward_hook(hook("groupnorm")))
        elif isinstance(m, torch.nn.SiLU) and not n.startswith("time_embed") and ".emb_layers." not in n:
            handles.append(m.register_forward_hook(hook("silu")))
        elif isinstance(m, gd_unet.AttentionBlock):
            handles.append(m.register_forward_hook(hook("attention")))
    case.torch_fwd()
    for h in handles:
        h.remove()

    params = model.params
    out: dict[str, dict[str, Any]] = {}

    def jax_program(apply_one: Callable, items: list[tuple[Any, Any]]) -> tuple[Callable, tuple]:
        ps = [p for p, _ in items]
        xs = [jnp.asarray(x.numpy().transpose(0, 2, 3, 1)) for _, x in items]

        def fwd(ps, xs):
            return [apply_one(p, x, i) for i, (p, x) in enumerate(zip(ps, xs))]

        return fwd, (ps, xs)

    convs = [(n, m, x) for n, m, x in rec["conv"]]
    conv_mods = [Conv2d(m.out_channels, m.kernel_size[0], strides=m.stride[0]) for _, m, _ in convs]
    out["conv"] = {"torch": [(m, x) for _, m, x in convs],
                   "jax": jax_program(lambda p, x, i: conv_mods[i].apply({"params": p}, x),
                                      [(_subtree(params, _flax_path(n)), x) for n, _, x in convs])}
    gn = GroupNorm32()
    out["groupnorm"] = {"torch": [(m, x) for _, m, x in rec["groupnorm"]],
                        "jax": jax_program(lambda p, x, i: gn.apply({"params": p}, x),
                                           [(_subtree(params, _flax_path(n)), x) for n, _, x in rec["groupnorm"]])}
    out["silu"] = {"torch": [(m, x) for _, m, x in rec["silu"]],
                   "jax": jax_program(lambda p, x, i: silu(x), [({}, x) for _, _, x in rec["silu"]])}
    attn = rec["attention"]
    attn_mods = [AttentionBlock(m.channels, m.num_heads, -1, isinstance(m.attention, gd_unet.QKVAttention))
                 for _, m, _ in attn]
    out["attention"] = {"torch": [(m, x) for _, m, x in attn],
                        "jax": jax_program(lambda p, x, i: attn_mods[i].apply({"params": p}, x),
                                           [(_subtree(params, _flax_path(n)), x) for n, _, x in attn])}

    # time embedding: timestep features, time_embed MLP, every ResBlock's emb_layers
    mc = model.config.num_channels
    emb_names = [n for n, m in net.named_modules() if n.endswith(".emb_layers")]
    t_np = case.tt.numpy()

    def torch_emb(_: Any = None) -> Any:
        e = net.time_embed(gd_nn.timestep_embedding(case.tt, mc))
        return [net.get_submodule(n)(e) for n in emb_names]

    emb_dense = [Dense(net.get_submodule(n)[1].out_features) for n in emb_names]

    def jax_emb(p: dict, t: Any) -> list:
        e = Dense(4 * mc).apply({"params": p["time_embed_0"]}, timestep_embedding(t, mc))
        e = Dense(4 * mc).apply({"params": p["time_embed_2"]}, jax.nn.silu(e))
        return [d.apply({"params": _subtree(p, _flax_path(n))["emb_layers_1"]}, jax.nn.silu(e))
                for d, n in zip(emb_dense, (n[: -len(".emb_layers")] for n in emb_names))]

    out["time embedding"] = {"torch_fn": torch_emb,
                             "jax": (lambda p, t: jax_emb(p, t), (params, jnp.asarray(t_np, jnp.int32)))}
    del F
    return out


def layer_callables(entry: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    import torch

    fn, args = entry["jax"]
    fwd = compiler.jit(fn)
    has_input = not isinstance(args[1], jax.Array) or args[1].dtype != jnp.int32

    if "torch_fn" in entry:
        def t_fwd() -> Any:
            with torch.inference_mode():
                return entry["torch_fn"]()
        return {"fwd": (lambda: jax.block_until_ready(fwd(*args)), t_fwd)}

    gs = [jnp.ones_like(o) for o in jax.eval_shape(fn, *args)]

    def vjp(ps, xs, gs):
        o, f = jax.vjp(lambda xs: fn(ps, xs), xs)
        return o, f(gs)[0]

    jv = compiler.jit(vjp)
    pairs = entry["torch"]

    def t_fwd() -> Any:
        with torch.inference_mode():
            return [m(x) for m, x in pairs]

    def t_vjp() -> Any:
        res = []
        for m, x in pairs:
            xx = x.clone().requires_grad_(True)
            o = m(xx)
            res.append(torch.autograd.grad(o, xx, torch.ones_like(o))[0])
        return res

    assert has_input
    return {"fwd": (lambda: jax.block_until_ready(fwd(*args)), t_fwd),
            "fwd+vjp": (lambda: jax.block_until_ready(jv(*args, gs)), t_vjp)}


# ---------------------------------------------------------------------------------------
# Output.


def _slug(info: dict[str, Any]) -> str:
    name = "cpu" if info["backend"] == "cpu" else info["device_kind"]
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def write_results(result: dict[str, Any], tag: str | None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = result["meta"]
    stem = f"vs_torch_{_slug(meta['machine'])}" + (f"_{tag}" if tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    m = meta["machine"]
    lines = [
        f"# invdiff ADM vs guided-diffusion (PyTorch eager) — {m['machine']}", "",
        f"- jax {m['jax']}, torch {meta['torch']}, date {meta['date']}; command: `{meta['command']}`",
        f"- threads: XLA:CPU intra-op pool of {m['cpu_count']} (one per visible core; invdiff sets no "
        f"thread option); torch.set_num_threads in {meta['torch_threads']}, inter-op threads "
        f"{meta['torch_interop_threads']}; env {meta['thread_env'] or 'none set'}",
        f"- load average before {meta['load_before']}, after {meta['load_after']}: "
        + ("**the machine was shared with other jobs during the run**; " if meta["shared"] else "")
        + "both sides ran interleaved in one process, so load affects them alike; "
        "compare rows of this file only",
        f"- {meta['repeats']} timed repeats per cell after one warm-up call (batch 16: "
        f"{meta['repeats_large']})"
        + (f", each after {meta['settle']} untimed call(s) of the same side below batch 16 (the other runtime's "
           "threads spin after its calls)" if meta.get("settle") else "")
        + "; ms per call: median (min); ratio = invdiff / torch at its best "
        "thread count (lowest median), of medians (of minima)",
        "- before timing, outputs and input gradients agreed to the relative error shown "
        f"(limit {TOLERANCE:g})", "",
    ]
    if result["rows"]:
        loop = meta.get("loop", 0)
        if loop:
            lines[-1:-1] = [
                f"- in a loop: invdiff's calls {loop} at a time in one compiled `lax.fori_loop`, as `solve` runs "
                "the network (call i at t - i, x fed back; `invdiff_loop_programs`), ms per call; its ratio "
                "to the same torch figure. A solver's step pays this; a call from Python also pays XLA:CPU's "
                "per-execution costs (dispatch, the temporary buffer's fresh pages)"]
        head = "| model | batch | mode | invdiff ms | torch ms (threads) | best | ratio | ratio of min |"
        rule = "|---|---|---|---|---|---|---|---|"
        if loop:
            head += " invdiff in a loop ms | ratio in a loop | ratio of min in a loop |"
            rule += "---|---|---|"
        lines += [head + " agreement |", rule + "---|"]
        for r in result["rows"]:
            tt = ", ".join(f"{v['median_ms']:.1f} ({v['min_ms']:.1f}) @{n}" for n, v in r["torch"].items())
            row = (f"| {r['model']} | {r['batch']} | {r['mode']} | {r['invdiff']['median_ms']:.1f} "
                   f"({r['invdiff']['min_ms']:.1f}) | {tt} | {r['torch_best_threads']} | "
                   f"**{r['ratio_median']:.2f}** | {r['ratio_min']:.2f} |")
            if loop:
                row += (f" {r['invdiff_loop']['median_ms']:.1f} ({r['invdiff_loop']['min_ms']:.1f}) | "
                        f"**{r['loop_ratio_median']:.2f}** | {r['loop_ratio_min']:.2f} |")
            lines.append(row + f" {r['agreement']:.0e} |")
    if result["layers"]:
        lines += ["", "Layer types on their own (all instances of the type at their real shapes; "
                  "ms per network call):", "",
                  "| model | batch | layer type | instances | mode | invdiff ms | torch ms (threads) | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["layers"]:
            tt = ", ".join(f"{v['median_ms']:.2f} @{n}" for n, v in r["torch"].items())
            lines.append(f"| {r['model']} | {r['batch']} | {r['layer']} | {r['instances']} | {r['mode']} | "
                         f"{r['invdiff']['median_ms']:.2f} | {tt} | {r['ratio_median']:.2f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return RESULTS / f"{stem}.md"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("guided_diffusion", type=Path, help="folder of a clone of openai/guided-diffusion")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--modes", default="fwd,fwd+vjp")
    ap.add_argument("--torch-threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per cell")
    ap.add_argument("--repeats-large", type=int, default=10, help="timed repeats at batch >= 16")
    ap.add_argument("--settle", type=int, default=1,
                    help="untimed calls of the same side before each timed one, at batch < 16 (0: none)")
    ap.add_argument("--loop", type=int, default=4,
                    help="also time invdiff's calls this many at a time in one compiled loop, as solve "
                         "runs them (0: not)")
    ap.add_argument("--layers", action="store_true", help="also time each layer type on its own")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    if args.loop < 0:
        ap.error(f"--loop {args.loop}: give a number of calls per program, or 0 for none")
    import torch

    threads = [int(n) for n in args.torch_threads.split(",")]
    modes = args.modes.split(",")
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows, layers = [], []
    for name in args.models.split(","):
        model = invdiff_model(name)
        net = torch_model(args.guided_diffusion, model)
        for batch in (int(b) for b in args.batches.split(",")):
            case = Case(model, net, batch, args.loop)
            reps = args.repeats if batch < 16 else args.repeats_large
            print(f"{name} batch {batch}: agree to {case.out_rel:.1e} (output), {case.dx_rel:.1e} (gradient)",
                  flush=True)
            for mode, (jf, tf, lf) in case.callables().items():
                if mode not in modes:
                    continue
                r = compare(jf, tf, threads, reps, args.settle if batch < 16 else 0, lf, args.loop)
                r.update(model=name, batch=batch, mode=mode,
                         agreement=case.out_rel if mode == "fwd" else max(case.out_rel, case.dx_rel))
                rows.append(r)
                print(f"  {mode}: invdiff {r['invdiff']['median_ms']:.1f} ms, torch "
                      f"{r['torch'][r['torch_best_threads']]['median_ms']:.1f} ms @{r['torch_best_threads']} "
                      f"-> ratio {r['ratio_median']:.2f} (min {r['ratio_min']:.2f})"
                      + (f"; in a loop {r['invdiff_loop']['median_ms']:.1f} ms -> {r['loop_ratio_median']:.2f}"
                         if lf else ""), flush=True)
            if args.layers:
                for layer, entry in layer_cases(model, net, case).items():
                    n_inst = len(entry.get("torch", [])) or 1
                    for mode, (jf, tf) in layer_callables(entry).items():
                        if mode not in modes:
                            continue
                        r = compare(jf, tf, threads, reps, args.settle if batch < 16 else 0)
                        r.update(model=name, batch=batch, layer=layer, instances=n_inst, mode=mode)
                        layers.append(r)
                        print(f"  {layer} {mode}: ratio {r['ratio_median']:.2f}", flush=True)
    load_after = [round(v, 2) for v in os.getloadavg()]
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    meta = dict(machine=machine_info(), torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M"),
                command="python3 benchmarks/vs_torch.py GUIDED_DIFFUSION " + " ".join((argv or sys.argv[1:])[1:]),
                torch_threads=threads, torch_interop_threads=torch.get_num_interop_threads(), thread_env=env,
                load_before=load_before, load_after=load_after,
                shared=max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1) + 1,
                repeats=args.repeats, repeats_large=args.repeats_large, settle=args.settle, loop=args.loop,
                tolerance=TOLERANCE)
    path = write_results({"meta": meta, "rows": rows, "layers": layers}, args.tag)
    print(f"wrote {path} and .json")


if __name__ == "__main__":
    main()
