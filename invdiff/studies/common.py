"""What the studies share: the run (checked options, guarded outputs, records, resumption,
Ctrl-C), checkpointed runs that can be restarted, metrics of holes and samples, tables,
figures and the summary with its verdict.

A study is a module with

* ``NAME``, ``SEED`` (the seed document it tests), ``CLAIM`` (the claim, quoted or
  paraphrased, markdown) and ``SCALES = {"cpu": {...}, "paper": {...}}`` (its settings; every
  scale has ``images``, ``batch`` and ``steps``);
* ``OUTPUTS``: the files it writes in its directory (for the output guard);
* ``check(model, images, labels, settings)``: clear errors before anything is compiled;
* ``run(ctx)``: the work, in batches; each finished batch is appended with
  :meth:`Context.save` (which honours Ctrl-C), and what the records hold is skipped, so a
  rerun resumes;
* ``report(rep)``: tables, figures and ``summary.md`` from the records alone; returns the
  :class:`Verdict`.

Records are :class:`invdiff.bench.records.RecordStore` lines; a result's key
``(solver, operator, image)`` reads here as (method, condition, image).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.bench import cells, models
from invdiff.bench import records as rec
from invdiff.bench.data import ImageSet, open_images
from invdiff.bench.report import LPIPS_SKIPPED, figure, image_path, mean_ci, save_figure
from invdiff.images import atomic_write_bytes

#: Settings that do not change a study's results (images are added by a rerun with more; results
#: do not depend on the batch): left out of the records' configuration.
FREE_SETTINGS = ("images", "batch")
#: fold_in data of the key that draws x_T of a checkpointed run (segment c uses c).
START = 0x7FFFFFF0
#: How many images of each condition keep their PNGs (grids, heat maps).
SAVED_IMAGES = 2

Key = tuple[str, str, str]


# ---------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Context:
    """What a study's ``run`` works with: the model, the images (at the model's size) and
    their labels (None: unconditional), the settings, the seed, LPIPS (a function, or None),
    the records and what they hold (``done``)."""

    study: str
    out: Path
    model: Any
    images: ImageSet
    labels: np.ndarray | None
    settings: dict
    seed: int
    lpips: Callable[[jax.Array, jax.Array], jax.Array] | None
    store: rec.RecordStore
    done: dict[Key, dict]
    stop: Any = None
    bar: Any = None

    def missing(self, solver: str, operator: str, indices: Sequence[int]) -> list[int]:
        """The image indices without a result for (solver, operator)."""
        return [i for i in indices if (solver, operator, self.images.ids[i]) not in self.done]

    def chunks(self, indices: Sequence[int] | None = None) -> Iterator[tuple[list[int], list[int]]]:
        """``(real, padded)`` batches of image indices; the last is padded to the batch size
        (one compiled size) by repeating its last image."""
        idx = list(range(len(self.images))) if indices is None else list(indices)
        b = int(self.settings["batch"])
        for start in range(0, len(idx), b):
            real = idx[start:start + b]
            yield real, real + [real[-1]] * (b - len(real))

    def label_array(self, indices: Sequence[int]) -> jax.Array | None:
        return None if self.labels is None else jnp.asarray(self.labels[list(indices)], jnp.int32)

    def base(self, solver: str, operator: str, index: int) -> dict:
        """The fields every result has."""
        return {"solver": solver, "operator": operator, "image": self.images.ids[index], "index": int(index),
                "label": None if self.labels is None else int(self.labels[index])}

    def save(self, results: Sequence[dict]) -> None:
        """Append finished results (flushed to disk), then honour a pending Ctrl-C."""
        new = [r for r in results if rec.key(r) not in self.done]
        self.store.append(new)
        for r in new:
            self.done[rec.key(r)] = r
        if self.bar is not None:
            self.bar.update(len(new))
        if self.stop is not None:
            self.stop.check(f"{self.store.written} results of this run are in {self.store.path}; run the same command "
                            f"again to finish")

    def save_png(self, kind: str, operator: str, index: int, image: np.ndarray) -> None:
        """Keep an image of the first :data:`SAVED_IMAGES` images (``kind``: a method, ``truth``
        or ``measurement``)."""
        from invdiff.images import save_image

        if index < SAVED_IMAGES:
            save_image(image_path(self.out, kind, operator, self.images.ids[index]), np.asarray(image))


def settings_for(module: Any, paper_scale: bool, steps: int | None, images: int | None,
                 overrides: dict | None) -> dict:
    """A study's settings: its scale, then ``overrides``, then --steps and --images."""
    s = dict(module.SCALES["paper" if paper_scale else "cpu"])
    unknown = sorted(set(overrides or {}) - set(s))
    if unknown:
        raise ValueError(f"study {module.NAME}: unknown setting(s) {', '.join(unknown)}; its settings are "
                         f"{', '.join(sorted(s))}")
    s.update(overrides or {})
    for name, v in (("steps", steps), ("images", images)):
        if v is not None:
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"--{name} must be a positive integer, got {v!r}")
            s[name] = int(v)
    return s


def _file_id(path: str) -> dict:
    import hashlib

    h = hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]
    return {"file": Path(path).name, "sha1": h}


def lpips_function(weights: Sequence[str] | None) -> Callable | None:
    """LPIPS from the user's two weight files, or None (with the bench's message on stderr)."""
    if weights is None:
        print(f"LPIPS: {LPIPS_SKIPPED}", file=sys.stderr)
        return None
    from invdiff.bench.run import lpips_weight_files
    from invdiff.metrics import lpips_from_weights

    return lpips_from_weights(*lpips_weight_files(weights))


def run(module: Any, *, model: Any = None, preset: str | None = None, flags: dict | None = None, data: Any = None,
        labels: Any = None, label: int | None = None, images: int | None = None, steps: int | None = None,
        seed: int = 0, out: str | os.PathLike[str] | None = None, paper_scale: bool = False,
        lpips_weights: Sequence[str] | None = None, overwrite: bool = False, progress: bool = True,
        settings: dict | None = None) -> Verdict:
    """Run one study (see :func:`invdiff.studies.run_study` for the arguments); returns its verdict."""
    from tqdm.auto import tqdm

    from invdiff.bench.timing import machine_info
    from invdiff.guard import check_outputs, deferred_interrupts
    from invdiff.images import writable_dir

    started = time.perf_counter()
    s = settings_for(module, paper_scale, steps, images, settings)
    imgs = open_images(data, labels)
    if images is not None and images > len(imgs):
        raise ValueError(f"--images {images} but only {len(imgs)} images are available in {imgs.source}: use at most "
                         f"{len(imgs)}, or more data (--data)")
    imgs = imgs.take(min(s["images"], len(imgs)))  # the study's default: at most what the data has
    net, model_id = models.load(model, preset, flags)
    imgs = imgs.at_size(models.image_shape(net) or imgs.shape)
    lab, labels_desc = models.resolve_labels(net, imgs, label, labels_given=labels is not None)
    module.check(net, imgs, lab, s)
    lp = lpips_function(lpips_weights)

    out = Path(out if out is not None else Path("invdiff-studies") / module.NAME)
    if not rec.record_files(out):  # a new run must not replace files a user keeps there
        theirs = [out / n for n in module.OUTPUTS + ["summary.md", "images"]]
        check_outputs([p for p in theirs if p.exists()], overwrite=overwrite)
    writable_dir(out)
    config = {"study": module.NAME, "model": model_id, "data": imgs.source, "labels": labels_desc,
              "image_shape": list(imgs.shape), "seed": int(seed), "paper_scale": bool(paper_scale),
              "settings": {k: v for k, v in s.items() if k not in FREE_SETTINGS},
              "lpips_weights": [_file_id(w) for w in lpips_weights] if lpips_weights else None}
    store = rec.RecordStore(out, config)
    done = store.open()
    imgs.check()
    info = machine_info()
    store.add_run({"started": rec.now(), "study": module.NAME, "images": len(imgs), "batch": s["batch"],
                   "jax": info["jax"], "invdiff": info["invdiff"], "machine": info, "argv": sys.argv[1:]})
    if done:
        print(f"{out}: {len(done)} results found, resuming", file=sys.stderr)
    bar = tqdm(desc=f"study {module.NAME}", unit="result", disable=not progress)
    ctx = Context(module.NAME, out, net, imgs, lab, s, int(seed), lp, store, done, None, bar)
    try:
        with deferred_interrupts() as stop:
            ctx.stop = stop
            module.run(ctx)
    except KeyboardInterrupt:
        bar.close()
        store.add_run({"stopped": rec.now(), "wall_seconds": time.perf_counter() - started,
                       "written": store.written})
        if len(ctx.done):
            write_report(module, out)
        raise
    bar.close()
    store.add_run({"finished": rec.now(), "wall_seconds": time.perf_counter() - started, "written": store.written})
    return write_report(module, out)


# ---------------------------------------------------------------------------------------
# Reports


@dataclasses.dataclass
class Report:
    """A study directory's records: configuration, runs, results, and where to write."""

    out: Path
    config: dict
    runs: list[dict]
    results: list[dict]

    @property
    def settings(self) -> dict:
        return self.config["settings"]

    @property
    def has_lpips(self) -> bool:
        return self.config.get("lpips_weights") is not None

    def select(self, **match: Any) -> list[dict]:
        """Results whose fields equal ``match`` (e.g. ``solver="repaint"``), in image order."""
        rs = [r for r in self.results if all(r.get(k) == v for k, v in match.items())]
        return sorted(rs, key=lambda r: (r.get("index", 0), r["image"]))

    def machines(self) -> list[str]:
        return list(dict.fromkeys(r["machine"]["machine"] for r in self.runs if "machine" in r))

    def wall_seconds(self) -> float:
        """Wall time of the invocations that ran (summed over resumed parts)."""
        return float(sum(r.get("wall_seconds", 0.0) for r in self.runs))

    def unrecorded(self) -> int:
        """How many invocations started and recorded no end (killed): their time is unknown."""
        return sum(1 for r in self.runs if "started" in r) - sum(1 for r in self.runs if "wall_seconds" in r)

    def images(self) -> int:
        return len({r["image"] for r in self.results})


def read_report(out: str | os.PathLike[str]) -> Report:
    out = Path(out)
    config, runs, results = rec.read_all(out)
    if config is None:
        raise FileNotFoundError(f"no study records in {out} (expected {out / rec.RECORDS})")
    return Report(out, config, runs, results)


def write_report(module: Any, out: str | os.PathLike[str]) -> Verdict:
    """Rebuild a study's tables, figures and summary from its records."""
    rep = read_report(out)
    if rep.config.get("study") != module.NAME:
        raise ValueError(f"{out} holds records of the study {rep.config.get('study')!r}, not {module.NAME!r}")
    return module.report(rep)


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: ``key`` in the rows, its ``heading`` and number format; ``ci``: the
    row has ``key + "_ci95"`` (shown as mean ± half-width)."""

    key: str
    heading: str
    fmt: str = ".3g"
    ci: bool = False


def fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return format(v, spec)
    return str(v)


def pm(mean: float, ci: float, spec: str = ".3g") -> str:
    """``mean ± ci`` (just the mean when the CI is undefined)."""
    return fmt(mean, spec) + ("" if ci is None or not math.isfinite(ci) else " ± " + fmt(ci, spec))


def stats(rows: Sequence[dict], key: str) -> tuple[float, float, int]:
    """(mean, 95 % CI half-width, n) of ``key`` over ``rows``."""
    return mean_ci([r.get(key) for r in rows])


def add_stats(row: dict, results: Sequence[dict], keys: Sequence[str]) -> dict:
    """``row`` with ``key``, ``key_ci95`` for every key (mean ± CI over ``results``) and ``n``."""
    n = 0
    for k in keys:
        row[k], row[k + "_ci95"], m = stats(results, k)
        n = max(n, m)
    row["n"] = n
    return row


def paired(a: Sequence[dict], b: Sequence[dict], key: str) -> tuple[float, float, int]:
    """Mean ± CI of the per-image difference a − b of ``key`` (images matched by id)."""
    bb = {r["image"]: r.get(key) for r in b}
    d = [r[key] - bb[r["image"]] for r in a if r.get(key) is not None and bb.get(r["image"]) is not None]
    return mean_ci(d)


def sign(mean: float, ci: float) -> int:
    """+1 / −1 when the 95 % CI of a difference lies above / below 0; 0 when it covers 0 (or is undefined)."""
    if not (math.isfinite(mean) and ci is not None and math.isfinite(ci)):
        return 0
    return 1 if mean - ci > 0 else -1 if mean + ci < 0 else 0


def write_table(out: Path, stem: str, title: str, rows: Sequence[dict], columns: Sequence[Column],
                notes: Sequence[str] = ()) -> str:
    """``stem.md`` / ``.csv`` / ``.json`` of ``rows``; returns the markdown table (no title)."""
    keys = [c.key for c in columns]
    header = [k for c in columns for k in ((c.key, c.key + "_ci95") if c.ci else (c.key,))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r.get(k):.6g}" if isinstance(r.get(k), float) else r.get(k)) for k in header})
    atomic_write_bytes(out / f"{stem}.csv", buf.getvalue().encode())
    atomic_write_bytes(out / f"{stem}.json", (json.dumps(rec.jsonable({"title": title, "columns": keys,
                                                                          "rows": list(rows)}), indent=1)
                                              + "\n").encode())
    lines = ["| " + " | ".join(c.heading for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells_ = [pm(r.get(c.key), r.get(c.key + "_ci95"), c.fmt) if c.ci else fmt(r.get(c.key), c.fmt)
                  for c in columns]
        lines.append("| " + " | ".join(cells_) + " |")
    table = "\n".join(lines)
    md = [f"# {title}", "", *notes, *([""] if notes else []), table, ""]
    atomic_write_bytes(out / f"{stem}.md", "\n".join(md).encode())
    return table


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``word``: supports / contradicts / inconclusive (or partly supports); ``line``: the
    verdict in one sentence with its numbers; ``reasons``: the argument, one item per point."""

    word: str
    line: str
    reasons: tuple[str, ...] = ()


def write_summary(rep: Report, module: Any, *, setup: Sequence[str], table: str, figures: Sequence[tuple[str, str]],
                  verdict: Verdict, limits: Sequence[str]) -> Verdict:
    """``summary.md``: the seed's claim, what was measured, the table, the figures and the verdict."""
    c = rep.config
    n = rep.images()
    planned = rep.runs[-1].get("images") if rep.runs else None
    lines = [
        f"# Study `{module.NAME}`", "",
        f"**Seed:** {module.SEED}", "",
        "## The claim", "", module.CLAIM, "",
        "## What was measured", "",
        f"- model: {models.describe(c['model'])}; data: {c['data']} ({n} images"
        + (f" of {planned} planned: INCOMPLETE" if planned and n < planned else "") + f"); labels: {c['labels']}",
        *[f"- {s}" for s in setup],
        f"- seed {c['seed']}; {'the papers’ scale (--paper-scale)' if c.get('paper_scale') else 'CPU defaults'}"
        + ("" if rep.has_lpips else f"; LPIPS {LPIPS_SKIPPED}"),
        f"- machine: {'; '.join(rep.machines()) or '?'} (shared with other jobs: times are not benchmarks); "
        f"wall time {rep.wall_seconds():.0f} s"
        + (f" over the invocations that recorded their end ({rep.unrecorded()} killed ones not counted)"
           if rep.unrecorded() else ""),
        "- values are mean ± half-width of the 95 % confidence interval over the images (Student t, n − 1 "
        "degrees of freedom; – when undefined). Images are in [-1, 1] (model units).",
        "",
        "## Results", "", table, "",
        *[f"![{cap}]({name})\n\n*{cap}*\n" for name, cap in figures],
        "## Verdict", "",
        f"**{verdict.word}** — {verdict.line}", "",
        *[f"- {r}" for r in verdict.reasons], "",
        "## Limits of this measurement", "",
        *[f"- {s}" for s in limits], "",
    ]
    atomic_write_bytes(rep.out / "summary.md", "\n".join(lines).encode())
    return verdict


def combine(words: Sequence[int]) -> str:
    """A verdict word from the signs of several tests (+1 for the claim, −1 against, 0 unclear)."""
    pos, neg = sum(1 for w in words if w > 0), sum(1 for w in words if w < 0)
    if pos and not neg:
        return "supports"
    if neg and not pos:
        return "contradicts"
    if pos and neg:
        return "mixed"
    return "inconclusive at this scale"


# ---------------------------------------------------------------------------------------
# Measurement helpers


def hole_of(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean (B, H, W, C): True on missing pixels of an inpainting mask (1 = known)."""
    return np.broadcast_to(np.asarray(mask) < 0.5, shape)


def hole_rms(a: np.ndarray, b: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Root mean square difference of a and b over the hole, per image: (B,)."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    return np.sqrt((d * hole).sum(axis=(1, 2, 3)) / np.maximum(hole.sum(axis=(1, 2, 3)), 1))


def spread(samples: np.ndarray, hole: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel standard deviation across samples (S, B, H, W, C) (ddof 1), averaged over the
    hole (or every pixel for None), per image: (B,)."""
    sd = np.std(np.asarray(samples, np.float64), axis=0, ddof=1)
    if hole is None:
        return sd.reshape(sd.shape[0], -1).mean(axis=1)
    return (sd * hole).sum(axis=(1, 2, 3)) / np.maximum(hole.sum(axis=(1, 2, 3)), 1)


def seam_error(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """How well the fill meets the known region, per image: the RMS difference between the
    steps across the mask's boundary in x and in the ground truth, over every pair of
    neighbouring pixels (horizontal and vertical) of which one is known and one missing
    (0 when x joins the known region as the truth does). (B,)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    known = np.broadcast_to(np.asarray(mask) > 0.5, x.shape[:3] + (1,))[..., 0]
    total, count = np.zeros(x.shape[0]), np.zeros(x.shape[0])
    for axis in (1, 2):
        dx, dr = np.diff(x, axis=axis), np.diff(ref, axis=axis)
        k = np.diff(known.astype(np.int8), axis=axis) != 0
        total += (((dx - dr) ** 2).mean(axis=-1) * k).sum(axis=(1, 2))
        count += k.sum(axis=(1, 2))
    return np.sqrt(total / np.maximum(count, 1))


def quality(x: jax.Array, truth: np.ndarray, deg: Any, y: jax.Array, lpips: Callable | None) -> dict[str, np.ndarray]:
    """Per-image PSNR, SSIM, consistency, outside-mask MSE (registry metrics), LPIPS (with
    weights) and, for inpainting, the seam error."""
    from invdiff import metrics

    mask = None if deg.mask is None else jnp.asarray(deg.mask)
    r = metrics.Restoration(x=jnp.asarray(x), ref=jnp.asarray(truth), op=deg.op, y=y, mask=mask)
    out = metrics.evaluate([metrics.METRICS[n] for n in ("psnr", "ssim", "consistency", "outside_mse")], r)
    if lpips is not None:
        out["lpips"] = np.asarray(lpips(r.x_clipped, r.ref), np.float64)
    if deg.mask is not None:
        out["seam"] = seam_error(np.clip(np.asarray(x), -1, 1), truth, deg.mask)
    return out


def pairwise_lpips(lpips: Callable, samples: np.ndarray) -> np.ndarray:
    """Mean LPIPS over all pairs of samples (S, B, H, W, C), per image: (B,)."""
    s = samples.shape[0]
    pairs = [(i, j) for i in range(s) for j in range(i + 1, s)]
    d = [np.asarray(lpips(jnp.clip(samples[i], -1, 1), jnp.clip(samples[j], -1, 1))) for i, j in pairs]
    return np.mean(d, axis=0)


def fold(keys: jax.Array, data: int) -> jax.Array:
    """Per-image keys folded with ``data`` (a new, independent stream per value)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def timesteps_of(model: Any, steps: int, walk: np.ndarray) -> np.ndarray:
    """The original timestep of each walk position's state (−1: the clean end)."""
    from invdiff.schedule import respaced_timesteps

    use = np.append(respaced_timesteps(model.schedule, steps), -1)
    return use[np.asarray(walk)]


def checkpointed_run(solver: Any, model: Any, op: Any, y: jax.Array, keys: jax.Array, walk: np.ndarray,
                     cuts: Sequence[int], *, sigma_y: float = 0.0, label: jax.Array | None = None,
                     x_start: jax.Array | None = None, first: int = 0) -> list[jax.Array]:
    """A solve that keeps its state at the walk positions ``cuts`` and can be restarted there.

    The walk is solved segment by segment, one :func:`invdiff.bench.cells.solve_each` call
    (``x_init`` = the last state, ``walk`` = the segment) per pair of consecutive cuts.
    Randomness is a function of the per-image ``keys`` and the segment only: x_T is drawn
    from ``fold(keys, START)`` and segment c (from ``cuts[c]`` to ``cuts[c + 1]``) uses
    ``fold(keys, c)``, whatever segment the run starts from. So:

    * ``checkpointed_run(..., keys=k)`` returns the states at every cut, x_T first and the
      result last;
    * restarting from checkpoint c with the same keys, ``x_start=states[c], first=c``,
      replays the original run from there exactly (the same compiled program on the same
      inputs): at c = 0 it reproduces the whole trajectory;
    * restarting with other keys draws a new completion from that state (RePaint's
      "resample from a checkpoint").

    The solver's own state (``Solver.init``) starts afresh in every segment, as in any
    ``solve(x_init=...)``; every paper solver here is stateless. Segments of equal length share
    one compiled program (the walk is data). Returns the states from checkpoint ``first`` on.
    """
    cuts = [int(c) for c in cuts]
    if cuts[0] != 0 or cuts[-1] != len(walk) - 1 or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts must rise from 0 to the walk's last position {len(walk) - 1}, got {cuts}")
    if x_start is None:
        if first != 0:
            raise ValueError("a restart from a later checkpoint needs its state: x_start=...")
        x_shape = tuple(op.x_shape(tuple(y.shape[1:])))
        x_start = jax.vmap(lambda k: jax.random.normal(k, x_shape, jnp.float32))(fold(keys, START))
    states = [jnp.asarray(x_start)]
    for c in range(first, len(cuts) - 1):
        seg = np.asarray(walk[cuts[c]:cuts[c + 1] + 1])
        x, _, _ = cells.solve_each(solver, model, op, y, fold(keys, c), sigma_y=sigma_y, label=label,
                                   x_init=states[-1], start_step=int(seg[0]), walk=seg)
        states.append(x)
    return states


# ---------------------------------------------------------------------------------------
# Figures


def line_plot(path: Path, title: str, panels: Sequence[dict], width: float = 9.0) -> None:
    """One row of panels; each ``{"xlabel", "ylabel", "series", "xlog", "ylog", "invert_x", "hline"}``,
    a series ``{"x", "y", "err", "label", "style", "color", "annotate"}`` (err: 95 % CI half-widths).
    With ``ylog``, values below ``floor`` (default 1e-12) are drawn on the floor, marked "0"."""
    fig = figure(width, 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, p in zip(axes, panels):
        floor = p.get("floor", 1e-12)
        for s in p["series"]:
            y = np.asarray([np.nan if v is None else v for v in s["y"]], np.float64)
            err = None if s.get("err") is None else np.asarray(
                [0.0 if e is None or not math.isfinite(e) else e for e in s["err"]], np.float64)
            if p.get("ylog"):
                y = np.maximum(y, floor)
                if err is not None:
                    err = np.stack([np.minimum(err, y - floor * 0.999), err])  # a bar may not cross the floor
            ax.errorbar(s["x"], y, yerr=err, fmt=s.get("style", "o-"), capsize=3, label=s.get("label"), markersize=4,
                        color=s.get("color"))
            for xi, yi, txt in zip(s["x"], y, s.get("annotate", [])):
                ax.annotate(txt, (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7)
        if p.get("hline") is not None:
            ax.axhline(p["hline"], color="grey", lw=0.8, ls="--")
        if p.get("xlog"):
            from matplotlib.ticker import NullLocator

            ax.set_xscale("log")
            xs = sorted({float(v) for s in p["series"] for v in s["x"]})
            ax.set_xticks(xs, [f"{v:g}" for v in xs])  # the values run, not powers of ten
            ax.xaxis.set_minor_locator(NullLocator())
        if p.get("ylog"):
            ax.set_yscale("log")
            ax.axhline(floor, color="grey", lw=0.6, ls=":")
            ax.annotate("0 (exact)", (0.01, floor), xycoords=("axes fraction", "data"), xytext=(2, 3),
                        textcoords="offset points", fontsize=7, color="grey")
        if p.get("invert_x"):
            ax.invert_xaxis()
        ax.set_xlabel(p["xlabel"], fontsize=9)
        ax.set_ylabel(p["ylabel"], fontsize=9)
        ax.grid(alpha=0.3)
        if any(s.get("label") for s in p["series"]):
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def image_grid(path: Path, rows: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str],
               col_labels: Sequence[str]) -> bool:
    """A PNG grid of images ([-1, 1]); missing cells are white. False when no image is there."""
    from invdiff.images import grid, save_image

    shape = next((c.shape for r in rows for c in r if c is not None), None)
    if shape is None:
        return False
    blank = np.ones(shape, np.float32)
    cells_ = [[c if c is not None else blank for c in r] for r in rows]
    save_image(path, grid(cells_, row_labels, col_labels, scale=max(1, 96 // max(shape[0], shape[1]))))
    return True


def load_png(out: Path, kind: str, operator: str, image_id: str) -> np.ndarray | None:
    from invdiff.images import load_image

    p = image_path(out, kind, operator, image_id)
    return load_image(p) if p.is_file() else None


__all__ = ["Column", "Context", "Report", "Verdict", "add_stats", "checkpointed_run", "combine", "fold",
           "hole_of", "hole_rms", "image_grid", "line_plot", "load_png", "paired", "pairwise_lpips", "quality",
           "read_report", "run", "seam_error", "sign", "spread", "stats", "timesteps_of", "write_report",
           "write_summary", "write_table"]
