"""Load guided-diffusion checkpoints (.pt, no torch needed) and invdiff's own orbax directories.

* :func:`load_model` reads a PyTorch ``.pt`` state_dict (zip or legacy format, through the
  restricted unpickler of :mod:`invdiff.nets.torch_pickle`), an orbax directory written by
  :func:`save_model`, or a bundled model by name (:data:`BUNDLED`).
* :func:`torch_to_flax` maps a guided-diffusion ``state_dict`` onto the Flax parameter tree of
  :class:`invdiff.nets.unet.UNet`; any disagreement between the flags and the file raises one
  :class:`CheckpointMismatchError` listing missing keys, unexpected keys and shape mismatches,
  with hints derived from the file (``set learn_sigma=True``, ``num_channels=256``, ...).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from invdiff.nets.adm import ADMConfig, ADMModel, abstract_params, device_params
from invdiff.nets.presets import PRESET_FILES, PRESETS, preset_flags
from invdiff.nets.torch_pickle import CheckpointFormatError, UnsafeCheckpointError, load_pt
from invdiff.nets.unet import flax_to_torch_key

__all__ = [
    "BUNDLED", "CheckpointFormatError", "CheckpointMismatchError", "UnsafeCheckpointError",
    "infer_flags", "load_model", "load_state_dict", "save_model", "torch_to_flax",
]

#: Bundled models: name -> directory inside the package, in the bundled format of
#: :mod:`invdiff.nets.bundled` (``params.npz`` + ``model.json``) or written by :func:`save_model`.
BUNDLED: dict[str, Path] = {
    name: d for name, d in {"emoji64": Path(__file__).resolve().parents[1] / "assets" / "emoji64"}.items()
    if (d / "params.npz").is_file()
}

#: Name of the JSON file next to the orbax parameters in a :func:`save_model` directory.
CONFIG_FILE = "invdiff_model.json"
PARAMS_DIR = "params"
FORMAT = "invdiff-adm"

_WRAPPER_KEYS = ("state_dict", "model", "ema", "model_state_dict", "ema_model", "net")
_MAX_LIST = 12


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the architecture described by the flags."""


# ----------------------------------------------------------------------------------------
# state dicts


def _unwrap(obj: Any, source: str) -> dict[str, np.ndarray]:
    """Find the state_dict inside a checkpoint dict; strip a DataParallel ``module.`` prefix."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, np.ndarray) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)),
                     None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, np.ndarray) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointFormatError(
            f"{source} holds no state_dict of tensors (top level: {keys}); expected a "
            f"guided-diffusion UNet state_dict, possibly under one of {_WRAPPER_KEYS}"
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A guided-diffusion ``.pt`` file's state_dict as NumPy arrays (torch layouts), torch-free."""
    return _unwrap(load_pt(path), os.fspath(path))


def _torch_shape(flax_leaf: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a Flax parameter: conv (kh,kw,in,out)->(out,in,kh,kw), Dense
    (in,out)->(out,in), or (out,in,1) for the attention's kernel-1 Conv1d layers."""
    leaf = flax_leaf[-1]
    if leaf == "kernel" and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(shape) == 2:
        i, o = shape
        if flax_leaf[-2] in ("qkv", "proj_out"):
            return (o, i, 1)
        return (o, i)
    return tuple(shape)


def _to_flax(arr: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """A torch tensor in the Flax layout of parameter ``path``."""
    a = np.asarray(arr, dtype=np.float32)
    if path[-1] == "kernel":
        if a.ndim == 4:  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
            a = a.transpose(2, 3, 1, 0)
        elif a.ndim == 3:  # Conv1d (out, in, 1) -> (in, out)
            a = a[:, :, 0].T
        elif a.ndim == 2:  # Linear (out, in) -> (in, out)
            a = a.T
    return np.ascontiguousarray(a)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def _fmt_list(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LIST])
    return shown + (f", ... and {len(items) - _MAX_LIST} more" if len(items) > _MAX_LIST else "")


def torch_to_flax(state_dict: Mapping[str, np.ndarray], config: ADMConfig,
                  source: str = "the checkpoint") -> dict[str, Any]:
    """Map a guided-diffusion state_dict onto the Flax parameter tree of ``config``.

    Raises :class:`CheckpointMismatchError` (one error for all problems) when keys are missing,
    unexpected or differently shaped, with hints about which flag to change.
    """
    expected = _flatten(abstract_params(config))
    want: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
    for path, leaf in expected.items():
        want[flax_to_torch_key(path)] = (path, _torch_shape(path, tuple(leaf.shape)))
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {want[k][1]}"
              for k in want if k in state_dict and tuple(state_dict[k].shape) != want[k][1]]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the architecture {_describe(config)}:"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s) (in the model, not in the file): "
                         f"{_fmt_list(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s) (in the file, not in the "
                         f"model): {_fmt_list(unexpected)}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatch(es) (torch layout): {_fmt_list(shapes)}")
        hints = _hints(state_dict, config)
        if hints:
            lines.append("Hints from the file's tensors: " + "; ".join(hints) + ".")
        lines.append("Describe the checkpoint with preset=... (one of "
                     f"{', '.join(PRESETS)}) or guided-diffusion create_model flags.")
        raise CheckpointMismatchError("\n".join(lines))
    flat = {path: _to_flax(state_dict[k], path) for k, (path, _) in want.items()}
    for path, arr in flat.items():
        if arr.shape != tuple(expected[path].shape):  # pragma: no cover - internal invariant
            raise CheckpointMismatchError(f"internal layout error at {path}: {arr.shape}")
    return _unflatten(flat)


def _describe(config: ADMConfig) -> str:
    d = config.to_flags()
    keys = ("image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma",
            "class_cond", "num_classes", "attention_resolutions", "num_heads",
            "num_head_channels", "use_scale_shift_norm", "resblock_updown")
    return "(" + ", ".join(f"{k}={d[k]!r}" for k in keys) + ")"


# ----------------------------------------------------------------------------------------
# reading the architecture off the tensors


def infer_flags(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The create_model flags that the tensors determine (attention heads and image_size do
    not show in the weights; attention is reported as downsample factors
    ``attention_ds``)."""
    sd = state_dict
    flags: dict[str, Any] = {}
    if "time_embed.0.weight" in sd:
        flags["num_channels"] = int(sd["time_embed.0.weight"].shape[1])
    if "out.2.weight" in sd:
        oc = int(sd["out.2.weight"].shape[0])
        ic = int(sd["input_blocks.0.0.weight"].shape[1]) if "input_blocks.0.0.weight" in sd else 3
        flags["in_channels"] = ic
        flags["learn_sigma"] = oc == 2 * ic
    flags["class_cond"] = "label_emb.weight" in sd
    if "label_emb.weight" in sd:
        flags["num_classes"] = int(sd["label_emb.weight"].shape[0])

    blocks: dict[str, dict[int, set[str]]] = {"input_blocks": {}, "output_blocks": {}}
    for k in sd:
        m = re.match(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(\w+)", k)
        if m:
            blocks[m.group(1)].setdefault(int(m.group(2)), set()).add(f"{m.group(3)}.{m.group(4)}")
    ib, ob = blocks["input_blocks"], blocks["output_blocks"]
    if not ib or not ob or "num_channels" not in flags:
        return flags
    mc = flags["num_channels"]
    # output blocks: an up-sampler is a ResBlock or an Upsample after position 0
    ups = [j for j, subs in ob.items()
           if any(s.split(".")[0] != "0" and s.split(".")[1] in ("in_layers", "conv")
                  for s in subs)]
    levels = len(ups) + 1
    if len(ob) % levels == 0:
        flags["num_res_blocks"] = len(ob) // levels - 1
    flags["resblock_updown"] = any(
        any(s.startswith("1.in_layers") or s.startswith("2.in_layers") for s in ob[j]) for j in ups
    )
    # level widths from the decoder's first ResBlock of each level (deepest first)
    nrb = flags.get("num_res_blocks")
    if nrb is not None:
        mults = []
        for lv in range(levels):
            key = f"output_blocks.{lv * (nrb + 1)}.0.out_layers.3.weight"
            if key in sd:
                m = sd[key].shape[0] / mc
                mults.append(int(m) if float(m).is_integer() else m)
        if len(mults) == levels:
            flags["channel_mult"] = ",".join(str(m) for m in mults[::-1])
        attn = []
        for lv in range(levels):
            j = lv * (nrb + 1)
            if "1.qkv" in ob.get(j, set()):
                attn.append(2 ** (levels - 1 - lv))
        flags["attention_ds"] = tuple(sorted(attn))
    key = "input_blocks.1.0.emb_layers.1.weight"
    if key in sd and "input_blocks.1.0.out_layers.3.weight" in sd:
        flags["use_scale_shift_norm"] = (
            sd[key].shape[0] == 2 * sd["input_blocks.1.0.out_layers.3.weight"].shape[0]
        )
    return flags


def _hints(sd: Mapping[str, np.ndarray], config: ADMConfig) -> list[str]:
    f = infer_flags(sd)
    hints = []
    if "learn_sigma" in f and f["learn_sigma"] != config.learn_sigma:
        oc = sd["out.2.weight"].shape[0]
        hints.append(f"the final conv 'out.2' has {oc} output channels: set "
                     f"learn_sigma={f['learn_sigma']}")
    if f.get("class_cond") and not config.class_cond:
        hints.append(f"the file has a class embedding 'label_emb' with {f['num_classes']} "
                     f"classes: set class_cond=True, num_classes={f['num_classes']}")
    elif f.get("class_cond") and config.num_classes != f["num_classes"]:
        hints.append(f"'label_emb' has {f['num_classes']} classes: set "
                     f"num_classes={f['num_classes']}")
    elif not f.get("class_cond") and config.class_cond:
        hints.append("the file has no class embedding 'label_emb': set class_cond=False")
    if "num_channels" in f and f["num_channels"] != config.num_channels:
        hints.append(f"'time_embed.0' takes {f['num_channels']} features: set "
                     f"num_channels={f['num_channels']}")
    if "in_channels" in f and f["in_channels"] != config.in_channels:
        hints.append(f"the input conv takes {f['in_channels']} channels: set "
                     f"in_channels={f['in_channels']}")
    if "num_res_blocks" in f and f["num_res_blocks"] != config.num_res_blocks:
        hints.append(f"set num_res_blocks={f['num_res_blocks']}")
    cm = f.get("channel_mult")
    if cm is not None and tuple(float(m) for m in cm.split(",")) != tuple(
            float(m) for m in config.resolved_channel_mult):
        hints.append(f"set channel_mult={cm!r}")
    if "use_scale_shift_norm" in f and f["use_scale_shift_norm"] != config.use_scale_shift_norm:
        hints.append(f"set use_scale_shift_norm={f['use_scale_shift_norm']}")
    if "resblock_updown" in f and f["resblock_updown"] != config.resblock_updown:
        hints.append(f"set resblock_updown={f['resblock_updown']}")
    ads = f.get("attention_ds")
    if ads is not None and not hints:
        mine = tuple(sorted(config.unet_kwargs()["attention_resolutions"]))
        if ads != mine:
            res = ",".join(str(config.image_size // d) for d in sorted(ads))
            hints.append(f"attention sits at downsample factors {ads}: for image_size="
                         f"{config.image_size} set attention_resolutions={res!r}")
    return hints


# ----------------------------------------------------------------------------------------
# orbax directories


def save_model(model: ADMModel, directory: str | os.PathLike[str], *,
               overwrite: bool = False) -> Path:
    """Write ``model`` as an orbax checkpoint directory: ``params/`` (orbax
    StandardCheckpointer) and ``invdiff_model.json`` (the create_model flags).
    :func:`load_model` reads it back without flags. Returns the directory."""
    import orbax.checkpoint as ocp

    d = Path(directory).absolute()
    if d.exists() and any(d.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{d} exists and is not empty: pass overwrite=True to replace it")
    d.mkdir(parents=True, exist_ok=True)
    params = device_params(model.params)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(d / PARAMS_DIR, params, force=overwrite)
    ckptr.wait_until_finished()
    meta = {"format": FORMAT, "version": 1, "config": model.config.to_flags()}
    (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return d


def _load_dir(directory: Path, dtype: Any, flags: Mapping[str, Any]) -> ADMModel:
    from invdiff.nets.bundled import PARAMS_FILE, load_npz

    if (directory / PARAMS_FILE).is_file():
        if flags:
            raise ValueError(f"{directory} is a bundled model with its own config: drop the flags {sorted(flags)}")
        return load_npz(directory, dtype=dtype)
    return _load_orbax(directory, dtype, flags)


def _load_orbax(directory: Path, dtype: Any, flags: Mapping[str, Any]) -> ADMModel:
    import orbax.checkpoint as ocp

    meta_path = directory / CONFIG_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found: {directory} is not a model directory written by "
            f"invdiff.nets.save_model (or `invdiff convert`)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointFormatError(f"{meta_path}: unknown format {meta.get('format')!r}")
    cfg_flags = dict(meta["config"])
    if isinstance(cfg_flags.get("channel_mult"), list):
        cfg_flags["channel_mult"] = tuple(cfg_flags["channel_mult"])
    # flags that do not change the tensors may be overridden (e.g. dropout, schedule)
    cfg_flags.update(flags)
    config = ADMConfig.from_flags(**cfg_flags)
    target = abstract_params(config)
    restored = ocp.StandardCheckpointer().restore((directory / PARAMS_DIR).absolute())
    exp, got = _flatten(target), _flatten(restored)
    missing = [".".join(p) for p in exp if p not in got]
    unexpected = [".".join(p) for p in got if p not in exp]
    shapes = [f"{'.'.join(p)}: file {tuple(got[p].shape)} vs model {tuple(exp[p].shape)}"
              for p in exp if p in got and tuple(got[p].shape) != tuple(exp[p].shape)]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{directory} does not match its own config {_describe(config)}: missing "
            f"{_fmt_list(missing)}; unexpected {_fmt_list(unexpected)}; shapes {_fmt_list(shapes)}"
        )
    params = device_params(restored)
    return ADMModel.create(config, params, dtype)


# ----------------------------------------------------------------------------------------
# the entry point


def load_model(path_or_name: str | os.PathLike[str], preset: str | None = None,
               dtype: Any = jnp.float32, **flags: Any) -> ADMModel:
    """Load a guided-diffusion UNet as an :class:`~invdiff.nets.adm.ADMModel`.

    ``path_or_name`` is one of

    * a PyTorch ``.pt`` file (zip or legacy format, read without torch and without executing
      anything from the file), described by ``preset=`` (see :data:`invdiff.nets.PRESETS`)
      and/or guided-diffusion ``create_model`` flags (``image_size=256, num_channels=256,
      learn_sigma=True, ...``); flags override the preset;
    * a directory written by :func:`save_model` (no flags needed);
    * the name of a bundled model (:data:`BUNDLED`).

    ``dtype`` is the compute dtype (``jnp.bfloat16`` for speed); weights stay float32.
    """
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"load_model takes a .pt file, a model directory or a bundled model name "
                        f"({', '.join(sorted(BUNDLED))}); got {type(path_or_name).__name__}")
    p = Path(path_or_name)
    text = os.fspath(path_or_name)
    if not p.exists():
        if os.sep not in text and "/" not in text and text in BUNDLED:
            if preset is not None:
                raise ValueError(f"{text!r} is a bundled model with its own config: drop preset={preset!r}")
            return _load_dir(Path(BUNDLED[text]), dtype, flags)
        if os.sep not in text and "/" not in text and not p.suffix:
            hint = ""
            if text in PRESETS:
                hint = (f" {text!r} is a preset, not a file: download {PRESET_FILES[text]} and "
                        f"call load_model('path/to/{PRESET_FILES[text]}', preset={text!r}).")
            raise FileNotFoundError(
                f"no file or bundled model named {text!r}. Bundled models: "
                f"{sorted(BUNDLED) or 'none'}; presets for .pt files: {', '.join(PRESETS)}."
                + hint
            )
        raise FileNotFoundError(f"checkpoint not found: {text}")
    if p.is_dir():
        if preset is not None:
            raise ValueError(f"{p} is an invdiff model directory with its own config: drop "
                             f"preset={preset!r}")
        return _load_dir(p, dtype, flags)

    if preset is None and not flags:
        sd = load_state_dict(p)
        guess = {k: v for k, v in infer_flags(sd).items() if k != "attention_ds"}
        raise ValueError(
            f"{p}: say which architecture this checkpoint is, with preset=... (one of "
            f"{', '.join(f'{n!r} ({PRESET_FILES[n]})' for n in PRESETS)}) or the guided-diffusion "
            f"create_model flags (image_size=..., num_channels=..., attention_resolutions=..., "
            f"num_heads=/num_head_channels=...). From its tensors: {guess}"
        )
    cfg_flags = preset_flags(preset) if preset is not None else {}
    cfg_flags.update(flags)
    config = ADMConfig.from_flags(**cfg_flags)
    sd = load_state_dict(p)
    params = torch_to_flax(sd, config, source=str(p))
    params = device_params(params, None)
    return ADMModel.create(config, params, dtype)
