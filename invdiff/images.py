"""Image I/O at the edges: [-1, 1] model units <-> uint8 files, labelled grids, atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def to_model(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] (clipped) -> uint8; a single channel is repeated to RGB."""
    a = np.clip((np.asarray(x, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def writable_dir(out: str | os.PathLike[str]) -> Path:
    """Create the directory ``out`` if needed and prove it can be written (a probe file is
    written and removed), so that a long job fails at once instead of at its end."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output path {out} is an existing file, not a directory: choose another output directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / f".invdiff-probe-{os.getpid()}", b"").unlink()
    except OSError as e:
        raise PermissionError(f"cannot write into the output directory {out} ({e.strerror or e}): choose a writable "
                              f"one or fix its permissions") from None
    return out


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Save one (H, W, 3|1) image in [-1, 1] or uint8 as PNG/JPEG (by extension), atomically."""
    import io

    from PIL import Image

    arr = image if image.dtype == np.uint8 else to_uint8(image)
    buf = io.BytesIO()
    fmt = "JPEG" if str(path).lower().endswith((".jpg", ".jpeg")) else "PNG"
    Image.fromarray(arr).save(buf, format=fmt)
    return atomic_write_bytes(path, buf.getvalue())


def load_image(path: str | os.PathLike[str], size: int | None = None) -> np.ndarray:
    """Read an image file as float32 (H, W, 3) in [-1, 1]; resized (bicubic) to size x size if given."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no image at {p}")
    try:
        im = Image.open(p).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {p} as an image: {e}") from None
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return to_model(np.asarray(im))


def grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
         scale: int = 2, pad: int = 2) -> np.ndarray:
    """A uint8 grid of equally sized images (each [-1, 1] or uint8), with text labels."""
    from PIL import Image, ImageDraw

    cells = [[(c if c.dtype == np.uint8 else to_uint8(c)) for c in r] for r in rows]
    h, w = cells[0][0].shape[:2]
    h, w = h * scale, w * scale
    left = 110 if row_labels else 0
    top = 28 if col_labels else 0
    ncol = max(len(r) for r in cells)
    canvas = Image.new("RGB", (left + ncol * (w + pad) + pad, top + len(cells) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, r in enumerate(cells):
        for j, c in enumerate(r):
            im = Image.fromarray(c).resize((w, h), Image.NEAREST)
            canvas.paste(im, (left + pad + j * (w + pad), top + pad + i * (h + pad)))
        if i < len(row_labels):
            draw.text((4, top + pad + i * (h + pad) + h // 2 - 6), str(row_labels[i]), fill="black")
    for j, label in enumerate(col_labels):
        for k, line in enumerate(str(label).split("\n")[:2]):
            draw.text((left + pad + j * (w + pad) + 2, 2 + 12 * k), line, fill="black")
    return np.asarray(canvas)
