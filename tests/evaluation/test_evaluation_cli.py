"""`medrs-diff evaluate` arguments -> `medrs_diff.evaluation`: files in, table + CSV + JSON out, checked against
the functional metrics."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from affine import Affine
from sklearn.metrics import cohen_kappa_score

from medrs_diff.cli import evaluate_args
from medrs_diff.metrics import (
    CategoricalMetric,
    brats_scores,
    crps,
    dice,
    hd95,
    pixel_scores,
    psnr,
    spectral_scores,
    ssim,
    surface_distances,
    suv_bias,
)


def _run(*argv: str | Path) -> dict:
    parser = argparse.ArgumentParser()
    evaluate_args.add_arguments(parser)
    return evaluate_args.run_from_args(parser.parse_args([str(a) for a in argv]))


def _nifti(path: Path, data: np.ndarray, zooms=(0.8, 1.0, 2.5)) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), str(path))
    return path


def _geotiff(path: Path, data: np.ndarray, crs: str = "EPSG:32633", x0: float = 500000.0) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=Affine(10.0, 0.0, x0, 0.0, -10.0, 4000000.0)) as ds:
        ds.write(data)
    return path


def _csv_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _labels(rng, shape):
    lab = np.zeros(shape, np.uint8)
    c = [rng.integers(3, s - 2) for s in shape]
    lab[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 2:c[2] + 2] = 1
    lab[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 1] = 2
    return lab


def test_seg_nifti_folders(tmp_path, rng):
    pred_dir, ref_dir, out = tmp_path / "pred", tmp_path / "ref", tmp_path / "out"
    pred_dir.mkdir(), ref_dir.mkdir()
    refs, preds = [], []
    for name in ("case_a", "case_b"):
        ref = _labels(rng, (16, 16, 10))
        pred = np.roll(ref, 1, axis=0)
        refs.append(ref), preds.append(pred)
        _nifti(ref_dir / f"{name}.nii.gz", ref)
        _nifti(pred_dir / f"{name}.nii.gz", pred)
    res = _run(pred_dir, ref_dir, "--task", "seg", "--out", out, "--tolerance", "1.0")
    assert res["n_cases"] == 2 and res["settings"]["labels"] == ["1", "2"]
    assert res["settings"]["spacing_source"] == ["nifti header"]
    p, r = np.stack(preds) == 1, np.stack(refs) == 1
    sd = surface_distances(p, r, (0.8, 1.0, 2.5), 1.0)
    assert res["cases"]["case_b"]["1"]["hd95_mm"] == pytest.approx(sd["hd95"][1].item())
    assert res["cases"]["case_a"]["1"]["dice"] == pytest.approx(dice(p, r)[0].item())
    pooled = 2 * (p & r).sum() / (p.sum() + r.sum())
    assert res["aggregate"]["1"]["dice_pooled"] == pytest.approx(pooled)
    assert res["aggregate"]["1"]["hd95_mm_mean"] == pytest.approx(sd["hd95"].mean().item())
    # the files say the same as the returned dict, and no temporary file is left behind
    saved = json.loads(Path(res["json"]).read_text())
    assert saved["aggregate"]["2"]["dice_mean"] == pytest.approx(res["aggregate"]["2"]["dice_mean"])
    rows = _csv_rows(res["csv"])
    row = next(x for x in rows if x["case"] == "case_a" and x["group"] == "1" and x["metric"] == "asd_mm")
    assert float(row["value"]) == pytest.approx(sd["asd"][0].item())
    assert sorted(f.name for f in out.iterdir()) == ["evaluation_seg.csv", "evaluation_seg.json"]


def test_seg_probability_npy_with_fov_and_spacing(tmp_path, rng):
    ref = np.zeros((24, 24), np.uint8)
    ref[6:14, 5:18] = 1
    prob = np.clip(ref * 0.7 + 0.4 * rng.random((24, 24)), 0, 1)
    fov = np.zeros((24, 24), np.uint8)
    fov[2:22, 2:22] = 1
    np.save(tmp_path / "p.npy", prob), np.save(tmp_path / "r.npy", ref), np.save(tmp_path / "fov.npy", fov)
    res = _run(tmp_path / "p.npy", tmp_path / "r.npy", "--task", "seg", "--mask", tmp_path / "fov.npy",
               "--spacing", "0.5", "2.0", "--out", tmp_path / "o")
    case = res["cases"]["r"]["1"]
    ps = pixel_scores(prob[None], ref[None], fov[None].astype(bool))
    assert case["auroc"] == pytest.approx(ps["auroc"].item())
    assert case["sensitivity"] == pytest.approx(ps["sensitivity"].item())
    assert case["hd95_mm"] == pytest.approx(hd95((prob >= 0.5)[None], ref[None], (0.5, 2.0)).item())
    assert res["aggregate"]["1"]["pixel_auroc"] == pytest.approx(ps["auroc"].item(), abs=2e-3)
    assert "ece" in res["aggregate"]["1"]


def test_seg_brats_regions(tmp_path, rng):
    ref = _labels(rng, (14, 14, 12)).astype(np.int16)
    ref[ref == 2] = 4
    pred = ref.copy()
    pred[pred == 4] = 1
    _nifti(tmp_path / "p.nii.gz", pred, (1, 1, 1)), _nifti(tmp_path / "r.nii.gz", ref, (1, 1, 1))
    res = _run(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", "--task", "seg", "--brats", "--out", tmp_path / "o")
    expected = brats_scores(pred[None], ref[None], (1, 1, 1))
    for region in ("WT", "TC", "ET"):
        assert res["cases"]["r"][region]["dice"] == pytest.approx(expected[f"dice_{region}"].item())
        assert res["cases"]["r"][region]["hd95_mm"] == pytest.approx(expected[f"hd95_{region}"].item())


def test_spectral_geotiff(tmp_path, rng):
    ref = (rng.random((4, 40, 40)) * 0.5 + 0.1).astype(np.float32)
    pred = (ref + 0.02 * rng.standard_normal(ref.shape)).astype(np.float32)
    _geotiff(tmp_path / "p.tif", pred), _geotiff(tmp_path / "r.tif", ref)
    res = _run(tmp_path / "p.tif", tmp_path / "r.tif", "--task", "spectral", "--data-range", "1.0",
               "--resolution-ratio", "0.25", "--out", tmp_path / "o")
    expected = spectral_scores(pred[None].astype(np.float64), ref[None].astype(np.float64), 1.0, 0.25)
    for k, v in expected.items():
        assert res["aggregate"]["all"][k] == pytest.approx(v.item(), rel=1e-9), k


def test_forecast_npy_accumulates_over_files(tmp_path, rng):
    pd_, rd = tmp_path / "pred", tmp_path / "ref"
    pd_.mkdir(), rd.mkdir()
    preds, refs = [], []
    for i in range(3):
        r = rng.gamma(0.5, 4.0, (2, 32, 32))
        p = r * rng.uniform(0.5, 1.5, r.shape)
        np.save(pd_ / f"t{i}.npy", p), np.save(rd / f"t{i}.npy", r)
        preds.append(p), refs.append(r)
    res = _run(pd_, rd, "--task", "forecast", "--thresholds", "1", "4", "--scales", "1", "4",
               "--out", tmp_path / "o")
    m = CategoricalMetric([1, 4], pool_sizes=(1, 4))
    for p, r in zip(preds, refs):
        m.update(p[None], r[None])
    for k, v in m.compute().items():
        assert res["aggregate"]["all"][k] == pytest.approx(v), k
    saved = json.loads(Path(res["json"]).read_text())
    assert saved["contingency_tables"]["1"]["4"]["hits"] == int(m.tables[1][1, 0])
    with pytest.raises(ValueError, match="increasing"):
        _run(pd_, rd, "--task", "forecast", "--thresholds", "4", "1", "--out", tmp_path / "o")


def test_forecast_ensemble_crps(tmp_path, rng):
    ref = rng.gamma(0.5, 4.0, (16, 16))
    ens = ref[None] + rng.standard_normal((5, 16, 16))
    np.save(tmp_path / "p.npy", ens), np.save(tmp_path / "r.npy", ref)
    res = _run(tmp_path / "p.npy", tmp_path / "r.npy", "--task", "forecast", "--ensemble", "--thresholds", "1",
               "--scales", "1", "4", "--out", tmp_path / "o")
    assert res["aggregate"]["all"]["crps"] == pytest.approx(crps(ens[None], ref[None]).item())
    assert "crps_avgpool4" in res["aggregate"]["all"]


def test_image_nifti_with_mask(tmp_path, rng):
    ref = rng.gamma(2.0, 1.0, (16, 16, 14)).astype(np.float32)
    pred = (ref * 1.1).astype(np.float32)
    mask = np.zeros(ref.shape, np.uint8)
    mask[4:12, 4:12, 3:11] = 1
    for name, arr in (("p", pred), ("r", ref), ("m", mask)):
        _nifti(tmp_path / f"{name}.nii.gz", arr)
    res = _run(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", "--task", "image", "--data-range", "ref_max",
               "--mask", tmp_path / "m.nii.gz", "--out", tmp_path / "o")
    out = res["cases"]["r"]["all"]
    p64, r64, m = pred[None].astype(np.float64), ref[None].astype(np.float64), mask[None].astype(bool)
    assert out["psnr"] == pytest.approx(psnr(p64, r64, "ref_max", m).item())
    assert out["ssim"] == pytest.approx(ssim(p64, r64, "ref_max", 3, m).item())
    assert out["suv_mean_bias_pct"] == pytest.approx(suv_bias(p64, r64, m)["mean_bias_pct"].item())
    assert out["suv_max_bias_pct"] == pytest.approx(10.0, rel=1e-5)  # pred = 1.1 × ref
    with pytest.raises(ValueError, match="--data-range"):
        _run(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", "--task", "image", "--out", tmp_path / "o")


def test_class_npy(tmp_path, rng):
    ref = rng.integers(0, 4, (2, 10, 10))
    pred = np.where(rng.random(ref.shape) < 0.7, ref, rng.integers(0, 4, ref.shape))
    for d in ("p", "r"):
        (tmp_path / d).mkdir()
    for i in range(2):
        np.save(tmp_path / "p" / f"{i}.npy", pred[i]), np.save(tmp_path / "r" / f"{i}.npy", ref[i])
    res = _run(tmp_path / "p", tmp_path / "r", "--task", "class", "--out", tmp_path / "o")
    assert res["settings"]["num_classes"] == 4
    assert res["aggregate"]["all"]["kappa"] == pytest.approx(cohen_kappa_score(ref.ravel(), pred.ravel()))


def test_missing_pair_and_geometry_errors(tmp_path, rng):
    pd_, rd = tmp_path / "pred", tmp_path / "ref"
    pd_.mkdir(), rd.mkdir()
    lab = _labels(rng, (12, 12, 8))
    _nifti(pd_ / "a.nii.gz", lab), _nifti(rd / "a.nii.gz", lab), _nifti(rd / "b.nii.gz", lab)
    with pytest.raises(FileNotFoundError, match="no prediction .* for reference.* b"):
        _run(pd_, rd, "--task", "seg", "--out", tmp_path / "o")
    # same shape, shifted affine
    shifted = np.diag([0.8, 1.0, 2.5, 1.0])
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(lab, shifted), str(pd_ / "b.nii.gz"))
    with pytest.raises(ValueError, match=r"geometry mismatch.*pred/b\.nii\.gz.*ref/b\.nii\.gz"):
        _run(pd_, rd, "--task", "seg", "--out", tmp_path / "o")
    # GeoTIFFs in different CRS
    img = rng.random((2, 16, 16)).astype(np.float32)
    _geotiff(tmp_path / "p.tif", img, crs="EPSG:32632"), _geotiff(tmp_path / "r.tif", img)
    with pytest.raises(ValueError, match=r"CRS.*p\.tif.*r\.tif|p\.tif.*CRS.*r\.tif"):
        _run(tmp_path / "p.tif", tmp_path / "r.tif", "--task", "spectral", "--data-range", "1",
             "--out", tmp_path / "o")
    _geotiff(tmp_path / "p.tif", img, x0=500010.0)  # same CRS, shifted one pixel
    with pytest.raises(ValueError, match="transform"):
        _run(tmp_path / "p.tif", tmp_path / "r.tif", "--task", "spectral", "--data-range", "1",
             "--out", tmp_path / "o")
    np.save(tmp_path / "x.npy", np.zeros((4, 4))), np.save(tmp_path / "y.npy", np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"x\.npy.*y\.npy"):
        _run(tmp_path / "x.npy", tmp_path / "y.npy", "--task", "class", "--out", tmp_path / "o")


def test_real_totalsegmentator_labels(tmp_path, shared_data):
    folder = shared_data / "ct_mr_totalsegmentator"
    ref_img = nib.load(str(folder / "example_seg.nii.gz"))
    ref = np.asanyarray(ref_img.dataobj)
    labels = [int(v) for v in np.unique(ref) if v != 0][:2]
    pred = np.roll(ref, 1, axis=2)  # one slice (3 mm) off
    nib.save(nib.Nifti1Image(pred, ref_img.affine, ref_img.header), str(tmp_path / "example_seg.nii.gz"))
    res = _run(tmp_path / "example_seg.nii.gz", folder / "example_seg.nii.gz", "--task", "seg",
               "--labels", *map(str, labels), "--out", tmp_path / "o")
    spacing = tuple(float(z) for z in ref_img.header.get_zooms())
    for lab in labels:
        got = res["cases"]["example_seg"][str(lab)]
        sd = surface_distances((pred == lab)[None], (ref == lab)[None], spacing)
        assert got["hd95_mm"] == pytest.approx(sd["hd95"].item())
        assert got["dice"] == pytest.approx(dice((pred == lab)[None], (ref == lab)[None]).item())
        assert 0 < got["dice"] < 1 and not math.isnan(got["asd_mm"])
    with pytest.raises(ValueError, match="example_seg_mr.*example_seg|example_seg.*example_seg_mr"):
        _run(folder / "example_seg_mr.nii.gz", folder / "example_seg.nii.gz", "--task", "seg",
             "--out", tmp_path / "o")


def test_default_out_folder_and_path_errors(tmp_path, rng):
    ref = rng.integers(0, 3, (8, 8))
    np.save(tmp_path / "pred.npy", ref), np.save(tmp_path / "ref.npy", ref)
    res = _run(tmp_path / "pred.npy", tmp_path / "ref.npy", "--task", "class")
    assert Path(res["csv"]).parent == tmp_path / "pred_evaluation"
    assert res["aggregate"]["all"]["overall_accuracy"] == 1.0
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        _run(tmp_path / "missing.npy", tmp_path / "ref.npy", "--task", "class")
    with pytest.raises(ValueError, match="both be files or both be folders"):
        _run(tmp_path / "pred.npy", tmp_path, "--task", "class")
    np.save(tmp_path / "mask.npy", np.ones((8, 9)))
    with pytest.raises(ValueError, match=r"geometry mismatch: mask .*mask\.npy.*ref\.npy"):
        _run(tmp_path / "pred.npy", tmp_path / "ref.npy", "--task", "class", "--mask", tmp_path / "mask.npy")
