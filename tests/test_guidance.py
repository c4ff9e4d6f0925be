"""The null class, classifier-free guidance (``invdiff.guided``) and the training options that
make a null class (label dropout) and weight high noise (min-SNR-γ)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
import invdiff.priors
from invdiff.model import Model
from invdiff.nets.adm import ADMConfig, ADMModel, abstract_params
from invdiff.noise import NoiseSchedule
from invdiff.solve import trace_count
from invdiff.train import TrainConfig, drop_labels, min_snr_weights
from operators import Inpainting
from solvers import RePaint

FLAGS = dict(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="4",
             learn_sigma=True, class_cond=True, num_classes=3, num_head_channels=32, diffusion_steps=50)


CALLS: list[int] = []


class PointMasses(Model):
    """x0 = means[label] exactly, so ε(x_t, t, c) = (x_t − √ᾱ μ_c) / √(1 − ᾱ); the last row of
    ``means`` is the null class. v = 0.1 c (a learned variance that tells the classes apart).
    ``CALLS`` records the batch of every network call (Python side: eager calls)."""

    means: jax.Array

    @property
    def null_label(self):
        return self.means.shape[0] - 1

    def eps_and_v(self, x, t, label=None):
        CALLS.append(x.shape[0])
        label = jnp.full((x.shape[0],), self.null_label) if label is None else label
        abar = jnp.asarray(self.schedule.alphas_cumprod, jnp.float32)[t][:, None]
        mu = self.means[label]
        eps = (x - jnp.sqrt(abar) * mu) / jnp.sqrt(1 - abar)
        return eps, jnp.broadcast_to(0.1 * label[:, None], x.shape).astype(x.dtype)

    def eps(self, x, t, label=None):
        return self.eps_and_v(x, t, label)[0]

    def check_input(self, x_shape, label=None):
        pass


@pytest.fixture(scope="module")
def points():
    means = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)  # 3 classes + null
    return PointMasses(schedule=NoiseSchedule.linear(50), means=means, learned_variance=True)


def test_guided_is_the_cfg_formula_in_one_batched_call(points):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)
    t, c = jnp.array([3, 20, 45]), jnp.array([0, 2, 1])
    for w in (0.0, 2.5, jnp.array([0.0, 1.0, -1.0])):  # w = 0: conditional; w = -1: unconditional
        CALLS.clear()
        eps, v = invdiff.guided(points, w).eps_and_v(x, t, c)
        assert CALLS == [6], "one call of the inner model on 2B images"
        wb = jnp.reshape(jnp.asarray(w), (-1, 1))
        want = (1 + wb) * points.eps(x, t, c) - wb * points.eps(x, t, None)
        np.testing.assert_allclose(eps, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v, points.eps_and_v(x, t, c)[1])  # the conditional v


def test_guided_nfe_counts_both_evaluations_and_a_new_w_does_not_recompile(points):
    x = jnp.zeros((2, 5))
    op = Inpainting(jnp.ones((5,)).at[2:].set(0.0))
    lab = jnp.array([0, 1])
    solver = RePaint(steps=4, jump_length=2, jump_n_sample=2)  # up-steps call no network
    plain = invdiff.solve(solver, points, op, op.A(x), key=jax.random.key(0), label=lab)
    g = invdiff.solve(solver, invdiff.guided(points, 1.5), op, op.A(x), key=jax.random.key(0), label=lab)
    assert g.nfe == 2 * plain.nfe == 2 * 6  # 4 + 2 re-walked steps down
    n = trace_count()
    g2 = invdiff.solve(solver, invdiff.guided(points, 3.0), op, op.A(x), key=jax.random.key(0), label=lab)
    assert trace_count() == n and not np.allclose(g.x, g2.x)


def test_guided_needs_a_null_class_a_label_and_a_sane_w(points):
    gauss = invdiff.priors.Gaussian(jnp.zeros(5))
    with pytest.raises(ValueError, match="null class"):
        invdiff.guided(gauss, 1.0)
    g = invdiff.guided(points, 1.0)
    with pytest.raises(ValueError, match="needs class labels"):
        g.check_input((2, 5), None)
    with pytest.raises(ValueError, match="null class"):
        g.check_input((2, 5), jnp.array([0, 3]))
    with pytest.raises(ValueError, match="one weight per sample"):
        invdiff.guided(points, jnp.ones(3)).check_input((2, 5), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        invdiff.guided(points, float("nan"))


def test_adm_null_class_runs_unconditionally_and_old_configs_are_unchanged():
    config = ADMConfig.from_flags(**FLAGS)
    rng = np.random.default_rng(0)  # random weights without compiling Flax's initialisers
    params = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.normal(size=a.shape), jnp.float32),
                          abstract_params(config))
    old = ADMModel.create(config, params)
    assert old.null_label is None and old.params["label_emb"]["embedding"].shape[0] == 3
    assert ADMConfig.from_flags(**old.config.to_flags()) == old.config  # null_class=False round-trips
    with pytest.raises(ValueError, match="no null class"):
        old.check_input((2, 8, 8, 3), None)
    with pytest.raises(ValueError, match="null class"):
        invdiff.guided(old, 1.0)
    with pytest.raises(ValueError, match="class_cond"):
        ADMConfig.from_flags(**{**FLAGS, "class_cond": False, "null_class": True})

    new = old.with_null_class()
    emb = new.params["label_emb"]["embedding"]
    assert new.null_label == 3 and emb.shape[0] == 4
    np.testing.assert_allclose(emb[3], emb[:3].mean(axis=0), rtol=1e-6)  # the mean of the classes
    np.testing.assert_array_equal(emb[:3], old.params["label_emb"]["embedding"])
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t = jnp.array([5, 40])
    np.testing.assert_array_equal(new.eps(x, t), new.eps(x, t, jnp.array([3, 3])))
    with pytest.raises(ValueError, match=r"\[0, 4\) \(3: the null class\)"):
        new.check_input((2, 8, 8, 3), jnp.array([0, 4]))


def test_label_dropout_replaces_a_fraction_p_by_the_null_class():
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 3, 20_000), jnp.int32)
    out = np.asarray(drop_labels(labels, 3, 0.1, jax.random.key(0)))
    dropped = out == 3
    assert abs(dropped.mean() - 0.1) < 0.01  # binomial sd 0.002
    np.testing.assert_array_equal(out[~dropped], np.asarray(labels)[~dropped])


def test_train_config_label_dropout_needs_a_null_class():
    plain, with_null = ADMConfig.from_flags(**FLAGS), ADMConfig.from_flags(**FLAGS, null_class=True)
    assert TrainConfig().dropout_for(plain) == 0.0 and TrainConfig().dropout_for(with_null) == 0.1
    assert TrainConfig(label_dropout=0.25).dropout_for(with_null) == 0.25
    with pytest.raises(ValueError, match="null_class=True"):
        TrainConfig(label_dropout=0.1).dropout_for(plain)
    with pytest.raises(ValueError, match="probability"):
        TrainConfig(label_dropout=1.5).dropout_for(with_null)


def test_min_snr_weights_are_min_snr_gamma_over_snr():
    abar = jnp.array([0.999, 0.9, 5 / 6, 0.5, 0.01])  # SNR 999, 9, 5, 1, 1/99
    np.testing.assert_allclose(min_snr_weights(abar, 5.0), [5 / 999, 5 / 9, 1.0, 1.0, 1.0], rtol=1e-4)
