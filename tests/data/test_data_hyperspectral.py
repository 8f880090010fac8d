"""Hyperspectral cubes from .npy / .mat / GeoTIFF and spatially disjoint patch splits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from medrs_diff.data import hyperspectral as H
from medrs_diff.data import keys as K
from medrs_diff.data.errors import DataError


@pytest.mark.parametrize("fmt", ["npy", "mat", "tif"])
def test_cube_formats_give_the_same_bands_first_cube(synth, fmt):
    rec = synth["hsi"][fmt]
    cube = H.load_cube(rec[K.IMAGE], rec[K.LABEL])
    assert cube.data.shape == (16, 40, 40) and cube.labels.shape == (40, 40)
    ref = H.load_cube(synth["hsi"]["npy"][K.IMAGE], synth["hsi"]["npy"][K.LABEL])
    np.testing.assert_array_equal(cube.data, ref.data)
    np.testing.assert_array_equal(cube.labels, ref.labels)


def test_pixels_are_mixtures_dominated_by_their_class_endmember(synth):
    rec = synth["hsi"]["npy"]
    cube = H.load_cube(rec[K.IMAGE], rec[K.LABEL])
    em = rec["endmembers"]
    for c in range(1, em.shape[0] + 1):
        spectra = cube.data[:, cube.labels == c].T
        if len(spectra) == 0:
            continue
        err = np.abs(spectra[:, None, :] - em[None]).mean(-1)  # distance to each endmember
        assert np.mean(err.argmin(1) == c - 1) > 0.95


def test_disjoint_split_never_shares_a_pixel_between_train_and_test_patches():
    labels = np.random.default_rng(0).integers(1, 4, (60, 70))
    p = 7
    train, test = H.disjoint_split(labels, p, test_fraction=0.5, block_size=15, seed=1)
    assert train.sum() > 0 and test.sum() > 0 and not (train & test).any()
    foot_train = np.zeros_like(train)
    foot_test = np.zeros_like(test)
    r = p // 2
    for mask, foot in ((train, foot_train), (test, foot_test)):
        for y, x in np.argwhere(mask):
            foot[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
    assert not (foot_train & foot_test).any()


def test_patch_dataset_and_split_on_synthetic_cube(synth):
    rec = synth["hsi"]["npy"]
    cube = H.load_cube(rec[K.IMAGE], rec[K.LABEL])
    train, test = H.disjoint_split(cube.labels, 5, block_size=10, seed=0)
    ds = H.HyperspectralPatches(cube, train, 5)
    item = ds[0]
    assert len(ds) == int((train & (cube.labels > 0)).sum())
    assert item[K.IMAGE].shape == (16, 5, 5)
    y, x = item["center"]
    assert item[K.LABEL] == cube.labels[y, x] - 1
    np.testing.assert_allclose(item[K.IMAGE][:, 2, 2].numpy(), ds.scaling.forward(cube.data[:, y, x][:, None])[:, 0])


def test_real_multispectral_npy_time_series(shared_data):
    path = shared_data / "sentinel2_eolearn" / "REFERENCE_SCENES.npy"
    if not path.exists():
        pytest.skip(f"{path} absent")
    with pytest.raises(DataError, match="4-D .* pass `frame=`"):
        H.load_cube(path)
    cube = H.load_cube(path, frame=3)
    assert cube.data.shape == (13, 101, 100) and np.isfinite(cube.data).all()
    assert 0 < float(np.median(cube.data)) < 1  # TOA reflectance


def test_bad_hyperspectral_inputs(synth, tmp_path):
    rec = synth["hsi"]["npy"]
    np.save(tmp_path / "small_labels.npy", np.ones((30, 40), np.uint8))
    with pytest.raises(DataError, match=r"small_labels\.npy: label map \(30, 40\) differs"):
        H.load_cube(rec[K.IMAGE], tmp_path / "small_labels.npy")
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.ones((4, 4, 3)), "b": np.ones((4, 4, 3))})
    with pytest.raises(DataError, match=r"two\.mat: holds 2 arrays"):
        H.load_cube(tmp_path / "two.mat")
    np.save(tmp_path / "nan.npy", np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(DataError, match=r"nan\.npy: holds no finite value"):
        H.load_cube(tmp_path / "nan.npy")
    cube = H.load_cube(rec[K.IMAGE], rec[K.LABEL])
    with pytest.raises(DataError, match=r"patch 41 is larger than the image 40x40"):
        H.HyperspectralPatches(cube, cube.labels > 0, 41)
    with pytest.raises(DataError, match="must be odd"):
        H.disjoint_split(cube.labels, 4)


def test_load_cube_refuses_dead_bands_and_unsorted_wavelengths(tmp_path):
    from rasterio.transform import from_origin

    from medrs_diff import io

    cube = np.random.default_rng(0).random((4, 6, 5)).astype(np.float32)
    cube[2] = np.nan
    np.save(tmp_path / "dead.npy", np.moveaxis(cube, 0, -1))
    with pytest.raises(DataError, match=r"dead\.npy: 1 of 4 bands hold no finite value \(bands 2, 0-based\)"):
        H.load_cube(tmp_path / "dead.npy")
    cube[2] = 0.5
    cube[:, 0, 0] = np.nan  # a nodata pixel is the caller's to mask, not an error
    np.save(tmp_path / "ok.npy", np.moveaxis(cube, 0, -1))
    assert H.load_cube(tmp_path / "ok.npy").data.shape == (4, 6, 5)
    g = io.Geometry("cube", crs="EPSG:32633", transform=from_origin(300_000.0, 4_000_000.0, 30.0, 30.0),
                    wavelengths=(450.0, 650.0, 550.0, 850.0))
    io.write(tmp_path / "wl.hdr", np.nan_to_num(cube), g)
    with pytest.raises(DataError, match=r"wavelengths are not strictly increasing \(band 1: 650 nm, band 2: 550 nm\)"):
        H.load_cube(tmp_path / "wl.hdr")
