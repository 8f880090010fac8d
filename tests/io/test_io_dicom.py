"""DICOM via pydicom: (frame, y, x) in modality units, spacing, affine, PET SUV inputs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from medrs_diff import io
from medrs_diff.errors import DataError

pydicom = pytest.importorskip("pydicom")


def _write_dicom(path, pixels: np.ndarray, **fields) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = fields.pop("sop_class", "1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for k, v in fields.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_synthetic_ct_slice_rescale_spacing_and_affine(tmp_path):
    raw = np.arange(4 * 5, dtype=np.uint16).reshape(4, 5) * 10
    s = 1 / np.sqrt(2)
    _write_dicom(tmp_path / "ct.dcm", raw, Modality="CT", RescaleSlope=2, RescaleIntercept=-1024,
                 PixelSpacing=[0.5, 0.75], SliceThickness=2.5, ImagePositionPatient=[10, -20, 30],
                 ImageOrientationPatient=[s, s, 0, 0, 0, -1])
    f = io.read(tmp_path / "ct.dcm")
    assert f.shape == (1, 4, 5) and f.geometry.layout == ("z", "y", "x") and f.data.dtype == np.float32
    np.testing.assert_array_equal(f.data[0], raw * 2.0 - 1024)
    assert f.geometry.spacing == (2.5, 0.5, 0.75) and f.geometry.extra["modality"] == "CT"
    # pixel (row 3, column 4): LPS = IPP + 4 * 0.75 * row direction + 3 * 0.5 * column direction
    lps = np.array([10, -20, 30]) + 4 * 0.75 * np.array([s, s, 0]) + 3 * 0.5 * np.array([0, 0, -1])
    np.testing.assert_allclose(f.geometry.affine @ [0, 3, 4, 1], [-lps[0], -lps[1], lps[2], 1.0])


def test_synthetic_multiframe_and_pet_suv_factor(tmp_path):
    raw = np.random.default_rng(8).integers(0, 1000, (3, 4, 4)).astype(np.uint16)
    from pydicom.dataset import Dataset

    rp = Dataset()
    rp.RadionuclideTotalDose, rp.RadionuclideHalfLife, rp.RadiopharmaceuticalStartTime = 370e6, 6586.2, "100000"
    _write_dicom(tmp_path / "pet.dcm", raw, sop_class="1.2.840.10008.5.1.4.1.1.128", Modality="PT", Units="BQML",
                 RescaleSlope=1.5, RescaleIntercept=0, PatientWeight=70, DecayCorrection="START",
                 SeriesTime="110000", RadiopharmaceuticalInformationSequence=[rp])
    f = io.read(tmp_path / "pet.dcm")
    assert f.shape == (3, 4, 4) and f.geometry.affine is None  # no position / orientation in the file
    np.testing.assert_allclose(f.data, raw * 1.5)
    expected = 70_000 / (370e6 * 2 ** (-3600 / 6586.2))  # weight (g) / dose decayed 1 h to the series start
    assert f.geometry.extra["suv_factor"] == pytest.approx(expected, rel=1e-9)
    assert f.geometry.extra["pet"]["half_life_s"] == 6586.2


def test_real_pet_slice_gives_the_suv_of_its_readme(shared_data):
    path = shared_data / "pet_tcia_slice" / "1.dcm"
    if not path.exists():
        pytest.skip(f"{path} absent")
    f = io.read(path)
    g = f.geometry
    assert f.shape == (1, 168, 168) and g.extra["modality"] == "PT" and g.extra["units"] == "BQML"
    assert float(f.data.max()) == pytest.approx(1327 * 9.12329, rel=1e-5)  # RescaleSlope applied
    assert g.spacing == pytest.approx((5.0, 4.07283, 4.07283))
    assert g.extra["suv_factor"] == pytest.approx(5.94e-4, rel=2e-3)
    assert float(f.data.max() * g.extra["suv_factor"]) == pytest.approx(7.19, abs=0.01)
    ipp = pydicom.dcmread(path).ImagePositionPatient
    np.testing.assert_allclose(g.affine @ [0, 0, 0, 1], [-float(ipp[0]), -float(ipp[1]), float(ipp[2]), 1])


def test_not_dicom_and_missing_pydicom_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "bad.dcm").write_bytes(b"nope" * 50)
    with pytest.raises(DataError, match=r"bad\.dcm: cannot be read as DICOM"):
        io.read(tmp_path / "bad.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed
    with pytest.raises(DataError, match=r"needs the pydicom package.*Fix: `pip install pydicom`"):
        io.read(tmp_path / "bad.dcm")
