"""Benchmark data: folders and .npz files, centre crops, a stable order, labels, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from invdiff.bench.data import center_crop, open_images


def _save(path, h, w, seed, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format=fmt)
    return rgb


def _guided_diffusion_center_crop_arr(pil_image, image_size):
    """guided-diffusion's improved_diffusion/image_datasets.py center_crop_arr, verbatim in effect."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


@pytest.mark.parametrize("h,w", [(100, 70), (70, 100), (40, 40), (20, 50)])
def test_center_crop_is_the_adm_preprocessing(h, w):
    im = Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(center_crop(im, (32, 32))), _guided_diffusion_center_crop_arr(im, 32))


def test_a_folder_in_a_stable_order_at_the_models_size(tmp_path):
    _save(tmp_path / "b.png", 40, 60, 0)
    _save(tmp_path / "a.JPG", 64, 48, 1, "JPEG")
    _save(tmp_path / "sub" / "c.png", 16, 16, 2)
    (tmp_path / "notes.txt").write_text("not an image")
    images = open_images(tmp_path).at_size((16, 16, 3))
    assert images.ids == ("a.JPG", "b.png", "sub/c.png") and images.labels is None  # not all in class folders
    x = images.read([2, 0])
    assert x.shape == (2, 16, 16, 3) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    c = np.asarray(Image.open(tmp_path / "sub" / "c.png"), np.float32) / 127.5 - 1
    np.testing.assert_allclose(x[0], c)  # already the model's size: read as is
    assert images.take(2).ids == ("a.JPG", "b.png")
    with pytest.raises(ValueError, match="at most 3"):
        images.take(4)


def test_class_subfolders_and_a_labels_csv(tmp_path):
    for cls, n in (("n02", 2), ("n01", 1)):
        for i in range(n):
            _save(tmp_path / cls / f"img{i}.png", 8, 8, i)
    images = open_images(tmp_path)
    assert images.ids == ("n01/img0.png", "n02/img0.png", "n02/img1.png")
    assert images.labels.tolist() == [0, 1, 1] and "class sub-folders" in images.label_source
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nn01/img0.png,7\nimg1.png,5\nn02/img0.png,3\nother.png,1\n")
    assert open_images(tmp_path, labels=csv).labels.tolist() == [7, 3, 5]  # by path, or by a unique name
    csv.write_text("file,label\nn01/img0.png,7\n")
    with pytest.raises(ValueError, match="no label for n02/img0.png, n02/img1.png"):
        open_images(tmp_path, labels=csv)
    csv.write_text("name,class\nn01/img0.png,7\n")
    with pytest.raises(ValueError, match="header 'file,label'"):
        open_images(tmp_path, labels=csv)
    csv.write_text("file,label\nn01/img0.png,cat\n")
    with pytest.raises(ValueError, match="line 2.*'cat' is not an integer"):
        open_images(tmp_path, labels=csv)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="no png/jpg/jpeg images in"):
        open_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        open_images(tmp_path / "missing")
    _save(tmp_path / "good.png", 8, 8, 0)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images = open_images(tmp_path).at_size((8, 8, 3))
    with pytest.raises(ValueError, match="cannot read .*broken.png"):
        images.check()


def test_npz_files_and_arrays(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 12, 20, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=rgb, labels=np.array([2, 0, 1]), names=np.array(["x", "y", "z"]))
    images = open_images(tmp_path / "d.npz")
    assert images.ids == ("x", "y", "z") and images.labels.tolist() == [2, 0, 1] and images.shape == (12, 20, 3)
    np.testing.assert_allclose(images.read([1])[0], rgb[1] / 127.5 - 1, atol=1e-6)
    small = images.at_size((8, 8, 3)).read([0])[0]  # uint8 arrays are centre-cropped like files
    np.testing.assert_allclose(small, center_crop(Image.fromarray(rgb[0]), (8, 8)) / np.float32(127.5) - 1, atol=1e-6)
    with pytest.raises(ValueError, match="float arrays are not resized"):
        open_images(rgb / 127.5 - 1).at_size((8, 8, 3)).read([0])
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        open_images(rgb.astype(np.float32))
    np.savez(tmp_path / "two.npz", a=rgb, b=rgb)
    with pytest.raises(ValueError, match="no 'images' array"):
        open_images(tmp_path / "two.npz")
    assert open_images(None).source == "bundled emoji64 validation images"
