"""``attention``: where the queries in the hole look, over the reverse process, per attention block.

Each image is inpainted as a :func:`~invdiff.studies.common.checkpointed_run`; at every
checkpoint the network is run once more on the saved state x_t with
:func:`invdiff.nets.attention_maps`, and every attention block's softmax weights W (rows =
queries, summing to 1) are split by the mask, pooled to the block's resolution (a token's
known fraction m ∈ [0, 1], its hole fraction h = 1 − m):

* ``known_from_hole`` = Σ_q h_q Σ_k W_qk m_k / Σ_q h_q — the share of attention that queries in
  the hole give to keys in the known region; ``hole_from_hole`` is its complement (they sum
  to 1 because every row of W sums to 1);
* ``received_by_hole`` = mean_q Σ_k W_qk h_k — the share of all attention that lands in the
  hole (the seed's "total attention in the masked region", Fig. 13);
* ``hole_area`` = mean_k h_k — what uniform attention would give (the baseline of both).

Heads are averaged. Maps of the attention the hole's queries give to every key are kept for
the first image.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from invdiff.bench import cells
from invdiff.studies import common as c

NAME = "attention"
SEED = ("000 — *Inpainting with denoising diffusion probabilistic models* (the RePaint study), §8.1 and "
        "appendix C")
CLAIM = """> "We observe a decrease in the attention belonging to the masked region during the process, particularly
> just before the process ends. One possible explanation for this is that when objects are about to be
> generated, masked patches rely more on the unmasked regions and therefore receive more attention." (000, §8.1)

> "Our analysis of attention patterns showed that attention tends to accumulate more in the visible area of the
> image during inpainting." (000, §9; 256 x 256 ImageNet model, 30 images, half mask, 23 checkpoints of
> RePaint's 250-step walk with 10 x 10 jumps)

That is: the share of attention that lands in the hole falls as t goes to 0, and the hole's queries rely more
on the known region near the end."""

SCALES: dict[str, dict[str, Any]] = {
    "cpu": {"images": 8, "batch": 4, "steps": 50, "solver": "repaint", "jump": [1, 1], "operator": "inpaint-half",
            "first": 5, "every": 5, "map_times": 5},
    "paper": {"images": 30, "batch": 4, "steps": 250, "solver": "repaint", "jump": [10, 10],
              "operator": "inpaint-half", "first": 200, "every": 190, "map_times": 6},
}
OUTPUTS = ["table.md", "table.csv", "table.json", "table_blocks.md", "table_blocks.csv", "table_blocks.json",
           "attention_shares.png", "attention_maps.png", "maps.npz"]
SHARES = ("known_from_hole", "hole_from_hole", "received_by_hole", "hole_from_known", "hole_area")


def check(model: Any, images: Any, labels: Any, settings: dict) -> None:
    from invdiff.nets import ADMModel
    from invdiff.studies import restart

    if not isinstance(model, ADMModel) or not str(model.config.attention_resolutions).strip():
        raise ValueError(f"the attention study reads attention weights: it needs an ADM network with attention "
                         f"blocks (invdiff.nets.ADMModel, attention_resolutions set), got {type(model).__name__}")
    restart.check(model, images, labels, {**settings, "completions": 2})


def pooled_known(mask: np.ndarray, res: int) -> np.ndarray:
    """(B, res·res) known fraction of each token of a res x res grid over a (B, H, W, 1) mask."""
    b, h, w = mask.shape[:3]
    if h % res or w % res:
        raise ValueError(f"an attention block at {res}x{res} does not divide the {h}x{w} mask")
    m = np.asarray(mask, np.float64)[..., 0].reshape(b, res, h // res, res, w // res).mean(axis=(2, 4))
    return m.reshape(b, res * res)


def shares(weights: np.ndarray, known: np.ndarray) -> dict[str, np.ndarray]:
    """The shares of one block's weights (B, heads, Q, K) given the tokens' known fraction (B, Q); (B,) each."""
    w = np.asarray(weights, np.float64).mean(axis=1)  # (B, Q, K), heads averaged
    m = known
    h = 1.0 - m
    to_known = np.einsum("bqk,bk->bq", w, m)
    to_hole = np.einsum("bqk,bk->bq", w, h)
    hq = np.maximum(h.sum(axis=1), 1e-12)
    mq = np.maximum(m.sum(axis=1), 1e-12)
    return {"known_from_hole": (h * to_known).sum(axis=1) / hq, "hole_from_hole": (h * to_hole).sum(axis=1) / hq,
            "received_by_hole": to_hole.mean(axis=1), "hole_from_known": (m * to_hole).sum(axis=1) / mq,
            "hole_area": h.mean(axis=1)}


def hole_query_map(weights: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(B, K): the attention the hole's queries give to every key (heads averaged)."""
    w = np.asarray(weights, np.float64).mean(axis=1)
    h = 1.0 - known
    return np.einsum("bq,bqk->bk", h, w) / np.maximum(h.sum(axis=1, keepdims=True), 1e-12)


def run(ctx: c.Context) -> None:
    from invdiff.images import atomic_write_bytes
    from invdiff.nets import attention_maps
    from invdiff.studies import restart

    s = ctx.settings
    solver = restart.build(s)
    walk = solver.walk()
    cuts = restart.cut_positions(s, len(walk))
    ts = c.timesteps_of(ctx.model, int(s["steps"]), walk)
    points = [k for k in range(len(cuts)) if ts[cuts[k]] >= 0]  # states that the network sees
    ops = {k: f"attention-c{k:02d}" for k in points}
    name, op_name = s["solver"], s["operator"]
    for real, padded in ctx.chunks():
        if not any(ctx.missing(name, ops[k], real) for k in points):
            continue
        x = ctx.images.read(padded)
        m = cells.measure(op_name, x, [ctx.images.ids[i] for i in padded], ctx.seed)
        label = ctx.label_array(padded)
        t0 = time.perf_counter()
        states = c.checkpointed_run(solver, ctx.model, m.deg.op, m.y, m.keys, walk, cuts, sigma_y=m.deg.sigma_y,
                                    label=label)
        results, maps = [], {}
        for k in points:
            t = int(ts[cuts[k]])
            att = attention_maps(ctx.model, states[k], jnp.full((len(padded),), t, jnp.int32), label)
            per_block = {}
            for block, w in att.items():
                res = int(round(np.sqrt(w.shape[-1])))
                known = pooled_known(m.deg.mask, res)
                per_block[block] = (res, shares(np.asarray(w), known))
                if 0 in real:
                    maps.setdefault(block, []).append(hole_query_map(np.asarray(w), known)[real.index(0)]
                                                      .reshape(res, res))
            for j, i in enumerate(real):
                blocks = {b: {"res": res, **{key: float(v[j]) for key, v in sh.items()}}
                          for b, (res, sh) in per_block.items()}
                mean = {key: float(np.mean([blocks[b][key] for b in blocks])) for key in SHARES}
                results.append({**ctx.base(name, ops[k], i), "checkpoint": k, "position": cuts[k], "t": t,
                                "blocks": blocks, **mean})
        if maps:
            j = real.index(0)
            buf = io.BytesIO()
            np.savez_compressed(buf, t=np.array([ts[cuts[k]] for k in points]), truth=x[j],
                                mask=np.asarray(m.deg.mask[j]), final=np.asarray(states[-1][j]),
                                blocks=np.array(list(maps)), **{f"map_{b}": np.stack(v) for b, v in maps.items()})
            atomic_write_bytes(ctx.out / "maps.npz", buf.getvalue())
        seconds = (time.perf_counter() - t0) / len(real)
        ctx.save([{**r, "seconds": seconds} for r in results])


def report(rep: c.Report) -> c.Verdict:
    checkpoints = sorted({r["checkpoint"] for r in rep.results})
    blocks = list(dict.fromkeys(b for r in rep.results for b in r["blocks"]))
    rows, block_rows = [], []
    for k in checkpoints:
        rs = rep.select(operator=f"attention-c{k:02d}")
        rows.append(c.add_stats({"checkpoint": k, "t": rs[0]["t"]}, rs, SHARES))
        for b in blocks:
            flat = [{**r["blocks"][b], "image": r["image"]} for r in rs if b in r["blocks"]]
            block_rows.append(c.add_stats({"block": b, "res": flat[0]["res"], "t": rs[0]["t"]}, flat, SHARES))
    cols = [c.Column("t", "timestep t", "d"), c.Column("n", "n", "d"),
            c.Column("known_from_hole", "hole → known", ".3f", True),
            c.Column("hole_from_hole", "hole → hole", ".3f", True),
            c.Column("received_by_hole", "all → hole (seed)", ".3f", True),
            c.Column("hole_from_known", "known → hole", ".3f", True),
            c.Column("hole_area", "hole area", ".3f", True)]
    notes = ["Shares of attention, averaged over heads and then over the attention blocks (per block: "
             "table_blocks.md). hole → known: of the attention of queries in the hole, the share on keys in the known "
             "region; hole → hole is its complement (the two sum to 1); all → hole: the share of all attention that "
             "lands in the hole (the seed's measure); known → hole: of the known queries' attention, the share on the "
             "hole; hole area: the hole's share of the tokens (uniform attention would give all → hole = hole area). "
             "Tokens are weighted by their known/hole fraction at the block's resolution."]
    table = c.write_table(rep.out, "table", "Attention between the hole and the known region", rows, cols, notes)
    c.write_table(rep.out, "table_blocks", "Attention shares per block", block_rows,
                  [c.Column("block", "block"), c.Column("res", "resolution", "d")] + cols, notes)
    _plot_shares(rep, block_rows, rows, blocks)
    _plot_maps(rep)
    verdict = _verdict(rep, rows, checkpoints)
    s = rep.settings
    j, r = s["jump"]
    setup = [f"{s['solver']} on `{s['operator']}`, {s['steps']} steps" + (f" with jumps ({j}, {r})" if r > 1 else
             " (plain walk)") + f"; attention read at {len(checkpoints)} checkpoints (walk positions 0, "
             f"{s['first']}, {s['first'] + s['every']}, …) with one extra network call on the saved state x_t",
             f"{len(blocks)} attention blocks: " + ", ".join(f"{b} ({br['res']}x{br['res']})" for b, br in
                                                            zip(blocks, block_rows))]
    limits = ["The bundled emoji64 model has attention only at 16 x 16 and 8 x 8 (the seed's model: 32, 16 and 8) "
              "and far fewer heads; its attention patterns need not resemble a 256 x 256 ImageNet model's.",
              f"{rep.images()} images, {s['steps']} steps" + ("" if r > 1 else " without jumps") + "; "
              "one half mask (left half missing).",
              "The seed's 'mask border effect' (most important patches near the border) is not measured here; the "
              "maps show where the hole's queries look."]
    return c.write_summary(rep, sys.modules[__name__], setup=setup, table=table,
                           figures=[("attention_shares.png", "Shares of attention against t, per block (mean over "
                                     "images; dashed: the area baseline)"),
                                    ("attention_maps.png",
                                     "First image: attention of the hole's queries on every key")],
                           verdict=verdict, limits=limits)


def _verdict(rep: c.Report, rows: list[dict], checkpoints: list[int]) -> c.Verdict:
    if len(rows) < 2:
        return c.Verdict("inconclusive at this scale", "too few checkpoints were run", ())
    first, last = rep.select(operator=f"attention-c{checkpoints[0]:02d}"), rep.select(
        operator=f"attention-c{checkpoints[-1]:02d}")
    d_recv, ci_recv, _ = c.paired(last, first, "received_by_hole")
    d_known, ci_known, _ = c.paired(last, first, "known_from_hole")
    end = rows[-1]
    gap = [{"g": r["received_by_hole"] - r["hole_area"]} for r in last]
    g, gci, _ = c.stats(gap, "g")
    reasons = [f"all → hole at the last checkpoint (t = {end['t']}) minus at the first (t = {rows[0]['t']}): "
               f"{c.pm(d_recv, ci_recv, '.3f')} (the seed: negative)",
               f"hole → known, last minus first: {c.pm(d_known, ci_known, '.3f')} (the seed's explanation: positive)",
               f"at the last checkpoint, all → hole minus the hole's area: {c.pm(g, gci, '.3f')} (negative: the "
               f"hole receives less than its share)"]
    word = c.combine([-c.sign(d_recv, ci_recv)])
    line = {"supports": "the share of attention landing in the hole falls towards the end of the process",
            "contradicts": "the share of attention landing in the hole RISES towards the end of the process",
            }.get(word, "the change of the hole's share of attention between the first and last checkpoints is not "
                        "resolved by the 95 % CI")
    line += f" ({c.pm(d_recv, ci_recv, '.3f')})"
    explained = c.sign(d_known, ci_known)
    if explained:
        line += (f"; the hole's queries give the known region {'more' if explained > 0 else 'LESS'} of their attention "
                 f"at the end than at the start ({c.pm(d_known, ci_known, '.3f')}; the seed's explanation expects "
                 f"more)")
    return c.Verdict(word, line + ".", tuple(reasons))


def _plot_shares(rep: c.Report, block_rows: list[dict], rows: list[dict], blocks: list[str]) -> None:
    panels = []
    for key, ylabel, base in (("known_from_hole", "hole → known share", "known"),
                              ("received_by_hole", "all → hole share (seed's Fig. 13)", "hole")):
        series = []
        for b in blocks:
            br = [r for r in block_rows if r["block"] == b]
            series.append({"x": [r["t"] for r in br], "y": [r[key] for r in br], "label": f"{b} ({br[0]['res']})",
                           "style": ".-"})
        area = [r["hole_area"] for r in rows]
        series.append({"x": [r["t"] for r in rows], "y": [1 - a if base == "known" else a for a in area],
                       "label": f"{base} area", "style": "k--"})
        panels.append({"xlabel": "timestep t", "ylabel": ylabel, "series": series, "invert_x": True})
    c.line_plot(rep.out / "attention_shares.png", f"Attention shares over the reverse process ({rep.images()} images)",
                panels, width=11.0)


def _plot_maps(rep: c.Report) -> None:
    from invdiff.bench.report import figure, save_figure

    p = rep.out / "maps.npz"
    if not p.is_file():
        return
    with np.load(p) as d:
        data = {k: d[k] for k in d.files}
    ts = data["t"]
    cols = np.unique(np.linspace(0, len(ts) - 1, min(int(rep.settings["map_times"]), len(ts))).round().astype(int))
    blocks = [str(b) for b in data["blocks"]]
    fig = figure(1.8 * (len(cols) + 1), 1.8 * len(blocks) + 0.6)
    axes = np.asarray(fig.subplots(len(blocks), len(cols) + 1, squeeze=False))
    hole = data["mask"][..., 0] < 0.5
    for i, b in enumerate(blocks):
        shown = np.clip((data["truth"] + 1) / 2, 0, 1) * np.where(hole, 0.35, 1.0)[..., None]
        axes[i, 0].imshow(shown)
        axes[i, 0].set_ylabel(b, fontsize=7)
        for j, k in enumerate(cols):
            a = data[f"map_{b}"][k]
            ax = axes[i, j + 1]
            ax.imshow(a, cmap="magma", extent=(0, hole.shape[1], hole.shape[0], 0), interpolation="nearest")
            ax.contour(np.arange(hole.shape[1]) + 0.5, np.arange(hole.shape[0]) + 0.5, hole.astype(float), [0.5],
                       colors="cyan", linewidths=0.6)
            if i == 0:
                ax.set_title(f"t = {int(ts[k])}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("truth (hole dimmed)", fontsize=8)
    fig.suptitle("Attention of the hole's queries on every key (first image; cyan: the mask border)", fontsize=9)
    save_figure(fig, rep.out / "attention_maps.png")
