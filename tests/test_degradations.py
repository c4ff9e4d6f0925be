"""Blur, BicubicDownsampling, CompressedSensing and the one compose: contracts, references, solvers.

Every solver on every operator is ``benchmarks/operators_x_solvers.py`` (too slow for the default
run: about two seconds of compilation per pair); here every operator method a solver uses runs
through ``invdiff.solve`` on blur followed by downsampling and on the new operators.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
import operators
from invdiff.operator import Composed, ComposedSVD, Separable, SVDOperator
from invdiff.priors import Gaussian
from invdiff.restore import degradation_name
from invdiff.solve import trace_count
from invdiff.testing import check_operator
from operators import BicubicDownsampling, Blur, CompressedSensing, Downsampling, Inpainting, compose, named
from operators.blur import motion_kernel
from operators.compressed_sensing import walsh_hadamard
from solvers import DDRM, make

DATA = pathlib.Path(__file__).resolve().parent / "data"
IMG = (8, 8, 3)
#: a mild kernel: the matrix-free tier's conjugate gradients converge on it
MILD = np.array([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]])


_apply = jax.jit(lambda op, x: op.A(x))


def _circular_conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y[i, j] = Σ k[a, b] x[i + kh//2 - a, j + kw//2 - b] with wrap-around, by loops (NHWC)."""
    kh, kw = k.shape[:2]
    k = k if k.ndim == 3 else k[:, :, None]
    y = np.zeros_like(x, dtype=np.float64)
    for a in range(kh):
        for b in range(kw):
            y += k[a, b] * np.roll(x, (a - kh // 2, b - kw // 2), axis=(1, 2))
    return y


# ---------------------------------------------------------------------------------------
# The operator contract on every new operator (one compiled program each)

CASES = {
    "circular Gaussian blur (separable)": (lambda: Blur.gaussian(5, 1.0), IMG),
    "circular motion blur, one kernel per channel, 8x6": (
        lambda: Blur(np.stack([motion_kernel(5, 0.5, k) for k in range(2)], -1)), (8, 6, 2)),
    "reflect blur (matrix-free)": (lambda: Blur(MILD, boundary="reflect"), (6, 6, 1)),
    "bicubic x2": (lambda: BicubicDownsampling(2), (8, 8, 2)),
    "compressed sensing 25% (Hadamard)": (lambda: CompressedSensing(0.25, 0, (8, 8, 2)), (8, 8, 2)),
    "blur then bicubic (Kronecker SVD)": (lambda: compose(BicubicDownsampling(2), Blur.gaussian(5, 1.0)), IMG),
}


@pytest.mark.parametrize("name", list(CASES))
def test_check_operator_passes(name):
    make, x_shape = CASES[name]
    op = make()
    errors = check_operator(op, x_shape)  # raises AssertionError naming a failing property
    assert errors["adjoint <Ax,y> = <x,ATy>"] < 1e-5
    if isinstance(op, SVDOperator):  # the closed-form gram inverse against the matrix-free CG
        assert errors["AT_gram_inv = matrix-free CG"] < 1e-4
        assert errors["SVD: Ut U = I on the support of s"] < 1e-5


# ---------------------------------------------------------------------------------------
# Blur


def test_circular_blur_is_the_wraparound_convolution_and_the_cutoff_is_bounded():
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 12, 10, 2)), np.float64)
    k = np.asarray(motion_kernel(7, 0.6, 3))
    np.testing.assert_allclose(_apply(Blur(k, cutoff=0.0), jnp.asarray(x, jnp.float32)), _circular_conv(x, k),
                               atol=1e-5)
    # a kernel larger than the image wraps around; the default cutoff removes frequencies where the
    # Gaussian's 1-D spectra fall below √cutoff, which moves A x by at most √cutoff ||x||
    g = Blur.gaussian(21, 3.0).bind((12, 10, 2))
    exact = _circular_conv(x, np.asarray(g.kernel))
    err = np.linalg.norm(np.asarray(_apply(g, jnp.asarray(x, jnp.float32))) - exact)
    assert err <= np.sqrt(g.cutoff) * np.linalg.norm(x)
    s = np.asarray(jax.jit(lambda op: op.singulars())(g))
    assert s.shape == (12, 10, 1) and 0 < np.sum(s == 0) < s.size
    np.testing.assert_allclose(s.max(), 1.0, rtol=1e-5)  # a normalised kernel passes the mean


def test_reflect_and_valid_blurs_are_padded_convolutions():
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 7, 6, 1)), np.float64)
    k = np.asarray(motion_kernel(3, 0.5, 0))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    want = _circular_conv(padded, k)  # wrap-around only reaches the padding, cropped below
    np.testing.assert_allclose(_apply(Blur(k, boundary="reflect"), jnp.asarray(x, jnp.float32)),
                               want[:, 1:-1, 1:-1], atol=1e-5)
    valid = Blur(k, boundary="valid")
    np.testing.assert_allclose(_apply(valid, jnp.asarray(x, jnp.float32)), _circular_conv(x, k)[:, 1:-1, 1:-1],
                               atol=1e-5)
    assert valid.y_shape((7, 6, 1)) == (5, 4, 1) and valid.x_shape((5, 4, 1)) == (7, 6, 1)
    assert not isinstance(valid, SVDOperator) and isinstance(Blur(k), SVDOperator)
    assert all(isinstance(op, Blur) for op in (valid, Blur(k)))


def test_kernels_are_leaves_a_new_kernel_does_not_recompile():
    traces = []

    @jax.jit
    def apply(op, x):
        traces.append(1)
        return op.pinv(op.A(x))

    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 1))
    a = apply(Blur.gaussian(5, 1.0), x)
    b = apply(Blur.gaussian(5, 2.0), x)
    assert len(traces) == 1 and not np.allclose(a, b)


def test_motion_kernels_are_deterministic_in_the_key_normalised_and_non_negative():
    a, b, c = motion_kernel(15, 0.5, 7), motion_kernel(15, 0.5, 7), motion_kernel(15, 0.5, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (15, 15) and a.min() >= 0 and np.isclose(a.sum(), 1.0)
    np.testing.assert_array_equal(Blur.motion(15, 0.5, jax.random.key(7)).kernel, a.astype(np.float32))
    # a motion blur is not separable: its singular values are |K̂| on the 2-D grid
    assert Blur.motion(15, 0.5, 7).factors is None


def test_blur_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown blur boundary 'wrap'.*circular, reflect, valid"):
        Blur(MILD, boundary="wrap")
    with pytest.raises(ValueError, match=r"\(kh, kw\) or \(kh, kw, C\)"):
        Blur(np.ones(5))
    with pytest.raises(ValueError, match="all zeros"):
        Blur(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2 per-channel kernels but the image has 3 channels"):
        Blur(np.ones((3, 3, 2))).A(jnp.ones((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="needs the image size|depends on the image size"):
        Blur.gaussian(3, 1.0).singulars()
    with pytest.raises(ValueError, match="built for 8x8 images, got 6x6"):
        Blur.gaussian(3, 1.0, shape=(8, 8)).A(jnp.ones((1, 6, 6, 1)))
    with pytest.raises(ValueError, match="intensity must be in"):
        Blur.motion(9, 1.5, 0)
    with pytest.raises(ValueError, match="sigma"):
        Blur.gaussian(9, 0.0)


# ---------------------------------------------------------------------------------------
# BicubicDownsampling


def test_bicubic_matches_torch_antialiased_interpolate():
    ref = np.load(DATA / "bicubic_torch.npz")
    names = [k[len("x_"):] for k in ref.files if k.startswith("x_")]
    assert len(names) == 3
    for name in names:
        op = BicubicDownsampling(int(ref[f"factor_{name}"]))
        np.testing.assert_allclose(_apply(op, jnp.asarray(ref[f"x_{name}"])), ref[f"y_{name}"], atol=2e-6)


def test_bicubic_svd_is_the_kronecker_product_of_1d_svds_and_needs_the_size_only_for_s():
    op = BicubicDownsampling(4)
    with pytest.raises(ValueError, match=r"shape=\(H, W\) or call .bind"):
        op.singulars()
    s = np.asarray(op.bind((16, 8, 3)).singulars())
    mh, mw = op.separable_factors((16, 8, 3))
    sh, sw = np.linalg.svd(mh, compute_uv=False), np.linalg.svd(mw, compute_uv=False)
    assert s.shape == (16, 8, 1) and np.count_nonzero(s) == 4 * 2
    np.testing.assert_allclose(np.sort(s[s > 0]), np.sort(np.outer(sh, sw).ravel()), rtol=1e-5)
    with pytest.raises(ValueError, match="bicubic factor 3 does not divide the image size 16x8"):
        BicubicDownsampling(3).y_shape((16, 8, 3))


# ---------------------------------------------------------------------------------------
# CompressedSensing


def test_compressed_sensing_subsets_are_deterministic_and_y_has_shape_m_by_c():
    op = CompressedSensing(0.25, jax.random.key(3), (8, 8, 3))
    assert op.transform == "hadamard" and op.m == 16 and op.y_shape((8, 8, 3)) == (16, 3)
    np.testing.assert_array_equal(op.perm, CompressedSensing(0.25, 3, (8, 8, 3)).perm)
    assert not np.array_equal(op.perm, CompressedSensing(0.25, 4, (8, 8, 3)).perm)
    # the orthonormal Walsh–Hadamard transform: symmetric, its own inverse, ±1/√n entries
    h = np.asarray(jax.jit(walsh_hadamard)(jnp.eye(8)[None, :, :]))[0]
    np.testing.assert_allclose(h @ h, np.eye(8), atol=1e-6)
    np.testing.assert_allclose(np.abs(h), np.full((8, 8), 8**-0.5), atol=1e-6)
    # any other size uses the orthonormal DCT: A Aᵀ = I still
    dct = CompressedSensing(0.5, 0, (6, 5, 1))
    y = jax.random.normal(jax.random.key(0), (2, dct.m, 1))
    assert dct.transform == "dct" and dct.m == 15
    np.testing.assert_allclose(jax.jit(lambda op, y: op.A(op.AT(y)))(dct, y), y, atol=1e-5)


def test_compressed_sensing_errors():
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        CompressedSensing(1.5, 0, IMG)
    with pytest.raises(ValueError, match="power of two"):
        CompressedSensing(0.5, 0, (6, 6, 3), transform="hadamard")
    with pytest.raises(ValueError, match=r"built for images of shape \(8, 8, 3\)"):
        CompressedSensing(0.5, 0, IMG).A(jnp.ones((1, 8, 8, 1)))


# ---------------------------------------------------------------------------------------
# One compose


def test_one_compose_finds_partial_isometries_and_separable_svds():
    assert operators.compose is invdiff.compose
    blur, motion = Blur.gaussian(5, 1.0), Blur.motion(5, 0.5, 0)
    sr = compose(BicubicDownsampling(2), blur)
    assert type(sr) is Composed  # the image size is not known yet …
    bound = sr.bind(IMG)  # … solve binds it: a Kronecker SVD
    assert isinstance(bound, ComposedSVD) and isinstance(bound.svd, Separable)
    assert isinstance(compose(Downsampling(2), blur, x_shape=IMG), ComposedSVD)
    assert isinstance(compose(BicubicDownsampling(2), BicubicDownsampling(2), x_shape=(16, 16, 1)), ComposedSVD)
    # a motion blur is not separable: conjugate gradients, and DDRM refuses it before compiling
    assert type(compose(Downsampling(2), motion).bind(IMG)) is Composed
    cs = CompressedSensing(0.5, 0, IMG)  # A Aᵀ = I: dropping some of its measurements keeps c = 1
    assert compose(Inpainting(np.arange(32 * 3).reshape(32, 3) % 2), cs).c_value == 1.0
    n = trace_count()
    with pytest.raises(TypeError, match="DDRM needs an operator with an SVD"):
        invdiff.solve(DDRM(steps=2), PRIOR, compose(Downsampling(2), motion), jnp.zeros((1, 4, 4, 3)),
                      key=jax.random.key(0))
    assert trace_count() == n


# ---------------------------------------------------------------------------------------
# Solvers through invdiff.solve, one per operator path: DDRM the SVD (bound to the image size by
# solve), DiffPIR the prox, PiGDM the matrix-free gram inverse, DDNM+ A⁺ with per-singular-value
# noise weights. benchmarks/operators_x_solvers.py runs every solver on every operator.

SCHED = invdiff.NoiseSchedule.linear(1000)
PRIOR = Gaussian(jnp.full(IMG, 0.2), var=0.25, schedule=SCHED)


@pytest.fixture(scope="module")
def sr_problem():
    op = compose(BicubicDownsampling(2), Blur.gaussian(5, 1.0))
    x_true = PRIOR.sample(jax.random.key(1), 2)
    return op, x_true, _apply(op, x_true)


@pytest.mark.parametrize("name", ["ddrm", "diffpir"])
def test_solvers_run_on_blur_then_bicubic_downsampling(name, sr_problem):
    op, x_true, y = sr_problem
    x = invdiff.solve(make(name, 2), PRIOR, op, y, key=jax.random.key(0)).x
    assert x.shape == x_true.shape and np.all(np.isfinite(x))
    np.testing.assert_allclose(_apply(op.bind(IMG), x), y, atol=1e-4)  # both end on {A x = y} at σ_y = 0


@pytest.mark.parametrize("name, make_op", [
    ("ddrm", lambda: Blur.motion(5, 0.5, 0)),  # the FFT SVD of a non-separable kernel
    ("ddnm", lambda: CompressedSensing(0.25, 0, IMG)),  # the partial-isometry SVD, noisy (DDNM+)
    ("pigdm", lambda: Blur(MILD, boundary="reflect")),  # the matrix-free gram inverse (CG)
], ids=["ddrm-motion", "ddnm+-cs", "pigdm-reflect"])
def test_the_svd_cg_and_noisy_paths_run_on_the_new_operators(name, make_op):
    op = make_op()
    x_true = PRIOR.sample(jax.random.key(2), 2)
    y = _apply(op, x_true)
    sigma_y = 0.0 if name == "ddrm" else 0.05
    x = invdiff.solve(make(name, 3), PRIOR, op, y, key=jax.random.key(0), sigma_y=sigma_y).x
    assert x.shape == x_true.shape and np.all(np.isfinite(x))
    if name == "ddrm":
        np.testing.assert_allclose(_apply(op, x), y, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Names: bench, restore


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 12, 20, 1), (3, 9, 7, 3)])
def test_named_degradations_build_for_any_image_size(shape):
    b, h, w, c = shape
    for name in ("deblur-gauss", "deblur-uniform", "deblur-motion-noisy", "cs25", "cs10-noisy"):
        deg = named.make(name, shape, key=1)
        assert deg.sigma_y == (named.NOISY_SIGMA if name.endswith("-noisy") else 0.0)
        y_shape = deg.op.y_shape((h, w, c))
        assert y_shape == ((h, w, c) if name.startswith("deblur") else (round(int(name[2:4]) / 100 * h * w), c))
    if h % 4 == 0 and w % 4 == 0:
        assert named.make("sr4-bicubic", shape).op.y_shape((h, w, c)) == (h // 4, w // 4, c)
    else:
        with pytest.raises(ValueError, match="must be divisible by the factor 4"):
            named.make("sr4-bicubic", shape)


def test_named_errors_and_restore_names():
    with pytest.raises(ValueError, match="unknown degradation 'deblur-box'.*deblur-gauss.*cs<p>"):
        named.make("deblur-box", (1, 8, 8, 3))
    with pytest.raises(ValueError, match="in 1 … 100"):
        named.make("cs0", (1, 8, 8, 3))
    assert [degradation_name(o, 2) for o in ("sr", "sr-bicubic", "deblur-motion", "cs10")] == [
        "sr2", "sr2-bicubic", "deblur-motion", "cs10"]
    with pytest.raises(ValueError, match="unknown operator 'cs200'"):
        degradation_name("cs200")
