"""invdiff study: each study at a toy size, and the invariants the studies rest on.

The studies that need a network (restart, attention, labels) run a tiny random class-conditional
ADM with attention at 8 x 8; restart and attention share its one compiled segment program, and
labels runs through the command line. resampling, drift and ilvr-filter run on an analytic
Gaussian prior, whose programs compile in a fraction of the time: two images, two or three steps.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff.bench import cells, records
from invdiff.cli import main
from invdiff.nets.adm import ADMConfig, ADMModel, abstract_params
from invdiff.nets.bundled import save_npz
from invdiff.priors import Gaussian
from invdiff.studies import attention, common, restart, run_study
from solvers import RePaint

SIZE = 8
#: two levels, attention at 4 x 4 (two blocks there and one in the middle), two classes
TINY = ADMConfig.from_flags(image_size=SIZE, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                            attention_resolutions="4", num_head_channels=32, class_cond=True, num_classes=2,
                            diffusion_steps=100)
#: restart and attention: RePaint, 3 steps, a checkpoint after every transition (one program)
SEGMENTS = {"steps": 3, "first": 1, "every": 1, "batch": 2}


def _images(n: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(3)], axis=-1)
    return np.stack([np.clip(0.8 * base * (1 - 0.3 * i), -1, 1) for i in range(n)]).astype(np.float32)


DATA = _images()
LABELS = np.array([0, 1], np.int32)


@pytest.fixture(scope="module")
def tiny() -> ADMModel:
    rng = np.random.default_rng(0)  # random weights drawn with NumPy: nothing to compile
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: ("scale" in jax.tree_util.keystr(path)) + 0.05 * rng.standard_normal(a.shape, np.float32),
        abstract_params(TINY))
    return ADMModel.create(TINY, params)


@pytest.fixture(scope="module")
def prior() -> Gaussian:
    mean = 0.3 * jnp.sin(jnp.arange(SIZE * SIZE * 3, dtype=jnp.float32)).reshape(SIZE, SIZE, 3)
    return Gaussian(mean, var=0.1, schedule=invdiff.NoiseSchedule.linear(1000))


@pytest.fixture(scope="module")
def restarted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("restart")
    verdict = run_study("restart", model=tiny, data=DATA, labels=LABELS, out=out, progress=False,
                        settings={**SEGMENTS, "completions": 2})
    return out, verdict


def _results(out) -> list[dict]:
    return records.read_all(out)[2]


def _summary_ok(out, verdict) -> None:
    text = (out / "summary.md").read_text()
    assert "## The claim" in text and "## Verdict" in text and f"**{verdict.word}**" in text
    assert verdict.word in ("supports", "contradicts", "partly supports", "mixed", "inconclusive at this scale")
    for stem in ("table.md", "table.csv", "table.json"):
        assert (out / stem).is_file()


def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_restart_with_the_original_keys_replays_the_trajectory(tiny):
    solver = RePaint(steps=3, jump_length=1, jump_n_sample=1)
    walk = solver.walk()
    cuts = restart.cut_positions(SEGMENTS, len(walk))
    assert cuts == [0, 1, 2, 3]
    m = cells.measure("inpaint-half", DATA, ["a", "b"], seed=0)
    label = jnp.asarray(LABELS)
    run = lambda keys, **kw: [np.asarray(s) for s in common.checkpointed_run(
        solver, tiny, m.deg.op, m.y, keys, walk, cuts, label=label, **kw)]
    states = run(m.keys)
    assert len(states) == len(cuts) and states[0].shape == DATA.shape
    for k in (0, 1):  # from x_T (step 0) and from a later checkpoint: the same states, bit for bit
        again = run(m.keys, x_start=states[k], first=k)
        for a, b in zip(again, states[k:]):
            np.testing.assert_array_equal(a, b)
    fresh = run(common.fold(m.keys, restart.RESTART + 1), x_start=states[0])[-1]
    hole = common.hole_of(m.deg.mask, DATA.shape)
    assert np.abs(fresh - states[-1])[hole].max() > 1e-3  # new randomness, a new fill
    np.testing.assert_allclose(fresh[~hole], states[-1][~hole], atol=1e-6)  # RePaint keeps the known pixels


def test_restart_study_measures_the_spread_against_the_restart_timestep(restarted):
    out, verdict = restarted
    rs = [r for r in _results(out) if r["operator"].startswith("restart-")]
    assert sorted({r["image"] for r in rs}) == ["000000", "000001"]
    by_image = [sorted((r for r in rs if r["image"] == i), key=lambda r: r["checkpoint"]) for i in ("000000", "000001")]
    for series in by_image:
        assert [r["position"] for r in series] == [0, 1, 2]
        ts = [r["t"] for r in series]
        assert ts[0] == 99 and all(a > b >= 0 for a, b in zip(ts, ts[1:]))  # x_T, then lower noise levels
        assert all(r["hole_std"] >= 0 and r["dist_original"] >= 0 and math.isfinite(r["psnr"]) for r in series)
    assert len([r for r in _results(out) if r["operator"] == "original"]) == 2
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [r["t"] for r in rows] == [r["t"] for r in by_image[0]] and all(r["n"] == 2 for r in rows)
    assert _png(out / "restart_curves.png") and _png(out / "grid.png")
    _summary_ok(out, verdict)


def test_attention_shares_lie_in_0_1_and_sum_with_their_complement_to_1(tiny, tmp_path):
    verdict = run_study("attention", model=tiny, data=DATA, labels=LABELS, out=tmp_path, progress=False,
                        settings=SEGMENTS)
    rs = _results(tmp_path)
    assert len(rs) == 2 * 3  # two images x the three states the network sees (x_T and two checkpoints)
    blocks = {"input_blocks.3.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1"}
    for r in rs:
        assert set(r["blocks"]) == blocks
        for b in r["blocks"].values():
            assert all(-1e-9 <= b[k] <= 1 + 1e-9 for k in attention.SHARES)
            assert b["known_from_hole"] + b["hole_from_hole"] == pytest.approx(1.0, abs=1e-6)
            assert b["hole_area"] == pytest.approx(0.5)  # the left half is missing, at any resolution
    with np.load(tmp_path / "maps.npz") as d:
        assert d["map_middle_block.1"].shape == (3, 4, 4)
        np.testing.assert_allclose(d["map_middle_block.1"].sum(axis=(1, 2)), 1.0, atol=1e-5)  # a distribution
    assert _png(tmp_path / "attention_shares.png") and _png(tmp_path / "attention_maps.png")
    _summary_ok(tmp_path, verdict)


def test_attention_shares_of_known_patterns():
    known = np.array([[1.0, 1.0, 0.0, 0.0]])  # two known tokens, two in the hole
    uniform = np.full((1, 2, 4, 4), 0.25)
    s = attention.shares(uniform, known)
    assert s["known_from_hole"][0] == pytest.approx(0.5) and s["received_by_hole"][0] == pytest.approx(0.5)
    itself = np.broadcast_to(np.eye(4), (1, 2, 4, 4))  # every query looks at its own token
    s = attention.shares(itself, known)
    assert s["known_from_hole"][0] == 0 and s["hole_from_hole"][0] == 1 and s["hole_from_known"][0] == 0
    to_known = np.zeros((1, 1, 4, 4))
    to_known[..., 0] = 1.0  # everything looks at the first (known) token
    s = attention.shares(to_known, known)
    assert s["known_from_hole"][0] == 1 and s["received_by_hole"][0] == 0


def test_labels_study_from_the_command_line(tiny, tmp_path):
    model_dir = save_npz(tiny, tmp_path / "model")
    np.savez(tmp_path / "data.npz", images=DATA, labels=LABELS)
    out = tmp_path / "labels"
    args = ["study", "labels", "--model", model_dir, "--data", tmp_path / "data.npz", "--steps", "3", "--out", out,
            "--quiet"]
    assert main([str(a) for a in args]) == 0
    rs = _results(out)
    assert sorted((r["operator"], r["image"]) for r in rs) == sorted(
        (o, i) for o in ("label-0", "label-1", "labels-vs-seeds") for i in ("000000", "000001"))
    for r in rs:
        if r["operator"] == "labels-vs-seeds":
            assert r["d_label"] > 0 and r["d_seed"] > 0 and r["ratio"] == pytest.approx(r["d_label"] / r["d_seed"])
        else:
            assert r["seed_spread"] > 0 and r["true_class"] == (r["class"] == r["label"])
    assert _png(out / "grid.png")
    summary = (out / "summary.md").read_text()
    assert "## Verdict" in summary

    assert main([str(a) for a in args]) == 0  # a rerun resumes: nothing left to do
    assert len(_results(out)) == len(rs)
    assert main([str(a) for a in args[:-4] + ["4", "--out", out]]) == 2  # another configuration there: refused
    (out / "records.jsonl").unlink()
    assert main([str(a) for a in args]) == 2  # its tables and figures without records: refused
    assert main([str(a) for a in args + ["--report"]]) == 2  # no records to report on


def test_exactly_projecting_solvers_show_zero_drift(prior, tmp_path):
    settings = {"steps": 3, "batch": 2, "solvers": ["repaint", "dps"], "radii": [0.5, 0.75], "radius": 0.5,
                "sigmas": [0.1], "guidance": {"dps": ["scale", [1.0]]}, "strengths": [0.5],
                "strength_solvers": ["dps"]}
    verdict = run_study("drift", model=prior, data=DATA, out=tmp_path, progress=False, settings=settings)
    rs = _results(tmp_path)
    assert len(rs) == 2 * (2 * 2 + 2 + 1 + 1)
    for r in rs:
        if r["sigma"] == 0 and r["solver"] == "repaint":  # it ends on A x = y: no drift at any radius
            assert r["drift"] < 1e-10 and r["max_change"] < 1e-5
        if r["solver"].startswith("dps"):  # DPS only pulls towards y
            assert r["drift"] > 1e-6
    noisy = {r["solver"]: r for r in rs if r["sigma"] > 0 and r["image"] == "000000"}
    assert noisy["repaint"]["drift"] < 1e-10 < noisy["repaint"]["outside_mse"]  # keeps y, noise and all
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert {(r["method"], r["exact"]) for r in rows if r["part"] == "radius"} == {("repaint", "yes"), ("dps", "no")}
    assert verdict.word == "partly supports"
    for name in ("drift.png", "heatmaps.png", "heatmaps_strength.png"):
        assert _png(tmp_path / name)
    _summary_ok(tmp_path, verdict)


def test_resampling_compares_walks_of_equal_nfe(prior, tmp_path):
    settings = {"steps": 2, "batch": 2, "solvers": ["ddnm"], "jumps": [[1, 2]]}
    verdict = run_study("resampling", model=prior, data=DATA, out=tmp_path, progress=False, settings=settings)
    nfe = {r["operator"]: r["nfe"] for r in _results(tmp_path)}
    assert nfe == {"T2-j1-r1": 2, "T2-j1-r2": 3, "T3-j1-r1": 3}  # the jump walk and its plain partner: equal NFE
    row = next(r for r in json.loads((tmp_path / "table.json").read_text())["rows"] if r["walk"] == "T2-j1-r2")
    jumped = {r["image"]: r["psnr"] for r in _results(tmp_path) if r["operator"] == "T2-j1-r2"}
    plain = {r["image"]: r["psnr"] for r in _results(tmp_path) if r["operator"] == "T3-j1-r1"}
    assert row["d_psnr"] == pytest.approx(np.mean([jumped[i] - plain[i] for i in jumped]))
    assert _png(tmp_path / "quality_vs_nfe.png")
    _summary_ok(tmp_path, verdict)


def test_ilvr_filter_keeps_the_low_pass_when_conditioned_at_every_step(prior, tmp_path):
    settings = {"steps": 3, "batch": 2, "factors": [2, 4], "range_t": [0, 700], "seeds": 2}
    verdict = run_study("ilvr-filter", model=prior, data=DATA, out=tmp_path, progress=False, settings=settings)
    rs = _results(tmp_path)
    assert len(rs) == 2 * 2 * 2
    for r in rs:
        assert r["diversity"] > 0 and math.isfinite(r["psnr"])
        if r["range_t"] == 0:  # the last step replaces φ_N(x) by φ_N(y) = φ_N(reference)
            assert r["lowpass_error"] < 1e-5
        else:
            assert r["lowpass_error"] > 1e-3
    assert _png(tmp_path / "ilvr_curves.png") and _png(tmp_path / "grid.png")
    _summary_ok(tmp_path, verdict)


def test_bad_settings_are_refused_before_anything_runs(prior, tmp_path):
    with pytest.raises(ValueError, match="needs an ADM network with attention"):
        run_study("attention", model=prior, data=DATA, out=tmp_path, progress=False, settings={"steps": 3})
    with pytest.raises(ValueError, match="class-conditional"):
        run_study("labels", model=prior, data=DATA, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown setting"):
        run_study("drift", model=prior, data=DATA, out=tmp_path, progress=False, settings={"radiuses": [0.5]})
    with pytest.raises(ValueError, match="must divide"):
        run_study("ilvr-filter", model=prior, data=DATA, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown study"):
        run_study("bias", out=tmp_path)
    assert not (tmp_path / "records.jsonl").exists()


def test_an_unknown_study_name_is_one_line_and_exit_2(capsys, tmp_path):
    assert main(["study", "bias", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown study 'bias'" in err[0] and "resampling" in err[0]
    assert not (tmp_path / "x").exists()
