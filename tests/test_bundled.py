"""The bundled model, the demo and the command line work offline from the package alone."""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff.cli import main
from invdiff.demo import bundled_samples, run_demo


@pytest.fixture(scope="module")
def model():
    return invdiff.load_model("emoji64")


def test_bundled_model_loads_offline(model):
    cfg = model.config
    assert (cfg.image_size, cfg.class_cond, cfg.num_classes, cfg.learn_sigma) == (64, True, 10, True)
    assert model.learned_variance and model.data_range == (-1.0, 1.0)
    x, labels, names = bundled_samples()
    assert x.shape == (10, 64, 64, 3) and x.min() >= -1 and x.max() <= 1 and len(names) == 10
    eps, v = model.eps_and_v(jnp.asarray(x[:2]), jnp.array([100, 900]), jnp.asarray(labels[:2]))
    assert eps.shape == v.shape == (2, 64, 64, 3)
    assert bool(jnp.all(jnp.isfinite(eps))) and bool(jnp.all(jnp.isfinite(v)))


def test_loading_the_bundled_model_compiles_no_program():
    """Every process that restores (the demo, each CLI call) loads the model first: its
    parameters go to the device without a compiled program per shape (``jnp.asarray`` of a
    numpy array compiled one each: 48, ~0.5 s)."""
    compiles = []

    def listener(name: str, secs: float, **kw) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        loaded = invdiff.load_model("emoji64")
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    leaves = jax.tree.leaves(loaded.params)
    assert len(leaves) > 100 and all(isinstance(a, jax.Array) and a.dtype == jnp.float32 for a in leaves)


def test_bundled_model_denoises_better_than_the_noisy_input(model):
    x, labels, _ = bundled_samples()
    x0 = jnp.asarray(x[:4])
    t = 250
    abar = float(model.schedule.alphas_cumprod[t])
    z = jax.random.normal(jax.random.key(0), x0.shape)
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * z
    eps = model.eps(xt, jnp.full((4,), t), jnp.asarray(labels[:4]))
    x0hat = (xt - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    err_model = float(jnp.mean((x0hat - x0) ** 2))
    err_input = float(jnp.mean((xt / np.sqrt(abar) - x0) ** 2))
    assert err_model < 0.2 * err_input


def test_demo_writes_grid_and_table(tmp_path, model):
    out = run_demo(tmp_path / "demo", images=1, solvers=["ddnm"], model=model, progress=False, steps=20)
    assert (out / "grid.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["task"] for r in rows} == {"inpaint-box", "inpaint-thick", "inpaint-random", "colorize", "sr4"}
    for r in rows:  # DDNM is consistent with noiseless measurements
        assert float(r["consistency"]) < 1e-3 and int(r["nfe"]) == 20
        assert float(r["psnr"]) > 8.0
    assert "| ddnm |" in (out / "results.md").read_text()


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["demo", "--images", "99", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--images" in err[0]
    assert main(["convert", str(tmp_path / "missing.pt"), "--preset", "ffhq256", "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["demo", "--label", "10", "--out", str(tmp_path / "d")]) == 2
    assert "class id in [0, 10)" in capsys.readouterr().err
