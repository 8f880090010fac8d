"""`medrs_diff.evaluation.evaluate`: typed options, io-registry formats, one-line errors naming the file."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from medrs_diff.cli import evaluate_args
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.evaluation import (
    ForecastOptions,
    MissingFileError,
    SegOptions,
    SpectralOptions,
    evaluate,
    find_pairs,
    format_table,
)
from medrs_diff.metrics import dice, psnr, spectral_scores, ssim


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and ". Fix: " in msg, msg
    return msg


def test_typed_options_and_keywords_agree(tmp_path, rng):
    ref = rng.random((3, 20, 20)) + 0.1
    np.save(tmp_path / "p.npy", ref * 1.02), np.save(tmp_path / "r.npy", ref)
    by_kw = evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "spectral", data_range=1.0, resolution_ratio=0.5,
                     write=False)
    by_obj = evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "spectral",
                      options=SpectralOptions(data_range=1.0, resolution_ratio=0.5), out=tmp_path / "o")
    expected = spectral_scores((ref * 1.02)[None], ref[None], 1.0, 0.5)
    for k, v in expected.items():
        assert by_kw["aggregate"]["all"][k] == pytest.approx(v.item(), rel=1e-12), k
        assert by_obj["aggregate"]["all"][k] == by_kw["aggregate"]["all"][k]
    assert by_kw["csv"] is None and by_kw["json"] is None and not (tmp_path / "p_evaluation").exists()
    saved = json.loads((tmp_path / "o" / "evaluation_spectral.json").read_text())
    assert saved["settings"]["resolution_ratio"] == 0.5
    assert "sam_deg" in format_table(by_obj) and "1 case(s)" in format_table(by_obj)


def test_option_errors_name_the_option(tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.integers(0, 2, (8, 8)))
    with pytest.raises(ArgumentError, match=r"thresholds.*belongs to task forecast"):
        evaluate(tmp_path / "a.npy", tmp_path / "a.npy", "seg", thresholds=[1.0])
    with pytest.raises(ArgumentError, match=r"task \(--task\): must be one of seg, spectral"):
        evaluate(tmp_path / "a.npy", tmp_path / "a.npy", "segmentation")
    with pytest.raises(ArgumentError, match=r"tolerance \(--tolerance\): must be >= 0"):
        SegOptions(tolerance=-1)
    with pytest.raises(ArgumentError, match=r"scales \(--scales\): must be integers >= 1"):
        ForecastOptions(thresholds=[1.0], scales=[0])
    with pytest.raises(ArgumentError, match="only available for task 'image'"):
        SpectralOptions(data_range="ref_max")
    with pytest.raises(ArgumentError, match="takes SpectralOptions"):
        evaluate(tmp_path / "a.npy", tmp_path / "a.npy", "spectral", options=SegOptions())
    assert SegOptions(empty_score=float("nan")).empty_score != SegOptions(empty_score=float("nan")).empty_score
    # the CLI refuses an option of another task instead of ignoring it
    parser = argparse.ArgumentParser()
    evaluate_args.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "a.npy"), str(tmp_path / "a.npy"), "--task", "class",
                              "--thresholds", "1"])
    with pytest.raises(ArgumentError, match=r"--thresholds: does not apply to --task class.*forecast"):
        evaluate_args.run_from_args(args)


def test_nan_empty_and_unreadable_predictions_give_one_line(tmp_path, rng):
    ref = rng.random((16, 16))
    pred = ref.copy()
    pred[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", pred), np.save(tmp_path / "ref.npy", ref)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "nan.npy", tmp_path / "ref.npy", "image", data_range=1.0, out=tmp_path / "o")
    assert "1 NaN" in _one_line(err, tmp_path / "nan.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "empty.npy", tmp_path / "ref.npy", "image", data_range=1.0, out=tmp_path / "o")
    assert "empty (0 bytes)" in _one_line(err, tmp_path / "empty.npy")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    lab = rng.integers(0, 2, (6, 6, 4)).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "ref.nii.gz"))
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "empty.nii.gz", tmp_path / "ref.nii.gz", "seg", out=tmp_path / "o")
    _one_line(err, tmp_path / "empty.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(DataError, match="bad.nii.gz"):
        evaluate(tmp_path / "bad.nii.gz", tmp_path / "ref.nii.gz", "seg", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing is written when a case fails
    # a forecast may hold NaN (no data), but not only NaN
    np.save(tmp_path / "allnan.npy", np.full((16, 16), np.nan))
    with pytest.raises(DataError, match=r"allnan\.npy: prediction holds only NaN"):
        evaluate(tmp_path / "allnan.npy", tmp_path / "ref.npy", "forecast", thresholds=[0.5], out=tmp_path / "o")


def test_metric_errors_name_the_case_files(tmp_path):
    np.save(tmp_path / "p.npy", np.array([[0, 1], [3, 1]])), np.save(tmp_path / "r.npy", np.array([[0, 1], [1, 1]]))
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "class", num_classes=2, out=tmp_path / "o")
    msg = _one_line(err, tmp_path / "p.npy")
    assert "r.npy" in msg and "[0, 2)" in msg


def test_png_label_maps_and_pairing_skips_temporary_files(tmp_path, rng):
    pd_, rd = tmp_path / "pred", tmp_path / "ref"
    pd_.mkdir(), rd.mkdir()
    refs, preds = [], []
    for name in ("a", "b"):
        ref = np.zeros((20, 24), np.uint8)
        ref[4:12, 5:15 + (name == "b")] = 1
        pred = np.roll(ref, 2, axis=1)
        Image.fromarray(ref).save(rd / f"{name}.png"), Image.fromarray(pred).save(pd_ / f"{name}.png")
        refs.append(ref), preds.append(pred)
    (pd_ / ".tmp-1234-c.png").write_bytes(b"")  # left by an interrupted run: skipped, not paired
    (pd_ / ".hidden.png").write_bytes(b"")
    assert [c for c, _, _ in find_pairs(pd_, rd)] == ["a", "b"]
    res = evaluate(pd_, rd, "seg", out=tmp_path / "o")
    for i, name in enumerate(("a", "b")):
        assert res["cases"][name]["1"]["dice"] == pytest.approx(dice(preds[i][None], refs[i][None]).item())
    assert res["settings"]["spacing_source"] == ["unit (no header)"]
    np.save(rd / "b.npy", refs[1])  # two reference files for case b
    with pytest.raises(DataError, match="two files for case 'b'"):
        evaluate(pd_, rd, "seg", out=tmp_path / "o")


def test_missing_file_is_data_error_and_file_not_found(tmp_path):
    np.save(tmp_path / "r.npy", np.zeros((4, 4)))
    with pytest.raises(MissingFileError) as err:
        evaluate(tmp_path / "nope.npy", tmp_path / "r.npy", "class")
    assert isinstance(err.value, DataError) and isinstance(err.value, FileNotFoundError)
    _one_line(err, tmp_path / "nope.npy")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(DataError, match=r"r\.txt: has an unknown file type '\.txt'.*\.nii\.gz"):
        evaluate(tmp_path / "r.npy", tmp_path / "r.txt", "class")


def test_nifti_channels_last_image(tmp_path, rng):
    # a 4-D NIfTI (x, y, z, c): channels are the last axis (NIfTI convention), scored as (C, x, y, z)
    ref = rng.random((14, 14, 12, 2)).astype(np.float32)
    pred = (ref + 0.05 * rng.standard_normal(ref.shape)).astype(np.float32)
    for name, arr in (("p", pred), ("r", ref)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    res = evaluate(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", "image", data_range=1.0, write=False)
    p, r = np.moveaxis(pred, -1, 0)[None].astype(np.float64), np.moveaxis(ref, -1, 0)[None].astype(np.float64)
    assert res["cases"]["r"]["all"]["psnr"] == pytest.approx(psnr(p, r, 1.0).item())
    assert res["cases"]["r"]["all"]["ssim"] == pytest.approx(ssim(p, r, 1.0, 3).item())



def test_sub_pixel_geotiff_shift_is_refused(tmp_path, rng):
    img = rng.random((1, 16, 16)).astype(np.float32)
    for name, x0 in (("p", 500003.0), ("r", 500000.0)):  # 3 m at a 10 m pixel, northing 4e6
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", height=16, width=16, count=1,
                           dtype="float32", crs="EPSG:32633", transform=Affine(10, 0, x0, 0, -10, 4e6)) as ds:
            ds.write(img)
    with pytest.raises(DataError, match=r"geometry mismatch: prediction .*p\.tif: transform .*500003.*r\.tif"):
        evaluate(tmp_path / "p.tif", tmp_path / "r.tif", "image", data_range=1.0, write=False)
