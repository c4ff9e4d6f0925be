"""The model a benchmark or a study runs: loading, what identifies it, its input, its labels."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from invdiff.bench.data import ImageSet, Shape


def load(model: Any = None, preset: str | None = None, flags: dict[str, Any] | None = None) -> tuple[Any, dict]:
    """``(model, identity)``: a loaded model and the dict that identifies it in a run's configuration.

    ``model``: None (the bundled ``emoji64``), a bundled name, a guided-diffusion ``.pt`` file
    (described by ``preset`` and/or ``flags``, guided-diffusion ``create_model`` names), an
    orbax directory, or an already loaded model (identified by its type and a hash of its
    arrays). A checkpoint that does not match its description raises a ValueError naming the
    flag, before anything is compiled.
    """
    import invdiff

    flags = dict(flags or {})
    if model is None:
        model = "emoji64"
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        loaded = invdiff.load_model(os.fspath(model), preset=preset, **flags)
        identity = {"model": str(path.resolve()) if path.exists() else os.fspath(model)}
        if preset is not None:
            identity["preset"] = preset
        if flags:
            identity["flags"] = {k: flags[k] for k in sorted(flags)}
        return loaded, identity
    if preset is not None or flags:
        raise ValueError("preset and flags describe a checkpoint file; the model given is already loaded")
    return model, {"model": type(model).__name__, "sha1": fingerprint(model)}


def fingerprint(tree: Any) -> str:
    """A hash of a PyTree's structure and array values (what identifies an in-memory model)."""
    leaves, treedef = jax.tree.flatten(tree)
    h = hashlib.sha1(str(treedef).encode())
    for leaf in leaves:
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def describe(identity: dict) -> str:
    """One line for a report header."""
    extra = [f"preset {identity['preset']}"] if "preset" in identity else []
    extra += [f"{k}={v}" for k, v in identity.get("flags", {}).items()]
    extra += [f"sha1 {identity['sha1']}"] if "sha1" in identity else []
    return identity["model"] + (f" ({', '.join(extra)})" if extra else "")


def is_conditional(model: Any) -> bool:
    """True for a class-conditional model (ADM ``class_cond``, or ``class_conditional``)."""
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "class_cond", False) or getattr(model, "class_conditional", False))


def image_shape(model: Any) -> Shape | None:
    """(H, W, C) the model takes, when it says: an ADM's ``image_size``, a Gaussian prior's mean."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "image_size", None):
        return (int(cfg.image_size), int(cfg.image_size), int(getattr(cfg, "in_channels", 3)))
    mean = getattr(model, "mean", None)
    if mean is not None and np.ndim(mean) == 3:
        return tuple(int(s) for s in np.shape(mean))
    return None


def resolve_labels(model: Any, images: ImageSet, label: int | None = None,
                   labels_given: bool = False) -> tuple[np.ndarray | None, str]:
    """``(labels, description)``: the class ids a run passes to the model, or None.

    A class-conditional model gets ``label`` for every image when given, else the labels of
    the data (a CSV, class sub-folders, an ``.npz`` array, the bundled set); without any, it
    runs unconditionally when it has a learned null class (``model.null_label`` is not None),
    and otherwise raises a ValueError saying how to give labels. An unconditional model
    refuses ``label`` and labels given explicitly (``labels_given``).
    """
    if not is_conditional(model):
        if label is not None or labels_given:
            raise ValueError("the model is not class-conditional: drop --label/--labels")
        return None, "not used (unconditional model)"
    if label is not None:
        if int(label) != label or label < 0:
            raise ValueError(f"--label must be a class id >= 0, got {label!r}")
        return np.full(len(images), int(label), np.int32), f"class {int(label)} for every image (--label)"
    if images.labels is not None:
        return images.labels, images.label_source
    if getattr(model, "null_label", None) is not None:
        return None, "none: unconditional, through the model's null class"
    raise ValueError(f"the model is class-conditional and the images in {images.source} have no labels: give "
                     f"--labels FILE.csv (header 'file,label'), put the images in one sub-folder per class, or "
                     f"give one class for all with --label K")


__all__ = ["describe", "fingerprint", "image_shape", "is_conditional", "load", "resolve_labels"]
