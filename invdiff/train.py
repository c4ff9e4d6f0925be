"""Training an ADM UNet with optax: AdamW, warm-up, gradient clipping and an EMA of the weights.

The loss is guided-diffusion's (Nichol & Dhariwal 2021, "Improved DDPM", sec. 3.1): the ε MSE
plus, for learned-range variance models, the variational bound term L_vlb with a stop-gradient
on the mean (the "hybrid" objective, λ = 1, scaled by T/1000 as in gaussian_diffusion.py).
Two options on top:

* min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
  Strategy", eq. 7 for ε-prediction): the ε MSE of a sample at t is weighted by
  min(SNR_t, γ) / SNR_t, SNR_t = ᾱ_t / (1 − ᾱ_t). Low-noise steps (SNR > γ), whose ε targets are
  the hardest and noisiest, stop dominating the gradient. The L_vlb term is not reweighted.
* label dropout (Ho & Salimans 2022, classifier-free guidance): for a model with a null class
  (``ADMConfig.null_class``), each label is replaced by the null class with probability p, so
  the same network learns the unconditional ε(x, ∅).

Everything that decides a step — the batch drawn, the timesteps, the noise — is a pure
function of (seed, step), so a run killed and restarted from its last orbax checkpoint
continues exactly as if it had never stopped. Batches are sharded over all local devices
(a ``jax.sharding`` mesh over the batch axis); parameters are replicated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from invdiff.nets.adm import ADMConfig, ADMModel, init_params

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults: guided-diffusion's, scaled to small models)."""

    steps: int = 20_000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    #: ramp the EMA decay up as (1 + step) / (10 + step) (a random start is forgotten fast);
    #: False keeps ``ema_decay`` from step 0, so a fine-tune's average starts at its ``init`` weights
    ema_warmup: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    flip: bool = False  # random horizontal flips (off: emoji are not mirror-symmetric)
    dtype: str = "float32"  # compute dtype; "bfloat16" on GPUs
    #: probability of training on the null class instead of the label; None: 0.1 for a model
    #: with a null class (``ADMConfig.null_class``), 0 otherwise
    label_dropout: float | None = None
    #: γ of min-SNR-γ loss weighting (Hang et al. 2023; 5 in the paper); None: unweighted
    min_snr_gamma: float | None = None

    def dropout_for(self, config: ADMConfig) -> float:
        """The label-dropout probability used for ``config``; ValueError if it cannot apply."""
        p = self.label_dropout
        if p is None:
            return 0.1 if config.null_class else 0.0
        if not 0.0 <= p < 1.0:
            raise ValueError(f"label_dropout must be a probability in [0, 1), got {p}")
        if p > 0 and not config.null_class:
            raise ValueError(f"label_dropout={p} needs a model with a null class to drop labels to: set the "
                             f"ADM flag null_class=True (class-conditional models), or label_dropout=0")
        return p


@struct.dataclass
class TrainState:
    step: Array
    params: Any
    ema: Any
    opt_state: Any


# ---------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class Dataset:
    """uint8 images (N, H, W, 3) and optional int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray | None
    categories: tuple[str, ...] = ()


def load_dataset(path: str | os.PathLike[str], image_size: int | None = None) -> Dataset:
    """An .npz with ``images`` (N, H, W, 3) uint8 [and ``labels``, ``categories``], or a folder of
    images (PNG/JPEG; sub-folders become class labels when there are several)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no dataset at {p}: give an .npz file or a folder of images")
    if p.is_file():
        with np.load(p, allow_pickle=False) as d:
            if "images" not in d:
                raise ValueError(f"{p} has no 'images' array (found {sorted(d.files)})")
            images = np.asarray(d["images"])
            labels = np.asarray(d["labels"], np.int32) if "labels" in d else None
            cats = tuple(str(c) for c in d["categories"]) if "categories" in d else ()
    else:
        from PIL import Image

        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"no .png/.jpg images found under {p}")
        dirs = sorted({f.parent for f in files})
        imgs = []
        for f in files:
            im = Image.open(f).convert("RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC)
            imgs.append(np.asarray(im))
        images = np.stack(imgs)
        labels = np.asarray([dirs.index(f.parent) for f in files], np.int32) if len(dirs) > 1 else None
        cats = tuple(d.name for d in dirs) if len(dirs) > 1 else ()
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]}, the model takes {image_size}x{image_size}")
    return Dataset(images=images, labels=labels, categories=cats)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The dataset rows of batch ``step``: epochs are seeded permutations, so any step's batch is
    known without replaying the run (this is what makes resuming exact)."""
    per_epoch = max(n // batch_size, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx = perm[pos * batch_size:(pos + 1) * batch_size]
    if idx.size < batch_size:  # datasets smaller than one batch: sample with replacement
        idx = np.random.default_rng([seed, epoch, pos]).integers(0, n, batch_size)
    return idx


# ---------------------------------------------------------------------------------------
# Loss: ε-MSE + L_vlb (learned range), as guided-diffusion's training_losses.


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + jnp.tanh(jnp.sqrt(2.0 / jnp.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of 8-bit data in [-1, 1] under a discretised Gaussian (Ho et al. 2020)."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    cdf_delta = cdf_plus - cdf_min
    return jnp.where(x < -0.999, log_cdf_plus,
                     jnp.where(x > 0.999, log_one_minus_cdf_min, jnp.log(jnp.maximum(cdf_delta, 1e-12))))


def _schedule_tables(config: ADMConfig) -> dict[str, Array]:
    s = config.schedule()
    return {k: jnp.asarray(v, jnp.float32) for k, v in dict(
        abar=s.alphas_cumprod, omab=1.0 - s.alphas_cumprod, betas=s.betas,
        coef1=s.posterior_mean_coef1, coef2=s.posterior_mean_coef2,
        post_logvar=s.posterior_log_variance_clipped, post_var=s.posterior_variance).items()}


def min_snr_weights(abar: Array, gamma: float) -> Array:
    """min(SNR, γ) / SNR with SNR = ᾱ / (1 − ᾱ): Hang et al. 2023's weights of the ε-MSE."""
    snr = abar / (1.0 - abar)
    return jnp.minimum(snr, gamma) / snr


def drop_labels(label: Array, null_label: int, p: float, key: Array) -> Array:
    """Each label replaced by ``null_label`` with probability ``p``, independently."""
    drop = jax.random.bernoulli(key, p, jnp.shape(label))
    return jnp.where(drop, jnp.asarray(null_label, label.dtype), label)


def diffusion_loss(params: Any, config: ADMConfig, dtype: Any, x0: Array, label: Array | None,
                   key: Array, dropout_key: Array, *, label_dropout: float = 0.0,
                   min_snr_gamma: float | None = None) -> tuple[Array, dict[str, Array]]:
    """guided-diffusion's training loss for one batch; returns (loss, {"mse", "vb"}).

    ``label_dropout``: probability of replacing each label by the null class (models with
    ``null_class``). ``min_snr_gamma``: weight the ε-MSE by min(SNR, γ)/SNR; the reported
    "mse" stays the unweighted mean so runs with and without weighting compare."""
    tab = _schedule_tables(config)
    T = config.diffusion_steps
    kt, kn = jax.random.split(key)
    b = x0.shape[0]
    t = jax.random.randint(kt, (b,), 0, T)
    if label_dropout > 0:
        label = drop_labels(label, config.null_label, label_dropout, jax.random.fold_in(key, 2))
    noise = jax.random.normal(kn, x0.shape, jnp.float32)
    g = lambda name: tab[name][t][:, None, None, None]
    x_t = jnp.sqrt(g("abar")) * x0 + jnp.sqrt(g("omab")) * noise
    out = config.unet(dtype).apply({"params": params}, x_t, t, label, train=True,
                                   rngs={"dropout": dropout_key}).astype(jnp.float32)
    c = config.in_channels
    eps = out[..., :c]
    mse = jnp.mean((eps - noise) ** 2, axis=(1, 2, 3))
    terms = {"mse": mse}
    weighted = mse if min_snr_gamma is None else min_snr_weights(tab["abar"][t], min_snr_gamma) * mse
    if config.learn_sigma:
        v = out[..., c:2 * c]
        eps_frozen = jax.lax.stop_gradient(eps)
        pred_x0 = (x_t - jnp.sqrt(g("omab")) * eps_frozen) / jnp.sqrt(g("abar"))
        mean_p = g("coef1") * pred_x0 + g("coef2") * x_t
        frac = (v + 1.0) / 2.0
        logvar_p = frac * jnp.log(g("betas")) + (1.0 - frac) * g("post_logvar")
        mean_q = g("coef1") * x0 + g("coef2") * x_t
        kl = jnp.mean(_normal_kl(mean_q, g("post_logvar"), mean_p, logvar_p), axis=(1, 2, 3)) / math.log(2.0)
        nll = -jnp.mean(_discretized_gaussian_log_likelihood(x0, mean_p, 0.5 * logvar_p), axis=(1, 2, 3))
        vb = jnp.where(t == 0, nll / math.log(2.0), kl) * (T / 1000.0)
        terms["vb"] = vb
    loss = jnp.mean(weighted + terms.get("vb", 0.0))
    return loss, {k: jnp.mean(v) for k, v in terms.items()}


# ---------------------------------------------------------------------------------------


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up to ``lr`` (then constant) and global-norm gradient clipping."""
    sched = optax.join_schedules([optax.linear_schedule(0.0, tc.lr, max(tc.warmup_steps, 1)),
                                  optax.constant_schedule(tc.lr)], [max(tc.warmup_steps, 1)])
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip),
                       optax.adamw(sched, weight_decay=tc.weight_decay))


def _global_norm(tree: Any) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))


def _ema_update(ema: Any, params: Any, step: Array, decay: float, warmup: bool = True) -> Any:
    # warm-up of the EMA decay so early averages are not dominated by the random init
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if warmup else decay
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


_STEP_CACHE: dict[Any, Callable] = {}


def make_train_step(config: ADMConfig, tc: TrainConfig, mesh: Mesh) -> Callable:
    """The jitted (state, x0, label) -> (state, metrics) step; cached, so runs that differ only
    in length, checkpointing or logging share one compilation."""
    key = (config, dataclasses.replace(tc, steps=0, checkpoint_every=0, keep_checkpoints=0, log_every=0), mesh)
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = _make_train_step(config, tc, make_optimizer(tc), mesh)
    return _STEP_CACHE[key]


def _make_train_step(config: ADMConfig, tc: TrainConfig, opt: optax.GradientTransformation,
                     mesh: Mesh) -> Callable:
    dtype = jnp.dtype(tc.dtype)
    data = NamedSharding(mesh, PartitionSpec("batch"))
    repl = NamedSharding(mesh, PartitionSpec())

    def step_fn(state: TrainState, x0: Array, label: Array | None) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.key(tc.seed), state.step)
        k_loss, k_drop = jax.random.split(key)
        x0 = jax.lax.with_sharding_constraint(x0, data)
        (loss, aux), grads = jax.value_and_grad(diffusion_loss, has_aux=True)(
            state.params, config, dtype, x0, label, k_loss, k_drop,
            label_dropout=tc.dropout_for(config), min_snr_gamma=tc.min_snr_gamma)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = _ema_update(state.ema, params, state.step, tc.ema_decay, tc.ema_warmup)
        metrics = dict(loss=loss, grad_norm=_global_norm(grads), **aux)
        return TrainState(step=state.step + 1, params=params, ema=ema, opt_state=opt_state), metrics

    return jax.jit(step_fn, out_shardings=(repl, repl), donate_argnums=(0,))


def _device_batch(ds: Dataset, idx: np.ndarray, flip: bool, seed: int, step: int,
                  sharding: NamedSharding) -> tuple[Array, Array | None]:
    x = ds.images[idx].astype(np.float32) / 127.5 - 1.0
    if flip:
        m = np.random.default_rng([seed, step, 7]).random(len(idx)) < 0.5
        x[m] = x[m, :, ::-1]
    lab = ds.labels[idx] if ds.labels is not None else None
    x = jax.device_put(x, sharding)
    return x, (jax.device_put(lab, sharding) if lab is not None else None)


def train(config: ADMConfig, data: Dataset | str | os.PathLike[str], workdir: str | os.PathLike[str],
          tc: TrainConfig = TrainConfig(), *, progress: bool = True,
          stop_after: int | None = None, time_limit_s: float | None = None,
          init: ADMModel | None = None) -> ADMModel:
    """Train (or resume) a model in ``workdir``; returns the EMA model.

    ``init``: start a new run from this model's weights (fine-tuning; its config must be
    ``config``, e.g. ``model.with_null_class()`` to add a null class) instead of a random
    initialisation. A run that resumes from a checkpoint ignores it.

    ``workdir`` holds orbax checkpoints (``ckpt/``, every ``tc.checkpoint_every`` steps and at
    the end) and ``config.json``. Starting again with the same workdir resumes from the last
    checkpoint: nothing before it is lost, and the continued run is identical to one that was
    never interrupted. ``stop_after`` / ``time_limit_s`` end this call early (after a
    checkpoint) so long runs can be done in chunks.
    """
    import orbax.checkpoint as ocp

    tc.dropout_for(config)  # ValueError before anything is loaded
    if tc.min_snr_gamma is not None and not tc.min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 (5 in Hang et al. 2023) or None, got {tc.min_snr_gamma}")
    if init is not None and getattr(init, "config", None) != config:
        raise ValueError(f"init must be an ADMModel with the run's configuration {config.describe()}; got "
                         f"{getattr(init, 'config', type(init).__name__)}")
    ds = data if isinstance(data, Dataset) else load_dataset(data, config.image_size)
    if config.class_cond and ds.labels is None:
        raise ValueError("class_cond=True needs labels in the dataset ('labels' in the .npz or one "
                         "sub-folder per class)")
    if config.class_cond and ds.labels.max() >= config.num_classes:
        raise ValueError(f"the dataset has labels up to {ds.labels.max()} but num_classes={config.num_classes}")
    if ds.images.shape[1] != config.image_size:
        raise ValueError(f"images are {ds.images.shape[1]}px, config.image_size={config.image_size}")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    meta = {"model": dataclasses.asdict(config), "train": dataclasses.asdict(tc)}
    meta_path = workdir / "config.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old["model"] != json.loads(json.dumps(meta["model"])):
            raise ValueError(f"{workdir} holds a run with a different model configuration; use a new workdir")
    meta_path.write_text(json.dumps(meta, indent=2))

    devices = jax.local_devices()
    n_dev = len(devices)
    if tc.batch_size % n_dev:
        raise ValueError(f"batch_size={tc.batch_size} must be divisible by the {n_dev} local devices")
    mesh = Mesh(np.asarray(devices), ("batch",))
    repl = NamedSharding(mesh, PartitionSpec())
    data_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    opt = make_optimizer(tc)

    def fresh_state() -> TrainState:
        if init is not None:
            params = jax.tree.map(lambda a: jnp.array(a, jnp.float32, copy=True), init.params)  # donated
        else:
            params = init_params(config, jax.random.key(tc.seed))
        return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                          ema=jax.tree.map(jnp.copy, params), opt_state=opt.init(params))

    mngr = ocp.CheckpointManager(workdir / "ckpt", options=ocp.CheckpointManagerOptions(
        max_to_keep=tc.keep_checkpoints, create=True))
    abstract = jax.eval_shape(fresh_state)
    latest = mngr.latest_step()
    if latest is not None:
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract)
        state = mngr.restore(latest, args=ocp.args.StandardRestore(target))
        print(f"resuming from step {latest} in {workdir / 'ckpt'}")
    else:
        state = jax.device_put(fresh_state(), repl)
    step_fn = make_train_step(config, tc, mesh)
    start = int(state.step)
    end = tc.steps if stop_after is None else min(tc.steps, start + stop_after)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.time()
    log_path = workdir / "log.jsonl"
    step = start

    def save(step: int) -> None:
        mngr.save(step, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()

    from invdiff.guard import Interrupted, deferred_interrupts

    interrupts = contextlib.ExitStack()
    stop = interrupts.enter_context(deferred_interrupts())  # Ctrl-C ends the run after a whole step
    try:
        for step in range(start, end):
            stop.check()
            idx = batch_indices(len(ds.images), tc.batch_size, tc.seed, step)
            x, lab = _device_batch(ds, idx, tc.flip, tc.seed, step, data_sharding)
            state, metrics = step_fn(state, x, lab if config.class_cond else None)
            done = step + 1
            if done % tc.log_every == 0 or done == end:
                m = {k: float(v) for k, v in metrics.items()}
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": done, "time": time.time() - t0, **m}) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.4f}")
            if bar is not None:
                bar.update(1)
            if done % tc.checkpoint_every == 0:
                save(done)
            if time_limit_s is not None and time.time() - t0 > time_limit_s:
                break
    except KeyboardInterrupt:
        try:
            print(f"\ninterrupted at step {int(state.step)}: saving a checkpoint before exiting")
            save(int(state.step))
        except Exception:  # the state was donated to a step in flight: the last checkpoint stands
            print(f"could not save the interrupted state; resume restarts from step {mngr.latest_step()}")
        raise Interrupted(f"stopped at step {mngr.latest_step()} of {tc.steps}, checkpoint saved in "
                          f"{workdir / 'ckpt'}; run the same command again to resume") from None
    finally:
        interrupts.close()
        if bar is not None:
            bar.close()
    if mngr.latest_step() != int(state.step):
        save(int(state.step))
    mngr.close()
    ema = jax.device_get(state.ema)
    return ADMModel.create(config, ema, dtype=jnp.float32)
