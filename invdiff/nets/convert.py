"""``invdiff convert CKPT --preset NAME --out DIR``: a .pt checkpoint to an orbax directory.

The directory loads with ``invdiff.load_model(DIR)`` without flags, and without reading any
pickle again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from invdiff.nets.checkpoint import load_model, save_model


def convert(ckpt: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            preset: str | None = None, *, overwrite: bool = False, **flags: Any) -> Path:
    """Read the guided-diffusion checkpoint ``ckpt`` (described by ``preset`` and/or
    create_model ``flags``) and write it to ``out_dir`` with :func:`save_model`.
    Returns the output directory."""
    model = load_model(ckpt, preset=preset, **flags)
    return save_model(model, out_dir, overwrite=overwrite)


def parse_flags(items: list[str]) -> dict[str, Any]:
    """``["learn_sigma=True", "num_channels=128", "attention_resolutions=16,8"]`` -> flags,
    for command lines. Values are read as bool, int, float or string."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"flag {item!r} must look like name=value")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(k.strip(), v.strip())
    return out


def parse_value(key: str, v: str) -> Any:
    """A flag's value from text: bool, int, float or string (list-valued flags stay strings)."""
    if key in ("channel_mult", "attention_resolutions"):
        return v
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v
