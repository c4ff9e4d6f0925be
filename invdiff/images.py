"""Image I/O at the edges: image files <-> [-1, 1] model units, labelled grids, atomic writes.

Images are read as a viewer shows them, or refused with a one-line error naming the file:

* 8-bit files map 0..255 to [-1, 1]; 16-bit PNGs (greyscale, greyscale + alpha, RGB, RGBA)
  are read at full precision, 0..65535 to [-1, 1]. Pillow itself reduces 16-bit colour PNGs
  to 8 bits, so those are decoded here from Pillow's own unfiltered rows (both bytes of every
  sample); 16-bit colour in other formats (TIFF) is refused rather than read at 8 bits.
* Transparency (an alpha channel or a PNG/GIF transparent colour) is composited over white.
* The EXIF orientation is applied (a phone photo comes out upright).
* The size is read from the header, before any pixel is decoded: images over
  ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb limit, 89.5 million by
  default) are refused, and callers check the expected size before decoding (:func:`open_image`).
* Floating-point images (Pillow mode ``F``), whose range is unknown, are refused.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from invdiff.guard import TEMPORARY_FILES

#: Masks may be colour images whose channels agree within this (on a 0..1 scale: JPEG noise);
#: a larger spread means a coloured drawing, which is refused as ambiguous.
MASK_CHANNEL_TOLERANCE = 0.1


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
    TEMPORARY_FILES.add(tmp)  # a second Ctrl-C removes it before the process ends
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
    finally:
        TEMPORARY_FILES.discard(tmp)
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


def open_image(path: str | os.PathLike[str]) -> Any:
    """Open an image lazily (only the header is read) as a ``PIL.Image``; its ``.size`` is known
    before any pixel is decoded. Refuses, with one line naming the file, a missing or unreadable
    file and an image over ``PIL.Image.MAX_IMAGE_PIXELS`` pixels."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no image at {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(p)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        reason = str(e).split(", could be")[0]
        raise ValueError(f"{p} is too large to read: {reason} (PIL.Image.MAX_IMAGE_PIXELS); downscale it "
                         f"first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read {p} as an image: {e}") from None


def oriented_size(im: Any) -> tuple[int, int]:
    """(width, height) as shown, i.e. after the EXIF orientation, from the header where the
    orientation is known there (JPEG); PNGs whose EXIF data follows the pixels give ``im.size``."""
    if im.format == "PNG" and "exif" not in im.info:
        return im.size
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 (malformed EXIF: show the pixels as stored)
        return 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array, as PIL.ImageOps.exif_transpose."""
    if orientation in (5, 6, 7, 8):
        a = {5: lambda b: b.transpose(1, 0, 2), 6: lambda b: np.rot90(b, -1),
             7: lambda b: np.rot90(b, 2).transpose(1, 0, 2), 8: lambda b: np.rot90(b, 1)}[orientation](a)
    elif orientation in (2, 3, 4):
        a = {2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1]}[orientation]
    return np.ascontiguousarray(a)


def _rawmode(im: Any) -> str:
    tile = getattr(im, "tile", None) or []
    args = tile[0].args if tile else None
    return args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args and
                                               isinstance(args[0], str) else "")


def _png16_colour(path: Path, rawmode: str) -> np.ndarray:
    """The samples of a 16-bit colour PNG as uint16 (H, W, C): Pillow decodes only the high
    byte of each sample, so the file is decoded twice with the same row filters (same bytes per
    pixel), once keeping the high bytes ("...;16B") and once the low ones ("...;16L" reads the
    pairs little-endian); greyscale + alpha (32 bits a pixel) is read as four 8-bit bytes."""
    from PIL import Image

    def decode(new_rawmode: str) -> np.ndarray:
        with Image.open(path) as im:
            im.tile = [t._replace(args=new_rawmode) for t in im.tile]
            im.load()
            return np.asarray(im).astype(np.uint16)

    if rawmode == "LA;16B":  # Pillow opens it as RGBA
        b = decode("RGBA")
        return np.stack([b[..., 0] * 256 + b[..., 1], b[..., 2] * 256 + b[..., 3]], axis=-1)
    if rawmode in ("RGB;16B", "RGBA;16B"):
        return decode(rawmode) * 256 + decode(rawmode.replace(";16B", ";16L"))
    raise ValueError(f"{path}: 16-bit PNG layout {rawmode} is not supported; save it as 8-bit")


def _pixels(im: Any, p: Path, raw: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode (colour or grey (H, W, 3|1), alpha (H, W, 1) or None) as float32 in [0, 1];
    ``raw``: the file's sample layout (Pillow's rawmode, read before ``load`` clears it)."""
    mode = im.mode
    trns = im.info.get("transparency")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{p} holds 32-bit integer pixels outside 0..65535, a range that cannot be "
                             f"interpreted; save it as an 8- or 16-bit PNG")
        alpha = None if trns is None else (a != trns)[..., None].astype(np.float32)
        return (a.astype(np.float32) / 65535.0)[..., None], alpha
    if mode in ("RGB", "RGBA") and ";16" in raw:
        if im.format != "PNG":
            raise ValueError(f"{p} is a 16-bit colour {im.format} image, which is only read at full precision "
                             f"as PNG; save it as a 16-bit PNG or as 8-bit")
        a = _png16_colour(p, raw).astype(np.float32) / 65535.0
        if a.shape[-1] in (2, 4):
            return a[..., :-1], a[..., -1:]
        if trns is not None:  # a transparent colour, in 16-bit units
            return a, np.any(np.rint(a * 65535) != np.asarray(trns), axis=-1, keepdims=True).astype(np.float32)
        return a, None
    if mode == "F" or ";16" in raw or mode.startswith("I;"):
        raise ValueError(f"{p} has pixels of type {mode} ({raw or 'unknown layout'}) whose range is not known; "
                         f"save it as an 8- or 16-bit PNG or a JPEG")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or trns is not None:
        a = np.asarray(im.convert("RGBA"), np.float32) / 255.0
        return a[..., :3], a[..., 3:]
    grey = mode in ("1", "L")
    try:
        a = np.asarray(im.convert("L" if grey else "RGB"), np.float32) / 255.0
    except ValueError as e:  # a mode Pillow cannot convert
        raise ValueError(f"cannot read {p} as an RGB image ({mode}): {e}") from None
    return (a[..., None] if grey else a), None


def _decode(im: Any, p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode ``im`` (from :func:`open_image`), upright: (pixels (H, W, 3|1), alpha) in [0, 1]."""
    from PIL import Image

    raw = _rawmode(im)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
            a, alpha = _pixels(im, p, raw)
            orientation = _orientation(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {p} as an image: {e}") from None
    return _orient(a, orientation), (None if alpha is None else _orient(alpha, orientation))


def _resize(a: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize float (H, W, C) to size = (H', W') channel by channel (Pillow, 32-bit float)."""
    from PIL import Image

    h, w = size
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), "F").resize((w, h), resample))
                     for c in range(a.shape[-1])], axis=-1)


def load_image(path: str | os.PathLike[str], size: int | tuple[int, int] | None = None,
               *, image: Any = None) -> np.ndarray:
    """Read an image file as float32 (H, W, 3) in [-1, 1] (see the module notes: 16-bit at full
    precision, transparency over white, EXIF orientation applied); resized (bicubic, clipped)
    to ``size`` (an int for a square, or (H, W)) if given. ``image``: the same file already
    opened with :func:`open_image` (e.g. to check its size first)."""
    from PIL import Image

    p = Path(path)
    im = open_image(p) if image is None else image
    with im:
        a, alpha = _decode(im, p)
    if alpha is not None:
        a = a * alpha + (1.0 - alpha)  # over white
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if a.shape[:2] != hw:
            a = np.clip(_resize(a, hw, Image.BICUBIC), 0.0, 1.0)
    return (a * 2.0 - 1.0).astype(np.float32)


def load_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an inpainting mask: bool (H, W), True = known (white, grey level >= 0.5), False =
    missing (black). Greyscale, or colour whose channels agree within
    :data:`MASK_CHANNEL_TOLERANCE`; 8 or 16 bits; EXIF orientation applied. A mask with
    transparent pixels or colours is refused (which pixels it means is ambiguous).
    ``size=(H, W)`` resizes with nearest-neighbour sampling."""
    from PIL import Image

    p = Path(path)
    with open_image(p) as im:
        a, alpha = _decode(im, p)
    if alpha is not None and float(alpha.min()) < 1.0:
        raise ValueError(f"the mask {p} has transparent pixels, which mean neither known nor missing; save it "
                         f"without transparency: white = known, black = missing")
    if a.shape[-1] == 3:
        spread = a.max(axis=-1) - a.min(axis=-1)
        if float(spread.max()) > MASK_CHANNEL_TOLERANCE:
            r, c = np.unravel_index(int(np.argmax(spread)), spread.shape)
            rgb = tuple(int(round(v * 255)) for v in a[r, c])
            raise ValueError(f"the mask {p} is a colour image (pixel at row {r}, column {c} is RGB {rgb}); a mask "
                             f"must be grey: white = known, black = missing")
    known = a.mean(axis=-1) >= 0.5
    if size is not None and known.shape != tuple(size):
        h, w = size
        known = np.asarray(Image.fromarray(known.astype(np.uint8) * 255).resize((int(w), int(h)), Image.NEAREST)) > 0
    return known


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
