"""The benchmark grid: files, metrics, fail-fast validation, unwritable output."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
import invdiff.images
import solvers as solver_registry
from invdiff import bench
from invdiff.priors import Gaussian

SCHED = invdiff.NoiseSchedule.linear(1000)
IMG = (8, 8, 3)
# Two inpainting operators share one compiled program per solver (the mask is data): 4 compilations
# for 6 cells keeps this fast on a cold compile cache.
OPS = ["inpaint-box", "inpaint-thick-noisy", "sr2"]
SOLVERS = ["ddnm", "ilvr"]
STEPS = 5


def _prior() -> Gaussian:
    mean = 0.3 * jnp.sin(jnp.arange(np.prod(IMG), dtype=jnp.float32)).reshape(IMG)
    return Gaussian(mean, var=0.1, schedule=SCHED)


def _data(n: int = 2) -> np.ndarray:
    return np.clip(np.asarray(_prior().sample(jax.random.key(0), n)), -1.0, 1.0)


class _CountingSolve:
    """Wraps invdiff.solve and records the batch size of every call."""

    def __init__(self):
        self.batches: list[int] = []
        self.solve = invdiff.solve

    def __call__(self, *args, **kwargs):
        self.batches.append(int(args[3].shape[0]))
        return self.solve(*args, **kwargs)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    counter = _CountingSolve()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(invdiff, "solve", counter)
        res = bench.run_bench(SOLVERS, OPS, images=2, steps=STEPS, out=out, model=_prior(), data=_data(3),
                              progress=False)
    return out, res, counter.batches


def test_files_and_one_row_per_cell(small_run):
    out, res, batches = small_run
    assert batches == [2] * (len(SOLVERS) * len(OPS))  # one batched solve call per cell
    for name in ["results.md", "results.csv", "results.json"]:
        assert (out / name).stat().st_size > 0
    for op in OPS:
        for kind in ["bars", "grid"]:
            assert (out / f"{kind}_{op}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "change_inpaint-box.png").exists() and (out / "change_inpaint-thick-noisy.png").exists()
    assert not (out / "change_sr2.png").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no probe or temporary files left

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["solver"], r["operator"]) for r in rows) == sorted((s, o) for s in SOLVERS for o in OPS)
    assert list(rows[0]) == list(bench.FIELDS)
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and -1 <= float(r["ssim"]) <= 1
        assert float(r["compile_seconds"]) >= 0 and float(r["run_seconds"]) >= 0
        assert float(r["first_call_seconds"]) >= float(r["compile_seconds"])
        outside = float(r["outside_mse"])
        if r["operator"].startswith("inpaint"):
            assert math.isfinite(outside)
        else:
            assert math.isnan(outside)
        assert float(r["sigma_y"]) == (0.05 if r["operator"].endswith("-noisy") else 0.0)

    md = (out / "results.md").read_text()
    assert "jax " + jax.__version__ in md and "seed 0" in md and "steps: 5" in md and "INCOMPLETE" not in md
    assert md.count("| ddnm | ") >= len(OPS)

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["metadata"]["complete"] is True and on_disk["metadata"]["images"] == 2
    assert len(on_disk["rows"]) == len(res["rows"]) == len(SOLVERS) * len(OPS)
    assert on_disk["rows"][0]["psnr"] == pytest.approx(res["rows"][0]["psnr"])


def test_metrics_of_the_cells(small_run):
    _, res, _ = small_run
    cell = {(r["solver"], r["operator"]): r for r in res["rows"]}
    for op in ["inpaint-box", "sr2"]:  # noiseless: DDNM's last step projects onto A x = y exactly
        assert cell[("ddnm", op)]["consistency"] < 1e-4, op
    assert cell[("ddnm", "inpaint-box")]["outside_mse"] < 1e-8  # known pixels kept exactly
    noisy = cell[("ddnm", "inpaint-thick-noisy")]
    assert noisy["sigma_y"] == 0.05
    assert noisy["consistency"] > 1e-3 and noisy["outside_mse"] > 1e-5  # DDNM+ does not copy the noisy y
    for r in res["rows"]:
        assert r["nfe"] == STEPS and r["vjp"] == 0 and r["steps"] == STEPS
        assert len(r["psnr_per_image"]) == 2
        assert r["psnr"] == pytest.approx(np.mean(r["psnr_per_image"]))
        assert r["images_per_second"] == pytest.approx(2 / r["run_seconds"])


def test_repeat_solves_each_cell_twice(tmp_path, monkeypatch):
    counter = _CountingSolve()
    monkeypatch.setattr(invdiff, "solve", counter)
    res = bench.run_bench(["ddnm"], ["sr2"], images=2, steps=STEPS, out=tmp_path, model=_prior(), data=_data(),
                          progress=False, repeat=True)
    assert counter.batches == [2, 2] and res["metadata"]["repeat"] is True
    row = res["rows"][0]
    assert row["run_seconds"] > 0 and row["images_per_second"] == pytest.approx(2 / row["run_seconds"])
    assert "second call timed" in (tmp_path / "results.md").read_text()


def test_repaint_short_walks_use_the_demo_jumps():
    assert solver_registry.make("repaint", 20).jump_length == 5
    assert solver_registry.make("repaint", 20).jump_n_sample == 2
    assert solver_registry.make("repaint", 50).jump_length == 10
    assert solver_registry.make("repaint").steps == 250
    assert solver_registry.make("ddnm", 7).steps == 7 and solver_registry.make("ddnm", 7).jump_length == 1


def test_compile_clock_sees_a_fresh_compilation():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cos(x) ** 2)
    with bench.compile_clock() as c:
        jax.block_until_ready(f(jnp.arange(17.0)))
    assert c.seconds > 0
    with bench.compile_clock() as c2:
        jax.block_until_ready(f(jnp.arange(17.0)))  # cached in memory: nothing compiles
    assert c2.seconds == 0


def _no_solve(*a, **k):
    raise AssertionError("solve must not run")


@pytest.mark.parametrize("solvers,operators,match", [
    (["ddnm", "nope"], ["sr2"], "repaint, ilvr, ddnm"),
    ([], ["sr2"], "no solvers"),
    (["ddnm"], ["sr2", "blur"], "valid names: inpaint-box"),
    (["ddnm"], ["inpaint-nope"], "box"),
    (["ddnm"], ["sr3"], "divisible"),
])
def test_bad_names_fail_before_any_work(tmp_path, monkeypatch, solvers, operators, match):
    monkeypatch.setattr(invdiff, "solve", _no_solve)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        bench.run_bench(solvers, operators, images=2, steps=2, out=out, model=_prior(), data=_data(), progress=False)
    assert not out.exists()


def test_too_many_images_names_the_maximum(tmp_path):
    with pytest.raises(ValueError, match="at most 3"):
        bench.run_bench(["ddnm"], ["sr2"], images=4, out=tmp_path, model=_prior(), data=_data(3), progress=False)
    with pytest.raises(ValueError, match="at most 10"):  # the bundled validation set
        bench.run_bench(["ddnm"], ["sr2"], images=11, out=tmp_path, progress=False)


def test_conditional_model_needs_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(invdiff, "solve", _no_solve)
    model = invdiff.FunctionModel(lambda x, t, label: jnp.zeros_like(x), SCHED, class_conditional=True)
    with pytest.raises(ValueError, match="labels="):
        bench.run_bench(["ddnm"], ["sr2"], images=2, out=tmp_path, model=model, data=_data(), progress=False)


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        bench.run_bench(["ddnm"], ["sr2"], images=2, out=f, model=_prior(), data=_data(), progress=False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod")
def test_unwritable_out_raises_permission_error(tmp_path, monkeypatch):
    monkeypatch.setattr(invdiff, "solve", _no_solve)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="choose a writable"):
            bench.run_bench(["ddnm"], ["sr2"], images=2, out=locked / "sub", model=_prior(), data=_data(),
                            progress=False)
    finally:
        locked.chmod(0o700)


def test_failing_probe_write_raises_permission_error_before_solving(tmp_path, monkeypatch):
    # The same path as a read-only directory, reachable as root too: the probe write is refused.
    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(invdiff, "solve", _no_solve)
    monkeypatch.setattr(invdiff.images, "atomic_write_bytes", refuse)
    with pytest.raises(PermissionError, match="choose a writable"):
        bench.run_bench(["ddnm"], ["sr2"], images=2, out=tmp_path / "o", model=_prior(), data=_data(),
                        progress=False)


def test_cli_arguments_and_defaults():
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args([])
    assert a.solvers == list(bench.DEFAULT_SOLVERS) and a.operators == list(bench.DEFAULT_OPERATORS)
    assert (a.images, a.steps, a.out, a.seed, a.model, a.repeat) == (4, 20, "invdiff-bench", 0, "emoji64", False)
    a = p.parse_args(["--solvers", "ddnm, ilvr", "--operators", "sr4-noisy", "--steps", "0", "--repeat"])
    assert a.solvers == ["ddnm", "ilvr"] and a.operators == ["sr4-noisy"] and a.steps == 0 and a.repeat
    for action in p._actions:
        if action.dest not in ("help", "repeat"):
            assert "default" in action.help, action.dest
