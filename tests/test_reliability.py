"""Reliability through the real entry points: users' files are never lost or misread, bad input
to ``solve`` is refused, Ctrl-C is safe, and concurrent solves keep their own progress.

Every case of issue 18, each as a careless or hostile user would meet it."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

import invdiff
from invdiff.cli import main
from invdiff.guard import Interrupted
from invdiff.images import load_image, load_mask
from invdiff.nets.adm import ADMConfig, ADMModel, abstract_params
from invdiff.nets.bundled import save_npz
from invdiff.operator import LinearFunction
from invdiff.restore import prepare, restore
from invdiff.solve import trace_count
from operators import Colorization, Inpainting
from solvers import DDIM, DDNM

REPO = Path(__file__).resolve().parents[1]
SIZE = 8
STEPS = 100  # every solve here is one program (colorize, one image, no progress callback), compiled once
# the cheapest network to compile: one level, no attention
MICRO = ADMConfig.from_flags(image_size=SIZE, num_channels=32, channel_mult="1", num_res_blocks=1,
                             attention_resolutions="", class_cond=True, num_classes=3, diffusion_steps=100)


def write_png(path: Path, samples: np.ndarray, bits: int = 16, chunks: tuple = ()) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit colour): ``samples`` (H, W, C), C = 1 grey,
    2 grey + alpha, 3 RGB, 4 RGBA. Rows cycle through the five row filters (None, Sub, Up,
    Average, Paeth), so a decoder that gets the bytes per pixel wrong reads garbage."""
    h, w, c = samples.shape
    raw = samples.astype(">u2" if bits == 16 else "u1").reshape(h, -1).view(np.uint8).astype(np.int32)
    bpp = c * bits // 8
    rows, prev = [], np.zeros(raw.shape[1], np.int32)
    for r in range(h):
        cur = raw[r]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        f = r % 5
        p = left + prev - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        pred = [0, left, prev, (left + prev) // 2, paeth][f]
        rows.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bits, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(k, d) for k, d in chunks)
                     + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    return path


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h RGB pixels and holds garbage: only a reader that decodes fails on it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", b"not zlib data") + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny network in the bundled format (random weights drawn with NumPy: no compile)."""
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: ("scale" in jax.tree_util.keystr(path)) + 0.05 * rng.standard_normal(a.shape, np.float32),
        abstract_params(MICRO))
    return save_npz(ADMModel.create(MICRO, params), tmp_path_factory.mktemp("micro") / "model")


def rgb8(path: Path, seed: int = 0, size: int = SIZE) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def cli(args: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and ": error: " in lines[0] and match in lines[0], err


# ---------------------------------------------------------------------------------------
# 1. nothing a user has is overwritten without being asked


def test_restore_refuses_an_existing_output_unless_overwrite(model_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.open(rgb8(tmp_path / "x.png")).save(src / "img0.jpg", quality=95)
    mine = src / "img0.png"
    mine.write_bytes(b"the user's own picture")
    args = ["restore", src / "img0.jpg", "--format", "png", "--out", src, "--operator", "colorize", "--label", 0,
            "--model", model_dir, "--steps", STEPS, "--quiet"]
    code, err = cli(args, capsys)
    one_line_error(code, err, "img0.png")
    assert "--overwrite" in err and mine.read_bytes() == b"the user's own picture"
    assert cli(args + ["--overwrite"], capsys)[0] == 0
    assert Image.open(mine).size == (SIZE, SIZE)
    os.chmod(mine, 0o444)  # a read-only file is protected even with --overwrite
    before = mine.read_bytes()
    code, err = cli(args + ["--overwrite"], capsys)
    one_line_error(code, err, "read-only")
    assert mine.read_bytes() == before


def test_restore_refuses_two_outputs_with_one_name(model_dir, tmp_path, capsys):
    a = rgb8(tmp_path / "x.png")
    b = rgb8(tmp_path / "x.measurement.jpg", seed=1)  # its result x.measurement.png = x.png's A⁺y file
    code, err = cli(["restore", a, b, "--format", "png", "--save-measurement", "--out", tmp_path / "o",
                     "--operator", "colorize", "--label", 0, "--model", model_dir, "--quiet"], capsys)
    one_line_error(code, err, "x.measurement.png")
    assert "same file" in err and list((tmp_path / "o").iterdir()) == []


def test_demo_and_train_export_refuse_existing_outputs_before_any_work(tmp_path, capsys):
    (tmp_path / "results.md").write_text("an earlier run")
    code, err = cli(["demo", "--out", tmp_path], capsys)
    one_line_error(code, err, "results.md")
    assert "--overwrite" in err and (tmp_path / "results.md").read_text() == "an earlier run"
    export = tmp_path / "export"
    export.mkdir()
    (export / "notes.txt").write_text("keep me")
    code, err = cli(["train", tmp_path / "no-data.npz", tmp_path / "work", "--export", export], capsys)
    one_line_error(code, err, "--overwrite")  # refused before the data is even looked at
    assert not (tmp_path / "work").exists()


# ---------------------------------------------------------------------------------------
# 2. images are read as the user sees them, or refused


def test_16_bit_pngs_are_read_at_full_precision(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 65536, (16, 12, 4), dtype=np.uint16)
    samples[..., 3] = 65535  # opaque
    full = samples.astype(np.float64) / 65535 * 2 - 1
    grey = tmp_path / "grey16.png"
    Image.fromarray(samples[..., 0]).save(grey)  # Pillow writes 16-bit grey itself
    np.testing.assert_allclose(load_image(grey), np.repeat(full[..., :1], 3, -1), atol=1e-6)
    for c in (3, 4):  # RGB and RGBA: Pillow alone would keep only the high bytes
        x = load_image(write_png(tmp_path / f"c{c}.png", samples[..., :c]))
        np.testing.assert_allclose(x, full[..., :3], atol=1e-6)
    alpha = samples[..., 3:].copy()
    alpha[:4] = 0  # transparent rows: white
    x = load_image(write_png(tmp_path / "la.png", np.concatenate([samples[..., :1], alpha], -1)))
    a = alpha / 65535
    np.testing.assert_allclose(x[..., 1], ((samples[..., 0] / 65535) * a[..., 0] + 1 - a[..., 0]) * 2 - 1, atol=1e-6)
    assert np.all(x[:4] == 1.0)


def test_transparency_is_white_and_exif_orientation_is_applied(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (16, 12, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0
    rgba[5:, :, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "t.png")
    x = load_image(tmp_path / "t.png")
    assert np.all(x[:5] == 1.0)
    np.testing.assert_allclose(x[5:], rgba[5:, :, :3] / 127.5 - 1, atol=1e-6)
    stored = Image.fromarray(rgba[..., :3])  # 12 wide, 16 high
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(tmp_path / f"o{orientation}.png", exif=exif)
        shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"o{orientation}.png")).convert("RGB"))
        np.testing.assert_allclose(load_image(tmp_path / f"o{orientation}.png"), shown / 127.5 - 1, atol=1e-6)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo taken upright, stored sideways
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    assert load_image(tmp_path / "phone.jpg").shape == (12, 16, 3)


def test_masks_are_grey_or_refused_and_degenerate_ones_warn(model_dir, tmp_path, capsys):
    known = np.ones((SIZE, SIZE), bool)
    known[2:5, 1:6] = False
    Image.fromarray((known * 65535).astype(np.uint16)).save(tmp_path / "m16.png")  # 16-bit: was "all known"
    np.testing.assert_array_equal(load_mask(tmp_path / "m16.png"), known)
    rgb = np.repeat((known * 255).astype(np.uint8)[..., None], 3, -1)
    Image.fromarray(rgb).save(tmp_path / "grey_as_rgb.jpg", quality=90)
    np.testing.assert_array_equal(load_mask(tmp_path / "grey_as_rgb.jpg"), known)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "red.png")
    a = rgb8(tmp_path / "a.png")
    code, err = cli(["restore", a, "--operator", "inpaint", "--mask", tmp_path / "red.png", "--label", 0,
                     "--model", model_dir, "--out", tmp_path / "o", "--quiet"], capsys)
    one_line_error(code, err, "colour image")
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(tmp_path / "white.png")
    with pytest.warns(UserWarning, match="no missing"):
        prepare([a], "inpaint", tmp_path / "o", mask=tmp_path / "white.png", label=0, model=model_dir)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "black.png")
    with pytest.warns(UserWarning, match="no known"):
        prepare([a], "inpaint", tmp_path / "o", mask=tmp_path / "black.png", label=0, model=model_dir)


def test_huge_and_wrong_size_images_are_refused_from_the_header(model_dir, tmp_path, capsys):
    common = ["--operator", "colorize", "--label", 0, "--model", model_dir, "--out", tmp_path / "o", "--quiet"]
    code, err = cli(["restore", png_header_only(tmp_path / "bomb.png", 20000, 20000), *common, "--resize"], capsys)
    one_line_error(code, err, "too large")
    # 9000 x 9000 is under Pillow's limit: refused for not matching the mask before its (garbage)
    # pixels are decoded
    mask = tmp_path / "mask.png"
    Image.new("L", (SIZE, SIZE), 255).save(mask)
    inpaint = ["--operator", "inpaint", "--mask", mask, *common[2:]]
    code, err = cli(["restore", png_header_only(tmp_path / "big.png", 9000, 9000), *inpaint], capsys)
    one_line_error(code, err, f"is {SIZE}x{SIZE} but the image {tmp_path / 'big.png'} is 9000x9000")
    exif = Image.Exif()
    exif[0x0112] = 8  # stored 2*SIZE wide, SIZE high; shown SIZE wide, 2*SIZE high
    Image.new("RGB", (2 * SIZE, SIZE)).save(tmp_path / "turned.jpg", exif=exif)
    code, err = cli(["restore", tmp_path / "turned.jpg", *inpaint], capsys)
    one_line_error(code, err, f"is {SIZE}x{2 * SIZE}; give a mask")


# ---------------------------------------------------------------------------------------
# 3. solve refuses what cannot be right

SCHED = invdiff.NoiseSchedule.linear(1000)
IMAGE_PRIOR = invdiff.FunctionModel(lambda x, t: 0.1 * x, schedule=SCHED, data_range=(-1.0, 1.0))
FIRST = LinearFunction(lambda x: x[:, :1], in_shape=(3,))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(y=np.full((1, 2, 2, 3), 200, np.uint8)), TypeError, "raw pixel values"),
    (dict(y=jnp.zeros((1, 2, 2, 3), jnp.complex64)), TypeError, "complex"),
    (dict(x_init=np.zeros((1, 2, 2, 3), np.int32)), TypeError, "x_init has dtype int32"),
    (dict(model=None), TypeError, "model must be an invdiff Model"),
    (dict(label=["cat"]), TypeError, "integer class ids"),
    (dict(clip_x0=(1.0, -1.0)), ValueError, "low < high"),
    (dict(solver=DDNM(steps=0)), ValueError, "steps must be a positive integer"),
])
def test_solve_refuses_what_cannot_be_right(kwargs, error, match):
    args = dict(solver=DDNM(steps=2), model=IMAGE_PRIOR, op=Colorization(), y=jnp.zeros((1, 2, 2, 1)))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        invdiff.solve(args.pop("solver"), args.pop("model"), args.pop("op"), args.pop("y"), key=jax.random.key(0),
                      **args)


def test_y_far_outside_the_data_range_warns_and_bundled_models_refuse_a_preset(recwarn):
    op = Inpainting(jnp.ones((1, 4, 4, 1)))
    pixels = np.random.default_rng(0).integers(0, 256, (1, 4, 4, 3)).astype(np.float32)
    # start_step without x_init: an error raised after the checks, before anything is compiled
    with pytest.warns(UserWarning, match=r"far outside the model's data range \[-1, 1\]"):
        with pytest.raises(ValueError, match="start_step needs x_init"):
            invdiff.solve(DDNM(steps=2), IMAGE_PRIOR, op, pixels, key=jax.random.key(0), start_step=1)
    recwarn.clear()
    with pytest.raises(ValueError, match="start_step needs x_init"):
        invdiff.solve(DDNM(steps=2), IMAGE_PRIOR, op, pixels / 127.5 - 1, key=jax.random.key(0), start_step=1)
    assert not [w for w in recwarn if "data range" in str(w.message)]
    with pytest.raises(ValueError, match="drop preset"):
        invdiff.load_model("emoji64", preset="ffhq")


# ---------------------------------------------------------------------------------------
# 4. interrupting is safe


@pytest.fixture
def sigint_catchable():
    """SIGINT as in a terminal, here and in child processes, even when the test run is a shell
    script's background job (which starts with SIGINT ignored, and then invdiff rightly leaves
    it ignored; an ignored signal stays ignored across exec)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_finishes_the_batch_writes_it_and_says_what_is_left(model_dir, tmp_path, sigint_catchable,
                                                                  monkeypatch):
    import invdiff.images

    inputs = [rgb8(tmp_path / f"in{i}.png", seed=i) for i in range(3)]
    save_image = invdiff.images.save_image

    def ctrl_c_while_saving(path, image):  # the worst moment: in the middle of writing a result
        os.kill(os.getpid(), signal.SIGINT)
        return save_image(path, image)

    monkeypatch.setattr(invdiff.images, "save_image", ctrl_c_while_saving)
    with pytest.raises(Interrupted, match=r"wrote 1 of 3 .*in0\.png.*not restored: .*in1\.png, .*in2\.png$"):
        restore(inputs, "colorize", tmp_path / "out", steps=STEPS, label=0, model=model_dir, batch_size=1,
                progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["in0.png"]  # whole, no temporary file
    assert Image.open(tmp_path / "out" / "in0.png").size == (SIZE, SIZE)


def test_sigint_to_real_cli_runs_during_compilation_and_sampling(model_dir, tmp_path, sigint_catchable):
    """Real ``python -m invdiff.cli restore`` runs: one interrupted while XLA compiles (from an
    empty cache; its progress bar says when), one while sampling its second batch (the program
    comes from the compilation cache the tests above filled): exit 130, no crash, the batch in
    progress written whole, nothing else."""
    inputs = [rgb8(tmp_path / f"in{i}.png", seed=i) for i in range(3)]
    for moment in ("compiling", "sampling"):
        out = tmp_path / moment
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if moment == "compiling":
            env["INVDIFF_CACHE_DIR"] = str(tmp_path / "empty-cache")
        cmd = [sys.executable, "-m", "invdiff.cli", "restore", *inputs, "--operator", "colorize", "--label", "0",
               "--model", model_dir, "--batch-size", "1", "--out", out] + (
            ["--steps", "2"] if moment == "compiling" else ["--steps", STEPS, "--quiet"])
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        sink: list[bytes] = []
        read = lambda out=proc.stderr, sink=sink: sink.extend(iter(lambda: out.read1(256), b""))  # noqa: E731
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if moment == "compiling":
            deadline = time.monotonic() + 120
            while b"ddnm: compiling" not in b"".join(sink) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            proc.send_signal(signal.SIGINT)
        else:  # once the first result exists, the second batch is being sampled
            deadline = time.monotonic() + 120
            while not (out / "in0.png").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
        reader.join(timeout=10)
        err = b"".join(sink).decode(errors="replace").replace("\r", "\n")
        files = sorted(p.name for p in out.iterdir())
        assert rc == 130 and "Traceback" not in err, (moment, rc, err[-2000:])
        # the batch in progress, and only it, was finished; a signal that lands between two batches
        # (a heavily loaded machine) stops before the next one
        assert (files == ["in0.png"] if moment == "compiling" else files in (["in0.png"], ["in0.png", "in1.png"])), \
            (moment, files, err[-2000:])
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"invdiff restore: interrupted: wrote {len(files)} of 3 "), err[-2000:]
        for f in files:
            with Image.open(out / f) as im:
                im.load()


# ---------------------------------------------------------------------------------------
# 5. concurrent solves keep their own progress


def test_two_threads_solving_at_once_get_their_own_reports_without_recompiling():
    model = invdiff.FunctionModel(lambda x, t: 0.1 * x, schedule=SCHED)
    y = jnp.zeros((1, 1))
    invdiff.solve(DDIM(steps=6), model, FIRST, y, key=jax.random.key(0), progress=lambda n: None)
    before = trace_count()
    seen_a, seen_b = [], []
    a_running, b_done = threading.Event(), threading.Event()

    def report_a(n):  # A's first report holds A's walk until B has solved from start to end
        seen_a.append(n)
        if n == 1:
            a_running.set()
            b_done.wait(timeout=30)

    a = threading.Thread(target=lambda: invdiff.solve(DDIM(steps=6), model, FIRST, y, key=jax.random.key(1),
                                                      progress=report_a))
    a.start()
    assert a_running.wait(timeout=30)
    invdiff.solve(DDIM(steps=6), model, FIRST, y, key=jax.random.key(2), progress=seen_b.append)
    b_done.set()
    a.join(timeout=30)
    assert seen_a == list(range(1, 7)) and seen_b == list(range(1, 7))
    assert trace_count() == before  # the callbacks differ, the program is the same
