"""The bundled-model format: ``params.npz`` (flat, '/'-joined parameter paths) + ``model.json``.

One small file of weights, no pickle, readable by any NumPy; the package ships the default
model this way (``invdiff/assets/emoji64``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.nets.adm import ADMConfig, ADMModel, device_params

PARAMS_FILE = "params.npz"
META_FILE = "model.json"


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, path))
        else:
            out[path] = np.asarray(v, np.float32)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_npz(model: ADMModel, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ``params.npz`` + ``model.json`` (flags, plus ``extra`` metadata)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    params = jax.device_get(model.params)
    tmp = d / (PARAMS_FILE + ".tmp.npz")
    np.savez(tmp, **_flatten(params))
    os.replace(tmp, d / PARAMS_FILE)
    meta = {"config": model.config.to_flags(), **(extra or {})}
    (d / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return d


def load_npz(directory: str | os.PathLike[str], dtype: Any = jnp.float32) -> ADMModel:
    """Read a model written by :func:`save_npz`."""
    d = Path(directory)
    if not (d / PARAMS_FILE).is_file() or not (d / META_FILE).is_file():
        raise FileNotFoundError(f"{d} is not a bundled model directory: it needs {PARAMS_FILE} and {META_FILE}")
    meta = json.loads((d / META_FILE).read_text())
    config = ADMConfig.from_flags(**meta["config"])
    with np.load(d / PARAMS_FILE, allow_pickle=False) as z:
        params = device_params(_unflatten({k: z[k] for k in z.files}), None)
    return ADMModel.create(config, params, dtype=dtype)
