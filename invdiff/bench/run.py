""":func:`run_bench`: the solver x operator grid over a set of images, resumable, on one or many processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from invdiff.bench import cells, distributed, models
from invdiff.bench import records as rec
from invdiff.bench import report as rep
from invdiff.bench.data import ImageSet, open_images
from invdiff.bench.timing import machine_info

#: The six paper solvers (``--solvers`` default).
DEFAULT_SOLVERS: tuple[str, ...] = ("repaint", "ilvr", "ddnm", "mcg", "pigdm", "diffpir")
#: ``--operators`` default.
DEFAULT_OPERATORS: tuple[str, ...] = ("inpaint-box", "inpaint-thick", "inpaint-random", "colorize", "sr4",
                                      "sr4-noisy")
#: ``--limit`` default on the bundled images (other data: all images).
BUNDLED_LIMIT = 4
#: Images per compiled call and local device (``--batch-size`` default: this times the local devices).
BATCH_PER_DEVICE = 4


def names(value: str | Sequence[str]) -> list[str]:
    """Lower-case names without duplicates; a string is split at commas."""
    if isinstance(value, str):
        value = value.split(",")
    return list(dict.fromkeys(str(n).strip().lower() for n in value if str(n).strip()))


def solver_names(value: str | Sequence[str]) -> list[str]:
    """Validated solver names (``solvers.SOLVERS``)."""
    import solvers as registry

    out = names(value)
    if not out:
        raise ValueError(f"no solvers given: choose from {', '.join(registry.SOLVERS)}")
    for n in out:
        registry.get(n)  # ValueError listing the registered names
    return out


def metric_names(value: Sequence[str] | None, lpips_weights: Sequence[str] | None) -> list[str]:
    """The metrics to report (default :data:`invdiff.metrics.DEFAULT_METRICS`, plus ``lpips``
    with weights, which are loaded and registered here)."""
    from invdiff import metrics as registry

    out = names(value) if value is not None else list(registry.DEFAULT_METRICS)
    if lpips_weights is not None:
        weights = list(lpips_weights)
        if len(weights) != 2:
            raise ValueError(f"--lpips-weights takes two files, ALEXNET.pth,LIN.pth; got {len(weights)}")
        for w in weights:
            if not Path(w).is_file():
                raise FileNotFoundError(f"--lpips-weights: no file {w}")
        registry.lpips_metric(*weights)
        out = out + ["lpips"] if "lpips" not in out else out
    elif "lpips" in out and "lpips" not in registry.METRICS:
        raise ValueError("the lpips metric needs weights: --lpips-weights ALEXNET.pth,LIN.pth")
    unknown = [m for m in out if m not in registry.METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}: registered metrics are {', '.join(registry.METRICS)} "
                         f"(add one with invdiff.metrics.register)")
    return out


def _file_id(path: str) -> dict:
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": Path(path).name, "sha1": h.hexdigest()[:16]}


def _check_cells(model: Any, built: dict, operators: Sequence[str], images: ImageSet, labels: np.ndarray | None,
                 seed: int) -> None:
    """Every operator name, and every solver on every operator, on the first image: the errors
    a long run would hit, before anything is compiled."""
    import jax.numpy as jnp

    from invdiff.solve import Problem

    x = images.read([0])
    model.check_input((len(images),) + x.shape[1:], None if labels is None else jnp.asarray(labels))
    label = None if labels is None else jnp.asarray(labels[:1])
    for op in operators:
        deg = cells.degradation(op, x.shape, seed)  # ValueError listing the valid names
        y = jnp.zeros(jax.eval_shape(deg.op.A, jax.ShapeDtypeStruct(x.shape, jnp.float32)).shape, jnp.float32)
        problem = Problem(model=model, op=deg.op, y=y, sigma_y=jnp.asarray(deg.sigma_y, jnp.float32), label=label)
        for name, solver in built.items():
            try:
                solver.check(problem)
            except (TypeError, ValueError) as e:
                raise type(e)(f"solver {name!r} cannot take operator {op!r}: {e}") from e


def _check_settings(done: dict, built: dict, out: Path) -> None:
    """Results already in ``out`` must come from the same solver settings as this run's."""
    seen = set()
    for (s, _, _), r in done.items():
        if s in built and s not in seen:
            seen.add(s)
            now = cells.solver_settings(built[s])
            if rec.jsonable(now) != r.get("settings"):
                diff = rec.differences(rec.jsonable(now), r.get("settings") or {})
                raise ValueError(f"{out} holds {s} results with other settings ({'; '.join(diff)}); nothing is mixed: "
                                 f"use another output directory")


def _save_images(out: Path, operator: str, solver: str, res: cells.BatchResult, every: bool) -> list[str | None]:
    """PNGs of the grid's images (the first :data:`report.GRID_IMAGES`), or of all with ``every``;
    the restoration's path relative to ``out`` per result."""
    from invdiff.images import save_image

    paths: list[str | None] = []
    for j, r in enumerate(res.results):
        in_grid = r["index"] < rep.GRID_IMAGES
        if not (in_grid or every):
            paths.append(None)
            continue
        p = rep.image_path(out, solver, operator, r["image"])
        save_image(p, res.x[j])
        paths.append(p.relative_to(out).as_posix())
        if in_grid:
            for kind, img in (("truth", res.truth[j]), ("measurement", res.pinv_y[j])):
                q = rep.image_path(out, kind, operator, r["image"])
                if not q.exists():
                    save_image(q, img)
    return paths


def run_bench(
    solvers: str | Sequence[str] = DEFAULT_SOLVERS,
    operators: str | Sequence[str] = DEFAULT_OPERATORS,
    *,
    data: str | os.PathLike[str] | np.ndarray | None = None,
    labels: str | os.PathLike[str] | np.ndarray | None = None,
    label: int | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    out: str | os.PathLike[str] = "invdiff-bench",
    seed: int = 0,
    model: Any = None,
    preset: str | None = None,
    flags: dict[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    lpips_weights: Sequence[str] | None = None,
    save_images: bool = False,
    overwrite: bool = False,
    repeat: bool = False,
    progress: bool = True,
    plots: bool = True,
    images: int | None = None,
) -> dict:
    """Run every solver on every operator over the images; append results to ``out/records.jsonl``.

    Args:
      solvers: registered solver names (``solvers.SOLVERS``), a list or ``"ddnm,ilvr"``.
      operators: degradation names of :func:`operators.named.make` (``inpaint-box``, ``sr4-noisy``, …).
      data: a folder of PNG/JPEG files, an ``.npz`` file or an array (N, H, W, C) in [-1, 1];
        None: the bundled emoji64 validation images (see :func:`invdiff.bench.data.open_images`).
      labels: class ids for a class-conditional model: a CSV file (``file,label``) or an array;
        ``label``: one class id for every image.
      limit: run the first ``limit`` images (default: all; 4 of the bundled set). ``images`` is
        an older name for it.
      batch_size: images per compiled call (default 4 per local device).
      steps: respaced steps for every solver; None keeps each paper's defaults.
      out: the run directory. Rerunning with the same configuration resumes; another
        configuration there is refused.
      seed: the run's seed; each image's seed is a hash of it, the operator and the image's id.
      model: a model, a bundled name, a ``.pt`` file (with ``preset``/``flags``) or an orbax
        directory; None: ``emoji64``.
      metrics: metric names of :data:`invdiff.metrics.METRICS` (default: PSNR, SSIM,
        consistency, outside-mask MSE); ``lpips_weights``: (AlexNet .pth, LPIPS linear .pth)
        adds LPIPS.
      save_images: write every restoration as a PNG under ``out/images`` (the grids' first
        images are always written).
      overwrite: replace tables and plots in ``out`` that a user made or another tool wrote
        (never needed to resume a run).
      repeat: solve every batch twice and time the second call (exact run time, twice the work).
      progress: a progress bar over images; plots: write the plots and grids.

    In a multi-process run (after :func:`invdiff.bench.distributed.initialize`) every process
    runs its share of the images and process 0 writes the tables. Ctrl-C stops after the
    batch in flight is recorded (KeyboardInterrupt). Returns the table as
    ``{"metadata": ..., "rows": [...]}`` (``results.json``) on process 0.
    """
    import solvers as solver_registry
    from invdiff.guard import check_outputs, deferred_interrupts
    from invdiff.images import writable_dir

    # 1. everything checkable from the arguments alone
    sol_names = solver_names(solvers)
    op_names = names(operators)
    if not op_names:
        from operators import named

        raise ValueError(f"no operators given; valid names: {named.valid_names()}")
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, or None for each paper's defaults; got {steps!r}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if images is not None:
        if limit is not None:
            raise ValueError("give limit or its older name images, not both")
        limit = images
    metric_list = metric_names(metrics, lpips_weights)

    # 2. data, model, labels: errors before anything is compiled
    imgs = open_images(data, labels)
    imgs = imgs.take(BUNDLED_LIMIT if limit is None and data is None else limit)
    net, model_id = models.load(model, preset, flags)
    imgs = imgs.at_size(models.image_shape(net) or imgs.shape)
    lab, labels_desc = models.resolve_labels(net, imgs, label, labels_given=labels is not None)
    built = {n: solver_registry.make(n, steps) for n in sol_names}
    process, processes = jax.process_index(), jax.process_count()
    mine = distributed.share(len(imgs), process, processes)
    ndev = len(jax.local_devices())
    batch = batch_size or BATCH_PER_DEVICE * ndev
    batch = max(1, min(batch, -(-max(len(mine), 1) // ndev) * ndev))
    _check_cells(net, built, op_names, imgs, lab, seed)

    # 3. the run directory: the user's files are safe, records resume
    out = Path(out)
    config = {
        "model": model_id, "data": imgs.source, "labels": labels_desc, "image_shape": list(imgs.shape),
        "steps": steps, "seed": int(seed), "metrics": metric_list, "repeat": bool(repeat),
        "lpips_weights": [_file_id(w) for w in lpips_weights] if lpips_weights else None,
    }
    if not rec.record_files(out) and process == 0:
        theirs = rep.report_outputs(out, op_names) + [out / "images"]
        check_outputs([p for p in theirs if p.exists()], overwrite=overwrite)
    writable_dir(out)
    store = rec.RecordStore(out, config, process, processes)
    done = store.open()
    _check_settings(done, built, out)
    need = {(o, s): {i for i in mine if (s, o, imgs.ids[i]) not in done} for o in op_names for s in sol_names}
    pending = sorted(set().union(*need.values()))
    imgs.check(pending)  # an unreadable image fails now, not hours later
    if process == 0:
        info = machine_info()
        store.add_run({"started": rec.now(), "solvers": sol_names, "operators": op_names, "images": len(imgs),
                       "processes": processes, "batch_size": batch, "jax": info["jax"], "invdiff": info["invdiff"],
                       "machine": info, "argv": sys.argv[1:]})
    total = sum(len(v) for v in need.values())
    if done:
        print(f"{out}: {len(done)} results found, resuming; {total} to run"
              + (f" on process {process}" if processes > 1 else ""), file=sys.stderr)

    # 4. batch after batch, every solver on one measurement; each batch's results are on disk before the next
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="bench" if processes == 1 else f"bench p{process}", unit="image",
               disable=not progress)
    finished = 0
    try:
        with deferred_interrupts() as stop:
            for op in op_names:
                todo = sorted(set().union(*(need[(op, s)] for s in sol_names)))
                for start in range(0, len(todo), batch):
                    chunk = todo[start:start + batch]
                    padded = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled size per cell
                    ids = [imgs.ids[i] for i in padded]
                    x = imgs.read(padded)
                    m = cells.measure(op, x, ids, seed)
                    for s in sol_names:
                        keep = [j for j, i in enumerate(chunk) if i in need[(op, s)]]
                        if not keep:
                            continue
                        bar.set_postfix_str(f"{s} · {op}")
                        res = cells.run_batch(s, built[s], net, m, x, ids, padded, None if lab is None else lab[padded],
                                              metrics=metric_list, real=len(chunk), repeat=repeat)
                        files = _save_images(out, op, s, res, save_images)
                        store.append([{**res.results[j], "image_file": files[j]} for j in keep])
                        finished += len(keep)
                        bar.update(len(keep))
                        stop.check()
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: {finished} of {total} results of this run are in {store.path}, {total - finished} are "
              f"not; run the same command again to finish", file=sys.stderr)
        if processes == 1 and finished + len(done):
            rep.write_report(out, plots=plots)
        raise
    bar.close()

    # 5. process 0 merges the shards and writes the tables
    distributed.barrier("invdiff-bench-done")
    if process != 0:
        return {"metadata": {"process": process, "results": finished}, "rows": []}
    store.merge(op_names, sol_names)
    return rep.write_report(out, plots=plots)


__all__ = ["BATCH_PER_DEVICE", "BUNDLED_LIMIT", "DEFAULT_OPERATORS", "DEFAULT_SOLVERS", "metric_names", "names",
           "run_bench", "solver_names"]
