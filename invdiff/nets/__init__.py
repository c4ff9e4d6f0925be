"""Networks: guided-diffusion's ADM UNet in Flax, torch-free checkpoint loading, presets.

* :class:`ADMConfig` — guided-diffusion ``create_model`` flags; :class:`ADMModel` — the
  :class:`invdiff.model.Model` wrapping a UNet with weights.
* :func:`load_model` — ``.pt`` files (restricted unpickler, nothing executed), orbax
  directories from :func:`save_model`, bundled models (:data:`BUNDLED`).
* :data:`PRESETS` — flags of the public checkpoints (ImageNet, FFHQ, CelebA-HQ, Places).
* :func:`attention_maps` — every attention block's weights for analysis.
"""

from invdiff.nets.adm import (
    ADMConfig,
    ADMModel,
    abstract_params,
    attention_maps,
    block_outputs,
    init_params,
)
from invdiff.nets.checkpoint import (
    BUNDLED,
    CheckpointFormatError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    infer_flags,
    load_model,
    load_state_dict,
    save_model,
    torch_to_flax,
)
from invdiff.nets.presets import PRESET_FILES, PRESETS, preset_flags
from invdiff.nets.unet import UNet, timestep_embedding

__all__ = [
    "ADMConfig", "ADMModel", "BUNDLED", "CheckpointFormatError", "CheckpointMismatchError",
    "PRESETS", "PRESET_FILES", "UNet", "UnsafeCheckpointError", "abstract_params",
    "attention_maps", "block_outputs", "infer_flags", "init_params", "load_model", "load_state_dict",
    "preset_flags", "save_model", "timestep_embedding", "torch_to_flax",
]
