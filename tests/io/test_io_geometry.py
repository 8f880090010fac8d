"""The one grid check: shape, affine, CRS, transform; messages name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from medrs_diff import io
from medrs_diff.errors import DataError
from medrs_diff.io.geometry import compare_grids


def test_each_mismatch_names_the_file_the_reference_and_a_fix():
    with pytest.raises(DataError, match=r"^p\.nii: spatial shape \(3, 4\) differs from \(4, 4\) of r\.nii\. Fix: "):
        compare_grids("p.nii", "r.nii", shape=(3, 4), ref_shape=(4, 4), shape_label="spatial shape")
    aff = np.eye(4)
    shifted = aff.copy()
    shifted[0, 3] = 2.0
    with pytest.raises(DataError, match=r"affine differs .* by up to 2 .*Fix: .*, or raise `geometry_atol`"):
        compare_grids("p", "r", affine=shifted, ref_affine=aff, hints={"affine": "raise `geometry_atol`"})
    compare_grids("p", "r", affine=shifted, ref_affine=aff, atol=float("inf"))  # skipped on request
    with pytest.raises(DataError, match=r"p\.tif: CRS EPSG:32632 differs from EPSG:32633 of r\.tif.*gdalwarp"):
        compare_grids("p.tif", "r.tif", crs="EPSG:32632", ref_crs="EPSG:32633")
    with pytest.raises(DataError, match=r"transform .* differs"):
        compare_grids("p", "r", transform=from_origin(0, 10, 1, 1), ref_transform=from_origin(1, 10, 1, 1))
    compare_grids("p", "r", shape=(2, 2), ref_shape=None, crs=None, ref_crs="EPSG:4326")  # absent parts: no check


def test_check_same_grid_on_files_ignores_channel_axes_when_asked(tmp_path):
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    a = io.read(io.write(tmp_path / "a.nii.gz", np.zeros((4, 5, 6, 2), np.float32), io.Geometry("x", affine=aff)))
    b = io.read(io.write(tmp_path / "b.nii.gz", np.zeros((4, 5, 6), np.float32), io.Geometry("x", affine=aff)))
    io.check_same_grid(a, b, spatial_only=True)
    with pytest.raises(DataError, match=r"a\.nii\.gz: shape \(4, 5, 6, 2\) differs from \(4, 5, 6\) of .*b\.nii\.gz"):
        io.check_same_grid(a, b)
    g = io.Geometry("geotiff", layout=("band", "y", "x"), crs="EPSG:4326", transform=from_origin(0, 5, 1, 1))
    r = io.read(io.write(tmp_path / "r.tif", np.zeros((3, 5, 5), np.uint8), g))
    p = io.read(io.write(tmp_path / "p.tif", np.zeros((1, 5, 5), np.uint8), g))
    io.check_same_grid(p, r, spatial_only=True)
    moved = io.Geometry("geotiff", crs="EPSG:4326", transform=from_origin(1, 5, 1, 1))
    q = io.read(io.write(tmp_path / "q.tif", np.zeros((1, 5, 5), np.uint8), moved))
    with pytest.raises(DataError, match=rf"{Path(q.path).name}: transform"):
        io.check_same_grid(q, r, spatial_only=True)
