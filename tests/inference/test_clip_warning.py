"""Inference warns, naming the input, when a fixed-range scaling clips values outside the trained range
(SUV above the PET range, 16-bit values into an 8-bit model); windows and data-derived ranges do not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from medrs_diff.data.scaling import clip_counts, ct_window, digital_number, linear, pet_suv, reflectance, warn_clipped
from medrs_diff.inference import tiling as I
from medrs_diff.io.nifti import write_nifti

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def identity(x):
    return x


def test_clip_counts_hand_case():
    x = np.array([[-1.0, 5.0, 11.0, np.nan], [0.0, 10.0, 12.0, 3.0]])
    assert clip_counts(linear(0.0, 10.0), x) == (3, 7)
    # per-channel bounds along axis 0
    assert clip_counts(linear([0.0, 0.0], [10.0, 20.0]), x) == (2, 7)
    assert clip_counts(linear(0.0, 10.0, clip=False), x) == (0, 7)


def test_thresholds_per_kind():
    with pytest.warns(UserWarning, match=r"scan\.nii: 1 values \(0\.100%\) .* 'pet_suv'.*Fix: .*'pet:<max SUV>'"):
        warn_clipped("scan.nii", pet_suv(), 1, 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_clipped("s2.tif", reflectance(), 10, 1000)  # 1 % of saturated reflectance is a tail
        warn_clipped("ct.nii", ct_window(), 900, 1000)  # a window clips by design
        warn_clipped("pet.nii", pet_suv(), 0, 1000)
    with pytest.warns(UserWarning, match="'reflectance'"):
        warn_clipped("s2.tif", reflectance(), 11, 1000)


def test_geotiff_16bit_into_8bit_model_warns(tmp_path):
    a = np.full((1, 20, 20), 100, np.uint16)
    a[0, :5] = 4000  # 16-bit values: a quarter of the scene
    path = tmp_path / "scene16.tif"
    with rasterio.open(path, "w", driver="GTiff", height=20, width=20, count=1, dtype="uint16", crs="EPSG:32632",
                       transform=from_origin(0, 200, 10, 10)) as dst:
        dst.write(a)
    with pytest.warns(UserWarning, match=r"scene16\.tif: \d+ values \(2\d\.\d+%\) .*'dn8'"):
        I.infer_geotiff(identity, path, tmp_path / "out.tif", tile=8, overlap=0.25, in_scaling=digital_number(8),
                        progress=False)


def test_nifti_suv_above_range_warns_and_in_range_is_silent(tmp_path):
    vol = np.full((8, 8, 8), 2.0, np.float32)
    ok = write_nifti(vol, tmp_path / "ok.nii.gz", np.eye(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        I.infer_nifti(identity, ok, tmp_path / "o1.nii.gz", (4, 4, 4), in_scaling=pet_suv(), progress=False)
    vol[4, 4, 4] = 25.0  # one lesion voxel above SUV 10
    hot = write_nifti(vol, tmp_path / "hot.nii.gz", np.eye(4))
    with pytest.warns(UserWarning, match=r"hot\.nii\.gz: 1 values .* 'pet_suv'"):
        I.infer_nifti(identity, hot, tmp_path / "o2.nii.gz", (4, 4, 4), in_scaling=pet_suv(), progress=False)


def test_units_checks_refuse_16_bit_into_dn8_and_unit_reflectance_into_dn_models():
    from medrs_diff.data.scaling import check_bit_depth
    from medrs_diff.errors import DataError

    with pytest.raises(DataError, match=r"^s\.tif: values reach 4000, above 255.*more than 8 bits"):
        check_bit_depth("dn8", np.array([[0, 4000]], np.uint16), "s.tif")
    with pytest.raises(DataError, match=r"^r\.tif: values reach only 0\.42: reflectance in 0\.\.1.*x 10000"):
        check_bit_depth("reflectance", np.array([0.1, 0.42], np.float32), "r.tif")
    for spec, x in (("dn8", [0, 255]), ("reflectance", [0.0, 3500.0]), ("reflectance", [0.0, 0.0]),
                    ("mri", [0.0, 0.4]), (None, [0, 70000])):
        check_bit_depth(spec, np.array(x, np.float32), "ok.tif")  # right units, an empty tile, other scalings
