"""Operators: every built-in passes check_operator; closed forms; mask generators; errors."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from invdiff.operator import Composed, LinearFunction, LinearOperator, PartialIsometry, SVDOperator
from invdiff.testing import check_operator
from operators import Colorization, Dense, Downsampling, Inpainting, compose, masks

ROOT = pathlib.Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _mask(*shape):
    return RNG.random(shape) > 0.5


def _box_blur_1d(x):
    """A user's matrix-free operator: a circular 3-tap blur along the rows."""
    return (jnp.roll(x, -1, axis=1) + x + jnp.roll(x, 1, axis=1)) / 3.0


CASES = {
    "inpainting shared mask": (lambda: Inpainting(_mask(8, 8, 3)), (8, 8, 3)),
    "inpainting per-sample masks": (lambda: Inpainting(_mask(2, 8, 8, 3)), (8, 8, 3)),
    "inpainting (H,W) mask on RGB": (lambda: Inpainting(_mask(8, 8)), (8, 8, 3)),
    "inpainting per-sample (B,H,W,1)": (lambda: Inpainting(_mask(2, 8, 8, 1)), (8, 8, 3)),
    "inpainting vectors per-sample": (lambda: Inpainting(_mask(2, 10), broadcast_channels=False), (10,)),
    "colorization": (lambda: Colorization(), (8, 8, 3)),
    "downsampling 2": (lambda: Downsampling(2), (8, 8, 3)),
    "downsampling 4": (lambda: Downsampling(4), (8, 8, 2)),
    "dense square": (lambda: Dense(RNG.normal(size=(6, 6))), (6,)),
    "dense wide": (lambda: Dense(RNG.normal(size=(4, 7))), (7,)),
    "dense tall": (lambda: Dense(RNG.normal(size=(9, 5))), (5,)),
    "dense rank-deficient": (lambda: Dense(RNG.normal(size=(6, 2)) @ RNG.normal(size=(2, 5))), (5,)),
    "linear function (matrix-free blur)": (lambda: LinearFunction(_box_blur_1d, in_shape=(8, 4, 1)), (8, 4, 1)),
    "colorize after inpaint (closed form)": (lambda: compose(Colorization(), Inpainting(_mask(8, 8))), (8, 8, 3)),
    "inpaint the grey image (closed form)": (lambda: compose(Inpainting(_mask(8, 8, 1)), Colorization()),
                                             (8, 8, 3)),
    "downsample after inpaint (CG)": (lambda: compose(Downsampling(4), Inpainting(_mask(8, 8))), (8, 8, 1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_check_operator_passes(name):
    make, x_shape = CASES[name]
    errors = check_operator(make(), x_shape, batch=2)
    assert errors["adjoint <Ax,y> = <x,ATy>"] < 1e-5
    assert errors["MP1 A A+ A = A"] < 1e-4


def test_builtins_are_svd_operators_and_partial_isometries():
    builtins = [Inpainting(_mask(4, 4)), Colorization(), Downsampling(2), Dense(np.eye(3))]
    assert all(isinstance(op, SVDOperator) for op in builtins)
    assert all(isinstance(op, PartialIsometry) for op in builtins[:3])
    assert [op.c() for op in builtins[:3]] == [1.0, 1 / 3, 1 / 4]


def test_known_compositions_get_closed_forms_and_others_use_cg():
    assert compose(Colorization(), Inpainting(_mask(8, 8))).c_value == pytest.approx(1 / 3)
    assert compose(Inpainting(_mask(8, 8, 1)), Colorization()).c_value == pytest.approx(1 / 3)
    assert compose(Inpainting(_mask(4, 4, 1)), Downsampling(2)).c_value == pytest.approx(1 / 4)
    assert compose(Downsampling(2), Inpainting(_mask(8, 8))).c_value is None
    # a mask that differs across channels does not commute with the channel mean
    assert compose(Colorization(), Inpainting(np.stack([_mask(8, 8)] * 2 + [~_mask(8, 8)], -1))).c_value is None


@pytest.mark.parametrize("make, x_shape", [
    (lambda: Inpainting(_mask(2, 8, 8)), (8, 8, 3)),
    (lambda: Colorization(), (8, 8, 3)),
    (lambda: Downsampling(2), (8, 8, 3)),
    (lambda: compose(Colorization(), Inpainting(_mask(8, 8))), (8, 8, 3)),
])
def test_closed_forms_agree_with_the_generic_cg_versions(make, x_shape):
    op = make()
    x = jax.random.normal(jax.random.key(1), (2,) + x_shape)
    y, z = op.A(x) + 0.1, jax.random.normal(jax.random.key(2), (2,) + x_shape)
    rho, r2, s2 = jnp.array([0.5, 2.0]), jnp.array([1.0, 0.3]), jnp.array([0.05, 0.2])
    np.testing.assert_allclose(op.pinv(y), LinearOperator.pinv(op, y), atol=2e-5)
    np.testing.assert_allclose(op.prox(z, y, rho), LinearOperator.prox(op, z, y, rho), atol=2e-5)
    np.testing.assert_allclose(op.AT_gram_inv(y, r2, s2), LinearOperator.AT_gram_inv(op, y, r2, s2), atol=2e-5)


def test_inpainting_keeps_x_shape_and_zeroes_the_unobserved_pixels():
    mask = _mask(8, 8)
    x = jnp.ones((2, 8, 8, 3))
    y = Inpainting(mask).A(x)
    assert y.shape == x.shape
    np.testing.assert_array_equal(y[0, ..., 1], mask.astype(np.float32))


def test_per_sample_masks_are_used_per_sample_and_a_new_mask_does_not_recompile():
    traces = []

    @jax.jit
    def apply(op, x):
        traces.append(1)
        return op.A(x)

    x = jnp.ones((2, 4, 4, 1))
    masks_a, masks_b = _mask(2, 4, 4, 1), _mask(2, 4, 4, 1)
    for m in (masks_a, masks_b):
        y = apply(Inpainting(m), x)
        np.testing.assert_array_equal(y, m.astype(np.float32))
    assert len(traces) == 1


def test_colorization_is_the_channel_mean_and_pinv_broadcasts():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
    op = Colorization()
    np.testing.assert_allclose(op.A(x)[..., 0], x.mean(-1), atol=1e-6)
    np.testing.assert_allclose(op.pinv(op.A(x)), jnp.repeat(x.mean(-1, keepdims=True), 3, -1), atol=1e-6)


def test_downsampling_is_average_pooling():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    y = Downsampling(2).A(x)
    np.testing.assert_allclose(y[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(Downsampling(2).pinv(y)[0, :2, :2, 0], [[2.5, 2.5], [2.5, 2.5]])


def test_dense_treats_tiny_singular_values_as_zero():
    m = RNG.normal(size=(5, 2)) @ RNG.normal(size=(2, 4))
    op = Dense(m)
    assert int(jnp.sum(op.singulars() > 0)) == 2
    y = jnp.asarray(RNG.normal(size=(3, 5)), jnp.float32)
    np.testing.assert_allclose(op.pinv(y), y @ np.linalg.pinv(m, rcond=1e-5).T, rtol=1e-3, atol=1e-4)


# ---- errors ----------------------------------------------------------------------------
def test_mask_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"mask has shape \(64, 64\) but the image is \(32, 32, 3\)"):
        Inpainting(np.ones((64, 64))).x_shape((32, 32, 3))


def test_soft_or_non_finite_masks_are_refused_with_a_fix():
    with pytest.raises(ValueError, match="threshold"):
        Inpainting(np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        Inpainting(np.full((4, 4), np.nan))


def test_bool_and_int_masks_become_float32():
    assert Inpainting(np.ones((4, 4), bool)).mask.dtype == jnp.float32
    assert Inpainting(np.ones((4, 4), np.int64)).mask.dtype == jnp.float32


def test_per_sample_mask_batch_mismatch():
    op = Inpainting(_mask(3, 8, 8, 3))
    with pytest.raises(ValueError, match="3 per-sample masks.*batch has 2"):
        op.check_batch(2)
    with pytest.raises(ValueError, match="3 per-sample masks"):
        op.A(jnp.ones((2, 8, 8, 3)))


def test_downsampling_factor_errors():
    with pytest.raises(ValueError, match="factor 3 does not divide the image size 64x64"):
        Downsampling(3).y_shape((64, 64, 3))
    with pytest.raises(ValueError, match="positive integer"):
        Downsampling(0)
    with pytest.raises(TypeError, match="positive integer"):
        Downsampling(1.5)


def test_dense_dimension_mismatch():
    op = Dense(np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"inputs of shape \(5,\)"):
        op.y_shape((4,))
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        op.A(jnp.ones((2, 4)))


def test_colorization_needs_three_channels():
    with pytest.raises(ValueError, match="RGB"):
        Colorization().y_shape((8, 8, 1))


# ---- mask generators -------------------------------------------------------------------
COVERAGE = {  # family -> (min, max) fraction missing on 64x64
    "box": (0.2, 0.3), "half": (0.5, 0.5), "lines": (0.5, 0.5), "random": (0.89, 0.91),
    "thick": (0.3, 0.5), "thin": (0.1, 0.25), "expand": (0.7, 0.8), "circle": (0.15, 0.25),
}


@pytest.mark.parametrize("family", list(COVERAGE))
def test_mask_family_shape_binary_and_coverage(family):
    ms = np.asarray(masks.by_name(family, jax.random.key(3), 64, 64, n=3))
    assert ms.shape == (3, 64, 64) and ms.dtype == np.float32
    assert set(np.unique(ms)) <= {0.0, 1.0}
    lo, hi = COVERAGE[family]
    missing = 1.0 - ms.mean(axis=(1, 2))
    assert np.all((missing >= lo - 1e-6) & (missing <= hi + 1e-6)), missing


@pytest.mark.parametrize("family", ["random", "thick", "thin"])
def test_random_masks_are_deterministic_in_the_key(family):
    a = masks.by_name(family, jax.random.key(7), 32, 32)
    b = masks.by_name(family, jax.random.key(7), 32, 32)
    c = masks.by_name(family, jax.random.key(8), 32, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batch_gives_different_masks_per_sample():
    ms = masks.batch(masks.random_pixels, jax.random.key(0), 3, 16, 16, missing=0.5)
    assert ms.shape == (3, 16, 16) and not np.array_equal(ms[0], ms[1])


def test_mask_shapes_of_the_deterministic_families():
    assert masks.half(4, 4, side="top")[:2].sum() == 0 and masks.half(4, 4, side="top")[2:].min() == 1
    np.testing.assert_array_equal(masks.lines(4, 2)[:, 0], [1, 0, 1, 0])
    assert masks.circle(9, 9, radius=2)[4, 4] == 0 and masks.circle(9, 9, radius=2)[0, 0] == 1
    assert masks.expand(8, 8, keep=0.5)[4, 4] == 1 and masks.expand(8, 8, keep=0.5)[0, 0] == 0
    assert masks.box(8, 8, size=2).sum() == 60


def test_unknown_mask_family_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown mask family 'blob'.*box.*circle"):
        masks.by_name("blob", jax.random.key(0), 8, 8)


def test_from_png_round_trip(tmp_path):
    known = _mask(8, 12)
    path = tmp_path / "mask.png"
    Image.fromarray((known * 255).astype(np.uint8)).save(path)  # white = known
    np.testing.assert_array_equal(masks.from_png(path), known.astype(np.float32))
    assert masks.from_png(path, size=(16, 24)).shape == (16, 24)
    np.testing.assert_array_equal(masks.from_png(path, size=(16, 24))[::2, ::2], known.astype(np.float32))


def test_from_png_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        masks.from_png(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="could not read"):
        masks.from_png(bad)


# ---- a user-defined operator in one file -----------------------------------------------
def test_box_blur_example_passes_check_operator():
    spec = importlib.util.spec_from_file_location("box_blur", ROOT / "examples" / "box_blur.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    errors = check_operator(module.BoxBlur(k=3, in_shape=(8, 8, 1)), (8, 8, 1))
    assert errors["MP1 A A+ A = A"] < 1e-4


def test_check_operator_catches_a_wrong_adjoint_and_a_false_c():
    class BadAdjoint(Colorization):
        def AT(self, y):
            return jnp.broadcast_to(y, y.shape[:-1] + (3,))  # missing the 1/3

    with pytest.raises(AssertionError, match="adjoint"):
        check_operator(BadAdjoint(), (4, 4, 3), check_dense=False, check_svd=False)
    false_c = compose(Downsampling(2), Inpainting(_mask(4, 4)), c=0.25)
    assert isinstance(false_c, Composed)
    with pytest.raises(AssertionError):
        check_operator(false_c, (4, 4, 1))
