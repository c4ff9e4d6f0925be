"""Training: a tiny run on CPU learns, checkpoints, and resumes exactly where it stopped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invdiff.nets.adm import ADMConfig, ADMModel
from invdiff.train import Dataset, TrainConfig, batch_indices, train

TINY = ADMConfig.from_flags(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                            attention_resolutions="4", learn_sigma=True, class_cond=True,
                            num_classes=3, num_head_channels=32, null_class=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 24).astype(np.int32)
    images = np.zeros((24, 8, 8, 3), np.uint8)
    images[..., 0] = (labels * 120)[:, None, None]  # the class decides the red channel
    images[..., 1:] = rng.integers(0, 255, (24, 8, 8, 2))
    return Dataset(images=images, labels=labels)


def leaves(model):
    return [np.asarray(a) for a in jax.tree.leaves(model.params)]


def test_batches_are_a_pure_function_of_seed_and_step():
    a = batch_indices(100, 16, seed=3, step=11)
    np.testing.assert_array_equal(a, batch_indices(100, 16, seed=3, step=11))
    epoch = np.concatenate([batch_indices(100, 16, 3, s) for s in range(6)])
    assert len(set(epoch.tolist())) == 96  # no repeats within an epoch


def read_log(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_learns_and_resumes_exactly_after_a_kill(tmp_path, data):
    # fine-tuning from given weights, with label dropout (0.1 by default) and min-SNR-5 weighting
    tc = TrainConfig(steps=20, batch_size=8, lr=2e-3, warmup_steps=5, checkpoint_every=10, log_every=1,
                     min_snr_gamma=5.0)
    start = ADMModel.init_random(TINY, jax.random.key(5))
    straight = train(TINY, data, tmp_path / "a", tc, progress=False, init=start)
    assert np.isfinite(leaves(start)[0]).all(), "the initial model's weights are not donated away"
    mse = [r["mse"] for r in read_log(tmp_path / "a" / "log.jsonl")]
    assert len(mse) == 20
    assert np.mean(mse[-5:]) < 0.8 * np.mean(mse[:5]), "the ε-loss must go down"
    # a run killed after 10 steps (its checkpoint at step 10 is the last thing written) ...
    train(TINY, data, tmp_path / "b", tc, progress=False, stop_after=10, init=start)
    assert sorted(p.name for p in (tmp_path / "b" / "ckpt").iterdir() if p.name.isdigit()) == ["10"]
    # ... started again continues from step 10 to the same weights as the straight run
    resumed = train(TINY, data, tmp_path / "b", tc, progress=False)
    for x, y in zip(leaves(straight), leaves(resumed)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    eps = resumed.eps(jnp.zeros((2, 8, 8, 3)), jnp.array([10, 900]), jnp.array([0, 2]))
    assert eps.shape == (2, 8, 8, 3) and bool(jnp.all(jnp.isfinite(eps)))
    assert bool(jnp.all(jnp.isfinite(resumed.eps(jnp.zeros((2, 8, 8, 3)), jnp.array([10, 900])))))


def test_clear_errors(tmp_path, data):
    unlabeled = Dataset(images=data.images, labels=None)
    with pytest.raises(ValueError, match="needs labels"):
        train(TINY, unlabeled, tmp_path / "x", TrainConfig(steps=1, batch_size=4), progress=False)
    with pytest.raises(ValueError, match="null_class=True"):
        train(ADMConfig.from_flags(**{**TINY.to_flags(), "null_class": False}), data, tmp_path / "z",
              TrainConfig(steps=1, label_dropout=0.1), progress=False)
    with pytest.raises(ValueError, match="init must be"):
        train(TINY, data, tmp_path / "w", TrainConfig(steps=1), progress=False, init=object())
    with pytest.raises(FileNotFoundError, match="no dataset"):
        train(TINY, tmp_path / "missing.npz", tmp_path / "y", TrainConfig(steps=1), progress=False)
