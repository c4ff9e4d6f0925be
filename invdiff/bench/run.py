""":func:`run_bench`: the solver x operator grid over a set of images, resumable, on one or many processes."""

from __future__ import annotations

import dataclasses
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


def lpips_weight_files(weights: Sequence[str]) -> list[str]:
    """``--lpips-weights``, checked: two files (AlexNet, LPIPS linear layers) that exist."""
    weights = list(weights)
    if len(weights) != 2:
        raise ValueError(f"--lpips-weights takes two files, ALEXNET.pth,LIN.pth; got {len(weights)}")
    for w in weights:
        if not Path(w).is_file():
            raise FileNotFoundError(f"--lpips-weights: no file {w}")
    return weights


def metric_names(value: Sequence[str] | None, lpips_weights: Sequence[str] | None) -> list[str]:
    """The metrics to report (default :data:`invdiff.metrics.DEFAULT_METRICS`, plus ``lpips``
    with weights, which are loaded and registered here)."""
    from invdiff import metrics as registry

    out = names(value) if value is not None else list(registry.DEFAULT_METRICS)
    if lpips_weights is not None:
        registry.lpips_metric(*lpips_weight_files(lpips_weights))
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


@dataclasses.dataclass(frozen=True)
class Setup:
    """A checked run: what :func:`prepare` found, before any directory is touched or anything compiled.

    ``solvers``: built solvers by name; ``operators``: names; ``images`` / ``labels``: the
    data at the model's size and the labels passed to it (None: unconditional); ``metrics``:
    names; ``config``: what identifies the run's results; ``share``: this process's image
    indices; ``batch``: images per compiled call.
    """

    solvers: dict[str, Any]
    operators: list[str]
    images: ImageSet
    labels: np.ndarray | None
    model: Any
    metrics: list[str]
    config: dict
    share: list[int]
    batch: int
    seed: int
    repeat: bool


def prepare(solvers: str | Sequence[str], operators: str | Sequence[str], *, data: Any = None, labels: Any = None,
            label: int | None = None, limit: int | None = None, batch_size: int | None = None,
            steps: int | None = None, seed: int = 0, model: Any = None, preset: str | None = None,
            flags: dict[str, Any] | None = None, metrics: Sequence[str] | None = None,
            lpips_weights: Sequence[str] | None = None, repeat: bool = False) -> Setup:
    """Check every argument, open the data, load the model, resolve the labels and check every
    solver on every operator (see :func:`run_bench` for the arguments): the errors a long run
    would hit, before any compilation."""
    import solvers as solver_registry

    sol_names = solver_names(solvers)
    op_names = names(operators)
    if not op_names:
        from operators import named

        raise ValueError(f"no operators given; valid names: {named.valid_names()}")
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, or None for each paper's defaults; got {steps!r}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    metric_list = metric_names(metrics, lpips_weights)

    imgs = open_images(data, labels)
    imgs = imgs.take(BUNDLED_LIMIT if limit is None and data is None else limit)
    net, model_id = models.load(model, preset, flags)
    imgs = imgs.at_size(models.image_shape(net) or imgs.shape)
    lab, labels_desc = models.resolve_labels(net, imgs, label, labels_given=labels is not None)
    built = {n: solver_registry.make(n, steps) for n in sol_names}
    _check_cells(net, built, op_names, imgs, lab, seed)

    mine = distributed.share(len(imgs), jax.process_index(), jax.process_count())
    ndev = len(jax.local_devices())
    batch = max(1, min(batch_size or BATCH_PER_DEVICE * ndev, -(-max(len(mine), 1) // ndev) * ndev))
    config = {
        "model": model_id, "data": imgs.source, "labels": labels_desc, "image_shape": list(imgs.shape),
        "steps": steps, "seed": int(seed), "metrics": metric_list, "repeat": bool(repeat),
        "lpips_weights": [_file_id(w) for w in lpips_weights] if lpips_weights else None,
    }
    return Setup(built, op_names, imgs, lab, net, metric_list, config, mine, batch, int(seed), bool(repeat))


def open_run(setup: Setup, out: Path, overwrite: bool = False) -> tuple[rec.RecordStore, dict, dict]:
    """Guard the user's files, open this process's records and find what is left:
    ``(store, done, need)``, ``need[(operator, solver)]`` the set of image indices to run."""
    from invdiff.guard import check_outputs
    from invdiff.images import writable_dir

    process, processes = jax.process_index(), jax.process_count()
    if not rec.record_files(out):  # every process decides alike, before any of them writes a file
        theirs = rep.report_outputs(out, setup.operators) + [out / "images"]
        check_outputs([p for p in theirs if p.exists()], overwrite=overwrite)
    distributed.barrier("invdiff-bench-start")
    writable_dir(out)
    store = rec.RecordStore(out, setup.config, process, processes)
    done = store.open()
    _check_settings(done, setup.solvers, out)
    ids = setup.images.ids
    need = {(o, s): {i for i in setup.share if (s, o, ids[i]) not in done}
            for o in setup.operators for s in setup.solvers}
    setup.images.check(sorted(set().union(*need.values())))  # an unreadable image fails now, not hours later
    if process == 0:
        info = machine_info()
        store.add_run({"started": rec.now(), "solvers": list(setup.solvers), "operators": setup.operators,
                       "images": len(setup.images), "processes": processes, "batch_size": setup.batch,
                       "jax": info["jax"], "invdiff": info["invdiff"], "machine": info, "argv": sys.argv[1:]})
    return store, done, need


def run_batches(setup: Setup, store: rec.RecordStore, need: dict, out: Path, stop: Any = None,
                save_images: bool = False, bar: Any = None) -> int:
    """Every operator, batch after batch, every solver on one measurement of the batch; each
    batch's results are on disk (and ``stop.check()`` called) before the next. Returns the
    number of results written (``store.written`` counts them also when interrupted)."""
    imgs, finished = setup.images, 0
    for op in setup.operators:
        todo = sorted(set().union(*(need[(op, s)] for s in setup.solvers)))
        for start in range(0, len(todo), setup.batch):
            chunk = todo[start:start + setup.batch]
            padded = chunk + [chunk[-1]] * (setup.batch - len(chunk))  # one compiled size per cell
            ids = [imgs.ids[i] for i in padded]
            x = imgs.read(padded)
            m = cells.measure(op, x, ids, setup.seed)
            for s, solver in setup.solvers.items():
                keep = [j for j, i in enumerate(chunk) if i in need[(op, s)]]
                if not keep:
                    continue
                if bar is not None:
                    bar.set_postfix_str(f"{s} · {op}")
                res = cells.run_batch(s, solver, setup.model, m, x, ids, padded,
                                      None if setup.labels is None else setup.labels[padded], metrics=setup.metrics,
                                      real=len(chunk), repeat=setup.repeat)
                files = _save_images(out, op, s, res, save_images)
                store.append([{**res.results[j], "image_file": files[j]} for j in keep])
                finished += len(keep)
                if bar is not None:
                    bar.update(len(keep))
                if stop is not None:
                    stop.check()
    return finished


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
    from tqdm.auto import tqdm

    from invdiff.guard import deferred_interrupts

    if images is not None:
        if limit is not None:
            raise ValueError("give limit or its older name images, not both")
        limit = images
    setup = prepare(solvers, operators, data=data, labels=labels, label=label, limit=limit, batch_size=batch_size,
                    steps=steps, seed=seed, model=model, preset=preset, flags=flags, metrics=metrics,
                    lpips_weights=lpips_weights, repeat=repeat)
    out = Path(out)
    process, processes = jax.process_index(), jax.process_count()
    if "lpips" not in setup.metrics and process == 0:
        print(f"LPIPS: {rep.LPIPS_SKIPPED}", file=sys.stderr)
    store, done, need = open_run(setup, out, overwrite)
    total = sum(len(v) for v in need.values())
    if done:
        print(f"{out}: {len(done)} results found, resuming; {total} to run"
              + (f" on process {process}" if processes > 1 else ""), file=sys.stderr)
    bar = tqdm(total=total, desc="bench" if processes == 1 else f"bench p{process}", unit="image",
               disable=not progress)
    try:
        with deferred_interrupts() as stop:
            finished = run_batches(setup, store, need, out, stop, save_images, bar)
    except KeyboardInterrupt:
        bar.close()
        n = store.written
        print(f"interrupted: {n} of {total} results of this run are in {store.path}, {total - n} are not; run the "
              f"same command again to finish", file=sys.stderr)
        if processes == 1 and n + len(done):
            rep.write_report(out, plots=plots)
        raise
    bar.close()

    distributed.barrier("invdiff-bench-done")  # process 0 merges the shards and writes the tables
    if process != 0:
        return {"metadata": {"process": process, "results": finished}, "rows": []}
    store.merge(setup.operators, list(setup.solvers))
    return rep.write_report(out, plots=plots)


__all__ = ["BATCH_PER_DEVICE", "BUNDLED_LIMIT", "DEFAULT_OPERATORS", "DEFAULT_SOLVERS", "Setup", "metric_names",
           "names", "open_run", "prepare", "run_batches", "run_bench", "solver_names"]
