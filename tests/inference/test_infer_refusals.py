"""`infer` refuses bad inputs before any compute (issue 11): NaN / Inf voxels (with `--nan-policy fill|mask`),
numeric arguments, output suffixes and folders, volume vs image mismatches, leftover temporary files and
`--device cuda` without a GPU. Each refusal is one line, exit 2, no window run and nothing written."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from medrs_diff import io
from medrs_diff.cli import main
from medrs_diff.errors import DataError
from medrs_diff.inference import Predictor
from medrs_diff.io.atomic import TMP_PREFIX, _host_tag, temp_path_for
from medrs_diff.methods import SegDiff, SRDiff
from medrs_diff.train.checkpoint import method_config

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]

TINY = dict(channels=[8, 8], attention_levels=[False, False], num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, rrdb_features=8, rrdb_growth=4, timesteps=10)
FAST = ["--steps", "1", "--n-samples", "1", "--device", "cpu", "--no-progress"]


def _checkpoint(method, path, scaling, patch_size=None):
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": {"scaling": scaling, "patch_size": patch_size}}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny checkpoints: 2-D seg (1 and 3 channels), 3-D seg, x2 SRDiff on 3 bands."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    return {
        "seg2d": _checkpoint(SegDiff(spatial_dims=2, rrdb_blocks=1, **TINY), d / "seg2d.ckpt", "zscore"),
        "seg2d_rgb": _checkpoint(SegDiff(in_channels=3, spatial_dims=2, rrdb_blocks=1, **TINY), d / "rgb.ckpt",
                                 "zscore"),
        "seg3d": _checkpoint(SegDiff(spatial_dims=3, rrdb_blocks=1, **TINY), d / "seg3d.ckpt", "zscore", [16] * 3),
        "sr": _checkpoint(SRDiff(in_channels=3, scale=2, rrdb_blocks=2, pretrain_steps=0, **TINY), d / "sr.ckpt",
                          "reflectance", 16),
    }


@pytest.fixture
def windows(monkeypatch):
    """Counts the windows the methods run (a refusal must come before the first)."""
    calls = []
    for cls in (SegDiff, SRDiff):
        predict = cls.predict

        def spy(self, batch, _predict=predict, **kw):
            calls.append(1)
            return _predict(self, batch, **kw)

        monkeypatch.setattr(cls, "predict", spy)
    return calls


def _infer(capsys, ckpt, src, out, *extra):
    """`medrs-diff infer` in process: (exit code, stderr lines)."""
    rc = main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), *FAST, *map(str, extra)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def _geotiff(path, data, nodata=None):
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name,
                       crs="EPSG:32633", transform=from_origin(300_000, 5_000_000, 20, 20), nodata=nodata) as dst:
        dst.write(data)
    return path


def _volume(seed=0, shape=(16, 16, 16)):
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _scene(seed=0, shape=(3, 16, 16)):
    return np.random.default_rng(seed).uniform(0.05, 0.4, shape).astype(np.float32) * 1e4


# -- row 1: NaN / Inf voxels -----------------------------------------------------------------------------

#: non-finite positions planted in each input (one NaN band of a pixel counts once).
BAD_VOXELS = [(1, 2, 3), (4, 4, 4), (7, 0, 9), (15, 15, 15), (0, 9, 2)]
BAD_PIXELS = [(1, 2), (4, 4), (7, 0), (15, 15), (0, 9)]


def _plant(a, positions, channel_axis=None):
    a = a.copy()
    for j, pos in enumerate(positions):
        value = np.inf if j % 2 else np.nan
        if channel_axis is None:
            a[pos] = value
        else:
            a[(j % a.shape[0], *pos)] = value  # one band of the pixel only
    return a


def _nan_input(kind, folder):
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "nifti":
        return "seg3d", _nifti(folder / "ct.nii.gz", _plant(_volume(), BAD_VOXELS)), "voxel", 16 ** 3
    if kind == "geotiff":  # a float scene without a nodata value: NaN is not declared
        return "sr", _geotiff(folder / "s2.tif", _plant(_scene(), BAD_PIXELS, channel_axis=0)), "pixel", 256
    path = folder / "fundus.npy"
    np.save(path, _plant(_volume(shape=(16, 16)), BAD_PIXELS))
    return "seg2d", path, "pixel", 256


@pytest.mark.parametrize("kind", ["nifti", "geotiff", "npy"])
def test_nonfinite_input_is_refused_by_default_with_the_count_before_any_window(kind, ckpts, tmp_path, capsys,
                                                                                windows):
    model, src, unit, total = _nan_input(kind, tmp_path / "in")
    rc, err = _infer(capsys, ckpts[model], src, tmp_path / "out")
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"medrs-diff infer: error: {src}: holds {len(BAD_PIXELS)} non-finite {unit}(s) "
                             f"(NaN / Inf) of {total}")
    assert "--nan-policy fill" in err[0] and "--nan-policy mask" in err[0]
    assert windows == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["nifti", "geotiff", "npy"])
def test_nan_policy_fill_is_the_finite_minimum(kind, ckpts, tmp_path, capsys):
    model, src, _, _ = _nan_input(kind, tmp_path / "nan")
    (tmp_path / "ref").mkdir()
    ref = tmp_path / "ref" / src.name  # the same name: the same per-window seeds
    if kind == "geotiff":  # per band: each band's own finite minimum
        with rasterio.open(src) as r:
            a = r.read()
        ok = np.isfinite(a)
        _geotiff(ref, np.where(ok, a, np.array([b[m].min() for b, m in zip(a, ok)])[:, None, None]))
    elif kind == "nifti":
        a = nib.load(str(src)).get_fdata(dtype=np.float32)
        _nifti(ref, np.where(np.isfinite(a), a, a[np.isfinite(a)].min()))
    else:
        a = np.load(src)
        np.save(ref, np.where(np.isfinite(a), a, a[np.isfinite(a)].min()))
    for s, o in ((src, "o_nan"), (ref, "o_ref")):
        rc, err = _infer(capsys, ckpts[model], s.parent, tmp_path / o, "--nan-policy", "fill")
        assert rc == 0, err
    got, want = _files(tmp_path / "o_nan"), _files(tmp_path / "o_ref")
    assert got == want and "valid" not in " ".join(got)
    for name in got:  # same name, same seed: the filled file gives exactly the min-filled file's outputs
        x, y = io.read(tmp_path / "o_nan" / name).data, io.read(tmp_path / "o_ref" / name).data
        assert np.isfinite(x).all()
        np.testing.assert_array_equal(x, y)


def test_nan_policy_mask_writes_nodata_in_every_nifti_output(ckpts, tmp_path, capsys):
    _, src, _, _ = _nan_input("nifti", tmp_path / "in")
    rc, err = _infer(capsys, ckpts["seg3d"], src, tmp_path / "mask", "--nan-policy", "mask")
    assert rc == 0, err
    rc, err = _infer(capsys, ckpts["seg3d"], src, tmp_path / "fill", "--nan-policy", "fill")
    assert rc == 0, err
    bad = np.zeros((16, 16, 16), bool)
    bad[tuple(np.array(BAD_VOXELS).T)] = True
    assert _files(tmp_path / "mask") == ["ct.nii.gz", "probability/ct.nii.gz", "uncertainty/ct.nii.gz",
                                         "valid/ct.nii.gz"]
    for name in ("ct.nii.gz", "probability/ct.nii.gz", "uncertainty/ct.nii.gz"):
        m = nib.load(str(tmp_path / "mask" / name)).get_fdata()
        f = nib.load(str(tmp_path / "fill" / name)).get_fdata()
        if name == "ct.nii.gz":  # a label map: 0 where masked (NIfTI has no nodata), never NaN
            assert np.isfinite(m).all() and (m[bad] == 0).all()
        else:
            assert np.isnan(m[bad]).all()
        np.testing.assert_array_equal(m[~bad], f[~bad])  # elsewhere: the filled run's values
    valid = nib.load(str(tmp_path / "mask" / "valid" / "ct.nii.gz"))
    assert valid.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(valid.dataobj), (~bad).astype(np.uint8))
    assert np.array_equal(valid.affine, np.eye(4))


def test_nan_policy_mask_sets_the_geotiff_nodata_on_the_finer_grid(ckpts, tmp_path, capsys):
    _, src, _, _ = _nan_input("geotiff", tmp_path / "in")
    rc, err = _infer(capsys, ckpts["sr"], src, tmp_path / "sr.tif", "--nan-policy", "mask")
    assert rc == 0, err
    bad = np.zeros((16, 16), bool)
    bad[tuple(np.array(BAD_PIXELS).T)] = True
    bad2 = np.repeat(np.repeat(bad, 2, 0), 2, 1)  # x2 super-resolution
    for name in ("sr.tif", "sr_uncertainty.tif"):
        with rasterio.open(tmp_path / name) as o:
            a = o.read()
            assert np.isnan(o.nodata) and a.shape[1:] == (32, 32)
        assert np.isnan(a[:, bad2]).all() and np.isfinite(a[:, ~bad2]).all()


def test_declared_nodata_nan_is_not_refused_but_an_inf_is(ckpts, tmp_path, capsys):
    a = _plant(_scene(), BAD_PIXELS, channel_axis=0)
    src = _geotiff(tmp_path / "s2.tif", np.where(np.isinf(a), np.nan, a), nodata=float("nan"))
    rc, err = _infer(capsys, ckpts["sr"], src, tmp_path / "sr.tif")
    assert rc == 0, err  # NaN is the file's declared nodata: masked as before, not an error
    with rasterio.open(tmp_path / "sr.tif") as o:
        assert np.isnan(o.read()).sum() == o.count * 4 * len(BAD_PIXELS)
    (tmp_path / "inf").mkdir()
    src = _geotiff(tmp_path / "inf" / "s2.tif", a, nodata=float("nan"))
    rc, err = _infer(capsys, ckpts["sr"], src, tmp_path / "inf.tif")
    assert rc == 2 and f"{src}: holds 2 non-finite pixel(s)" in err[0]  # the two Inf pixels are not nodata


def test_nan_policy_mask_on_an_array_image(ckpts, tmp_path, capsys):
    _, src, _, _ = _nan_input("npy", tmp_path / "in")
    rc, err = _infer(capsys, ckpts["seg2d"], src, tmp_path / "out.npy", "--nan-policy", "mask")
    assert rc == 0, err
    bad = np.zeros((16, 16), bool)
    bad[tuple(np.array(BAD_PIXELS).T)] = True
    assert np.array_equal(np.load(tmp_path / "out_valid.npy"), (~bad).astype(np.uint8))
    pred, prob = np.load(tmp_path / "out.npy"), np.load(tmp_path / "out_probability.npy")
    assert (pred[bad] == 0).all() and np.isfinite(pred).all() and np.isnan(prob[bad]).all()
    p = Predictor.from_checkpoint(ckpts["seg2d"])
    with pytest.raises(DataError, match=r"array: holds 5 non-finite pixel\(s\) \(NaN / Inf\) of 256"):
        p.predict_array(np.load(src), steps=1, n_samples=1)
    out = p.predict_array(np.load(src), steps=1, n_samples=1, nan_policy="mask")
    assert np.array_equal(out["valid"][0], (~bad).astype(np.uint8)) and np.isnan(out["uncertainty"][0][bad]).all()
    assert (out["prediction"][0][bad] == 0).all()


def test_unknown_nan_policy_is_refused_when_parsing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--checkpoint", "c.ckpt", "--input", str(tmp_path), "--output", "o", "--nan-policy", "zero"])
    assert exc.value.code == 2
    assert "argument --nan-policy: invalid choice: 'zero'" in capsys.readouterr().err


# -- row 2: numeric arguments ----------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--steps", "0", r"argument --steps: must be an integer >= 1, got 0"),
    ("--n-samples", "0", r"argument --n-samples: must be an integer >= 1, got 0"),
    ("--n-samples", "-1", r"argument --n-samples: must be an integer >= 1, got -1"),
    ("--tile", "0", r"argument --tile: must be an integer >= 1, got 0"),
    ("--batch", "0", r"argument --batch: must be an integer >= 1, got 0"),
    ("--overlap", "1", r"argument --overlap: must be in \[0, 1\) \(0 <= overlap < 1\), got 1\.0"),
])
def test_numeric_arguments_exit_2_with_the_range(flag, value, message, ckpts, tmp_path, capsys, windows):
    src = _nifti(tmp_path / "ct.nii.gz", _volume())
    with pytest.raises(SystemExit) as exc:  # a real checkpoint and input: only the number is wrong
        main(["infer", "--checkpoint", str(ckpts["seg3d"]), "--input", str(src), "--output", str(tmp_path / "o"),
              flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search("medrs-diff infer: error: " + message, err), err
    assert "Traceback" not in err and windows == [] and not (tmp_path / "o").exists()


# -- row 3: output suffix and folder, checked before compute -----------------------------------------------

def _png(path, seed=0, size=(16, 16)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(("model", "make", "out", "message"), [
    ("sr", lambda d: _geotiff(d / "s2.tif", _scene()), "out.nii.gz",
     r"out\.nii\.gz: a geotiff input gives geotiff outputs, not \.nii\.gz\. Fix: name the output like the input "
     r"\(\.tif\)"),
    ("seg3d", lambda d: _nifti(d / "ct.nii.gz", _volume()), "out.tif",
     r"out\.tif: a nifti input gives nifti outputs, not \.tif\. Fix: name the output like the input \(\.nii\.gz\)"),
    ("seg2d", lambda d: _png(d / "fundus.png"), "out.nii.gz",
     r"out\.nii\.gz: a NIfTI output needs an affine, and this image2d input has none\. Fix: name the output like "
     r"the input \(\.png\)"),
    ("seg3d", lambda d: np.save(d / "vol.npy", _volume()) or d / "vol.npy", "out.png",
     r"out\.png: a 3-D model's output cannot be written as a 2-D image \(\.png\)\. Fix: name the output \.npy"),
    ("seg2d", lambda d: _png(d / "fundus.png"), "out.dcm", r"out\.dcm: dicom files cannot be written"),
])
def test_output_suffix_that_the_writer_cannot_hold_is_refused_before_compute(model, make, out, message, ckpts,
                                                                             tmp_path, capsys, windows):
    (tmp_path / "in").mkdir()
    src = make(tmp_path / "in")
    rc, err = _infer(capsys, ckpts[model], src, tmp_path / "o" / out)
    assert rc == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert windows == [] and not (tmp_path / "o").exists()


def test_png_into_a_tif_or_npy_name_is_converted_on_purpose(ckpts, tmp_path, capsys):
    src = _png(tmp_path / "fundus.png")
    for out in ("mask.tif", "mask.npy"):
        rc, err = _infer(capsys, ckpts["seg2d"], src, tmp_path / out)
        assert rc == 0, err
        assert set(np.unique(io.read(tmp_path / out).data)) <= {0, 1}


class _ReadOnlyFolders:
    """``os`` as io.atomic sees it, with every folder read-only."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def access(path, mode):
        return not mode & os.W_OK


def test_output_folders_that_cannot_be_made_are_one_line(ckpts, tmp_path, capsys, windows, monkeypatch):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    (tmp_path / "afile").write_text("not a folder")
    rc, err = _infer(capsys, ckpts["seg2d"], tmp_path / "in", tmp_path / "afile")
    assert rc == 2 and len(err) == 1 and "afile: names a file, but a folder or several inputs need an output" in err[0]
    for out in (tmp_path / "afile" / "sub", tmp_path / "afile" / "sub" / "m.png"):  # a file where a folder must be
        rc, err = _infer(capsys, ckpts["seg2d"], tmp_path / "in" / "a.png", out)
        assert rc == 2 and len(err) == 1, err
        assert f"output folder cannot be created: {tmp_path / 'afile'} is a file, not a folder" in err[0]
        assert "Traceback" not in err[0]
    monkeypatch.setattr(io.atomic, "os", _ReadOnlyFolders())  # a read-only folder, even for root
    rc, err = _infer(capsys, ckpts["seg2d"], tmp_path / "in", tmp_path / "ro")
    assert rc == 2 and len(err) == 1 and "cannot be created in" in err[0] and "permission denied" in err[0], err
    assert windows == [] and not (tmp_path / "ro").exists()


def test_a_folder_with_one_bad_file_fails_before_any_output(ckpts, tmp_path, capsys, windows):
    d = tmp_path / "in"
    d.mkdir()
    _nifti(d / "a.nii.gz", _volume(1))
    _nifti(d / "b.nii.gz", _volume(2))
    _nifti(d / "c.nii.gz", _plant(_volume(3), BAD_VOXELS[:1]))  # sorted last: checked before a is computed
    rc, err = _infer(capsys, ckpts["seg3d"], d, tmp_path / "out")
    assert rc == 2 and len(err) == 1 and "c.nii.gz: holds 1 non-finite voxel(s)" in err[0]
    assert windows == [] and not (tmp_path / "out").exists()
    (d / "c.nii.gz").unlink()
    _nifti(d / "c.nii.gz", np.zeros((16, 16, 16, 2), np.float32))  # two channels for a one-channel model
    rc, err = _infer(capsys, ckpts["seg3d"], d, tmp_path / "out")
    assert rc == 2 and "c.nii.gz: has 2 channel(s) but the model expects 1" in err[0]
    assert windows == [] and not (tmp_path / "out").exists()


def test_two_inputs_with_one_output_name_are_refused(ckpts, tmp_path, windows):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        _png(tmp_path / sub / "a.png")
    p = Predictor.from_checkpoint(ckpts["seg2d"])
    with pytest.raises(DataError, match=r"a\.png: would be written for both .*x/a\.png and .*y/a\.png"):
        p.predict_files([tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"], tmp_path / "out", steps=1, n_samples=1)
    assert windows == [] and not (tmp_path / "out").exists()


# -- row 4: volume vs image ------------------------------------------------------------------------------

def _rgb24(path):
    rgb = np.zeros((8, 8, 4), dtype=np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]))
    return _nifti(path, rgb)


@pytest.mark.parametrize(("model", "make", "message"), [
    ("seg2d_rgb", lambda d: _nifti(d / "ct3.nii.gz", _volume(shape=(32, 32, 3))),
     r"ct3\.nii\.gz: is a 3-D volume \(32 x 32 x 3 voxels\) given to a 2-D model\. Fix: use a 3-D checkpoint, or "
     r"infer slice-wise"),
    ("seg2d", lambda d: _nifti(d / "ct30.nii.gz", _volume(shape=(32, 32, 30))),
     r"ct30\.nii\.gz: is a 3-D volume \(32 x 32 x 30 voxels\) given to a 2-D model"),
    ("seg2d", lambda d: np.save(d / "vol.npy", _volume(shape=(30, 32, 32))) or d / "vol.npy",
     r"vol\.npy: has shape \(30, 32, 32\): read as 30 channel\(s\) of a 2-D image, but the model expects 1\. "
     r"Fix: if it is a 3-D volume, use a 3-D checkpoint, or infer slice-wise"),
    ("seg3d", lambda d: _nifti(d / "xray.nii.gz", _volume(shape=(32, 32))),
     r"xray\.nii\.gz: is a 2-D image \(32 x 32 voxels, one slice\) given to a 3-D model\. Fix: use a 2-D checkpoint"),
    ("seg3d", lambda d: _nifti(d / "slice.nii.gz", _volume(shape=(32, 32, 1))),
     r"slice\.nii\.gz: is a 2-D image \(32 x 32 x 1 voxels, one slice\) given to a 3-D model"),
    ("seg3d", lambda d: _png(d / "fundus.png"),
     r"fundus\.png: is a 2-D image \(shape \(1, 16, 16\)\) given to a 3-D model\. Fix: use a 2-D checkpoint"),
    ("seg3d", lambda d: _geotiff(d / "s2.tif", _scene(shape=(1, 16, 16))),
     r"s2\.tif: is a 2-D image \(a GeoTIFF raster\) given to a 3-D model"),
    ("seg2d_rgb", lambda d: _rgb24(d / "rgb.nii.gz"),
     r"rgb\.nii\.gz: stores packed RGB24 colour voxels, not numbers \(RGB24 NIfTI\)\. Fix: convert it to a 4-D "
     r"float NIfTI with the colours as 3 \(or 4\) channels"),
])
def test_volume_vs_image_mismatch_is_named(model, make, message, ckpts, tmp_path, capsys, windows):
    (tmp_path / "in").mkdir()
    src = make(tmp_path / "in")
    rc, err = _infer(capsys, ckpts[model], src, tmp_path / "out")
    assert rc == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert "Traceback" not in err[0] and windows == [] and not (tmp_path / "out").exists()
    assert not re.search(r"has \d+ channel\(s\)", err[0])  # a volume is not taken for channels


def test_a_2d_model_takes_x_y_1_slices_and_keeps_their_shape(ckpts, tmp_path, capsys):
    aff = np.diag([0.8, 0.8, 3.0, 1.0])
    one = _nifti(tmp_path / "slice.nii.gz", _volume(shape=(24, 20, 1)), aff)
    rc, err = _infer(capsys, ckpts["seg2d"], one, tmp_path / "o.nii.gz")
    assert rc == 0, err
    for name in ("o.nii.gz", "o_probability.nii.gz", "o_uncertainty.nii.gz"):
        out = nib.load(str(tmp_path / name))
        assert out.shape == (24, 20, 1) and np.allclose(out.affine, aff)
    rgb = _nifti(tmp_path / "rgb.nii.gz", _volume(shape=(24, 20, 1, 3)), aff)  # a 2-D image with 3 channels
    rc, err = _infer(capsys, ckpts["seg2d_rgb"], rgb, tmp_path / "r.nii.gz")
    assert rc == 0, err
    assert nib.load(str(tmp_path / "r.nii.gz")).shape == (24, 20, 1)


# -- row 5: temporary files ------------------------------------------------------------------------------

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_temporary_inputs_are_not_cases(ckpts, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _png(d / "a.png")
    _png(d / f"{TMP_PREFIX}{_dead_pid()}-{_host_tag()}-0badc0de-b.png", seed=1)  # what a killed infer leaves
    _png(d / f"{TMP_PREFIX}1234-c.png", seed=2)  # an older temporary name
    rc, err = _infer(capsys, ckpts["seg2d"], d, tmp_path / "out")
    assert rc == 0, err
    assert _files(tmp_path / "out") == ["a.png", "probability/a.tif", "uncertainty/a.tif"]


def test_stale_temporaries_in_the_output_folder_are_cleaned_with_one_log_line(ckpts, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    host = _host_tag()
    dead = out / f"{TMP_PREFIX}{_dead_pid()}-{host}-0badc0de-a.png"  # its writer is gone: removed
    live = out / f"{TMP_PREFIX}{os.getppid()}-{host}-00c0ffee-a.png"  # a live process writes it: kept
    old = out / f"{TMP_PREFIX}1234abcd-a.png"  # writer unknown, untouched for an hour: removed
    fresh = out / f"{TMP_PREFIX}5678abcd-a.png"  # writer unknown, just touched: kept
    for f in (dead, live, old, fresh):
        f.write_bytes(b"")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    src = _png(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger="medrs_diff"):
        rc, err = _infer(capsys, ckpts["seg2d"], src, out)
    assert rc == 0, err
    lines = [r.getMessage() for r in caplog.records if "stale temporary" in r.getMessage()]
    assert lines == [f"removed 2 stale temporary file(s) left by an interrupted run in {out}"]
    assert not dead.exists() and not old.exists() and live.exists() and fresh.exists()
    assert (out / "a.png").is_file()


def test_temporary_names_carry_their_writer():
    tmp = temp_path_for(io.atomic.Path("x/case.nii.gz"))
    assert tmp.name.startswith(f"{TMP_PREFIX}{os.getpid()}-{_host_tag()}-") and tmp.name.endswith("-case.nii.gz")
    assert io.is_temporary(tmp) and not io.is_stale_temporary(tmp)  # not a file (and ours): never stale


# -- row 6: --device cuda without a GPU -----------------------------------------------------------------

def test_cuda_without_a_visible_gpu_exits_2_without_a_traceback(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    src = _png(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--checkpoint", str(ckpts["seg2d"]), "--input", str(src), "--output", str(tmp_path / "o"),
              "--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: no GPU is visible" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
