"""Flags of the public guided-diffusion ("ADM") checkpoints, by preset name.

Each entry holds guided-diffusion ``create_model`` flags (``model_and_diffusion_defaults``
names) exactly as the original repositories publish them, plus the checkpoint file it
describes. Use them with ``invdiff.load_model(path, preset=NAME)``; extra keyword flags override
the preset. ``use_fp16`` is recorded for fidelity and ignored (pass ``dtype=jnp.bfloat16`` to
:func:`invdiff.nets.load_model` for reduced precision).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

_IMAGENET256 = dict(
    attention_resolutions="32,16,8", class_cond=False, diffusion_steps=1000, image_size=256,
    learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
    num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True,
)

# RePaint's CelebA-HQ and Places2 models share one architecture (andreas128/RePaint confs/*.yml).
_REPAINT256 = dict(
    attention_resolutions="32,16,8", class_cond=False, diffusion_steps=1000, image_size=256,
    learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
    num_heads=4, num_res_blocks=2, resblock_updown=True, use_fp16=False, use_scale_shift_norm=True,
)

_RAW: dict[str, dict[str, Any]] = {
    # openai/guided-diffusion README, "256x256 unconditional"; used by RePaint, DDNM, ΠGDM, DiffPIR.
    "imagenet256-uncond": dict(
        _file="256x256_diffusion_uncond.pt",
        _source="openai/guided-diffusion (ImageNet 256, unconditional)",
        **_IMAGENET256,
    ),
    # openai/guided-diffusion README, "256x256 class-conditional" (pairs with 256x256_classifier.pt).
    "imagenet256-cond": dict(
        _file="256x256_diffusion.pt",
        _source="openai/guided-diffusion (ImageNet 256, class-conditional)",
        **{**_IMAGENET256, "class_cond": True},
    ),
    # DPS (DPS2022/diffusion-posterior-sampling) configs/model_config.yaml.
    "ffhq256": dict(
        _file="ffhq_10m.pt",
        _source="DPS2022/diffusion-posterior-sampling configs/model_config.yaml (FFHQ 256)",
        image_size=256, num_channels=128, num_res_blocks=1, channel_mult="", learn_sigma=True,
        class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=4,
        num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
        resblock_updown=True, use_fp16=False, use_new_attention_order=False,
        diffusion_steps=1000, noise_schedule="linear",
    ),
    # RePaint (andreas128/RePaint) confs/face_example.yml.
    "celeba256": dict(
        _file="celeba256_250000.pt",
        _source="andreas128/RePaint confs/face_example.yml (CelebA-HQ 256)",
        **_REPAINT256,
    ),
    # RePaint (andreas128/RePaint) confs/test_p256_thin.yml and friends.
    "places256": dict(
        _file="places256_300000.pt",
        _source="andreas128/RePaint confs/test_p256_*.yml (Places2 256)",
        **_REPAINT256,
    ),
    # openai/guided-diffusion README, "64x64 class-conditional" (improved-diffusion cosine).
    "imagenet64-cond": dict(
        _file="64x64_diffusion.pt",
        _source="openai/guided-diffusion (ImageNet 64, class-conditional)",
        attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, dropout=0.1,
        image_size=64, learn_sigma=True, noise_schedule="cosine", num_channels=192,
        num_head_channels=64, num_res_blocks=3, resblock_updown=True,
        use_new_attention_order=True, use_fp16=True, use_scale_shift_norm=True,
    ),
    # openai/guided-diffusion README, "128x128 class-conditional".
    "imagenet128-cond": dict(
        _file="128x128_diffusion.pt",
        _source="openai/guided-diffusion (ImageNet 128, class-conditional)",
        attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, image_size=128,
        learn_sigma=True, noise_schedule="linear", num_channels=256, num_heads=4,
        num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True,
    ),
}

#: preset name -> create_model flags (read-only).
PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType({
    name: MappingProxyType({k: v for k, v in d.items() if not k.startswith("_")})
    for name, d in _RAW.items()
})

#: preset name -> the checkpoint file name it describes.
PRESET_FILES: MappingProxyType[str, str] = MappingProxyType(
    {name: d["_file"] for name, d in _RAW.items()}
)

#: preset name -> where the flags come from.
PRESET_SOURCES: MappingProxyType[str, str] = MappingProxyType(
    {name: d["_source"] for name, d in _RAW.items()}
)


def preset_flags(name: str) -> dict[str, Any]:
    """The create_model flags of preset ``name`` (a fresh dict). Unknown names raise ValueError."""
    if name not in PRESETS:
        listing = ", ".join(f"{n!r} ({PRESET_FILES[n]})" for n in PRESETS)
        raise ValueError(f"unknown preset {name!r}: valid presets are {listing}")
    return dict(PRESETS[name])
