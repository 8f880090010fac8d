"""NIfTI through the registry: stored voxel order, affine / header / spacing / scaling record kept."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medrs_diff import io
from medrs_diff.data import readers, writers
from medrs_diff.data.scaling import Scaling
from medrs_diff.errors import DataError
from medrs_diff.io import nifti

#: An oblique affine whose entries float32 (the NIfTI sform) stores exactly.
OBLIQUE = np.array([[0.0, -1.5, 0.25, 12.0], [2.0, 0.0, 0.0, -4.0], [0.0, 0.125, 3.0, 7.5], [0, 0, 0, 1]])


def test_round_trip_keeps_values_affine_header_spacing_and_scaling(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    record = {"kind": "ct_window", "offset": [40.0], "scale": [200.0], "clip_min": [-160.0], "clip_max": [240.0]}
    src = nifti.write_nifti(data, tmp_path / "a.nii.gz", OBLIQUE, scaling=record)
    a = io.read(src)
    assert isinstance(a, nifti.NiftiVolume) and a.geometry.layout == ("x", "y", "z")
    np.testing.assert_array_equal(a.data, data)
    np.testing.assert_array_equal(a.affine, OBLIQUE)
    np.testing.assert_allclose(a.geometry.spacing, np.sqrt((OBLIQUE[:3, :3] ** 2).sum(0)), rtol=1e-6)
    assert a.geometry.extra["scaling"] == record
    out = io.write(tmp_path / "b.nii", a.data * 2, a.geometry, inputs=[src])
    b = io.read(out)
    np.testing.assert_array_equal(b.data, data * 2)
    np.testing.assert_array_equal(b.geometry.affine, OBLIQUE)
    for field in ("qform_code", "sform_code", "pixdim", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        np.testing.assert_array_equal(b.header[field], a.header[field], err_msg=field)
    assert nifti.read_nifti_scaling_record(out) == record
    assert readers.read_nifti_scaling(out) == Scaling.from_dict(record)  # the data-layer shim gives a Scaling


def test_channels_last_4d_and_native_dtype(tmp_path):
    labels = np.random.default_rng(1).integers(0, 4, (5, 4, 3, 2)).astype(np.int16)
    out = io.write(tmp_path / "l.nii.gz", labels, io.Geometry("x", affine=np.diag([1.0, 1.0, 2.0, 1.0])))
    f = io.read(out, dtype=None)
    assert f.data.dtype == np.int16 and f.geometry.layout == ("x", "y", "z", "c")
    np.testing.assert_array_equal(f.data, labels)
    assert f.geometry.spacing == (1.0, 1.0, 2.0)
    cf = nifti.read_nifti(nifti.write_nifti(np.moveaxis(labels, -1, 0), tmp_path / "cf.nii.gz", np.eye(4),
                                            channel_first=True), dtype=None)
    np.testing.assert_array_equal(cf.data, labels)


def test_rgb24_nifti_is_a_clear_error_not_garbage(tmp_path):
    rgb = np.zeros((4, 4, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 200
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(DataError, match=r"rgb\.nii\.gz: stores packed RGB24 colour voxels.*Fix: convert it"):
        io.read(tmp_path / "rgb.nii.gz")


def test_writer_needs_an_affine_and_refuses_a_reference_on_another_grid(tmp_path):
    with pytest.raises(DataError, match="NIfTI output needs an affine"):
        io.write(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), io.Geometry("numpy"))
    ref = nifti.write_nifti(np.zeros((4, 4, 4), np.float32), tmp_path / "ref.nii.gz", np.eye(4))
    with pytest.raises(DataError, match=r"reference grid \(4, 4, 4\) differs from the data \(3, 4, 4\)"):
        nifti.write_nifti(np.zeros((3, 4, 4)), tmp_path / "y.nii.gz", reference=ref)


def test_data_layer_shims_are_the_io_functions():
    assert readers.read_nifti is nifti.read_nifti and writers.write_nifti is nifti.write_nifti
    assert readers.load_nifti_image is nifti.load_nifti_image and writers.nifti_image is nifti.nifti_image


def test_real_ct_round_trip(shared_data, tmp_path):
    src = shared_data / "ct_mr_totalsegmentator" / "example_ct_sm.nii.gz"
    if not src.exists():
        pytest.skip(f"{src} absent")
    a = io.read(src)
    ref = nib.load(str(src))
    np.testing.assert_array_equal(a.geometry.affine, ref.affine)
    assert a.shape == ref.shape and a.geometry.spacing == tuple(float(z) for z in ref.header.get_zooms()[:3])
    b = io.read(io.write(tmp_path / Path(src).name, a.data, a.geometry, inputs=[src]))
    np.testing.assert_array_equal(b.geometry.affine, ref.affine)
    np.testing.assert_allclose(b.data, a.data, rtol=1e-6)
