"""PET data layer: counts thinning statistics, SUV from the DICOM header / NIfTI sidecar, the PET reader's
refusals (not PET, mixed slice spacing, missing dose / weight), DICOM series, phantoms."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medrs_diff.data.pet import DOSE_FRACTIONS, body_mask, read_pet, simulate_low_dose, suv_factor
from medrs_diff.data.pet_phantoms import pet_phantom
from medrs_diff.errors import ArgumentError, DataError

pydicom = pytest.importorskip("pydicom")


# -- low-dose simulation ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["thin", "poisson"])
def test_low_dose_mean_is_kept_and_variance_scales_as_one_over_the_dose(mode):
    """200 000 voxels of SUV 2 with 50 counts / SUV: integer full-dose counts (100), so the closed forms are
    exact: thin Var = x (1 - f) / (c f), poisson Var = x / (c f). Checked within 5 standard errors."""
    x, c, n = 2.0, 50.0, 200_000
    img = np.full(n, x, dtype=np.float32)
    var_by_f = {}
    for k, f in enumerate(DOSE_FRACTIONS):
        low = simulate_low_dose(img, f, counts_per_unit=c, rng=k, mode=mode).astype(np.float64)
        want_var = x * ((1 - f) if mode == "thin" else 1.0) / (c * f)
        assert abs(low.mean() - x) < 5 * np.sqrt(want_var / n)
        # Var of the sample variance ~ 2 sigma^4 / n (near-Gaussian at these counts); 5 s.e.
        assert abs(low.var() - want_var) < 5 * want_var * np.sqrt(2.0 / n) + 1e-12
        var_by_f[f] = low.var()
    # variance x dose fraction is constant (poisson) / follows (1 - f) (thin): 1/20 vs 1/4
    ratio = var_by_f[1 / 20] / var_by_f[1 / 4]
    want = 5.0 * ((1 - 1 / 20) / (1 - 1 / 4) if mode == "thin" else 1.0)
    assert abs(ratio - want) / want < 0.03


def test_low_dose_counts_are_quantised_not_gaussian():
    """Low-dose values are multiples of 1 / (c f): counts, never continuous Gaussian noise."""
    f, c = 0.1, 20.0
    low = simulate_low_dose(np.full(1000, 1.3, np.float32), f, c, rng=0).astype(np.float64)
    q = low * c * f
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    assert (low >= 0).all()


def test_low_dose_is_seeded_and_full_dose_is_identity():
    img = pet_phantom((32, 32), seed=3).image
    a, b = simulate_low_dose(img, 0.05, rng=7), simulate_low_dose(img, 0.05, rng=7)
    np.testing.assert_array_equal(a, b)
    # dose 1 with integer counts keeps every count: the image itself (poisson mode would add noise)
    ints = np.round(img * 50) / 50
    np.testing.assert_allclose(simulate_low_dose(ints, 1.0, 50.0, rng=1), ints, atol=1e-5)


def test_low_dose_bad_arguments():
    img = np.ones((4, 4), np.float32)
    for f in (0.0, 1.5, float("nan")):
        with pytest.raises(ArgumentError, match="dose_fraction"):
            simulate_low_dose(img, f)
    with pytest.raises(ArgumentError, match="counts_per_unit"):
        simulate_low_dose(img, 0.1, counts_per_unit=0)
    with pytest.raises(DataError, match="non-finite"):
        simulate_low_dose(np.array([1.0, np.nan]), 0.1)


# -- SUV -------------------------------------------------------------------------------------------------
def test_suv_factor_closed_form():
    # one half-life after injection: half the dose is left, factor = 2 x weight / dose
    assert suv_factor(70.0, 2e8, 6586.2, 6586.2) == pytest.approx(2 * 70e3 / 2e8)
    with pytest.raises(ArgumentError, match="weight_kg"):
        suv_factor(0.0, 2e8, 6586.2, 0.0)


def test_real_slice_suv_and_bqml(shared_data):
    path = shared_data / "pet_tcia_slice" / "1.dcm"
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    bq = read_pet(path, units="bqml")
    np.testing.assert_allclose(bq.data[0], raw * 9.12329, rtol=1e-6)
    suv = read_pet(path)
    assert suv.units == "suv"
    assert float(suv.data.max()) == pytest.approx(7.19, abs=0.005)  # the folder's README
    # the factor by hand: 69.7344 kg, 178.34 MBq decayed 15:23:16.921 - 14:17:00 with T1/2 = 6586.2 s
    decay = (15 * 3600 + 23 * 60 + 16.921) - (14 * 3600 + 17 * 60)
    assert suv.suv_factor == pytest.approx(69.7344e3 / (178340011.59668 * 2 ** (-decay / 6586.2)), rel=1e-9)
    # explicit values override the header (here a doubled weight doubles SUV)
    heavier = read_pet(path, weight_kg=2 * 69.7344)
    np.testing.assert_allclose(heavier.data, 2 * suv.data, rtol=1e-5)


def _edited(src, dst, **changes):
    ds = pydicom.dcmread(src)
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(dst)
    return dst


def test_bad_pet_inputs(shared_data, tmp_path):
    src = shared_data / "pet_tcia_slice" / "1.dcm"
    ct = _edited(src, tmp_path / "ct.dcm", Modality="CT")
    with pytest.raises(DataError, match="not PET") as err:
        read_pet(ct)
    assert "Modality" in str(err.value) and "Fix:" in str(err.value)
    noweight = _edited(src, tmp_path / "noweight.dcm", PatientWeight=None)
    with pytest.raises(DataError, match="weight_kg") as err:
        read_pet(noweight)
    assert "units='bqml'" in str(err.value)
    assert read_pet(noweight, units="bqml").data.max() == pytest.approx(1327 * 9.12329, rel=1e-6)
    # mixed slice spacing in a series folder
    series = tmp_path / "series"
    series.mkdir()
    for i, z in enumerate([0.0, 5.0, 10.0, 17.0]):
        _edited(src, series / f"{i}.dcm", ImagePositionPatient=[0.0, 0.0, z], InstanceNumber=i + 1)
    with pytest.raises(DataError, match="mixed slice spacing"):
        read_pet(series)


def test_dicom_series_is_assembled_in_position_order(shared_data, tmp_path):
    src = shared_data / "pet_tcia_slice" / "1.dcm"
    series = tmp_path / "series"
    series.mkdir()
    zs = [10.0, 0.0, 5.0]  # written out of order
    for i, z in enumerate(zs):
        ds = pydicom.dcmread(src)
        ds.ImagePositionPatient = [0.0, 0.0, z]
        arr = ds.pixel_array.copy()
        arr[0, 0] = i  # tag each slice
        ds.PixelData = arr.tobytes()
        ds.save_as(series / f"s{i}.dcm")
    pet = read_pet(series, units="bqml")
    assert pet.data.shape == (3, 168, 168)
    np.testing.assert_allclose(pet.data[:, 0, 0] / 9.12329, [1, 2, 0], atol=1e-3)  # z = 0, 5, 10
    assert pet.geometry.spacing[0] == pytest.approx(5.0)
    # the affine steps 5 mm along +z (RAS) per slice
    np.testing.assert_allclose(pet.geometry.affine[:3, 0], [0, 0, 5.0], atol=1e-6)


def test_nifti_sidecar_suv(tmp_path):
    from medrs_diff.io.nifti import write_nifti

    vol = np.full((4, 4, 2), 5000.0, np.float32)
    path = tmp_path / "pet.nii.gz"
    write_nifti(vol, path, np.eye(4))
    with pytest.raises(DataError, match="units of this PET NIfTI are unknown"):
        read_pet(path)
    (tmp_path / "pet.json").write_text(json.dumps({"Units": "Bq/mL", "BodyWeight": 70, "InjectedRadioactivity": 350,
                                                   "RadionuclideHalfLife": 6586.2, "DecayTime": 3600}))
    got = read_pet(path)
    want = 5000.0 * suv_factor(70, 350e6, 6586.2, 3600)
    np.testing.assert_allclose(got.data, want, rtol=1e-5)
    (tmp_path / "pet.json").write_text(json.dumps({"Units": "Bq/mL", "BodyWeight": 70, "InjectedRadioactivity": 350,
                                                   "RadionuclideHalfLife": 6586.2}))
    with pytest.raises(DataError, match="decay_s"):  # the decay time is never assumed
        read_pet(path)
    np.testing.assert_allclose(read_pet(path, decay_s=3600).data, want, rtol=1e-5)
    (tmp_path / "pet.json").write_text(json.dumps({"Units": "Bq/mL", "BodyWeight": 70}))
    with pytest.raises(DataError, match="injected_dose_bq"):
        read_pet(path)
    assert read_pet(path, units="bqml").data.max() == 5000.0
    (tmp_path / "pet.json").write_text(json.dumps({"Units": "SUV"}))
    np.testing.assert_array_equal(read_pet(path).data, vol)


# -- phantoms --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 64), (16, 32, 32)])
def test_phantoms_are_deterministic_with_body_organs_and_lesions(shape):
    a, b, c = pet_phantom(shape, seed=1), pet_phantom(shape, seed=1), pet_phantom(shape, seed=2)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == shape and a.image.dtype == np.float32
    assert 0.2 < a.body.mean() < 0.7
    from scipy import ndimage

    far = ~ndimage.binary_dilation(a.body, iterations=3)
    assert float(a.image[far].max()) < 0.02  # outside the body only PSF spill, gone 3 voxels away
    for k, suv in enumerate(a.lesion_suv, start=1):
        les = a.lesions == k
        assert les.sum() >= 3 and a.body[les].all()
        assert 4.0 <= suv <= 8.0
        assert a.image[les].max() > 2.0  # hot after the PSF
    # the body mask of the image finds the phantom's body, give or take the PSF's rim
    m = body_mask(a.image)
    assert (m & a.body).sum() / a.body.sum() > 0.97
    assert not (m & ~ndimage.binary_dilation(a.body, iterations=2)).any()


def test_pet_data_module_pairs(tmp_path):
    import torch

    from medrs_diff.datamodules.pet import PETDoseDataModule

    dm = PETDoseDataModule(str(tmp_path / "d"), phantoms=4, phantom_size=(32, 32), patch_size=32,
                           samples_per_epoch=4, val_samples=1, batch_size=2, dose_fraction=0.05)
    dm.setup("fit")
    item = dm.train_dataset[0]
    assert set(item) >= {"image", "cond", "mask", "case"} and item["image"].shape == (1, 32, 32)
    again = dm.train_dataset[0]
    torch.testing.assert_close(item["cond"], again["cond"])  # (seed, epoch, index) determines the item
    # model space of SUV [0, 10]; the low dose is noisier than the full dose but has its mean
    fd, ld = (item["image"] + 1) * 5, (item["cond"] + 1) * 5
    assert (ld - fd).abs().mean() > 0.1
    assert abs(float(ld.mean() - fd.mean())) < 0.1
    assert json.loads((tmp_path / "d" / "pet_000.json").read_text())["Units"] == "SUV"
    loader = dm.train_dataloader()  # the items follow the loader's epoch: new crops and noise each epoch
    loader.sampler.set_epoch(1)
    assert not torch.equal(dm.train_dataset[0]["cond"], item["cond"])
    loader.sampler.set_epoch(0)
    torch.testing.assert_close(dm.train_dataset[0]["cond"], item["cond"])
    with pytest.raises(DataError, match="no phantoms"):
        PETDoseDataModule(str(tmp_path / "empty")).setup("fit")
    shutil.rmtree(tmp_path / "d")


def test_hot_voxels_above_the_scaling_range_are_warned_about_and_kept_with_a_wider_range(tmp_path):
    """'pet' clips at SUV 10: a full-dose volume with a hotter lesion is named with the fix; 'pet:<max>' keeps it."""
    import warnings

    import torch

    from medrs_diff.data.scaling import resolve
    from medrs_diff.datamodules.pet import PETDoseDataModule
    from medrs_diff.io.nifti import write_nifti

    root = tmp_path / "hot"
    root.mkdir()
    vol = np.full((32, 32, 4), 1.0, np.float32)
    vol[10:14, 10:14, :] = 23.5  # a lesion at SUV 23.5, 64 voxels of 4096
    write_nifti(vol, root / "hot.nii.gz", np.eye(4))
    (root / "hot.json").write_text(json.dumps({"Units": "SUV"}))
    kw = dict(patch_size=32, samples_per_epoch=2, val_samples=1, val_fraction=0, batch_size=1)
    with pytest.warns(UserWarning, match=r"hot\.nii\.gz: 64 voxels \(1\.562%\) above 10 \(max 23\.5\).*'pet:24'"):
        PETDoseDataModule(str(root), **kw).setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = PETDoseDataModule(str(root), scaling="pet:24", **kw)
        dm.setup("fit")
    item = dm.train_dataset[0]
    assert float(((item["image"] + 1) * 12).max()) == pytest.approx(23.5, abs=1e-4)  # SUV [0, 24] -> [-1, 1]
    s = resolve("pet:24")
    torch.testing.assert_close(s.inverse(s.forward(torch.tensor([0.0, 23.5]))), torch.tensor([0.0, 23.5]))
    for bad in ("pet:", "pet:-3", "pet:nan", "pet:x"):
        with pytest.raises(DataError, match="does not end in a positive number"):
            resolve(bad)


@pytest.mark.parametrize("shape", [(4, 16), (16,), (8, 8, 8, 8)])
def test_pet_phantom_refuses_bad_shapes_with_the_fix(shape):
    with pytest.raises(ArgumentError, match=r"^shape: a PET phantom is 2-D or 3-D .* Fix: give 2 or 3 sizes"):
        pet_phantom(shape)


def test_pet_data_module_reorients_nifti_to_ras_like_inference(tmp_path):
    """A volume stored LPS (x and y flipped) gives the same training volume as the same scan stored RAS."""
    from medrs_diff.datamodules.pet import PETDoseDataModule
    from medrs_diff.io.nifti import write_nifti

    ras = pet_phantom((8, 16, 16), seed=2).image.transpose(1, 2, 0).astype(np.float32)  # (x, y, z)
    vols = {}
    for name, data, affine in (("ras", ras, np.eye(4)), ("lps", ras[::-1, ::-1].copy(), np.diag([-1, -1, 1, 1.0]))):
        root = tmp_path / name
        root.mkdir()
        write_nifti(data, root / "a.nii.gz", affine)
        (root / "a.json").write_text(json.dumps({"Units": "SUV"}))
        dm = PETDoseDataModule(str(root), patch_size=16, samples_per_epoch=1, val_samples=1, val_fraction=0)
        dm.setup("fit")
        vols[name] = dm.train_dataset.volumes[0]
    np.testing.assert_array_equal(vols["lps"], vols["ras"])
    assert not np.array_equal(ras[::-1, ::-1], ras)  # the flip is visible: the test could fail
