"""Metrics: PSNR, SSIM, measurement consistency, known-region drift and sliced Wasserstein."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff.metrics import change_map, consistency, outside_mask_mse, psnr, sliced_wasserstein, ssim


def _images(seed: int, shape=(2, 16, 16, 3)) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, size=shape), jnp.float32)


def test_psnr_of_identical_images_is_infinite_and_known_for_a_constant_error():
    x = _images(0)
    assert bool(jnp.all(jnp.isinf(psnr(x, x))))
    # a constant error e on [-1, 1] images: 10 log10(2² / e²)
    for e in (0.1, 0.02):
        np.testing.assert_allclose(psnr(x + e, x), 10 * np.log10(4 / e**2), rtol=1e-4)
    np.testing.assert_allclose(psnr(x + 0.1, x, data_range=1.0), 20.0, rtol=1e-4)


def test_psnr_is_per_sample():
    x = _images(1)
    out = psnr(x.at[1].add(0.5), x)
    assert out.shape == (2,) and bool(jnp.isinf(out[0])) and float(out[1]) < 20


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    x = _images(2)
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-5)
    noisy = x + 0.3 * jax.random.normal(jax.random.key(0), x.shape)
    s = ssim(noisy, x)
    assert s.shape == (2,) and bool(jnp.all(s < 0.9)) and bool(jnp.all(s > -1))
    assert bool(jnp.all(ssim(x + 0.1 * (noisy - x), x) > s))


def test_ssim_of_constant_images_is_the_luminance_term():
    # constant images have zero local variance: SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01 L)²
    a, b, L = 0.3, -0.2, 2.0
    c1 = (0.01 * L) ** 2
    x, ref = jnp.full((1, 12, 12, 3), a), jnp.full((1, 12, 12, 3), b)
    np.testing.assert_allclose(ssim(x, ref), (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-4)


def test_ssim_works_on_images_smaller_than_the_window():
    x = _images(3, (1, 5, 7, 1))
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-5)


def test_consistency_is_zero_for_exact_measurements_and_relative_otherwise():
    mat = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5)), jnp.float32)
    op = invdiff.LinearFunction(lambda x: x @ mat.T, (5,))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 5)), jnp.float32)
    y = op.A(x)
    np.testing.assert_allclose(consistency(op, x, y), 0.0, atol=1e-6)
    np.testing.assert_allclose(consistency(op, x, 2 * y), 0.5, rtol=1e-5)  # ||y - 2y|| / ||2y||


def test_outside_mask_mse_only_sees_the_known_region():
    ref = _images(6, (2, 4, 4, 3))
    mask = jnp.zeros((4, 4, 1)).at[:2].set(1.0)  # top half observed, one channel broadcast
    moved_unknown = ref.at[:, 2:].add(5.0)
    np.testing.assert_allclose(outside_mask_mse(moved_unknown, ref, mask), 0.0, atol=1e-7)
    moved_known = ref.at[:, :2].add(0.5)
    np.testing.assert_allclose(outside_mask_mse(moved_known, ref, mask), 0.25, rtol=1e-5)
    per_sample_mask = jnp.stack([mask, 1 - mask])
    out = outside_mask_mse(moved_known, ref, per_sample_mask)
    np.testing.assert_allclose(out, [0.25, 0.0], atol=1e-6)


def test_change_map_averages_absolute_change_over_channels():
    ref = jnp.zeros((1, 2, 2, 3))
    x = ref.at[0, 0, 1].set(jnp.array([0.3, -0.6, 0.0]))
    cm = change_map(x, ref)
    assert cm.shape == (1, 2, 2)
    np.testing.assert_allclose(cm[0], [[0.0, 0.3], [0.0, 0.0]], atol=1e-7)


def test_sliced_wasserstein_is_zero_on_identical_sets_and_grows_with_a_shift():
    key = jax.random.key(0)
    a = jax.random.normal(jax.random.key(1), (500, 4))
    assert float(sliced_wasserstein(a, a, key)) < 1e-6
    delta = jnp.array([1.0, 2.0, 0.0, -2.0])  # |δ| = 3
    sw = [float(sliced_wasserstein(a, a + s * delta, key)) for s in (0.5, 1.0, 2.0)]
    assert sw[0] < sw[1] < sw[2]
    # a translation by δ: SW₂ = (E (θᵀδ)²)^½ = |δ| / √d for θ uniform on the sphere
    np.testing.assert_allclose(sw[1], 3.0 / 2.0, rtol=0.05)


def test_sliced_wasserstein_handles_unequal_sizes_exactly_in_one_dimension():
    # 1-D: W₂² between {0, 1} and {0, 0.5, 1}: ∫ (F⁻¹ − G⁻¹)² = 1/6 · 0.5² · 2 = 1/12
    a = jnp.array([[0.0], [1.0]])
    b = jnp.array([[0.0], [0.5], [1.0]])
    np.testing.assert_allclose(float(sliced_wasserstein(a, b, jax.random.key(0), 8)), np.sqrt(1 / 12),
                               rtol=1e-5)


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        psnr(jnp.zeros((1, 4)), jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"\(n_a, d\)"):
        sliced_wasserstein(jnp.zeros((3, 2)), jnp.zeros((3, 3)), jax.random.key(0))
