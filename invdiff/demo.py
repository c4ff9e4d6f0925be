"""``invdiff demo``: every paper solver on every degradation, offline, on the bundled model.

Restores a few validation emoji that ship with the package (never trained on) with RePaint,
ILVR, DDNM, MCG, PiGDM and DiffPIR across inpainting (box, thick brush strokes, 70 % random
pixels), colorization and 4x super-resolution, and writes

* ``grid.png`` — rows: ground truth, measurement, one row per solver; columns: task × image;
* ``results.md`` / ``results.csv`` — PSNR, SSIM, consistency ||Ax − y|| / ||y||, the MSE
  outside the mask (known pixels that the solver changed, inpainting only), NFE and seconds.

The default is a CPU preset with fewer steps (``DEMO_SETTINGS``); ``--full`` uses each
paper's settings (RePaint 2410 NFE, MCG 1000, …) and adds the particle samplers MCGdiff and
TDS (``FULL_EXTRA``, 3200 and 1600 NFE per image), which wants a GPU.
"""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Demo preset (CPU): per-solver step counts that give each solver a fair showing in the
#: 10-minute CPU budget (benchmarks/results/demo_steps_cpu.md: hole PSNR on the demo's box task
#: rose from 7-21 dB at 20 steps to 28-40 dB at these counts for DDNM, RePaint and PiGDM);
#: RePaint keeps resampling with short jumps (95 NFE).
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "repaint": dict(steps=50, jump_length=5, jump_n_sample=2),
    "ilvr": dict(steps=50),
    "ddnm": dict(steps=100),
    "mcg": dict(steps=50),
    "pigdm": dict(steps=50),
    "diffpir": dict(steps=100),
}
MASK_FAMILIES = ("box", "thick", "random")
#: ``--full`` also runs the particle samplers at their defaults (MCGdiff 32 x 100, TDS 16 x 100 NFE).
FULL_EXTRA = ("mcgdiff", "tds")


@dataclass
class Task:
    name: str
    op: Any
    x: np.ndarray  # ground truth, (B, H, W, 3) in [-1, 1]
    labels: np.ndarray
    mask: np.ndarray | None  # (B, H, W, 1) for inpainting


def bundled_samples() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The validation emoji shipped with the package: images in [-1, 1], labels, names."""
    from importlib.resources import files

    from invdiff.images import to_model

    with np.load(io.BytesIO(files("invdiff").joinpath("assets/emoji64/val_samples.npz").read_bytes())) as d:
        return to_model(d["images"]), d["labels"].astype(np.int32), [str(n) for n in d["names"]]


def build_tasks(images: np.ndarray, labels: np.ndarray, key: jax.Array) -> list[Task]:
    """Inpainting (every family in one batch, one mask per sample), colorization and 4x SR."""
    from operators import Colorization, Downsampling, Inpainting, masks

    n, h, w, _ = images.shape
    keys = jax.random.split(key, len(MASK_FAMILIES))
    kw = {"random": dict(missing=0.7)}
    fam_masks = [np.asarray(masks.by_name(f, k, h, w, **kw.get(f, {}))) for f, k in zip(MASK_FAMILIES, keys)]
    mask = np.concatenate([np.repeat(m[None, :, :, None], n, axis=0) for m in fam_masks])
    x_inp = np.concatenate([images] * len(MASK_FAMILIES))
    return [
        Task("inpaint", Inpainting(jnp.asarray(mask)), x_inp, np.tile(labels, len(MASK_FAMILIES)), mask),
        Task("colorize", Colorization(), images, labels, None),
        Task("sr4", Downsampling(4), images, labels, None),
    ]


def column_names(task: Task, n: int) -> list[str]:
    if task.name == "inpaint":
        return [f"inpaint-{f}" for f in MASK_FAMILIES for _ in range(n)]
    return [task.name] * n


OUTPUT_FILES = ("grid.png", "results.md", "results.csv")
#: The registry metrics (:data:`invdiff.metrics.METRICS`) in the demo's table.
SCORES = ("psnr", "ssim", "consistency", "outside_mse")


def run_demo(out: str | Path = "invdiff-demo", full: bool = False, images: int = 2, seed: int = 0,
             model: Any = None, solvers: list[str] | None = None, progress: bool = True,
             label: int | None = None, steps: int | None = None, overwrite: bool = False) -> Path:
    """Run the demo and write ``grid.png``, ``results.md`` and ``results.csv`` into ``out``.

    A model with a null class runs unconditionally, as a user with an unlabelled image would;
    ``label`` conditions every image on that class instead. A class-conditional model without a
    null class (today's bundled emoji64) is conditioned on each image's true category unless
    ``label`` is given. ``steps`` runs every solver at that many steps instead of the preset
    (``solvers.make``: RePaint then resamples with short jumps).
    Existing output files are refused before any work unless ``overwrite``. After Ctrl-C the
    solve in progress finishes, the files are written with the solves done so far, and
    :class:`invdiff.guard.Interrupted` names the solves not done."""
    from invdiff.guard import check_outputs, deferred_interrupts
    from invdiff.images import writable_dir

    out = writable_dir(out)
    check_outputs([out / f for f in OUTPUT_FILES], overwrite=overwrite)
    with deferred_interrupts() as stop:
        return _run_demo(out, full, images, seed, model, solvers, progress, label, steps, stop)


def _precompile(solver: Any, model: Any, op: Any, y: Any, seed: int, label: Any) -> None:
    """``invdiff.precompile`` of one demo solve; a failure is left to the solve itself to report."""
    import invdiff

    try:
        invdiff.precompile(solver, model, op, y, key=jax.random.key(seed), label=label)
    except Exception:  # noqa: BLE001 - the same call in solve raises it with the user's traceback
        pass


def _run_demo(out: Path, full: bool, images: int, seed: int, model: Any, solvers: list[str] | None,
              progress: bool, label: int | None, steps: int | None, stop: Any) -> Path:
    import invdiff
    import solvers as solver_registry
    from invdiff import metrics
    from invdiff.images import atomic_write_bytes, grid, save_image

    names = solvers or list(DEMO_SETTINGS) + (list(FULL_EXTRA) if full else [])
    x_all, labels_all, _ = bundled_samples()
    if not 1 <= images <= len(x_all):
        raise ValueError(f"--images must be between 1 and {len(x_all)}")
    x_all, labels_all = x_all[:images], labels_all[:images]
    if model is None:
        model = invdiff.load_model("emoji64")
    class_cond = getattr(getattr(model, "config", None), "class_cond", False)
    if label is not None:
        if not class_cond:
            raise ValueError("--label needs a class-conditional model")
        n_classes = model.config.num_classes
        if not 0 <= label < n_classes:
            raise ValueError(f"--label must be a class id in [0, {n_classes}), got {label}")
        labels_all = np.full_like(labels_all, label)
    conditional = class_cond and (label is not None or getattr(model, "null_label", None) is None)
    tasks = build_tasks(x_all, labels_all, jax.random.key(seed))

    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    outputs: dict[str, list[np.ndarray]] = {}
    ys = [t.op.A(jnp.asarray(t.x)) for t in tasks]
    task_labels = [jnp.asarray(t.labels) if conditional else None for t in tasks]
    jobs = []  # (name, solver, task index), in the order they run
    for name in names:
        if steps is not None:
            solver = solver_registry.make(name, steps)
        else:
            cls = solver_registry.get(name)
            solver = cls() if full else cls(**DEMO_SETTINGS.get(name, {}))
        jobs += [(name, solver, i) for i in range(len(tasks))]
    bar = tqdm(total=len(jobs), desc="demo", unit="solve", disable=not progress)
    not_done: list[str] = []
    # the next solve's program compiles in a thread while this one runs (invdiff.precompile)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="invdiff-demo-precompile")

    def compile_ahead(j: int) -> Future | None:
        if j >= len(jobs):
            return None
        _, solver, i = jobs[j]
        return pool.submit(_precompile, solver, model, tasks[i].op, ys[i], seed, task_labels[i])

    try:
        ahead = compile_ahead(0)
        for j, (name, solver, i) in enumerate(jobs):
            task, y = tasks[i], ys[i]
            if stop.requested:
                not_done.append(f"{name} · {task.name}")
                continue
            bar.set_postfix_str(f"{name} · {task.name}")
            t0 = time.perf_counter()
            if ahead is not None:
                ahead.result()  # a solve that started while its program compiles would compile it again
            ahead = compile_ahead(j + 1)
            sol = invdiff.solve(solver, model, task.op, y, key=jax.random.key(seed), label=task_labels[i])
            x = np.asarray(jax.block_until_ready(sol.x))
            seconds = time.perf_counter() - t0
            outputs.setdefault(name, []).append(x)
            cols = column_names(task, images)
            # the registry's metrics, each one compiled program (op by op, each operation and
            # shape compiled a small one: 54 of the demo's 96 programs)
            scores = metrics.evaluate([metrics.METRICS[n] for n in SCORES],
                                      metrics.Restoration(x=sol.x, ref=task.x, op=task.op, y=y, mask=task.mask))
            ps, ss, cons, outside = (scores[n] for n in SCORES)
            for col in dict.fromkeys(cols):
                sel = np.asarray([c == col for c in cols])
                rows.append(dict(solver=name, task=col, psnr=float(ps[sel].mean()), ssim=float(ss[sel].mean()),
                                 consistency=float(cons[sel].mean()), outside_mse=float(np.nanmean(outside[sel]))
                                 if task.mask is not None else float("nan"),
                                 nfe=sol.nfe, seconds=seconds, steps=solver.steps))
            bar.update(1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    bar.close()

    # the grid: ground truth, measurement (A⁺ y), then one row per solver
    truth = np.concatenate([t.x for t in tasks])
    meas = np.concatenate([np.asarray(t.op.pinv(t.op.A(jnp.asarray(t.x)))) for t in tasks])
    col_labels = [c for t in tasks for c in column_names(t, images)]
    finished = [n for n in names if len(outputs.get(n, ())) == len(tasks)]  # all, unless interrupted
    img_rows = [list(truth), list(meas)] + [list(np.concatenate(outputs[n])) for n in finished]
    png = grid(img_rows, ["ground truth", "measurement"] + finished, col_labels)
    save_image(out / "grid.png", png)

    fields = ["solver", "task", "psnr", "ssim", "consistency", "outside_mse", "nfe", "steps", "seconds"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    preset = f"{steps} steps each" if steps is not None else "paper settings" if full else "CPU demo preset"
    if label is not None:
        cond = f"conditioned on class {label}"
    elif conditional:
        cond = "conditioned on each image's true class"
    else:
        cond = "unconditional (the model's null class)" if class_cond else "unconditional model"
    md = [f"# invdiff demo ({preset}; {images} image(s) per task, seed {seed}; {cond})", "",
          "PSNR/SSIM against the ground truth ([-1, 1] images, data range 2); consistency = "
          "||A x − y|| / ||y||; outside MSE = mean squared change of the known pixels (inpainting); "
          "seconds = wall time of the solve call that produced the row, with whatever of its "
          "compilation had not finished while the previous solve ran (each program compiles in "
          "the background during the solve before it; inpainting families share one call).", "",
          "| solver | task | PSNR | SSIM | consistency | outside MSE | NFE | seconds |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        om = "–" if np.isnan(r["outside_mse"]) else f"{r['outside_mse']:.2e}"
        md.append(f"| {r['solver']} | {r['task']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['consistency']:.2e} | "
                  f"{om} | {r['nfe']} | {r['seconds']:.1f} |")
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())
    print(f"wrote {out / 'grid.png'}, {out / 'results.md'} and {out / 'results.csv'}")
    done = len(names) * len(tasks) - len(not_done)
    stop.check(f"{out}'s grid.png, results.md and results.csv hold the {done} finished solve(s); not done: "
               f"{', '.join(not_done)}")
    return out
