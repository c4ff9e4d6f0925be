"""LPIPS (AlexNet) against the reference implementation's outputs, and the metric registry."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff import metrics
from invdiff.nets.torch_pickle import load_pt

SHARED = Path(os.environ.get("INVDIFF_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LPIPS = SHARED / "fixtures" / "lpips"
ALEX, LIN = LPIPS / "alexnet_features_random.pth", LPIPS / "lpips_alex_lin_v0.1.pth"


@pytest.fixture(scope="module")
def lpips_fixture():
    if not (LPIPS / "lpips_io.npz").exists():
        pytest.skip(f"LPIPS fixture not found at {LPIPS}")
    return dict(np.load(LPIPS / "lpips_io.npz"))


def test_lpips_matches_the_reference(lpips_fixture):
    f = metrics.lpips_from_weights(ALEX, LIN)
    d64 = np.asarray(f(lpips_fixture["x0_64"], lpips_fixture["x1_64"]))
    np.testing.assert_allclose(d64, lpips_fixture["d_64"], atol=1e-5, rtol=0)
    assert d64.shape == (6,) and d64[5] == 0.0 and d64[3] == d64.max()  # identical pair; two different images
    # a non-square size, layer by layer
    layers = np.asarray(metrics.lpips(f.args[0], lpips_fixture["x0_96x80"], lpips_fixture["x1_96x80"],
                                      per_layer=True))
    np.testing.assert_allclose(layers, lpips_fixture["layers_96x80"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(layers.sum(axis=1), lpips_fixture["d_96x80"], atol=1e-5, rtol=0)


def test_the_bench_reports_lpips_with_weights(lpips_fixture):
    from invdiff.bench.run import metric_names

    assert metric_names(["psnr"], (ALEX, LIN)) == ["psnr", "lpips"]
    x, y = jnp.asarray(lpips_fixture["x0_64"]), jnp.asarray(lpips_fixture["x1_64"])
    op = invdiff.LinearFunction(lambda v: v, (64, 64, 3))
    out = metrics.evaluate([metrics.METRICS["lpips"]], metrics.Restoration(x=x, ref=y, op=op, y=y))
    np.testing.assert_allclose(out["lpips"], lpips_fixture["d_64"], atol=1e-5)
    with pytest.raises(ValueError, match="two files"):
        metric_names(None, (ALEX,))


def test_lpips_refuses_swapped_files_and_tiny_images(lpips_fixture):
    with pytest.raises(ValueError, match="AlexNet .pth first"):
        metrics.lpips_from_weights(LIN, ALEX)
    f = metrics.lpips_from_weights(ALEX, LIN)
    with pytest.raises(ValueError, match="at least 31x31"):
        f(jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3)))


def test_gpu_tagged_legacy_storages_load_on_the_cpu(lpips_fixture):
    sd = load_pt(LIN)  # torch's legacy format, storages tagged 'cuda:0'
    assert sorted(sd) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert [v.shape[1] for v in sd.values()] == [64, 192, 384, 256, 256]
    assert all(v.dtype == np.float32 and np.all(v >= 0) for v in sd.values())  # the lpips weights are non-negative


def test_a_metric_is_registered_in_a_few_lines():
    l1 = metrics.register(metrics.Metric("l1_test", lambda r: jnp.mean(jnp.abs(r.x_clipped - r.ref), axis=(1, 2, 3)),
                                         label="L1", higher_is_better=False))
    try:
        op = invdiff.LinearFunction(lambda x: x[..., :1], (4, 4, 3))
        x = jnp.full((2, 4, 4, 3), 2.0).at[1].set(0.5)
        r = metrics.Restoration(x=x, ref=jnp.zeros_like(x), op=op, y=op.A(jnp.zeros_like(x)))
        out = metrics.evaluate([l1, metrics.METRICS["outside_mse"]], r)
        np.testing.assert_allclose(out["l1_test"], [1.0, 0.5])  # clipped to [-1, 1] first
        assert out["l1_test"].dtype == np.float64 and np.all(np.isnan(out["outside_mse"]))  # no mask: NaN
    finally:
        del metrics.METRICS["l1_test"]
    with pytest.raises(ValueError, match="letters, digits"):
        metrics.register(metrics.Metric("bad name", lambda r: r.x))
