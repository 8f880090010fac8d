"""The format registry: lookup by suffix, input listings, writers that never overwrite an input or leave
half-written files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from medrs_diff import io
from medrs_diff.errors import DataError


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_builtin_format_is_registered_with_its_suffixes():
    formats = io.registered_formats()
    assert set(formats) >= {"nifti", "geotiff", "image2d", "numpy", "cube", "sequence", "dicom"}
    assert io.format_for("a/b/case.NII.GZ").name == "nifti"  # longest suffix wins, case-insensitive
    assert io.format_for("scene.tif").name == "geotiff"
    assert io.format_for("cube.hdr").name == "cube" and io.format_for("cube.mat").name == "cube"
    assert io.format_for("rain.nc").name == "sequence" and io.format_for("x.h5").name == "sequence"
    assert io.format_for("slice.dcm").name == "dicom"
    assert io.stem_of("dir/case_001.nii.gz") == "case_001" and io.suffix_of("x.JPEG") == ".jpeg"


def test_unknown_suffix_names_the_known_ones():
    with pytest.raises(DataError, match=r"scan\.xyz: has an unknown file type '\.xyz'\. Fix: use one of .*\.nii\.gz"):
        io.read("scan.xyz")
    with pytest.raises(DataError) as err:
        io.format_for("noext")
    for s in (".nii", ".tif", ".png", ".npy", ".mat", ".hdr", ".nc", ".h5", ".dcm"):
        assert s in err.value.fix


def test_read_only_format_refuses_to_write(tmp_path):
    with pytest.raises(DataError, match=r"dicom files can be read but not written.*Fix: write one of"):
        io.write(tmp_path / "x.dcm", np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match="cannot be written"):
        io.check_writable(tmp_path / "x.dcm")
    assert io.check_writable(tmp_path / "new" / "x.nii.gz").name == "nifti"


def test_list_inputs_skips_temporary_hidden_and_unknown_files(tmp_path):
    for name in ("b.nii.gz", "a.tif", ".tmp-1234-c.nii.gz", ".hidden.png", "notes.txt", "d.npy"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.nii.gz").mkdir()
    assert [p.name for p in io.list_inputs(tmp_path)] == ["a.tif", "b.nii.gz", "d.npy"]
    assert [p.name for p in io.list_inputs(tmp_path, allowed=["nifti"])] == ["b.nii.gz"]
    assert io.is_temporary(tmp_path / ".tmp-1234-c.nii.gz") and not io.is_temporary(tmp_path / "b.nii.gz")
    with pytest.raises(DataError, match="holds no readable file"):
        io.list_inputs(tmp_path, allowed=["dicom"])


@pytest.mark.parametrize("name", ["in.nii.gz", "in.tif", "in.png", "in.npy", "in.hdr", "in.mat", "in.nc", "in.h5"])
def test_a_writer_never_overwrites_an_input(tmp_path, name):
    data = np.arange(2 * 6 * 8, dtype=np.uint8).reshape(2, 6, 8)
    data = data[:1] if name.endswith(".png") else data
    geometry = io.Geometry("test", affine=np.eye(4))
    src = io.write(tmp_path / name, data, geometry)
    before = _digest(src)
    with pytest.raises(DataError, match="same file as an input"):
        io.write(tmp_path / "." / name, data * 0, io.read(src).geometry, inputs=[src])
    assert _digest(src) == before


def _raise(*args, **kwargs):
    raise OSError("disk full")


def _half_write_then_raise(obj, path, *args, **kwargs):
    Path(path).write_bytes(b"partial")
    raise OSError("disk full")


def _patch_failure(monkeypatch, name: str) -> dict:
    """Make the library call that writes ``name`` fail half-way; returns write options that make others fail."""
    import h5py
    import nibabel as nib
    import scipy.io
    import xarray as xr
    from PIL import Image

    if name.endswith(".nii.gz"):
        monkeypatch.setattr(nib, "save", _half_write_then_raise)
    elif name.endswith(".png"):
        monkeypatch.setattr(Image.Image, "save", _half_write_then_raise)
    elif name.endswith(".npy"):
        monkeypatch.setattr(np, "save", _raise)
    elif name.endswith(".mat"):
        monkeypatch.setattr(scipy.io, "savemat", _raise)
    elif name.endswith(".nc"):
        monkeypatch.setattr(xr.Dataset, "to_netcdf", _half_write_then_raise)
    elif name.endswith(".h5"):
        monkeypatch.setattr(h5py.Group, "create_dataset", _raise)
    elif name.endswith(".tif"):  # the pixels are written, then the band names do not match
        return {"band_names": ("a", "b", "c")}
    elif name.endswith(".hdr"):  # GDAL has written data and header, then reading its header back fails
        monkeypatch.setattr(Path, "read_text", _raise)
    return {}


@pytest.mark.parametrize("name", ["out.nii.gz", "out.tif", "out.png", "out.npy", "out.hdr", "out.mat", "out.nc",
                                  "out.h5"])
def test_an_exception_inside_a_write_leaves_no_file(tmp_path, listing, monkeypatch, name):
    options = _patch_failure(monkeypatch, name)
    with pytest.raises((OSError, DataError)):
        io.write(tmp_path / name, np.ones((1, 6, 8), np.uint8), io.Geometry("test", affine=np.eye(4)), **options)
    assert listing(tmp_path) == []


def test_atomic_output_block_that_raises_leaves_nothing(tmp_path, listing):
    with pytest.raises(RuntimeError), io.atomic_output(tmp_path / "a.npy") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("model crashed")
    assert listing(tmp_path) == []


def test_a_write_killed_before_the_rename_leaves_only_a_skipped_temporary(tmp_path, listing, monkeypatch):
    from medrs_diff.io import atomic

    def killed(src, dst):  # the data is complete, then the process dies before the rename
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.write(tmp_path / "out.nii.gz", np.ones((4, 4, 4), np.float32), io.Geometry("x", affine=np.eye(4)))
    monkeypatch.undo()
    left = listing(tmp_path)
    assert left and "out.nii.gz" not in left and all(io.is_temporary(n) for n in left)
    io.write(tmp_path / "ok.npy", np.zeros(3))
    assert [p.name for p in io.list_inputs(tmp_path)] == ["ok.npy"]  # the leftover is never taken as an input


def test_write_accepts_a_torch_tensor(tmp_path):
    import torch

    out = io.write(tmp_path / "t.npy", torch.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(io.read(out).data, np.arange(6).reshape(2, 3))
