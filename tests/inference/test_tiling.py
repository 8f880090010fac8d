"""Tiled inference: identity returns the input, constants stay constant across tile borders, outputs keep
the input's grid, memory stays bounded (windowed reads), failures leave nothing behind."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from medrs_diff.data.readers import read_nifti_scaling
from medrs_diff.data.scaling import ct_window, digital_number
from medrs_diff.errors import DataError
from medrs_diff.inference import tiling as I
from medrs_diff.io.geotiff import read_geotiff, write_geotiff
from medrs_diff.io.nifti import write_nifti

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rasterio's own Affine `*`

BLENDS = ["gaussian", "cosine", "constant"]


def identity(x):
    return x


def constant(x):
    return torch.full((x.shape[0], 2, *x.shape[2:]), 0.37, dtype=x.dtype, device=x.device)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """100 x 90 px, 3-band uint8 scene with a nodata corner: 40 px tiles at 25 % overlap need 3 x 3 tiles."""
    d = tmp_path_factory.mktemp("scene")
    a = np.random.default_rng(0).integers(1, 256, (3, 100, 90)).astype(np.uint8)
    a[:, :6, :8] = 0
    path = write_geotiff(a, d / "scene.tif", crs="EPSG:32633", transform=from_origin(300_000, 5_000_000, 10, 10),
                         nodata=0, band_names=["red", "green", "blue"])
    return path, a


def test_blend_windows():
    for blend in BLENDS:
        w = I.blend_window((9, 12), blend)
        assert w.shape == (9, 12) and float(w.max()) == pytest.approx(1.0) and float(w.min()) >= 1e-3
        torch.testing.assert_close(w, w.flip(0).flip(1))
    assert float(I.blend_window((8,), "gaussian")[0]) < 0.01 < float(I.blend_window((8,), "cosine")[0])


@pytest.mark.parametrize("blend", BLENDS)
def test_volume_identity_and_constant_across_windows(blend):
    x = torch.randn(2, 37, 33, 29)
    y = I.infer_volume(identity, x, (16, 16, 16), overlap=0.25, blend=blend, batch=5)  # >= 3 x 3 x 3 windows
    torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
    c = I.infer_volume(constant, x, (16, 16, 16), overlap=0.25, blend=blend, batch=5)
    assert c.shape == (2, 37, 33, 29) and float((c - 0.37).abs().max()) < 1e-5


def test_volume_dict_outputs_2d_and_small_images():
    x = torch.randn(1, 1, 50, 47)
    out = I.infer_volume(lambda t: {"prediction": t * 2, "uncertainty": t.abs()}, x, (16, 16), 0.5, "cosine", 8)
    torch.testing.assert_close(out["prediction"], 2 * x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["uncertainty"], x.abs(), atol=1e-5, rtol=1e-5)
    small = torch.randn(1, 10, 12)  # smaller than the roi: padded, cropped back
    torch.testing.assert_close(I.infer_volume(identity, small, (16, 16)), small, atol=1e-6, rtol=1e-6)
    with pytest.raises(DataError, match="NaN"):
        I.infer_volume(identity, torch.full((1, 8, 8), float("nan")), (4, 4))


def test_nifti_identity_keeps_grid_header_and_records_scaling(tmp_path):
    aff = np.array([[-1.5, 0, 0, 90.0], [0, -1.5, 0, 120.0], [0, 0, 2.0, -60.0], [0, 0, 0, 1]])  # LPS
    vol = np.random.default_rng(1).uniform(-300, 300, (30, 34, 20)).astype(np.float32)
    src = write_nifti(vol, tmp_path / "ct.nii.gz", aff)
    paths = I.infer_nifti(identity, src, tmp_path / "out.nii.gz", (16, 16, 16), in_scaling=ct_window(),
                          out_scaling=ct_window(), progress=False)
    out = nib.load(paths["prediction"])
    ref = nib.load(src)
    np.testing.assert_array_equal(out.affine, ref.affine)
    for f in ("dim", "pixdim", "qform_code", "sform_code", "srow_x", "quatern_b"):
        np.testing.assert_array_equal(out.header[f], ref.header[f])
    np.testing.assert_allclose(out.get_fdata(), np.clip(vol, -160, 240), atol=1e-3)
    assert read_nifti_scaling(paths["prediction"]) == ct_window()


def test_nifti_predictor_sees_ras_and_output_returns_to_file_order(tmp_path):
    aff = np.diag([-2.0, -2.0, 2.0, 1.0])  # LPS storage
    vol = np.zeros((6, 5, 4), np.float32)
    src = write_nifti(vol, tmp_path / "lps.nii.gz", aff)

    def ramp_along_first_axis(x):  # value = voxel index along the predictor's first axis (R in RAS)
        i = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
        return x + i

    paths = I.infer_nifti(ramp_along_first_axis, src, tmp_path / "o.nii.gz", (6, 5, 4), progress=False)
    out = nib.load(paths["prediction"]).get_fdata()
    np.testing.assert_allclose(out[:, 0, 0], [5, 4, 3, 2, 1, 0])  # file axis 0 runs towards L: reversed


def test_nifti_multichannel_and_uncertainty_output(tmp_path):
    vol = np.random.default_rng(2).normal(size=(20, 18, 17, 2)).astype(np.float32)
    src = write_nifti(vol, tmp_path / "mm.nii.gz", np.eye(4))

    def predictor(x):  # the main output need not come first
        return {"uncertainty": x.std(dim=1, keepdim=True), "prediction": x[:, :1] + x[:, 1:]}

    paths = I.infer_nifti(predictor, src, tmp_path / "seg.nii.gz", (8, 8, 8), expected_channels=2, progress=False)
    assert paths["uncertainty"].name == "seg_uncertainty.nii.gz"
    pred, unc = nib.load(paths["prediction"]), nib.load(paths["uncertainty"])
    assert pred.shape == unc.shape == (20, 18, 17)
    np.testing.assert_array_equal(unc.affine, pred.affine)
    np.testing.assert_allclose(pred.get_fdata(), vol.sum(-1), atol=1e-4)
    with pytest.raises(DataError, match=r"mm\.nii\.gz: has 2 channel\(s\) but the model expects 4"):
        I.infer_nifti(predictor, src, tmp_path / "x.nii.gz", (8, 8, 8), expected_channels=4, progress=False)


def test_nifti_bad_inputs_leave_nothing(tmp_path, listing):
    src = write_nifti(np.full((8, 8, 8), np.nan, np.float32), tmp_path / "nan.nii.gz", np.eye(4))
    with pytest.raises(DataError, match=r"nan\.nii\.gz: holds no finite voxel"):
        I.infer_nifti(identity, src, tmp_path / "out.nii.gz", (4, 4, 4), progress=False)
    ok = write_nifti(np.ones((8, 8, 8), np.float32), tmp_path / "ok.nii.gz", np.eye(4))
    with pytest.raises(DataError, match="same file as an input"):
        I.infer_nifti(identity, ok, ok, (4, 4, 4), progress=False)
    with pytest.raises(DataError, match=r"missing\.nii\.gz: NIfTI file does not exist"):
        I.infer_nifti(identity, tmp_path / "missing.nii.gz", tmp_path / "o.nii.gz", (4, 4, 4), progress=False)
    assert listing(tmp_path) == ["nan.nii.gz", "ok.nii.gz"]


@pytest.mark.parametrize("blend", BLENDS)
def test_geotiff_identity_over_3x3_tiles_keeps_geometry(scene, tmp_path, blend):
    path, a = scene
    paths = I.infer_geotiff(identity, path, tmp_path / "out.tif", tile=40, overlap=0.25, blend=blend, batch=4,
                            progress=False)
    out, src = read_geotiff(paths["prediction"]), read_geotiff(path)
    assert (out.crs, out.transform, out.nodata) == (src.crs, src.transform, src.nodata)
    assert out.data.shape == a.shape and out.data.dtype == np.float32
    np.testing.assert_allclose(out.data, a.astype(np.float32), rtol=1e-6, atol=1e-4)


def test_geotiff_constant_model_is_constant_across_tile_borders(scene, tmp_path):
    path, a = scene
    paths = I.infer_geotiff(constant, path, tmp_path / "c.tif", tile=40, overlap=0.25, blend="gaussian", batch=3,
                            out_nodata=-1.0, progress=False)
    out = read_geotiff(paths["prediction"]).data
    valid = (a != 0).all(0)
    assert out.shape == (2, 100, 90)
    assert float(np.abs(out[:, valid] - 0.37).max()) < 1e-5
    assert (out[:, ~valid] == -1.0).all()  # nodata in the input stays nodata in the output


def test_geotiff_scaling_band_selection_and_extra_outputs(scene, tmp_path):
    path, a = scene
    dn = digital_number(8)

    def predictor(x):
        assert float(x.min()) >= -1 and float(x.max()) <= 1  # model space
        return {"uncertainty": x[:, :1].abs(), "prediction": x}

    paths = I.infer_geotiff(predictor, path, tmp_path / "sr.tif", tile=32, overlap=0.5, bands=[3, 1],
                            in_scaling=dn, out_scaling=dn, out_band_names=["blue", "red"],
                            extra_outputs={"uncertainty": tmp_path / "unc.tif"}, progress=False)
    assert paths["uncertainty"] == tmp_path / "unc.tif"
    pred, unc = read_geotiff(paths["prediction"]), read_geotiff(paths["uncertainty"])
    assert pred.band_names == ("blue", "red") and unc.data.shape == (1, 100, 90)
    assert (unc.crs, unc.transform) == (pred.crs, pred.transform)
    np.testing.assert_allclose(pred.data, a[[2, 0]].astype(np.float32), atol=1e-3)
    assert pred.tags["MEDRS_SCALING"] == dn.to_json() and "MEDRS_INPUT_SCALING" in pred.tags


def test_geotiff_scene_smaller_than_tile(scene, tmp_path):
    path, a = scene
    paths = I.infer_geotiff(identity, path, tmp_path / "o.tif", tile=128, progress=False)
    np.testing.assert_allclose(read_geotiff(paths["prediction"]).data, a, atol=1e-4)


def test_geotiff_reads_are_windowed(tmp_path, monkeypatch):
    big = np.random.default_rng(3).normal(size=(1, 700, 650)).astype(np.float32)
    path = write_geotiff(big, tmp_path / "big.tif", crs="EPSG:32633", transform=from_origin(1e5, 5e6, 1, 1))
    shapes = []
    orig = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        shapes.append(out.shape[-2:])
        return out

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    paths = I.infer_geotiff(identity, path, tmp_path / "o.tif", tile=128, overlap=0.25, batch=8, progress=False)
    monkeypatch.undo()
    assert max(h * w for h, w in shapes) <= 512 * 512 < 700 * 650  # never the whole scene at once
    np.testing.assert_allclose(read_geotiff(paths["prediction"]).data, big, atol=1e-5)


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_geotiff_bad_inputs_name_the_file_and_leave_nothing(scene, tmp_path, listing):
    path, _ = scene
    before = _digest(path)
    with pytest.raises(DataError, match="same file as an input"):
        I.infer_geotiff(identity, path, path, tile=40, progress=False)
    with pytest.raises(DataError, match=r"scene\.tif: has 3 band\(s\) but bands \[4\] were requested"):
        I.infer_geotiff(identity, path, tmp_path / "o.tif", bands=[4], progress=False)
    with pytest.raises(DataError, match=r"scene\.tif: gives 3 band\(s\) but 4 are expected"):
        I.infer_geotiff(identity, path, tmp_path / "o.tif", expected_bands=4, progress=False)
    empty = write_geotiff(np.zeros((1, 50, 50), np.uint8), tmp_path / "empty.tif", crs="EPSG:32633",
                          transform=from_origin(1e5, 5e6, 1, 1), nodata=0)
    with pytest.raises(DataError, match=r"empty\.tif: holds only nodata"):
        I.infer_geotiff(identity, empty, tmp_path / "o.tif", progress=False)
    calls = []

    def crashes_on_third_batch(x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory")
        return x

    with pytest.raises(RuntimeError, match="out of memory"):
        I.infer_geotiff(crashes_on_third_batch, path, tmp_path / "o.tif", tile=40, batch=1, progress=False)
    with pytest.raises(ValueError, match="predictor output 'prediction' has shape"):
        I.infer_geotiff(lambda x: x[..., :-1], path, tmp_path / "o.tif", tile=40, progress=False)
    assert listing(tmp_path) == ["empty.tif"]
    assert _digest(path) == before


def test_geotiff_super_resolution_output_covers_the_same_ground(synth, tmp_path):
    rec = synth["sr"][0]  # LR 8 x 8 at 40 m, HR 32 x 32 at 10 m, same corner

    def upsample(x):
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")

    paths = I.infer_geotiff(upsample, rec["cond"], tmp_path / "sr.tif", tile=4, overlap=0.5, scale=4,
                            progress=False)
    out, hr, lr = (read_geotiff(p) for p in (paths["prediction"], rec["image"], rec["cond"]))
    assert out.data.shape == hr.data.shape and (out.crs, out.transform) == (hr.crs, hr.transform)
    np.testing.assert_allclose(out.data, np.repeat(np.repeat(lr.data, 4, axis=1), 4, axis=2), atol=1e-3)
    with pytest.raises(ValueError, match=r"expected \(1, C, 16, 16\) \(scale 4\)"):
        I.infer_geotiff(identity, rec["cond"], tmp_path / "bad.tif", tile=4, scale=4, batch=1, progress=False)


def test_nifti_super_resolution_affine_keeps_the_field_of_view(tmp_path):
    aff = np.array([[-2.0, 0, 0, 50], [0, -2, 0, 60], [0, 0, 3, -10], [0, 0, 0, 1]])
    src = write_nifti(np.random.default_rng(4).random((10, 12, 8), np.float32), tmp_path / "lr.nii.gz", aff)

    def upsample(x):
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    out = nib.load(I.infer_nifti(upsample, src, tmp_path / "hr.nii.gz", (8, 8, 8), progress=False)["prediction"])
    assert out.shape == (20, 24, 16) and out.header.get_zooms() == (1.0, 1.0, 1.5)
    for lo, hi in (([-0.5] * 3, [-0.5] * 3), ([9.5, 11.5, 7.5], [19.5, 23.5, 15.5])):  # outer voxel edges
        np.testing.assert_allclose(out.affine @ [*hi, 1], aff @ [*lo, 1])
    np.testing.assert_allclose(out.get_fdata()[::2, ::2, ::2], nib.load(src).get_fdata(), atol=1e-6)


def test_oriented_shape_follows_the_axis_permutation_to_ras():
    a = np.array([[0, 0, 1.5, 0], [1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])  # stored axes: A, S, R
    assert I.oriented_shape(a, (10, 20, 30)) == (30, 10, 20)  # the model sees R, A, S
    assert I.oriented_shape(np.diag([-1.0, -1.0, 1.0, 1.0]), (10, 20, 30)) == (10, 20, 30)  # flips only
    assert I.oriented_shape(a, (10, 20)) == (10, 20) and I.oriented_shape(a, (10, 20, 30), None) == (10, 20, 30)
    vol = np.zeros((10, 20, 30), np.float32)
    fwd = I.ornt_transform(I.io_orientation(a), I.axcodes2ornt("RAS"))
    assert I.apply_orientation(vol, fwd).shape == I.oriented_shape(a, vol.shape)  # what infer_nifti feeds
