"""The noise maths reproduce guided-diffusion (fixtures/adm/diffusion_io.npz) to float32 precision."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from invdiff import NoiseSchedule
from invdiff.noise import (
    ddim_step,
    learned_range_log_variance,
    q_posterior_mean,
    q_posterior_variance,
    q_sample,
    space_timesteps,
    x0_from_eps,
)
from invdiff.schedule import transitions


@pytest.fixture(scope="module")
def ref(adm_fixtures):
    return dict(np.load(adm_fixtures / "diffusion_io.npz"))


def nhwc(a):
    return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(b)), 1e-30), np.max(np.abs(a - b))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedules_match_guided_diffusion(ref, name):
    s = NoiseSchedule.named(name, 1000)
    for attr in ["betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]:
        close(getattr(s, attr), ref[f"{name}_{attr}"], rtol=1e-12)
    close(1 / np.sqrt(s.alphas_cumprod), ref[f"{name}_sqrt_recip_alphas_cumprod"], 1e-12)


@pytest.mark.parametrize("spec,prefix", [("250", "space250"), ("ddim50", "ddim50")])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respacing_matches_space_timesteps(ref, spec, prefix, name):
    use, respaced = NoiseSchedule.named(name).respace(spec)
    np.testing.assert_array_equal(use, ref[f"{prefix}_use_timesteps"])
    close(respaced.betas, ref[f"{prefix}_{name}_betas"], 1e-12)
    close(respaced.alphas_cumprod, ref[f"{prefix}_{name}_alphas_cumprod"], 1e-12)
    if spec == "250" and name == "linear":
        close(respaced.posterior_log_variance_clipped, ref["space250_linear_posterior_log_variance_clipped"], 1e-12)


def test_space_timesteps_sections_and_errors():
    assert list(space_timesteps(10, "2,3")) == [0, 4, 5, 7, 9]
    with pytest.raises(ValueError, match="ddim"):
        space_timesteps(1000, "ddimx")
    with pytest.raises(ValueError, match="cannot"):
        space_timesteps(10, "11")
    with pytest.raises(ValueError, match="unknown respacing"):
        space_timesteps(1000, "fast")
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule.named("quadratic")
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(betas=np.array([0.1, -0.2]))


def test_q_sample(ref):
    s = NoiseSchedule.linear()
    abar = jnp.asarray(s.alphas_cumprod[ref["qs_t"]], jnp.float32)[:, None, None, None]
    out = q_sample(nhwc(ref["qs_x_start"]), nhwc(ref["qs_noise"]), abar)
    close(out, nhwc(ref["qs_x_t_f64"]), 1e-6)


def test_q_posterior(ref):
    s = NoiseSchedule.linear()
    t = ref["qpost_t"]
    f32 = lambda a: jnp.asarray(a[t], jnp.float32)[:, None, None, None]
    abar_t, abar_s = f32(s.alphas_cumprod), f32(s.alphas_cumprod_prev)
    omab_t, omab_s, beta = f32(1 - s.alphas_cumprod), f32(1 - s.alphas_cumprod_prev), f32(s.betas)
    mean = q_posterior_mean(nhwc(ref["qs_x_start"]), nhwc(ref["pmv_x"]), abar_t, abar_s, omab_t, omab_s, beta)
    close(mean, nhwc(ref["qpost_mean_f64"]), 1e-6)
    var = q_posterior_variance(abar_t, abar_s, omab_t, omab_s, beta)
    close(var.ravel(), ref["qpost_variance_f64"], 1e-6)


def _p_mean_variance(schedule, steps, t_idx, x, out):
    """p_mean_variance through the per-transition tables the solvers use."""
    tr = transitions(schedule, steps)[::-1]  # ascending respaced index: tr[i] starts at index i
    g = lambda a: jnp.asarray(np.asarray(a)[t_idx], jnp.float32)[:, None, None, None]
    abar_t, abar_s, omab_t, omab_s = g(tr.abar_t), g(tr.abar_s), g(tr.omab_t), g(tr.omab_s)
    beta, lv = g(tr.beta), g(tr.log_var_clipped)
    eps, v = out[..., :3], out[..., 3:]
    x0 = x0_from_eps(x, eps, abar_t, omab_t)
    log_var = learned_range_log_variance(v, jnp.log(beta), lv)
    return q_posterior_mean(x0, x, abar_t, abar_s, omab_t, omab_s, beta), jnp.exp(log_var), log_var, x0


@pytest.mark.parametrize("prefix,steps", [("pmv", 1000), ("pmv250", 250)])
def test_p_mean_variance_learned_range(ref, adm_fixtures, prefix, steps):
    if prefix == "pmv":
        out = np.load(adm_fixtures / "uncond_io.npz")["out_f64"]
    else:
        out = ref["pmv250_model_output_f64"]
    x = nhwc(ref["pmv_x"])
    mean, var, log_var, x0 = _p_mean_variance(NoiseSchedule.linear(), steps, ref[f"{prefix}_t"], x, nhwc(out))
    close(mean, nhwc(ref[f"{prefix}_mean_f64"]), 2e-6)
    close(var, nhwc(ref[f"{prefix}_variance_f64"]), 2e-5)
    close(log_var, nhwc(ref[f"{prefix}_log_variance_f64"]), 2e-6)
    close(x0, nhwc(ref[f"{prefix}_pred_xstart_f64"]), 2e-6)


def test_ddim_step_limits():
    x0, eps, z = jnp.ones((1, 4)), jnp.full((1, 4), 0.5), jnp.full((1, 4), 2.0)
    abar_t, abar_s = jnp.float32(0.3), jnp.float32(0.6)
    det = ddim_step(x0, eps, abar_t, abar_s, 0.0, z)
    np.testing.assert_allclose(det, np.sqrt(0.6) * 1 + np.sqrt(0.4) * 0.5, rtol=1e-6)
    # eta = 1: the noise has the DDPM posterior variance
    sto = ddim_step(x0, eps, abar_t, abar_s, 1.0, z)
    sigma2 = float(q_posterior_variance(abar_t, abar_s))
    expected = np.sqrt(0.6) + np.sqrt(0.4 - sigma2) * 0.5 + np.sqrt(sigma2) * 2.0
    np.testing.assert_allclose(sto, expected, rtol=1e-5)
