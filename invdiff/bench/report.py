"""Tables, plots and sample grids, rebuilt from a run directory's records alone.

:func:`write_report` reads ``records.jsonl`` (and shards a stopped multi-process run left) and
writes:

* ``results.md`` / ``results.csv`` / ``results.json`` — one row per (solver, operator): the
  number of images n, NFE/VJP, every metric's mean ± the half-width of its 95 % confidence
  interval (Student t with n − 1 degrees of freedom over the images; – for n = 1), seconds per
  image, total compile seconds and images per second; the header names the machines, the
  model, the data, the steps and the seed;
* ``quality_<operator>.png`` — PSNR (and LPIPS when measured) against NFE and against seconds
  per image, one point per solver with its 95 % CI;
* ``grid_<operator>.png`` — ground truth, A⁺y and each solver's restoration for the first
  images whose PNGs the run saved (``images/``, see :func:`image_path`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from invdiff.bench import records as rec
from invdiff.images import atomic_write_bytes

#: Images per grid.
GRID_IMAGES = 4
#: What the run and the report say when LPIPS is not measured.
LPIPS_SKIPPED = "not measured (give --lpips-weights ALEXNET.pth,LIN.pth: torchvision's AlexNet and lpips' alex.pth)"

UNITS = (
    "Values are mean ± half-width of the 95 % confidence interval over the n images (Student t, n − 1 degrees of "
    "freedom; – when n = 1). Images are in [-1, 1] (model units). PSNR in dB with data range 2, SSIM (Wang et al. "
    "2004, 11x11 Gaussian window) and LPIPS (Zhang et al. 2018, AlexNet, lower is better) are computed on the "
    "restored images clipped to [-1, 1]. consistency = ||A x - y|| / ||y|| of the solver's output (y includes the "
    "measurement noise, so noisy rows cannot reach 0). outside MSE = mean squared change of the KNOWN pixels, "
    "Σ m (x - x_true)^2 / Σ m, in squared model units (divide by 4 for a [0, 1] scale); – for non-inpainting "
    "operators. NFE / VJP = network forward passes / vector-Jacobian products per image. s/image = wall seconds of "
    "a batch's solve, compile time subtracted (with --repeat: of a second, compiled call), over its images, "
    "averaged over the cell (no CI: the images of a batch share one time); compile = seconds spent tracing and "
    "compiling, summed over the cell's batches; images/s = 1 / (s/image). "
    "σ_y = measurement noise std in model units. Non-finite values are left out of means (n counts them)."
)


def image_path(out: Path, kind: str, operator: str, image_id: str) -> Path:
    """Where a run saves an image PNG: ``kind`` is ``truth``, ``measurement`` or a solver name."""
    name = image_id.replace("/", "__").replace("\\", "__")
    name = name if name.lower().endswith(".png") else name + ".png"
    return Path(out) / "images" / ("truth" if kind == "truth" else f"{operator}/{kind}") / name


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a 95 % two-sided CI).

    Bisection on P(|T| <= t), in closed form for integer ``df`` (Abramowitz & Stegun 26.7.3-4);
    above 1000 degrees of freedom the Cornish-Fisher expansion (26.7.5, error < 1e-8)."""
    if df < 1:
        return math.nan
    if df > 1000:
        z = 1.959963984540054
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)

    def inside(t: float) -> float:
        theta = math.atan(t / math.sqrt(df))
        c2 = math.cos(theta) ** 2
        term, total = 1.0, 1.0
        for k in range(1 if df % 2 else 0, df - 2, 2):  # odd: 2/3, 2·4/(3·5), ...; even: 1/2, 1·3/(2·4), ...
            term *= c2 * (k + 1) / (k + 2)
            total += term
        if df % 2 == 0:
            return math.sin(theta) * total
        return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))

    lo, hi = 0.0, 16.0
    while inside(hi) < 0.95:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Sequence[Any]) -> tuple[float, float, int]:
    """(mean, 95 % CI half-width, n) of the finite values (None and NaN are left out)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    if v.size == 1:
        return float(v[0]), math.nan, 1
    return float(v.mean()), float(t975(v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)), int(v.size)


def summarize(results: Sequence[dict], metrics: Sequence[str], operators: Sequence[str] = (),
              solvers: Sequence[str] = ()) -> list[dict]:
    """One row per (solver, operator), ordered by ``operators`` then ``solvers`` (others after)."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        cells.setdefault((r["solver"], r["operator"]), []).append(r)
    ops = {n: i for i, n in enumerate(operators)}
    sols = {n: i for i, n in enumerate(solvers)}
    rows = []
    for (s, o), rs in sorted(cells.items(), key=lambda c: (ops.get(c[0][1], len(ops)), c[0][1],
                                                             sols.get(c[0][0], len(sols)), c[0][0])):
        row: dict[str, Any] = {"solver": s, "operator": o, "sigma_y": rs[0]["sigma_y"], "steps": rs[0]["steps"],
                               "n": len(rs), "nfe": rs[0]["nfe"], "vjp": rs[0]["vjp"]}
        for m in metrics:
            row[m], row[f"{m}_ci95"], _ = mean_ci([r.get(m) for r in rs])
        total = sum(r["seconds"] for r in rs)
        row["seconds_per_image"] = total / len(rs)
        row["compile_seconds"] = float(sum(r["compile_seconds"] for r in rs))
        row["images_per_second"] = len(rs) / total if total > 0 else math.nan
        rows.append(row)
    return rows


def fields(metrics: Sequence[str]) -> list[str]:
    """results.csv columns."""
    return (["solver", "operator", "sigma_y", "steps", "n", "nfe", "vjp"]
            + [c for m in metrics for c in (m, f"{m}_ci95")]
            + ["seconds_per_image", "compile_seconds", "images_per_second"])


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def _pm(row: dict, name: str, spec: str) -> str:
    ci = row[f"{name}_ci95"]
    return _fmt(row[name], spec) + ("" if ci is None or math.isnan(ci) else " ± " + _fmt(ci, spec))


def metadata(out: Path, config: dict, runs: list[dict], results: list[dict]) -> dict:
    """What the report header says: configuration, machines, the last run's plan and progress."""
    last = runs[-1] if runs else {}
    machines = list(dict.fromkeys([r["machine"]["machine"] for r in runs if "machine" in r]))
    hosts = sorted({(r.get("host", "?"), r.get("device", "?")) for r in results})
    planned = len(last.get("solvers", [])) * len(last.get("operators", [])) * int(last.get("images", 0))
    done = sum(1 for r in results if r["solver"] in last.get("solvers", []) and r["operator"] in
               last.get("operators", []) and r.get("index", 0) < int(last.get("images", 0)))
    return {"config": config, "machines": machines, "hosts": [f"{h} ({d})" for h, d in hosts],
            "last_run": {k: v for k, v in last.items() if k != "kind"}, "planned": planned, "done": done,
            "complete": bool(planned) and done >= planned, "results": len(results), "units": UNITS,
            "directory": str(out)}


def write_tables(out: Path, meta: dict, rows: list[dict]) -> None:
    """results.csv, results.json and results.md."""
    from invdiff import metrics as registry
    from invdiff.bench.models import describe

    config = meta["config"]
    names = list(config.get("metrics", []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields(names), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "results.json", (json.dumps(rec.jsonable({"metadata": meta, "rows": rows}), indent=1)
                                              + "\n").encode())

    last = meta["last_run"]
    steps = config.get("steps")
    md = [
        "# invdiff bench",
        "",
        f"- machine: {'; '.join(meta['machines']) or '?'}" + (f" — hosts: {', '.join(meta['hosts'])}"
                                                                 if len(meta["hosts"]) > 1 else ""),
        f"- jax {last.get('jax', '?')}, invdiff {last.get('invdiff', '?')}; processes: {last.get('processes', 1)}, "
        f"batch size {last.get('batch_size', '?')}",
        f"- model: {describe(config['model'])}",
        f"- data: {config['data']}; labels: {config['labels']}",
        f"- steps: {'each paper’s defaults' if steps is None else steps}; seed {config['seed']}; timing: "
        + ("repeat (second call timed)" if config.get("repeat") else "single call, compile time subtracted"),
        *([] if "lpips" in names else [f"- LPIPS: {LPIPS_SKIPPED}"]),
        f"- results: {meta['results']}" + ("" if meta["complete"] else
                                          f" — INCOMPLETE: {meta['done']} of {meta['planned']} of the last run"),
        "",
        UNITS,
        "",
    ]
    labels = [registry.METRICS[m].label if m in registry.METRICS else m for m in names]
    specs = [registry.METRICS[m].fmt if m in registry.METRICS else ".4g" for m in names]
    md += ["| solver | operator | σ_y | n | NFE | VJP | " + " | ".join(labels)
           + " | s/image | compile (s) | images/s |",
           "|---|---|---|---|---|---|" + "---|" * (len(names) + 3)]
    for r in rows:
        md.append(f"| {r['solver']} | {r['operator']} | {r['sigma_y']:g} | {r['n']} | {r['nfe']} | {r['vjp']} | "
                  + " | ".join(_pm(r, m, s) for m, s in zip(names, specs))
                  + f" | {_fmt(r['seconds_per_image'], '.3g')} | {_fmt(r['compile_seconds'], '.1f')} | "
                  f"{_fmt(r['images_per_second'], '.3g')} |")
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


#: Public names of the two helpers above, for the studies' figures.
figure = _figure
save_figure = _save_figure


def plot_quality(path: Path, operator: str, rows: list[dict], metrics: Sequence[str]) -> None:
    """Quality against cost for one operator: each metric (rows of axes) against NFE and
    against seconds per image (columns), one point per solver with its 95 % CI."""
    from invdiff import metrics as registry

    fig = _figure(9.0, 3.3 * len(metrics) + 0.5)
    axes = np.asarray(fig.subplots(len(metrics), 2, squeeze=False))
    for i, m in enumerate(metrics):
        info = registry.METRICS.get(m)
        label = info.label if info else m
        better = "" if info is None else (", higher is better" if info.higher_is_better else ", lower is better")
        for ax, cost, xlabel in ((axes[i, 0], "nfe", "network evaluations per image (NFE)"),
                                 (axes[i, 1], "seconds_per_image", "seconds per image")):
            for r in rows:
                x, y = float(r[cost]), r[m]
                if not (math.isfinite(x) and x > 0 and y is not None and math.isfinite(y)):
                    continue
                err = r[f"{m}_ci95"]
                ax.errorbar([x], [y], yerr=None if err is None or not math.isfinite(err) else [err], fmt="o",
                            capsize=3)
                ax.annotate(r["solver"], (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel, fontsize=9)
            ax.set_ylabel(label + better, fontsize=9)
            ax.grid(alpha=0.3)
    n = max((r["n"] for r in rows), default=0)
    fig.suptitle(f"{operator}: quality against cost (mean ± 95 % CI over up to {n} images)", fontsize=10)
    _save_figure(fig, path)


def write_grid(out: Path, operator: str, solvers: Sequence[str], results: Sequence[dict]) -> bool:
    """grid_<operator>.png from the saved PNGs: rows ground truth, A⁺y, each solver; False if none."""
    from invdiff.images import grid, load_image, save_image

    ids = sorted({(r.get("index", 0), r["image"]) for r in results if r["operator"] == operator})
    cols = [(i, name) for i, name in ids if image_path(out, "truth", operator, name).is_file()
            and image_path(out, "measurement", operator, name).is_file()][:GRID_IMAGES]
    if not cols:
        return False
    rows = []
    for kind in ["truth", "measurement", *solvers]:
        row = []
        for _, name in cols:
            p = image_path(out, kind, operator, name)
            row.append(load_image(p) if p.is_file() else None)
        rows.append(row)
    shape = next(c for c in rows[0] if c is not None).shape
    rows = [[c if c is not None else np.zeros(shape, np.float32) for c in row] for row in rows]
    scale = max(1, 128 // max(shape[0], shape[1]))
    col_labels = [f"#{i} {Path(name).stem}"[:20] for i, name in cols]
    save_image(out / f"grid_{_safe(operator)}.png",
               grid(rows, ["ground truth", "pinv(y)", *solvers], col_labels, scale=scale))
    return True


def report_outputs(out: Path, operators: Sequence[str]) -> list[Path]:
    """The files :func:`write_report` may write for these operators."""
    out = Path(out)
    names = ["results.md", "results.csv", "results.json"]
    names += [f"{kind}_{_safe(o)}.png" for o in operators for kind in ("quality", "grid")]
    return [out / n for n in names]


def write_report(out: str | Path, plots: bool = True) -> dict:
    """Rebuild every table, plot and grid of a run directory from its records; returns
    ``{"metadata": ..., "rows": [...]}`` (the content of ``results.json``)."""
    out = Path(out)
    config, runs, results = rec.read_all(out)
    if config is None:
        raise FileNotFoundError(f"no invdiff bench records in {out} (expected {out / rec.RECORDS})")
    last = runs[-1] if runs else {}
    rows = summarize(results, config.get("metrics", []), last.get("operators", []), last.get("solvers", []))
    meta = metadata(out, config, runs, results)
    write_tables(out, meta, rows)
    if plots:
        shown = [m for m in ("psnr", "lpips") if m in config.get("metrics", [])]
        for op in dict.fromkeys(r["operator"] for r in rows):
            op_rows = [r for r in rows if r["operator"] == op]
            if shown:
                plot_quality(out / f"quality_{_safe(op)}.png", op, op_rows, shown)
            write_grid(out, op, [r["solver"] for r in op_rows], results)
    return {"metadata": meta, "rows": rows}


__all__ = ["GRID_IMAGES", "LPIPS_SKIPPED", "UNITS", "fields", "figure", "image_path", "mean_ci", "metadata",
           "plot_quality",
           "report_outputs", "save_figure", "summarize", "t975", "write_grid", "write_report", "write_tables"]
