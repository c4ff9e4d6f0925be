"""The images a benchmark or a study runs on: a folder, an ``.npz`` file, an array, or the bundled set.

:func:`open_images` lists the images (cheap: nothing is decoded) and returns an
:class:`ImageSet`: stable identifiers, optional class labels, and :meth:`ImageSet.read`, which
decodes a few images on demand at the model's size. :meth:`ImageSet.check` decodes every image
once, so that an unreadable file is reported before anything is compiled.

Preprocessing of files (and of ``uint8`` arrays of another size) follows guided-diffusion's
``image_datasets.center_crop_arr``, the ADM evaluation pipeline: halve with a box filter while
the short side is at least twice the target, scale the short side to the target (bicubic),
then crop the centre square.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

#: File suffixes read from a data folder (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Shape = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Images in a stable order, read on demand.

    ``ids``: one identifier per image (the path relative to the data folder, an ``.npz`` name,
    or the index), unique. ``source``: what the images are (a resolved path, ``bundled ...``
    or an array's hash): runs in one directory must agree on it. ``labels``: int32 class ids
    (N,) carried by the data (``labels`` array of an ``.npz``, class sub-folders, a labels
    CSV), or None; ``label_source`` says where they came from. ``shape``: (H, W, C) of what
    :meth:`read` returns, None until :meth:`at_size` fixed it for data of mixed sizes.
    """

    ids: tuple[str, ...]
    source: str
    labels: np.ndarray | None
    label_source: str
    shape: Shape | None
    _reader: Callable[[int, Shape | None], np.ndarray] = dataclasses.field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """float32 images (len(indices), H, W, C) in [-1, 1]."""
        return np.stack([self._reader(int(i), self.shape) for i in indices]).astype(np.float32)

    def check(self, indices: Sequence[int] | None = None) -> None:
        """Decode the images (all by default) once; raises ValueError naming an unreadable one."""
        for i in range(len(self)) if indices is None else indices:
            self._reader(int(i), self.shape)

    def take(self, limit: int | None) -> ImageSet:
        """The first ``limit`` images (all for None); ValueError when fewer are available."""
        if limit is None:
            return self
        if int(limit) != limit or limit < 1:
            raise ValueError(f"--limit must be a positive integer, got {limit!r}")
        if limit > len(self):
            raise ValueError(f"--limit {limit} but only {len(self)} images are available in {self.source}: use at "
                             f"most {len(self)}")
        labels = None if self.labels is None else self.labels[:limit]
        return dataclasses.replace(self, ids=self.ids[:limit], labels=labels)

    def at_size(self, shape: Shape | None) -> ImageSet:
        """Read images as (H, W, C) = ``shape`` (the model's input); None keeps the data's own size."""
        if shape is None:
            if self.shape is None:
                raise ValueError(f"the model does not say which image size it takes, so the files in {self.source} "
                                 f"cannot be resized for it: give the images as an .npz array of its size")
            return self
        if self.shape is not None and self.shape[2] != shape[2]:
            raise ValueError(f"the images have {self.shape[2]} channels but the model takes {shape[2]}")
        return dataclasses.replace(self, shape=tuple(int(s) for s in shape))

    def with_labels(self, labels: np.ndarray | None, source: str) -> ImageSet:
        return dataclasses.replace(self, labels=labels, label_source=source)


# ---------------------------------------------------------------------------------------
# Preprocessing


def center_crop(image, size: tuple[int, int]):
    """A PIL image cropped and resized to ``size`` = (H, W), as guided-diffusion's
    ``center_crop_arr`` (box-filter halving, bicubic scaling of the short side, centre crop)."""
    from PIL import Image

    h, w = size
    while min(image.size) >= 2 * max(h, w):
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = max(h / image.size[1], w / image.size[0])
    image = image.resize(tuple(max(round(s * scale), t) for s, t in zip(image.size, (w, h))),
                         resample=Image.BICUBIC)
    top, left = (image.size[1] - h) // 2, (image.size[0] - w) // 2
    return image.crop((left, top, left + w, top + h))


def _to_model_units(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, np.float32) / 127.5 - 1.0


def _read_file(path: Path, shape: Shape | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if shape is None or shape[2] == 3 else "L")
            if shape is not None and im.size != (shape[1], shape[0]):
                im = center_crop(im, shape[:2])
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an image ({e}): remove or replace it") from None
    return _to_model_units(arr.reshape(arr.shape[0], arr.shape[1], -1))


def _array_reader(images: np.ndarray, where: str) -> Callable[[int, Shape | None], np.ndarray]:
    """A reader over an (N, H, W, C) array: uint8 in [0, 255] or float in [-1, 1]."""
    if images.ndim != 4:
        raise ValueError(f"{where}: images must have shape (N, H, W, C), got {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{where}: images must be uint8 [0, 255] or float [-1, 1], got dtype {images.dtype}")
        if not np.all(np.isfinite(images)):
            raise ValueError(f"{where}: images contain NaN or infinite values")
        if images.size and (images.min() < -1.001 or images.max() > 1.001):
            raise ValueError(f"{where}: float images must be in [-1, 1] (model units), got values in "
                             f"[{images.min():.3g}, {images.max():.3g}]: rescale with x / 127.5 - 1 for 0-255 images")

    def read(i: int, shape: Shape | None) -> np.ndarray:
        img = images[i]
        if shape is None or tuple(img.shape) == tuple(shape):
            return _to_model_units(img) if img.dtype == np.uint8 else np.asarray(img, np.float32)
        if img.dtype != np.uint8:
            raise ValueError(f"{where}: images are {img.shape[0]}x{img.shape[1]}x{img.shape[2]} but the model takes "
                             f"{shape[0]}x{shape[1]}x{shape[2]}; float arrays are not resized: resize them first")
        from PIL import Image

        im = center_crop(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img), shape[:2])
        return _to_model_units(np.asarray(im).reshape(shape[0], shape[1], -1))

    return read


def _array_hash(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Sources


def _from_array(images: np.ndarray, labels: np.ndarray | None, ids: Sequence[str] | None, source: str,
                label_source: str) -> ImageSet:
    images = np.asarray(images)
    reader = _array_reader(images, source)
    n = images.shape[0]
    if n == 0:
        raise ValueError(f"{source} holds no images")
    ids = tuple(str(i) for i in ids) if ids is not None else tuple(f"{i:06d}" for i in range(n))
    if len(ids) != n or len(set(ids)) != n:
        raise ValueError(f"{source}: the image names must be unique, one per image")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{source}: labels must be integer class ids, one per image ({n}), got "
                             f"{labels.dtype} {labels.shape}")
        labels = labels.astype(np.int32)
    return ImageSet(ids, source, labels, label_source if labels is not None else "none",
                    tuple(int(s) for s in images.shape[1:]), reader)


def _bundled() -> ImageSet:
    from invdiff.demo import bundled_samples

    x, labels, names = bundled_samples()
    rgb = np.round((x + 1.0) * 127.5).astype(np.uint8)  # the files' bytes: resized like any image for other models
    return _from_array(rgb, labels, names, "bundled emoji64 validation images", "the bundled labels")


def _from_npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an .npz file ({e})") from None
    if "images" in arrays:
        images = arrays["images"]
    elif len(arrays) == 1:
        images = next(iter(arrays.values()))
    else:
        raise ValueError(f"{path} has no 'images' array (found {', '.join(sorted(arrays))}): name the image "
                         f"array 'images' (and the class ids 'labels')")
    names = [str(n) for n in arrays["names"]] if "names" in arrays else None
    return _from_array(images, arrays.get("labels"), names, str(path.resolve()), f"the 'labels' array of {path.name}")


def _from_folder(path: Path) -> ImageSet:
    files = sorted((f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda f: f.relative_to(path).as_posix())
    if not files:
        raise ValueError(f"no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images in {path} (sub-folders included)")
    rel = [f.relative_to(path) for f in files]
    labels, label_source = None, "none"
    if all(len(r.parts) == 2 for r in rel):  # one sub-folder per class, in sorted order (ImageNet's layout)
        classes = sorted({r.parts[0] for r in rel})
        labels = np.asarray([classes.index(r.parts[0]) for r in rel], np.int32)
        shown = ", ".join(classes[:3]) + (", …" if len(classes) > 3 else "")
        label_source = f"class sub-folders ({len(classes)}: {shown})"
    return ImageSet(tuple(r.as_posix() for r in rel), str(path.resolve()), labels, label_source, None,
                    lambda i, shape: _read_file(files[i], shape))


def open_images(data: str | os.PathLike[str] | np.ndarray | None = None,
                labels: str | os.PathLike[str] | np.ndarray | None = None) -> ImageSet:
    """List the images of ``data`` without decoding them.

    ``data``: None (the 10 bundled emoji64 validation images), a folder of PNG/JPEG files
    (sorted by relative path; images in one sub-folder per class get those classes' indices,
    in sorted folder order, as labels), an ``.npz`` file (``images`` uint8 (N, H, W, C) or
    float in [-1, 1], optional ``labels`` and ``names``), or an array (N, H, W, C).
    ``labels``: a CSV file with the header ``file,label`` and one row per image (the file's
    path relative to the folder, or its name when that is unique), or an array of class ids;
    it replaces the labels the data carries.
    """
    if data is None:
        images = _bundled()
    elif isinstance(data, np.ndarray):
        images = _from_array(data, None, None, f"an array of {data.shape[0]} images (sha1 {_array_hash(data)})",
                             "none")
    else:
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"--data {path}: no such folder or file")
        if path.is_dir():
            images = _from_folder(path)
        elif path.suffix.lower() == ".npz":
            images = _from_npz(path)
        else:
            raise ValueError(f"--data {path}: give a folder of PNG/JPEG images or an .npz file")
    if labels is None:
        return images
    if isinstance(labels, np.ndarray):
        arr = np.asarray(labels)
        if arr.shape != (len(images),) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"labels must be integer class ids, one per image ({len(images)}), got {arr.dtype} "
                             f"{arr.shape}")
        return images.with_labels(arr.astype(np.int32), "given labels")
    return images.with_labels(read_labels_csv(labels, images.ids), f"--labels {Path(labels).name}")


def read_labels_csv(path: str | os.PathLike[str], ids: Sequence[str]) -> np.ndarray:
    """Class ids for ``ids`` from a CSV file ``file,label`` (rows for other files are ignored).

    A row names an image by its path relative to the data folder, or by its bare file name
    when no other image has that name."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--labels {p}: no such file")
    with open(p, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["file", "label"]:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise ValueError(f"{p}: the first line must be the header 'file,label', got {got}")
    table: dict[str, int] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ValueError(f"{p} line {n}: expected 'file,label', got {','.join(row)!r}")
        try:
            table[row[0].strip()] = int(row[1])
        except ValueError:
            raise ValueError(f"{p} line {n}: the label {row[1]!r} is not an integer class id") from None
    names = [Path(i).name for i in ids]
    out, missing = [], []
    for i, name in zip(ids, names):
        if i in table:
            out.append(table[i])
        elif name in table and names.count(name) == 1:  # a bare file name that is unique in the data
            out.append(table[name])
        else:
            missing.append(i)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{p} has no label for {shown}: add a row 'file,label' for each image")
    return np.asarray(out, np.int32)


__all__ = ["IMAGE_SUFFIXES", "ImageSet", "center_crop", "open_images", "read_labels_csv"]
