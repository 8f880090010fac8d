"""2D clinical images through MONAI's PIL reader: DRIVE layout, every format, RGB/grey, resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medrs_diff.data import clinical2d as C
from medrs_diff.data import keys as K
from medrs_diff.data.errors import DataError


@pytest.fixture(scope="session")
def drive(synth):
    return C.drive_records(synth["root"] / "drive", "training")


def test_drive_layout_is_found_and_loaded_at_native_resolution(drive, synth):
    assert len(drive) == 2 and drive[0][K.LABEL].endswith("21_manual1.gif")
    out = C.clinical2d_transforms()(drive[0])
    assert out[K.IMAGE].shape == (3, 64, 64) and out[K.LABEL].shape == out[K.MASK].shape == (1, 64, 64)
    assert set(torch.unique(out[K.LABEL]).tolist()) == {0.0, 1.0}
    # values and orientation match the file exactly (row/column order kept)
    raw = np.asarray(Image.open(drive[0][K.IMAGE]), dtype=np.float32)
    np.testing.assert_allclose(out[K.IMAGE].numpy(), np.moveaxis(raw, -1, 0) / 127.5 - 1, atol=1e-6)
    fov = np.asarray(Image.open(drive[0][K.MASK])) > 0
    np.testing.assert_array_equal(out[K.MASK][0].numpy() > 0, fov)
    # vessels are darker than the background inside the field of view
    img, ves, inside = out[K.IMAGE][0], out[K.LABEL][0] > 0, out[K.MASK][0] > 0
    assert float(img[ves & inside].mean()) < float(img[~ves & inside].mean())


@pytest.mark.parametrize("ext", [".jpg", ".tif", ".gif", ".png"])
def test_every_2d_format_reads(drive, tmp_path, ext):
    rgb = Image.open(drive[0][K.IMAGE]).convert("RGB")
    path = tmp_path / f"img{ext}"
    (rgb.convert("P") if ext == ".gif" else rgb).save(path)
    out = C.clinical2d_transforms(mask_keys=())({K.IMAGE: str(path)})
    assert out[K.IMAGE].shape == (3, 64, 64)
    ref = np.moveaxis(np.asarray(rgb, np.float32), -1, 0) / 127.5 - 1
    tol = {".png": 1e-6, ".tif": 1e-6, ".jpg": 0.1, ".gif": 0.2}[ext]
    assert float(np.abs(out[K.IMAGE].numpy() - ref).mean()) < tol


def test_grey_and_16_bit(tmp_path):
    a = (np.arange(40 * 30).reshape(40, 30) * 50).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "xray.png")
    out = C.clinical2d_transforms(mask_keys=(), channels="grey")({K.IMAGE: str(tmp_path / "xray.png")})
    assert out[K.IMAGE].shape == (1, 40, 30)
    np.testing.assert_allclose(out[K.IMAGE][0].numpy(), a / 65535 * 2 - 1, atol=1e-6)
    assert out[K.scaling_key(K.IMAGE)]["kind"] == "dn16"


def test_resize_keeps_masks_binary(drive):
    out = C.clinical2d_transforms(spatial_size=(40, 50), apply_fov=True)(drive[1])
    assert out[K.IMAGE].shape == (3, 40, 50) and out[K.LABEL].shape == (1, 40, 50)
    assert set(torch.unique(out[K.LABEL]).tolist()) <= {0.0, 1.0}
    assert set(torch.unique(out[K.MASK]).tolist()) == {0.0, 1.0}
    assert bool((out[K.IMAGE][:, out[K.MASK][0] == 0] == -1).all())  # outside the FOV


def test_mask_of_other_size_is_a_clear_error(drive, tmp_path):
    Image.fromarray(np.zeros((60, 64), np.uint8)).save(tmp_path / "small_mask.png")
    rec = dict(drive[0], label=str(tmp_path / "small_mask.png"))
    with pytest.raises(DataError, match=r"small_mask\.png: spatial shape \(60, 64\) differs from \(64, 64\)"):
        C.clinical2d_transforms()(rec)


def test_missing_mask_in_drive_layout(tmp_path, drive):
    from shutil import copytree

    root = tmp_path / "DRIVE"
    copytree(drive[0][K.IMAGE].rsplit("/images/", 1)[0], root / "training")
    (root / "training" / "mask" / "22_training_mask.gif").unlink()
    with pytest.raises(DataError, match=r"22_training\.png: has no field-of-view mask"):
        C.drive_records(root, "training")


def test_folder_records_and_dataset(drive, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    for i, r in enumerate(drive):
        Image.open(r[K.IMAGE]).save(tmp_path / "imgs" / f"ISIC_{i}.jpg")
        Image.open(r[K.LABEL]).save(tmp_path / "masks" / f"ISIC_{i}_segmentation.png")
    recs = C.folder_records(tmp_path / "imgs", {K.LABEL: tmp_path / "masks"}, {K.LABEL: "_segmentation"})
    ds = C.clinical2d_dataset(recs, C.clinical2d_transforms(mask_keys=(K.LABEL,)))
    assert len(ds) == 2 and ds[1][K.LABEL].shape == (1, 64, 64)
    (tmp_path / "masks" / "ISIC_1_segmentation.png").unlink()
    with pytest.raises(DataError, match=r"ISIC_1\.jpg: has no 'label' mask"):
        C.folder_records(tmp_path / "imgs", {K.LABEL: tmp_path / "masks"}, {K.LABEL: "_segmentation"})
