"""The recipe that trains the bundled ``emoji64`` model, in resumable chunks.

    # v1 (from scratch, GPU, bfloat16): 23,300 steps of batch 128, lr 3e-4
    python benchmarks/train_emoji64.py --data emoji64_train.npz --workdir runs/emoji64 \\
        --time-limit 540 --export runs/emoji64_export
    # v2 (fine-tune v1 with a null class, label dropout and min-SNR-5 weighting, CPU float32)
    python benchmarks/train_emoji64.py --data emoji64_train.npz --workdir runs/v2 --init emoji64 \\
        --steps 2000 --batch-size 16 --lr 5e-5 --warmup-steps 50 --ema-decay 0.999 \\
        --min-snr-gamma 5 --label-dropout 0.1 --dtype float32 --time-limit 3000 --export runs/v2_export

Trains on the training split only (the validation split is never seen), prints throughput,
and exports the EMA weights as ``params.npz`` + ``model.json`` (the bundled format). The same
command resumes a run from its workdir's last orbax checkpoint (optimizer state included).
``--init MODEL`` starts a new run from a model's weights; a model without a null class gets
one (the new class-embedding row is the mean of the class rows).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

import invdiff
from invdiff.nets.adm import ADMConfig
from invdiff.nets.bundled import save_npz
from invdiff.train import TrainConfig, load_dataset, train

#: The bundled model: guided-diffusion's 64x64 channel multipliers on a 32-channel base, one
#: res block per level (sized for CPU sampling), learned-range variance, 10 classes and (v2)
#: a null class for unconditional use and classifier-free guidance.
FLAGS = dict(image_size=64, num_channels=32, channel_mult="1,2,3,4", num_res_blocks=1,
             attention_resolutions="16,8", num_head_channels=32, learn_sigma=True, class_cond=True,
             num_classes=10, null_class=True, use_scale_shift_norm=True, resblock_updown=True,
             dropout=0.1, diffusion_steps=1000, noise_schedule="linear")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--export")
    p.add_argument("--init", help="start a new run from this model (e.g. emoji64); ignored when resuming")
    p.add_argument("--steps", type=int, default=60_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--ema-decay", type=float, default=0.9995)
    p.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false",
                   help="constant EMA decay from step 0 (fine-tuning: the average starts at --init's weights)")
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--min-snr-gamma", type=float, default=None, help="min-SNR-γ loss weighting (default: none)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=2000)
    p.add_argument("--log-every", type=int, default=50)
    a = p.parse_args()
    config = ADMConfig.from_flags(**FLAGS)
    tc = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps,
                     ema_decay=a.ema_decay, ema_warmup=a.ema_warmup, checkpoint_every=a.checkpoint_every,
                     log_every=a.log_every,
                     dtype=a.dtype, grad_clip=1.0, seed=a.seed, label_dropout=a.label_dropout,
                     min_snr_gamma=a.min_snr_gamma)
    init = None
    if a.init:
        init = invdiff.load_model(a.init)
        if not init.config.null_class:
            init = init.with_null_class()
    ds = load_dataset(a.data, config.image_size)
    print(f"{len(ds.images)} training images; devices: {jax.devices()}", flush=True)
    t0 = time.time()
    log = Path(a.workdir) / "log.jsonl"
    start = json.loads(log.read_text().splitlines()[-1])["step"] if log.exists() else 0
    model = train(config, ds, a.workdir, tc, time_limit_s=a.time_limit, progress=False, init=init)
    wall = time.time() - t0
    end = json.loads(log.read_text().splitlines()[-1])
    done = end["step"] - start
    print(f"steps {start} -> {end['step']} in {wall:.0f} s: {done / wall:.3f} steps/s, "
          f"{done * tc.batch_size / wall:.1f} images/s; last loss {end['loss']:.4f} mse {end['mse']:.4f}", flush=True)
    if a.export:
        meta = {"trained_steps": end["step"], "batch_size": tc.batch_size, "train": tc.__dict__,
                "init": a.init, "device": str(jax.devices()[0].device_kind), "platform": platform.platform(),
                "jax": jax.__version__, "data": "emoji64_train.npz (training split only)"}
        save_npz(model, a.export, extra=meta)
        n = sum(np.size(x) for x in jax.tree.leaves(model.params))
        print(f"exported EMA weights ({n / 1e6:.2f}M parameters) to {a.export}")


if __name__ == "__main__":
    main()
