"""Clinical end to end through the real CLI (issue 12): ``medrs-diff fit`` trains a packaged phantom recipe for a
few steps, ``medrs-diff infer`` segments (a) a folder of fundus JPEGs into PNG masks plus probability and
uncertainty maps on each image's grid, and (b) a multi-modal BraTS-layout case, slice by slice, into one NIfTI on
the volume's grid; ``medrs-diff evaluate`` scores them (inside the FOV for fundus; BraTS regions WT / TC / ET
on the reassembled 3-D volume, HD95 in mm from the header spacing, equal to the metrics computed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medrs_diff import metrics as M
from medrs_diff.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

STEPS = 3
#: a few-step, CPU-only, quiet fit of a packaged recipe (validation once, at the end)
FIT = ["--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS),
       "--trainer.check_val_every_n_epoch", "null", "--trainer.limit_val_batches", "1",
       "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
       "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
       "--model.init_args.val_steps", "2", "--model.init_args.val_samples", "1", "--model.init_args.warmup_steps", "1",
       "--data.init_args.batch_size", "2"]
INFER = ["--steps", "2", "--n-samples", "2", "--device", "cpu", "--no-progress", "--seed", "1"]
MODS = ("t1", "t1ce", "t2", "flair")
#: anisotropic voxels (mm): HD95 in mm must use them, so a voxel-unit or slice-wise HD95 would differ
SPACING = (1.0, 1.0, 2.5)


def _fit(recipe: str, tmp: Path, *extra: str) -> Path:
    rc = main(["fit", "--config", recipe, "--trainer.default_root_dir", str(tmp / "run"),
               "--data.init_args.root", str(tmp / "data"), *FIT, *extra])
    assert rc == 0
    (last,) = (tmp / "run").rglob("last.ckpt")
    return last


def _infer(ckpt: Path, src: Path, out: Path, *extra: str) -> None:
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), *INFER, *extra]) == 0


def _evaluate(pred: Path, ref: Path, out: Path, *extra: str) -> dict:
    assert main(["evaluate", str(pred), str(ref), "--task", "seg", "--out", str(out), *extra]) == 0
    (report,) = out.glob("evaluation_seg*.json")
    return json.loads(report.read_text())


# ------------------------------------------------------------------------------------------------ fundus
@pytest.fixture(scope="module")
def fundus(tmp_path_factory) -> dict[str, Path]:
    """SegDiff fundus phantom recipe trained 3 steps on 4 phantom JPEGs (HRF layout), then inferred on images/."""
    tmp = tmp_path_factory.mktemp("fundus")
    ckpt = _fit("segdiff_fundus_phantom", tmp, "--data.init_args.phantoms", "4", "--data.init_args.phantom_size",
                "[64, 96]", "--data.init_args.resize", "[64, 96]", "--data.init_args.samples_per_epoch", "4")
    _infer(ckpt, tmp / "data" / "images", tmp / "out")
    return {"root": tmp, "data": tmp / "data", "out": tmp / "out"}


def test_fundus_jpegs_give_png_masks_and_probability_and_uncertainty_maps(fundus):
    images = sorted((fundus["data"] / "images").glob("*.jpg"))
    assert len(images) == 4
    out = fundus["out"]
    for src in images:
        size = Image.open(src).size
        mask = Image.open(out / f"{src.stem}.png")  # the mask of a lossy JPEG is a lossless PNG
        assert mask.format == "PNG" and mask.mode == "L" and mask.size == size
        m = np.asarray(mask)
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}  # the data's label values
        prob = Image.open(out / "probability" / f"{src.stem}.tif")  # float TIFF: the probability itself
        unc = Image.open(out / "uncertainty" / f"{src.stem}.tif")
        for im in (prob, unc):
            assert im.format == "TIFF" and im.mode == "F" and im.size == size
        p, u = np.asarray(prob), np.asarray(unc)
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1 and p.std() > 0
        assert np.isfinite(u).all() and u.min() >= 0 and u.max() <= 0.5  # variance of 2 samples in [0, 1]
        # the mask is the STAPLE fusion of 2 samples: where both agree on background / foreground (no spread,
        # probability 0 or 1) it is the probability rounded
        sure = u == 0
        assert sure.any()
        np.testing.assert_array_equal(m[sure], (p[sure] > 0.5).astype(np.uint8))


def test_fundus_evaluate_inside_the_fov_gives_finite_dice(fundus):
    data, root = fundus["data"], fundus["root"]
    refs = root / "refs"  # the manual labels as 0/1 PNGs (HRF stores 0/255)
    refs.mkdir()
    for tif in sorted((data / "manual1").glob("*.tif")):
        Image.fromarray((np.asarray(Image.open(tif)) > 0).astype(np.uint8)).save(refs / f"{tif.stem}.png")
    report = _evaluate(fundus["out"], refs, root / "eval", "--mask", str(data / "mask"))  # NN_h_mask.tif pairs
    agg = report["aggregate"]["1"]
    assert np.isfinite(agg["dice_pooled"]) and 0 <= agg["dice_pooled"] <= 1
    assert sorted(report["cases"]) == ["01_h", "02_h", "03_h", "04_h"]
    # pixel scores are inside the FOV: outside it (a quarter of the image) they would count the corners
    one = report["cases"]["01_h"]["1"]
    fov = np.asarray(Image.open(data / "mask" / "01_h_mask.tif"))
    fov = (fov[..., 0] if fov.ndim == 3 else fov) > 0
    pred = np.asarray(Image.open(fundus["out"] / "01_h.png")).astype(bool)
    ref = np.asarray(Image.open(refs / "01_h.png")).astype(bool)
    assert not fov.all()
    acc = float(((pred == ref) & fov).sum() / fov.sum())
    assert one["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert one["accuracy"] != pytest.approx(float((pred == ref).mean()), abs=1e-6)  # not the whole image


# ------------------------------------------------------------------------------------------------ BraTS
def _resave(src: Path, dst: Path, affine: np.ndarray) -> None:
    img = nib.load(str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(dst))


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> dict[str, Path]:
    """V1 BraTS slice recipe (4 classes) trained 3 steps on 3 flat phantoms; one phantom re-saved as a BraTS 2023
    case folder with anisotropic voxels and inferred slice by slice (the checkpoint's default)."""
    tmp = tmp_path_factory.mktemp("brats")
    ckpt = _fit("medsegdiff_v1_brats_slices_phantom", tmp, "--data.init_args.phantoms", "3",
                "--data.init_args.phantom_size", "[32, 32, 12]", "--data.init_args.patch_size", "[32, 32]",
                "--model.init_args.method.init_args.sampling_steps", "2")
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.5)
    case = tmp / "cases" / "BraTS-X-000"
    for m in MODS:
        _resave(tmp / "data" / f"brats_002_{m}.nii.gz", case / f"BraTS-X-000-{m}.nii.gz", affine)
    _resave(tmp / "data" / "brats_002_seg.nii.gz", tmp / "labels" / "BraTS-X-000.nii.gz", affine)
    _infer(ckpt, case, tmp / "out")
    return {"root": tmp, "case": case, "out": tmp / "out", "labels": tmp / "labels"}


def test_brats_case_gives_one_label_volume_on_its_grid(brats):
    ref = nib.load(str(brats["case"] / "BraTS-X-000-t1.nii.gz"))
    files = sorted(str(p.relative_to(brats["out"])) for p in brats["out"].rglob("*") if p.is_file())
    assert files == ["BraTS-X-000.nii.gz", "probability/BraTS-X-000.nii.gz", "uncertainty/BraTS-X-000.nii.gz"]
    pred = nib.load(str(brats["out"] / "BraTS-X-000.nii.gz"))
    assert pred.shape == ref.shape == (32, 32, 12)
    np.testing.assert_array_equal(pred.affine, ref.affine)
    assert tuple(float(z) for z in pred.header.get_zooms()) == SPACING
    labels = np.asarray(pred.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}  # written in the data's label values, not indices
    prob = nib.load(str(brats["out"] / "probability" / "BraTS-X-000.nii.gz"))
    assert prob.shape[:3] == ref.shape and prob.shape[3:] in ((4,), (1, 4))  # one map per class
    p = np.asarray(prob.dataobj).reshape(*ref.shape, 4)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)


def test_brats_evaluate_scores_regions_on_the_whole_volume_in_mm(brats):
    report = _evaluate(brats["out"], brats["labels"], brats["root"] / "eval", "--brats")
    case = report["cases"]["BraTS-X-000"]
    assert sorted(case) == ["ET", "TC", "WT"]
    pred = np.asarray(nib.load(str(brats["out"] / "BraTS-X-000.nii.gz")).dataobj).astype(np.int64)
    ref = np.asarray(nib.load(str(brats["labels"] / "BraTS-X-000.nii.gz")).dataobj).astype(np.int64)
    pm, rm = M.brats_regions(pred[None], 4), M.brats_regions(ref[None], 4)
    for region in ("WT", "TC", "ET"):
        assert rm[region].any()  # every region is present in the phantom
        dice = float(M.dice(pm[region], rm[region])[0])
        sd = M.surface_distances(pm[region], rm[region], SPACING)
        got = case[region]
        assert got["dice"] == pytest.approx(dice, abs=1e-9), region
        assert np.isfinite(got["hd95_mm"]) and got["hd95_mm"] == pytest.approx(float(sd["hd95"][0]), abs=1e-6)
        # in mm from the header: with unit voxels the value differs (the z spacing is 2.5 mm) unless 0
        unit = float(M.surface_distances(pm[region], rm[region], (1.0, 1.0, 1.0))["hd95"][0])
        assert got["hd95_mm"] == 0 or got["hd95_mm"] != pytest.approx(unit), region
    assert report["settings"]["spacing_source"] == ["nifti header"]


def test_fundus_fov_mask_with_differing_bands_is_refused_naming_it(tmp_path, capsys):
    """An RGB FOV mask counts as one band only when its bands are identical (HRF's); else one line names it."""
    for d in ("pred", "ref", "fov"):
        (tmp_path / d).mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    Image.fromarray(mask).save(tmp_path / "pred" / "c1.png")
    Image.fromarray(mask).save(tmp_path / "ref" / "c1.png")
    rgb = np.stack([mask * 255] * 3, -1)
    rgb[0, 0, 2] = 255
    Image.fromarray(rgb).save(tmp_path / "fov" / "c1_mask.png")
    rc = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--task", "seg", "--mask",
               str(tmp_path / "fov"), "--out", str(tmp_path / "eval")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "c1_mask.png: has 3 bands that differ" in err[0] and "Fix:" in err[0], err
