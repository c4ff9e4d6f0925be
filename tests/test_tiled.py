"""Any image size: tiles blended into one prediction, padding with an extended operator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff.nets.adm import ADMConfig, ADMModel
from invdiff.priors import Gaussian
from invdiff.tiling import extend, plan, seam_ratio, tile_edges, tile_starts
from operators import Downsampling, Inpainting
from solvers import DDNM, DPS

SCHED = invdiff.NoiseSchedule.linear(1000)
TILE = (8, 8, 3)
#: an analytic prior on 8x8 images: the toy "network" whose tiles are blended
PRIOR = Gaussian(0.3 * jnp.sin(jnp.arange(np.prod(TILE), dtype=jnp.float32)).reshape(TILE), var=0.2,
                 schedule=SCHED, data_range=(-1.0, 1.0))


def _image(h: int, w: int, key: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(key), (2, h, w, 3), minval=-1.0, maxval=1.0)


def _mask(h: int, w: int, key: int = 1) -> jax.Array:
    return jax.random.bernoulli(jax.random.key(key), 0.5, (2, h, w, 1))


def test_tiles_cover_the_image_with_at_least_the_overlap():
    for length, tile, overlap in [(20, 8, 3), (8, 8, 2), (64, 64, 16), (192, 64, 16), (97, 64, 16)]:
        s = np.asarray(tile_starts(length, tile, overlap))
        assert s[0] == 0 and s[-1] + tile == length
        assert np.all(np.diff(s) <= tile - overlap)
    with pytest.raises(ValueError, match="shorter than the tile"):
        tile_starts(6, 8, 2)


def test_blending_a_constant_prediction_gives_the_constant_back():
    const = jnp.asarray([0.7, -0.2, 0.05])
    x = _image(20, 13)
    t = jnp.full((2,), 300)
    models = {
        "constant": invdiff.FunctionModel(lambda x, t: jnp.broadcast_to(const, x.shape), SCHED),
        "identity": invdiff.FunctionModel(lambda x, t: x, SCHED),  # every tile agrees with its neighbours
        "tile index": invdiff.FunctionModel(  # tiles that disagree
            lambda x, t: jnp.broadcast_to(jnp.arange(x.shape[0], dtype=x.dtype)[:, None, None, None], x.shape), SCHED),
    }
    tms = {k: invdiff.tiled_model(m, (20, 13), tile=8, overlap=3) for k, m in models.items()}
    assert tms["constant"].num_tiles == 4 * 2 and tms["constant"].nfe_per_call == 8
    out = jax.jit(lambda x: {k: tm.eps(x, t) for k, tm in tms.items()})(x)
    np.testing.assert_allclose(out["constant"], jnp.broadcast_to(const, x.shape), atol=1e-6)
    np.testing.assert_allclose(out["identity"], x, atol=1e-6)
    # rows 4-7 of the first column are shared by tiles 0 and 2: a weighted average, no copy of either
    assert np.all((out["tile index"][0, 4:8, 0] > 0) & (out["tile index"][0, 4:8, 0] < 2))
    assert np.all(np.diff(np.asarray(out["tile index"][0, 3:9, 0, 0])) > 0)  # rising smoothly from 0 to 2


def _to_8bit(v) -> np.ndarray:
    return np.round((np.clip(np.asarray(v), -1, 1) + 1) * 127.5)


def _down_steps(solver) -> int:
    return int(np.sum(np.diff(solver.walk()) < 0))


def test_one_tile_of_the_model_size_is_exactly_solve():
    x, mask = _image(8, 8), _mask(8, 8)
    op = Inpainting(mask)
    kw = dict(key=jax.random.key(3), sigma_y=0.05)
    plain = invdiff.solve(DDNM(steps=6), PRIOR, op, op.A(x), **kw)
    tiled = invdiff.solve(invdiff.tiled(DDNM(steps=6)), PRIOR, op, op.A(x), **kw)
    np.testing.assert_array_equal(np.asarray(tiled.x), np.asarray(plain.x))
    assert tiled.nfe == plain.nfe == 6


@pytest.mark.parametrize("solver, size, tiles", [
    (DDNM(steps=6), (20, 13), 6),  # 6 tiles of 8x8
    (DDNM(steps=6), (6, 7), 1),  # padded into the 8x8 prior; DDNM goes through the extended operator's SVD
], ids=["ddnm-tiled", "ddnm-padded"])
def test_known_pixels_stay_known(solver, size, tiles):
    x, mask = _image(*size), _mask(*size)
    op = Inpainting(mask)
    sol = invdiff.solve_any_size(solver, PRIOR, op, op.A(x), key=jax.random.key(4))
    assert sol.x.shape == x.shape
    known = np.broadcast_to(np.asarray(mask, bool), x.shape)
    assert np.abs(_to_8bit(sol.x) - _to_8bit(x))[known].max() <= 1  # at most 1/255 after 8-bit rounding
    assert np.abs(_to_8bit(sol.x) - _to_8bit(x))[~known].max() > 1  # the rest was restored, not copied
    assert sol.nfe == _down_steps(solver) * tiles


def test_gradient_solvers_count_a_vjp_per_tile():
    x = _image(20, 13)
    op = Downsampling(1)
    sol = invdiff.solve(invdiff.tiled(DPS(steps=3), tile=8, overlap=2), PRIOR, op, op.A(x), key=jax.random.key(0))
    assert (sol.nfe, sol.vjp) == (3 * 6, 3 * 6)
    assert np.all(np.isfinite(np.asarray(sol.x)))


def test_the_extended_operator_is_exact():
    # A' = A ∘ crop for 4x4-block downsampling of the 6x8 window in the middle of 8x10 inputs;
    # per-sample inpainting masks go through the padded DDNM solve above, in its SVD path
    inner = Downsampling(2)
    op = extend(inner, (6, 8, 3), (8, 10), batch=2)
    assert op.c_value == pytest.approx(float(inner.c()))
    assert isinstance(op, invdiff.SVDOperator)  # DDRM and DDNM+ keep their SVD path on padded images
    x, y = _image(8, 10), jax.random.normal(jax.random.key(2), (2, 3, 4, 3))
    window = (slice(None), slice(1, 7), slice(1, 9))

    @jax.jit
    def q(x, y):
        p = op.prox(x, y, 0.5)
        return dict(ax=op.A(x), want_ax=inner.A(x[window]), aty=op.AT(y), pinv=op.pinv(y), a_pinv=op.A(op.pinv(y)),
                    want_pinv=jnp.zeros_like(x).at[window].set(inner.pinv(y)), v_vt=op.V(op.Vt(x)),
                    usv=op.U(op.singulars() * op.Vt(x)), prox_grad=op.AT(op.A(p) - y) + 0.5 * (p - x))

    r = q(x, y)
    np.testing.assert_allclose(r["ax"], r["want_ax"], atol=1e-6)
    assert float(jnp.vdot(r["ax"], y)) == pytest.approx(float(jnp.vdot(x, r["aty"])), rel=1e-5)  # adjoint
    np.testing.assert_allclose(r["pinv"], r["want_pinv"], atol=1e-6)  # (A C)⁺ = Cᵀ A⁺
    np.testing.assert_allclose(r["a_pinv"], y, atol=1e-5)
    np.testing.assert_allclose(r["v_vt"], x, atol=1e-5)  # V orthogonal
    np.testing.assert_allclose(r["usv"], r["ax"], atol=1e-5)  # A = U diag(s) Vᵀ
    np.testing.assert_allclose(r["prox_grad"], 0.0, atol=1e-5)  # prox optimality


def test_plans_pad_small_images_and_tile_large_ones():
    assert plan(PRIOR, (8, 8)).mode == "native"
    p = plan(PRIOR, (6, 7))
    assert (p.mode, p.run, p.offset) == ("pad", (8, 8), (1, 0))
    p = plan(PRIOR, (20, 5), overlap=2)  # too narrow to tile: padded to the tile's width first
    assert (p.mode, p.run, p.tile, p.tiles) == ("tile", (20, 8), (8, 8), 3)
    with pytest.raises(ValueError, match="does not fit"):
        plan(PRIOR, (9, 8), mode="pad")
    with pytest.raises(ValueError, match="fully convolutional ADM"):
        plan(PRIOR, (6, 8), mode="direct")
    with pytest.raises(ValueError, match=r"overlap must be an integer in \[0, 8\)"):
        plan(PRIOR, (20, 20), overlap=8)
    with pytest.raises(ValueError, match="smaller than the 8x8 tiles"):
        invdiff.solve(invdiff.tiled(DDNM(steps=2)), PRIOR, Downsampling(1), _image(6, 8), key=jax.random.key(0))


def test_adm_runs_at_other_sizes_only_when_asked():
    cfg = ADMConfig.from_flags(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                               attention_resolutions="4", num_head_channels=32, diffusion_steps=100)
    model = ADMModel.create(cfg, params=None)  # shapes are checked before any weights are needed
    with pytest.raises(ValueError, match=r"takes 8x8x3 images.*invdiff.solve_any_size"):
        model.check_input((1, 8, 6, 3))
    model.replace(any_size=True).check_input((1, 8, 6, 3))
    with pytest.raises(ValueError, match="multiples of 2"):
        model.replace(any_size=True).check_input((1, 8, 5, 3))
    assert plan(model, (8, 6), mode="direct").run == (8, 6)
    assert plan(model, (7, 5), mode="direct").run == (8, 6)
    tm = invdiff.tiled_model(model, (12, 20), overlap=2)
    tm.check_input((3, 12, 20, 3))
    assert tm.nfe_per_call == 2 * 3


def test_seam_ratio_sees_a_step_at_a_tile_border_only():
    v = jnp.linspace(-0.5, 0.5, 24)
    ramp = jnp.broadcast_to((v[:, None] + v[None, :])[None, :, :, None], (1, 24, 24, 3))
    rows, cols = tile_edges(24, 8, 2), tile_edges(24, 8, 2)
    assert float(seam_ratio(ramp, rows, cols)[0]) == pytest.approx(1.0, rel=1e-4)
    seam = ramp.at[:, rows[0]:].add(0.5)  # a jump where a tile begins
    assert float(seam_ratio(seam, rows, cols)[0]) > 1.5
    off = ramp.at[:, rows[0] + 1:].add(0.5)  # the same jump one pixel off the border
    assert float(seam_ratio(off, rows, cols)[0]) < 1
