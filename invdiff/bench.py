"""``invdiff bench``: the solver x operator grid on validation images, with timings and plots.

:func:`run_bench` restores the same validation images with every solver under every named
degradation (see :mod:`operators.named`) and writes into ``out``:

* ``results.md`` — a header (machine, JAX version, model, steps, images, seed, units) and the
  table; ``results.csv`` — one row per (solver, operator) cell; ``results.json`` — the rows
  and the metadata (the dict :func:`run_bench` returns; NaN/inf are written as ``null``);
* ``bars_<operator>.png`` — PSNR and SSIM per solver (mean ± std over the images);
* ``grid_<operator>.png`` — rows: ground truth, the measurement as A⁺y, one row per solver;
* ``change_<operator>.png`` (inpainting only) — the seeds' "outside-mask drift" study: the
  change |x̂ − x| of every pixel averaged over the images, and the same restricted to the
  known pixels (how much the solver moved what was observed).

The files are rewritten after every operator, so a long run that stops keeps what it did.

Timing. Every (solver, operator) cell is one batched :func:`invdiff.solve` call over all images.
``compile_seconds`` is the wall time JAX spends tracing, lowering and compiling during that
call, measured with :mod:`jax.monitoring` listeners (events ``/jax/core/compile/*``; the union
of their time spans, so nested traces are not counted twice) — without solving twice.
``run_seconds`` is the call's wall time minus that; it still includes one-time costs that are
not compilation (the first dispatch of the new executable, host-side set-up), so it reads a
little high. With ``repeat=True`` the call is made a second time (now compiled) and its wall
time is reported instead, which is exact.
JAX's persistent compilation cache (switched on by ``import invdiff``) makes
``compile_seconds`` small when a program was compiled by an earlier process: a cache hit
counts only the time to read the executable back.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.images import atomic_write_bytes, writable_dir

#: The six paper solvers (``--solvers`` default).
DEFAULT_SOLVERS: tuple[str, ...] = ("repaint", "ilvr", "ddnm", "mcg", "pigdm", "diffpir")
#: ``--operators`` default.
DEFAULT_OPERATORS: tuple[str, ...] = ("inpaint-box", "inpaint-thick", "inpaint-random", "colorize", "sr4",
                                      "sr4-noisy")
#: ``--steps`` default of the command line: CPU-friendly (``invdiff demo`` uses the same).
CLI_STEPS = 20
#: jax.monitoring events that time tracing, lowering and XLA compilation (a persistent-cache hit is
#: timed inside the backend event, as the time to read the executable back).
COMPILE_EVENTS: tuple[str, ...] = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)

#: results.csv columns, in order.
FIELDS: tuple[str, ...] = (
    "solver", "operator", "sigma_y", "steps", "images", "psnr", "psnr_std", "ssim", "ssim_std", "consistency",
    "outside_mse", "nfe", "vjp", "compile_seconds", "run_seconds", "images_per_second", "first_call_seconds",
)

UNITS = (
    "Images are in [-1, 1] (model units). PSNR in dB with data range 2, and SSIM (Wang et al. 2004, 11x11 "
    "Gaussian window), are computed on the restored images clipped to [-1, 1], one value per image, then "
    "averaged (± std over the images). consistency = ||A x - y|| / ||y|| of the solver's output (y includes "
    "the measurement noise, so noisy rows cannot reach 0). outside MSE = mean squared change of the KNOWN "
    "pixels, Σ m (x - x_true)^2 / Σ m, in squared model units (divide by 4 for a [0, 1] scale); – for "
    "non-inpainting operators. NFE / VJP = network forward passes / vector-Jacobian products per sample. "
    "compile = seconds spent tracing and compiling inside the solve call (jax.monitoring; small on a "
    "persistent compile-cache hit); run = wall seconds of the solve call for all images minus compile, "
    "which still holds first-dispatch costs (with --repeat: the wall seconds of a second, already compiled "
    "call, exact); images/s = images / run. "
    "sigma_y = measurement noise std in model units."
)


# ---------------------------------------------------------------------------------------
# Compile-time accounting through jax.monitoring.

_LOCK = threading.Lock()
_ACTIVE: list[CompileClock] = []
_REGISTERED = {"done": False, "spans": False}


class CompileClock:
    """Accumulates the compile-related jax.monitoring events recorded while it is active.

    ``seconds`` is the length of the union of the events' time spans (nested traces of inner
    jitted functions overlap their outer trace and count once); on a JAX without time-span
    events it falls back to the sum of the event durations.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.durations = 0.0
        self.events = 0

    @property
    def seconds(self) -> float:
        if not self.spans:
            return self.durations
        total, cur_a, cur_b = 0.0, None, None
        for a, b in sorted(self.spans):
            if cur_b is None or a > cur_b:
                if cur_b is not None:
                    total += cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        if cur_b is not None:
            total += cur_b - cur_a
        return total


def _on_duration(event: str, duration: float, **kwargs: Any) -> None:
    if event in COMPILE_EVENTS:
        with _LOCK:
            for clock in _ACTIVE:
                clock.durations += float(duration)
                clock.events += 1


def _on_span(event: str, start: float, end: float, **kwargs: Any) -> None:
    if event in COMPILE_EVENTS:
        with _LOCK:
            for clock in _ACTIVE:
                clock.spans.append((float(start), float(end)))


def _register_listeners() -> None:
    """Register the module's listeners once (older JAX cannot unregister them); they only write
    into the currently active clocks, so they cost nothing outside :func:`compile_clock`."""
    with _LOCK:
        if _REGISTERED["done"]:
            return
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        register_span = getattr(jax.monitoring, "register_event_time_span_listener", None)
        if register_span is not None:
            register_span(_on_span)
            _REGISTERED["spans"] = True
        _REGISTERED["done"] = True


@contextlib.contextmanager
def compile_clock() -> Iterator[CompileClock]:
    """``with compile_clock() as c: ...`` — then ``c.seconds`` is the time JAX spent tracing,
    lowering and compiling in the block (any thread of this process), in seconds."""
    _register_listeners()
    clock = CompileClock()
    with _LOCK:
        _ACTIVE.append(clock)
    try:
        yield clock
    finally:
        with _LOCK:
            _ACTIVE.remove(clock)


# ---------------------------------------------------------------------------------------
# Set-up helpers.


def _names(names: str | Sequence[str]) -> list[str]:
    """Lower-case names without duplicates; a string is split at commas."""
    if isinstance(names, str):
        names = names.split(",")
    return list(dict.fromkeys(str(n).strip().lower() for n in names if str(n).strip()))


def _solver_names(names: str | Sequence[str]) -> list[str]:
    import solvers as registry

    out = _names(names)
    if not out:
        raise ValueError(f"no solvers given: choose from {', '.join(registry.SOLVERS)}")
    for n in out:
        registry.get(n)  # ValueError listing the registered names
    return out


def _is_conditional(model: Any) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "class_cond", False) or getattr(model, "class_conditional", False))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: OS, CPU, accelerator (``device_kind``), versions, cache."""
    import jaxlib

    import invdiff

    dev = jax.devices()[0]
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "backend": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", "?"),
        "invdiff": invdiff.__version__,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
        "compile_timing": "jax.monitoring time spans" if _REGISTERED["spans"] else "jax.monitoring durations",
    }
    if dev.platform == "cpu":
        info["machine"] = f"CPU: {info['cpu']} ({info['cpu_count']} cores), {info['platform']}"
    else:
        info["machine"] = (f"{info['local_device_count']} x {dev.device_kind} ({dev.platform}); host CPU "
                           f"{info['cpu']} ({info['cpu_count']} cores), {info['platform']}")
    return info


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_none(x) for x in v]
    return v


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---------------------------------------------------------------------------------------
# Output files.


def _fmt(v: Any, spec: str) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def _write_tables(out: Path, result: dict[str, Any]) -> None:
    rows, meta = result["rows"], result["metadata"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in FIELDS})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "results.json", (json.dumps(_finite_or_none(result), indent=1) + "\n").encode())

    m = meta["machine"]
    steps = meta["steps"]
    settings = "; ".join(f"{n}: " + ", ".join(f"{k}={v}" for k, v in s.items()) for n, s in meta["solvers"].items())
    md = [
        "# invdiff bench",
        "",
        f"- machine: {m['machine']}",
        f"- jax {m['jax']} (jaxlib {m['jaxlib']}), invdiff {m['invdiff']}, python {m['python']}; compile cache: "
        f"{m['compilation_cache_dir'] or 'off'}",
        f"- model: {meta['model']}",
        f"- steps: {'each paper’s defaults' if steps is None else steps} ({settings})",
        f"- images: {meta['images']} per operator ({meta['data']}), seed {meta['seed']}, labels: {meta['labels']}",
        f"- timing: {'repeat (second call timed)' if meta['repeat'] else 'single call, compile time subtracted'}"
        f"; started {meta['started']}" + ("" if meta["complete"] else " — INCOMPLETE (still running or stopped)"),
        "",
        UNITS,
        "",
        "| solver | operator | σ_y | PSNR (dB) | SSIM | consistency | outside MSE | NFE | VJP | compile (s) "
        "| run (s) | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['solver']} | {r['operator']} | {r['sigma_y']:g} | {_fmt(r['psnr'], '.2f')} ± "
            f"{_fmt(r['psnr_std'], '.2f')} | {_fmt(r['ssim'], '.3f')} ± {_fmt(r['ssim_std'], '.3f')} | "
            f"{_fmt(r['consistency'], '.2e')} | {_fmt(r['outside_mse'], '.2e')} | {r['nfe']} | {r['vjp']} | "
            f"{_fmt(r['compile_seconds'], '.2f')} | {_fmt(r['run_seconds'], '.2f')} | "
            f"{_fmt(r['images_per_second'], '.3g')} |")
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    ops = list(dict.fromkeys(r["operator"] for r in rows))
    if solvers and ops:
        cell = {(r["solver"], r["operator"]): r for r in rows}
        md += ["", "PSNR (dB) at a glance:", "", "| solver | " + " | ".join(ops) + " |",
               "|---|" + "---|" * len(ops)]
        for s in solvers:
            md.append(f"| {s} | " + " | ".join(_fmt(cell[(s, o)]["psnr"], ".2f") if (s, o) in cell else ""
                                                for o in ops) + " |")
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the non-interactive Agg canvas (pyplot's global state is not touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _plot_bars(path: Path, operator: str, rows: list[dict[str, Any]], subtitle: str) -> None:
    names = [r["solver"] for r in rows]
    fig = _figure(max(6.0, 1.3 * len(names) + 3.0), 3.6)
    axes = fig.subplots(1, 2)
    for ax, key, label, fmt in ((axes[0], "psnr", "PSNR (dB), higher is better", "{:.1f}"),
                                (axes[1], "ssim", "SSIM, higher is better", "{:.3f}")):
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        errs = np.nan_to_num(np.array([r[f"{key}_std"] for r in rows], dtype=np.float64), nan=0.0, posinf=0.0)
        shown = np.where(np.isfinite(vals), vals, np.nan)
        pos = np.arange(len(names))
        bars = ax.bar(pos, np.nan_to_num(shown), yerr=errs, capsize=3, color="#4c72b0", alpha=0.9)
        for b, v, e in zip(bars, vals, errs):
            text = "inf" if np.isinf(v) else ("nan" if np.isnan(v) else fmt.format(v))
            ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height() + e), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(pos, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
        ax.set_title(label, fontsize=10)
        finite = shown[np.isfinite(shown)]
        if key == "ssim":
            ax.set_ylim(min(0.0, float(finite.min()) if finite.size else 0.0), 1.12)
        elif finite.size:
            ax.set_ylim(0, float(np.max(finite + errs[np.isfinite(shown)])) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{operator}: {subtitle} (mean ± std over images)", fontsize=10)
    _save_figure(fig, path)


def _plot_change(path: Path, operator: str, names: list[str], changes: list[np.ndarray], mask: np.ndarray,
                 outside: list[float]) -> None:
    """|x̂ − x| averaged over images per solver: all pixels (mask outline when the mask is shared),
    and the known pixels only (grey where no image has a known pixel)."""
    m = np.asarray(mask, np.float64)[..., 0]  # (B, H, W), 1 = known
    shared = bool(np.all(m == m[:1]))
    known_count = m.sum(axis=0)
    n = len(names)
    fig = _figure(7.6, 2.8 * n + 0.9)
    axes = np.asarray(fig.subplots(n, 2, squeeze=False))
    all_maps = [c.mean(axis=0) for c in changes]
    with np.errstate(invalid="ignore", divide="ignore"):
        known_maps = [np.where(known_count > 0, (c * m).sum(axis=0) / known_count, np.nan) for c in changes]
    # colour scales shared by all solvers; at least one 8-bit grey level (2/255 in [-1, 1] units), so
    # float rounding in the known region (1e-10) shows as black instead of filling the scale
    level = 2.0 / 255.0
    vmax_all = max([float(np.max(a)) for a in all_maps] + [level])
    kv = [float(np.nanmax(k)) for k in known_maps if np.any(np.isfinite(k))]
    vmax_known = max(kv + [level])
    import matplotlib as mpl

    cmap_known = mpl.colormaps["magma"].with_extremes(bad="#b0b0b0")
    for i, name in enumerate(names):
        ax0, ax1 = axes[i]
        im0 = ax0.imshow(all_maps[i], cmap="magma", vmin=0.0, vmax=vmax_all, interpolation="nearest")
        if shared and 0 < m[0].sum() < m[0].size:
            ax0.contour(m[0], levels=[0.5], colors="cyan", linewidths=1.0)
        ax0.set_title(f"{name}: all pixels", fontsize=9)
        im1 = ax1.imshow(known_maps[i], cmap=cmap_known, vmin=0.0, vmax=vmax_known, interpolation="nearest")
        ax1.set_title(f"{name}: known pixels only\noutside MSE {_fmt(float(outside[i]), '.2e')}", fontsize=9)
        for ax in (ax0, ax1):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im0, ax=list(axes[:, 0]), shrink=0.8, label="mean |x̂ − x| (model units)")
    fig.colorbar(im1, ax=list(axes[:, 1]), shrink=0.8, label="mean |x̂ − x| over known pixels (scale ≥ 2/255)")
    outline = "cyan line: mask border" if shared else "no outline: the masks differ per image"
    fig.suptitle(f"{operator}: change of the restored images, mean over {m.shape[0]} image(s)\n"
                 f"{outline}; grey: pixels unknown in every image", fontsize=10)
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------


def run_bench(
    solvers: Sequence[str],
    operators: Sequence[str],
    images: int = 4,
    steps: int | None = None,
    out: str | Path = "invdiff-bench",
    seed: int = 0,
    model: Any = None,
    data: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    progress: bool = True,
    repeat: bool = False,
) -> dict:
    """Run every solver on every operator and write tables and plots into ``out``.

    Args:
      solvers: registered solver names (``solvers.SOLVERS``), e.g. ``["ddnm", "ilvr"]`` (or ``"ddnm,ilvr"``).
      operators: degradation names of :func:`operators.named.make` (``inpaint-box``, ``colorize``,
        ``sr4``, ``sr4-noisy``, …). All names are validated before anything runs.
      images: images per operator, the first ``images`` of the data (default 4).
      steps: respaced steps for every solver; None (default) keeps each paper's defaults. RePaint
        uses short resampling jumps (``solvers.SHORT_RESAMPLING``) for ``steps`` <= 20.
      out: output directory (default ``invdiff-bench``), created; must be writable.
      seed: fixes the masks, the measurement noise and the solvers' keys (default 0). Each
        operator's keys are derived from ``seed`` and its name, so adding operators does not change
        the others' rows; all solvers of one operator share one key.
      model: a model, or a name/path for :func:`invdiff.load_model`; None loads ``"emoji64"``.
      data: images (B, H, W, C) in [-1, 1]; None uses the 10 bundled validation emoji.
      labels: class ids (B,) for ``data``, used when the model is class-conditional.
      progress: show a tqdm bar over the grid cells.
      repeat: solve every cell twice and report the second call's wall time as ``run_seconds``.

    The measurement is y = A x + σ_y A A⁺ n (n standard normal from a fixed key: the noise of
    the measured components; σ_y from the operator name, in model units) and the solve gets
    ``sigma_y=σ_y``. Returns ``{"metadata": {...}, "rows": [...]}``, one row per cell with the
    :data:`FIELDS` (plus per-image PSNR/SSIM) — the content of ``results.json``.
    """
    import invdiff
    import solvers as solver_registry
    from invdiff import metrics
    from invdiff.images import grid, save_image
    from invdiff.solve import Problem
    from operators import named

    # 1. names first: a typo fails before any data, model or compilation
    solver_names = _solver_names(solvers)
    op_names = _names(operators)
    if not op_names:
        raise ValueError(f"no operators given; valid names: {named.valid_names()}")
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, or None for each paper's defaults; got {steps!r}")
    if int(images) != images or images < 1:
        raise ValueError(f"images must be a positive integer, got {images!r}")
    images = int(images)

    # 2. data
    if data is None:
        from invdiff.demo import bundled_samples

        x_all, lab_all, img_names = bundled_samples()
        data_desc = "bundled emoji64 validation images"
    else:
        x_all = np.asarray(data, np.float32)
        if x_all.ndim != 4:
            raise ValueError(f"data must be images of shape (B, H, W, C), got shape {x_all.shape}")
        if not np.all(np.isfinite(x_all)):
            raise ValueError("data contains NaN or infinite values")
        if x_all.size and (x_all.min() < -1.001 or x_all.max() > 1.001):
            raise ValueError(f"data must be in [-1, 1] (model units), got values in [{x_all.min():.3g}, "
                             f"{x_all.max():.3g}]: rescale with x / 127.5 - 1 for uint8 images")
        lab_all = None if labels is None else np.asarray(labels).astype(np.int32).reshape(-1)
        if lab_all is not None and lab_all.shape[0] != x_all.shape[0]:
            raise ValueError(f"labels must hold one class id per image: {x_all.shape[0]}, got {lab_all.shape[0]}")
        img_names = [f"image {i}" for i in range(x_all.shape[0])]
        data_desc = f"{x_all.shape[0]} given images of {x_all.shape[1]}x{x_all.shape[2]}x{x_all.shape[3]}"
    if images > x_all.shape[0]:
        raise ValueError(f"images={images} but only {x_all.shape[0]} images are available: use at most "
                         f"{x_all.shape[0]}")
    x_true = x_all[:images]
    lab = None if lab_all is None else lab_all[:images]
    img_names = img_names[:images]
    shape = tuple(int(s) for s in x_true.shape)

    root = jax.random.key(int(seed))
    degs, keys = {}, {}
    for name in op_names:
        k_op = jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        k_mask, k_noise, k_solve = jax.random.split(k_op, 3)
        degs[name] = named.make(name, shape, k_mask)  # ValueError listing the valid names
        keys[name] = (k_noise, k_solve)

    # 3. the output directory, then the model
    out = writable_dir(out)
    if model is None:
        model = "emoji64"
    if isinstance(model, (str, os.PathLike)):
        model_desc = str(model)
        model = invdiff.load_model(str(model))
    else:
        model_desc = type(model).__name__
    conditional = _is_conditional(model)
    model_desc += " (class-conditional)" if conditional else ""
    if conditional and lab is None:
        raise ValueError("the model is class-conditional: pass labels= (one class id per image)")
    label = jnp.asarray(lab) if conditional else None
    labels_desc = "each image's class" if conditional else "not used (unconditional model)"
    model.check_input(shape, label)

    # 4. measurements, and every solver's own check on every operator, still before running
    built = {n: solver_registry.make(n, steps) for n in solver_names}
    meas: dict[str, jax.Array] = {}
    for name, deg in degs.items():
        x = jnp.asarray(x_true)
        y = deg.op.A(x)
        if deg.sigma_y > 0:
            n = jax.random.normal(keys[name][0], y.shape, jnp.float32)
            y = y + deg.sigma_y * deg.op.A(deg.op.pinv(n))
        meas[name] = y
        problem = Problem(model=model, op=deg.op, y=y, sigma_y=jnp.asarray(deg.sigma_y, jnp.float32), label=label)
        for sname, solver in built.items():
            try:
                solver.check(problem)
            except (TypeError, ValueError) as e:
                raise type(e)(f"solver {sname!r} cannot take operator {name!r}: {e}") from e

    settings = {n: {"steps": s.steps, "jump_length": s.jump_length, "jump_n_sample": s.jump_n_sample}
                for n, s in built.items()}
    _register_listeners()
    result: dict[str, Any] = {
        "metadata": {
            "machine": machine_info(), "model": model_desc, "steps": steps, "solvers": settings,
            "operators": {n: {"sigma_y": d.sigma_y, "inpainting": d.mask is not None} for n, d in degs.items()},
            "images": images, "image_names": img_names, "data": data_desc, "labels": labels_desc,
            "seed": int(seed), "repeat": bool(repeat), "units": UNITS,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": False,
        },
        "rows": [],
    }

    from tqdm.auto import tqdm

    bar = tqdm(total=len(solver_names) * len(op_names), desc="bench", unit="cell", disable=not progress)
    try:
        for name, deg in degs.items():
            y, x = meas[name], jnp.asarray(x_true)
            outputs: dict[str, np.ndarray] = {}
            op_rows: list[dict[str, Any]] = []
            for sname, solver in built.items():
                bar.set_postfix_str(f"{sname} · {name}")

                def call(solver=solver, name=name, deg=deg, y=y):
                    return invdiff.solve(solver, model, deg.op, y, key=keys[name][1], sigma_y=deg.sigma_y,
                                         label=label)

                with compile_clock() as clock:
                    t0 = time.perf_counter()
                    sol = call()
                    jax.block_until_ready(sol.x)
                    first = time.perf_counter() - t0
                compile_s = min(clock.seconds, first)
                if repeat:
                    t0 = time.perf_counter()
                    jax.block_until_ready(call().x)
                    run_s = time.perf_counter() - t0
                else:
                    run_s = max(first - compile_s, 0.0)
                xr = sol.x
                xc = jnp.clip(xr, -1.0, 1.0)
                ps = np.asarray(metrics.psnr(xc, x), np.float64)
                ss = np.asarray(metrics.ssim(xc, x), np.float64)
                cons = np.asarray(metrics.consistency(deg.op, xr, y), np.float64)
                if deg.mask is not None:
                    om = float(np.mean(np.asarray(metrics.outside_mask_mse(xr, x, jnp.asarray(deg.mask)))))
                else:
                    om = float("nan")
                outputs[sname] = np.asarray(xr)
                op_rows.append({
                    "solver": sname, "operator": name, "sigma_y": float(deg.sigma_y), "steps": solver.steps,
                    "images": images, "psnr": float(np.mean(ps)), "psnr_std": float(np.std(ps)),
                    "ssim": float(np.mean(ss)), "ssim_std": float(np.std(ss)), "consistency": float(np.mean(cons)),
                    "outside_mse": om, "nfe": int(sol.nfe), "vjp": int(sol.vjp), "compile_seconds": float(compile_s),
                    "run_seconds": float(run_s),
                    "images_per_second": float(images / run_s) if run_s > 0 else float("nan"),
                    "first_call_seconds": float(first),
                    "psnr_per_image": [float(v) for v in ps], "ssim_per_image": [float(v) for v in ss],
                })
                bar.update(1)

            # plots and tables for this operator (tables are rewritten after every operator)
            result["rows"].extend(op_rows)
            subtitle = f"{images} image(s), " + ("paper steps" if steps is None else f"{steps} steps")
            _plot_bars(out / f"bars_{_safe(name)}.png", name, op_rows, subtitle)
            pinv_y = np.asarray(deg.op.pinv(y))
            rows_img = [list(x_true), list(pinv_y)] + [list(outputs[s]) for s in built]
            scale = max(1, 128 // max(shape[1], shape[2]))
            col_labels = [f"#{i} {Path(n).stem}"[:20] for i, n in enumerate(img_names)]
            save_image(out / f"grid_{_safe(name)}.png",
                       grid(rows_img, ["ground truth", "pinv(y)"] + list(built), col_labels, scale=scale))
            if deg.mask is not None:
                changes = [np.asarray(metrics.change_map(outputs[s], x_true)) for s in built]
                _plot_change(out / f"change_{_safe(name)}.png", name, list(built), changes, deg.mask,
                             [r["outside_mse"] for r in op_rows])
            _write_tables(out, result)
    finally:
        bar.close()
    result["metadata"]["complete"] = True
    result["metadata"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write_tables(out, result)
    return result


# ---------------------------------------------------------------------------------------
# Command line (wired into ``invdiff bench`` by invdiff/cli.py).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``invdiff bench`` options to ``parser``."""
    parser.add_argument("--solvers", type=_names, default=list(DEFAULT_SOLVERS), metavar="LIST",
                        help="comma-separated solver names (default: " + ",".join(DEFAULT_SOLVERS)
                        + "; also dps, ddrm, ddpm, ddim)")
    parser.add_argument("--operators", type=_names, default=list(DEFAULT_OPERATORS), metavar="LIST",
                        help="comma-separated degradations: inpaint-<box|thick|thin|random|half|lines|expand|circle>, "
                        "colorize, sr<k>, each optionally with -noisy (measurement noise std 0.05 in [-1, 1] "
                        "units) (default: " + ",".join(DEFAULT_OPERATORS) + ")")
    parser.add_argument("--images", type=int, default=4, metavar="N",
                        help="validation images per operator, all solved in one batch (default 4; the bundled "
                        "set has 10)")
    parser.add_argument("--steps", type=int, default=CLI_STEPS, metavar="N",
                        help=f"respaced diffusion steps for every solver (default {CLI_STEPS}, CPU-friendly; "
                        "RePaint then resamples with jumps of 5, twice); 0 = each paper's defaults "
                        "(RePaint 250 steps with 10x10 jumps = 2410 network calls: a GPU job)")
    parser.add_argument("--out", default="invdiff-bench", metavar="DIR",
                        help="output directory for results.md/.csv/.json and the PNG plots (default: invdiff-bench)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the masks, the measurement noise and the solvers (default 0)")
    parser.add_argument("--model", default="emoji64", metavar="NAME|PATH",
                        help="diffusion model for invdiff.load_model: a bundled name, a guided-diffusion .pt file "
                        "or an orbax directory (default: emoji64, the bundled 64x64 class-conditional model)")
    parser.add_argument("--repeat", action="store_true",
                        help="solve every cell twice and report the second call's wall seconds as run time "
                        "(exact, twice the work; default: one call, compile seconds subtracted)")


def run_from_args(args: argparse.Namespace) -> None:
    """Run :func:`run_bench` with the options of :func:`add_arguments`."""
    steps = None if args.steps == 0 else args.steps
    if steps is not None and steps < 0:
        raise ValueError(f"--steps must be >= 0 (0 = each paper's defaults), got {args.steps}")
    run_bench(args.solvers, args.operators, images=args.images, steps=steps, out=args.out, seed=args.seed,
              model=args.model, repeat=args.repeat)
    out = Path(args.out)
    print(f"wrote {out / 'results.md'}, results.csv, results.json and the PNG plots in {out}")


__all__ = ["COMPILE_EVENTS", "DEFAULT_OPERATORS", "DEFAULT_SOLVERS", "FIELDS", "CompileClock", "add_arguments",
           "compile_clock", "machine_info", "run_bench", "run_from_args"]
