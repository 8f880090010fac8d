"""Hyperspectral cubes: ENVI and MATLAB (v5, v7.3) as (band, y, x), wavelengths and map grid kept."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
from rasterio.transform import from_origin

from medrs_diff import io
from medrs_diff.data import hyperspectral as H
from medrs_diff.errors import DataError

RNG = np.random.default_rng(6)


def test_envi_round_trip_keeps_grid_band_names_and_wavelengths(tmp_path, listing):
    cube = RNG.normal(size=(4, 5, 6)).astype(np.float32)
    g = io.Geometry("cube", crs="EPSG:32633", transform=from_origin(300_000.0, 4_000_000.0, 30.0, 30.0),
                    nodata=-9999.0, band_names=("b1", "b2", "b3", "b4"), wavelengths=(450.5, 550.0, 650.25, 850.0))
    out = io.write(tmp_path / "scene.hdr", cube, g)
    assert listing(tmp_path) == ["scene.hdr", "scene.img"]
    f = io.read(out)
    assert f.geometry.layout == ("band", "y", "x") and f.shape == (4, 5, 6)
    np.testing.assert_array_equal(f.data, cube)
    assert f.geometry.crs.to_epsg() == 32633 and f.geometry.transform == g.transform
    assert f.geometry.nodata == -9999.0 and f.geometry.band_names == g.band_names
    assert f.geometry.wavelengths == g.wavelengths and f.geometry.spacing == (30.0, 30.0)
    loaded = H.load_cube(out)  # the data layer uses the same reader
    np.testing.assert_array_equal(loaded.data, cube)
    assert loaded.geometry.wavelengths == g.wavelengths


def test_hand_written_envi_file_with_micrometre_wavelengths(tmp_path):
    cube = np.arange(2 * 3 * 4, dtype="<i2").reshape(2, 3, 4)  # BSQ: band after band
    cube.tofile(tmp_path / "raw")
    (tmp_path / "raw.hdr").write_text(
        "ENVI\nsamples = 4\nlines = 3\nbands = 2\nheader offset = 0\nfile type = ENVI Standard\n"
        "data type = 2\ninterleave = bsq\nbyte order = 0\nband names = {red, nir}\n"
        "wavelength units = Micrometers\nwavelength = {0.65, 0.86}\n")
    f = io.read(tmp_path / "raw.hdr")
    np.testing.assert_array_equal(f.data, cube)
    assert f.geometry.band_names == ("red", "nir") and f.geometry.wavelengths == pytest.approx((650.0, 860.0))
    assert f.geometry.crs is None and f.geometry.transform is None
    (tmp_path / "lonely.hdr").write_text("ENVI\n")
    with pytest.raises(DataError, match=r"lonely\.hdr: ENVI header has no data file beside it"):
        io.read(tmp_path / "lonely.hdr")


def _mat73(path, variables: dict) -> None:
    """A MATLAB v7.3 file: HDF5 with MATLAB's 512-byte header; arrays stored column-major (h5py sees .T)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in variables.items():
            f.create_dataset(k, data=np.asarray(v).T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def test_mat_v5_and_v73_give_the_same_band_first_cube(tmp_path):
    hwb = RNG.normal(size=(5, 6, 7)).astype(np.float32)  # (rows, cols, bands), Indian-Pines style
    scipy.io.savemat(tmp_path / "v5.mat", {"cube": hwb, "wavelength": np.linspace(400, 1000, 7)})
    _mat73(tmp_path / "v73.mat", {"cube": hwb, "wavelength": np.linspace(400, 1000, 7)[None]})
    v5, v73 = io.read(tmp_path / "v5.mat"), io.read(tmp_path / "v73.mat")
    assert v5.geometry.extra["matlab_version"] == "5" and v73.geometry.extra["matlab_version"] == "7.3"
    for f in (v5, v73):
        assert f.shape == (7, 5, 6) and f.geometry.layout == ("band", "y", "x")
        np.testing.assert_array_equal(f.data, np.moveaxis(hwb, -1, 0))
        assert f.geometry.wavelengths == pytest.approx(tuple(np.linspace(400, 1000, 7)))
    back = io.read(io.write(tmp_path / "copy.mat", v5.data, v5.geometry, inputs=[tmp_path / "v5.mat"]))
    np.testing.assert_array_equal(back.data, v5.data)
    assert back.geometry.wavelengths == v5.geometry.wavelengths


def test_mat_column_major_pixels_and_key_choice(tmp_path):
    rows, cols, bands = 3, 4, 2
    img = RNG.normal(size=(bands, rows, cols))
    y = img.reshape(bands, rows * cols, order="F")  # one column per pixel, MATLAB order
    scipy.io.savemat(tmp_path / "unmix.mat", {"Y": y, "nRow": rows, "nCol": cols, "M": np.ones((bands, 2))})
    f = io.read(tmp_path / "unmix.mat")
    assert f.geometry.extra["key"] == "Y" and f.geometry.extra["variables"]["nRow"] == rows
    np.testing.assert_array_equal(f.data, img)
    np.testing.assert_array_equal(io.read(tmp_path / "unmix.mat", key="Y", shape=(rows, cols)).data, img)
    with pytest.raises(DataError, match="no axis of 5 x 5 pixels"):
        io.read(tmp_path / "unmix.mat", key="Y", shape=(5, 5))
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.ones((4, 4, 3)), "b": np.ones((4, 4, 3))})
    with pytest.raises(DataError, match=r"two\.mat: holds 2 arrays .*`key=`"):
        io.read(tmp_path / "two.mat")
    with pytest.raises(DataError, match="has no variable 'c'"):
        io.read(tmp_path / "two.mat", key="c")


def test_real_jasper_ridge_and_samson_unfold_in_matlab_order(shared_data):
    folder = shared_data / "hyperspectral_unmixing"
    if not (folder / "jasper_ridge_r198.mat").exists():
        pytest.skip(f"{folder} absent")
    raw = scipy.io.loadmat(folder / "jasper_ridge_r198.mat")
    j = io.read(folder / "jasper_ridge_r198.mat")
    assert j.shape == (198, 100, 100) and j.data.dtype == np.uint16
    np.testing.assert_array_equal(j.data, raw["Y"].reshape(198, 100, 100, order="F"))  # as the README says
    assert j.geometry.extra["variables"]["maxValue"] == 5000
    a = io.read(folder / "jasper_ridge_r198.mat", key="A")
    np.testing.assert_allclose(a.data.sum(0), 1.0, atol=1e-9)
    # Samson: least-squares abundances of the unfolded cube line up with the image-shaped S_GT
    s = io.read(folder / "samson.mat")
    gt = io.read(folder / "samson.mat", key="S_GT").data  # (95, 95, 3) -> (3, 95, 95)
    endmembers = scipy.io.loadmat(folder / "samson.mat")["GT"].T  # (bands, 3)
    abund = np.linalg.lstsq(endmembers, s.data.reshape(156, -1), rcond=None)[0].reshape(3, 95, 95)
    corr = [np.corrcoef(abund[k].ravel(), gt[k].ravel())[0, 1] for k in range(3)]
    assert min(corr) > 0.85, corr
    cube = H.load_cube(folder / "jasper_ridge_r198.mat")
    assert cube.data.shape == (198, 100, 100) and cube.data.dtype == np.float32
