"""``invdiff restore`` and the command line's error contract: one clean line, exit status 2,
nothing half-written."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import invdiff
from invdiff.cli import main
from invdiff.images import to_model, to_uint8
from invdiff.nets.adm import ADMConfig, ADMModel
from invdiff.nets.checkpoint import load_model, save_model
from invdiff.restore import restore
from operators import Downsampling
from solvers import DDNM

SIZE = 16
TINY = ADMConfig.from_flags(image_size=SIZE, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                            attention_resolutions="8", learn_sigma=True, class_cond=True, num_classes=3,
                            num_head_channels=32, diffusion_steps=100)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("restore")
    model_dir = save_model(ADMModel.init_random(TINY, jax.random.key(0)), d / "tiny")
    rng = np.random.default_rng(0)
    imgs = {}
    for name in ("a.png", "b.jpg"):
        arr = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / name, quality=95)
        imgs[name] = np.asarray(Image.open(d / name).convert("RGB"))
    Image.fromarray(rng.integers(0, 256, (SIZE // 4, SIZE // 4, 3), dtype=np.uint8)).save(d / "low.png")
    mask = np.full((SIZE, SIZE), 255, np.uint8)
    mask[4:12, 4:12] = 0
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.full((SIZE + 1, SIZE), 255, np.uint8)).save(d / "mask_wrong.png")
    (d / "broken.png").write_bytes(b"this is not a png")
    return d, model_dir, imgs, mask > 0


def test_inpaint_keeps_known_pixels_and_formats(files, tmp_path):
    d, model_dir, imgs, known = files
    seen = []
    out = restore([d / "a.png", d / "b.jpg"], "inpaint", tmp_path / "out", mask=d / "mask.png", steps=4,
                  label=1, model=model_dir, progress=lambda k, total: seen.append((k, total)))
    assert [p.name for p in out] == ["a.png", "b.jpg"]
    assert seen[-1] == (4, 4)
    a = np.asarray(Image.open(out[0]))
    assert a.shape == (SIZE, SIZE, 3)
    # DDNM replaces the known pixels by the measurement: PNG round trip within one grey level
    assert np.abs(a[known].astype(int) - imgs["a.png"][known].astype(int)).max() <= 1
    assert Image.open(out[1]).format == "JPEG"


def test_sr_takes_a_low_resolution_measurement_and_is_consistent(files, tmp_path):
    d, model_dir, _, _ = files
    low = np.asarray(Image.open(d / "low.png").convert("RGB")).astype(np.float64)
    (out,) = restore([d / "low.png"], "sr", tmp_path, factor=4, steps=3, label=0, model=model_dir,
                     progress=False, fmt="png", save_measurement=True)
    # the low-resolution input is y itself: the file is DDNM's solve of y = low (in [-1, 1] units)
    net = load_model(model_dir)
    sol = invdiff.solve(DDNM(steps=3), net, Downsampling(4), jnp.asarray(to_model(low[None])),
                        key=jax.random.key(0), label=jnp.zeros(1, jnp.int32))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), to_uint8(np.asarray(sol.x[0])))
    assert np.abs(np.asarray(Downsampling(4).A(sol.x)[0]) - to_model(low)).max() < 1e-5
    meas = np.asarray(Image.open(tmp_path / "low.measurement.png")).astype(np.float64)
    np.testing.assert_allclose(meas, np.kron(low, np.ones((4, 4, 1))), atol=1)  # A⁺y: the input, upsampled


def test_batch_size_chunks_give_the_same_images(files, tmp_path):
    d, model_dir, _, _ = files
    kw = dict(mask_type="box", steps=3, label=2, model=model_dir, progress=False, solver="ilvr")
    whole = restore([d / "a.png", d / "b.jpg"], "inpaint", tmp_path / "whole", **kw)
    parts = restore([d / "a.png", d / "b.jpg"], "inpaint", tmp_path / "parts", batch_size=1, **kw)
    assert np.array_equal(np.asarray(Image.open(whole[0])), np.asarray(Image.open(parts[0])))


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_any_size_comes_back_at_its_size_with_the_known_pixels_kept(files, tmp_path):
    """A larger input is tiled, a smaller one padded (each with its own mask); the results have
    the inputs' sizes and DDNM keeps every known pixel within one grey level."""
    d, model_dir, _, _ = files
    rng = np.random.default_rng(1)
    for name, (h, w) in (("wide.png", (SIZE + 4, 2 * SIZE - 4)), ("small.png", (SIZE - 4, SIZE - 6))):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        known = rng.random((h, w)) < 0.5
        Image.fromarray(img).save(tmp_path / name)
        Image.fromarray((known * 255).astype(np.uint8)).save(tmp_path / f"mask_{name}")
        (out,) = restore([tmp_path / name], "inpaint", tmp_path / "out", mask=tmp_path / f"mask_{name}", steps=2,
                         label=0, model=model_dir, progress=False)
        res = np.asarray(Image.open(out))
        assert res.shape == (h, w, 3)
        assert np.abs(res[known].astype(int) - img[known].astype(int)).max() <= 1


@pytest.mark.parametrize("extra,match", [
    (["BROKEN", "--operator", "colorize", "--label", "0"], "cannot read"),
    (["MISSING", "--operator", "colorize", "--label", "0"], "no image at"),
    (["A", "--operator", "inpaint", "--mask", "MASK_WRONG", "--label", "0"], "mask"),
    (["A", "--operator", "inpaint", "--label", "0"], "--mask-type"),
    (["A", "--operator", "colorize", "--solver", "nope", "--label", "0"], "ddnm"),
    (["A", "--operator", "colorize"], "--label"),
    (["A", "--operator", "colorize", "--label", "7"], "class id"),
    (["A", "--operator", "sr", "--factor", "3", "--label", "0"], "factor"),
    (["A", "--operator", "colorize", "--label", "0", "--sigma-y", "-1"], "sigma-y"),
    (["A", "--operator", "colorize", "--label", "0", "--tile", "0"], "--tile"),
])
def test_restore_errors_are_one_clean_line(files, tmp_path, capsys, extra, match):
    d, model_dir, _, _ = files
    names = {"BROKEN": d / "broken.png", "MISSING": d / "missing.png", "A": d / "a.png",
             "MASK_WRONG": d / "mask_wrong.png"}
    args = ["restore"] + [str(names.get(a, a)) for a in extra] + ["--model", str(model_dir), "--steps", "2",
                                                                  "--out", str(tmp_path / "o"), "--quiet"]
    code, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("invdiff restore: error:") and match in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unwritable_output_directory(files, tmp_path, capsys):
    d, model_dir, _, _ = files
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        code, err = run_cli(["restore", str(d / "a.png"), "--operator", "colorize", "--label", "0", "--model",
                             str(model_dir), "--out", str(out), "--quiet"], capsys)
        assert code == 2 and "output directory" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "x"


def test_inputs_are_never_overwritten(files, tmp_path, capsys):
    d, model_dir, _, _ = files
    src = tmp_path / "photo.png"
    src.write_bytes((d / "a.png").read_bytes())
    code, err = run_cli(["restore", str(src), "--operator", "colorize", "--label", "0", "--model", str(model_dir),
                         "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 2 and "overwrite an input" in err
    assert src.read_bytes() == (d / "a.png").read_bytes()


def test_a_failed_write_leaves_nothing_half_written(files, tmp_path, monkeypatch):
    d, model_dir, _, _ = files
    import PIL.Image

    real_save = PIL.Image.Image.save

    def crash_midway(self, fp, *a, **k):
        real_save(self, fp, *a, **k)
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        restore([d / "a.png"], "colorize", tmp_path / "o", steps=2, label=0, model=model_dir, progress=False)
    assert list((tmp_path / "o").iterdir()) == []
