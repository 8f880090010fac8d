"""DICOM (``.dcm``), read with pydicom when it is installed (``pip install pydicom``); read-only.

One file gives (frame, y, x) float32: a single slice is (1, rows, cols), a multi-frame file
(frames, rows, cols); a colour image (SamplesPerPixel 3) is (3, rows, cols). Stored values are
mapped to modality units with RescaleSlope / RescaleIntercept (PET: Bq/mL when Units is BQML; CT: HU).

Geometry: ``layout`` ("z", "y", "x") (or ("channel", "y", "x")), ``spacing`` (slice spacing,
row spacing, column spacing) in mm from SpacingBetweenSlices / SliceThickness and PixelSpacing,
``affine`` (when ImagePositionPatient and ImageOrientationPatient are present) mapping the indices
(frame, row, column, 1) to RAS mm (DICOM's LPS with x and y negated, the NIfTI convention). PET files
put the SUV inputs in ``extra["pet"]`` (units, patient weight, injected dose, half-life, injection
and series times, decay correction) and ``extra["suv_factor"]``: multiply the Bq/mL data by it to get
body-weight SUV (weight in g over the dose decayed to the series start, when the images are decay
corrected to START; to the acquisition otherwise). :func:`read_dicom_series` assembles a folder of
single-slice files of one series into a volume (sorted along the slice normal; mixed modalities, series,
orientations, in-plane grids or slice spacings are refused).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import DataError, require_file
from . import registry
from .types import ArrayFile, Geometry

PathLike = str | os.PathLike


def _pydicom(path: PathLike) -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise DataError(path, "reading DICOM needs the pydicom package, which is not installed",
                        "`pip install pydicom` (or `pip install medrs-diff[test]`)") from exc
    return pydicom


def _float(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _seconds(tm: Any) -> float | None:
    """DICOM TM ``HHMMSS[.ffffff]`` (or ``HH:MM:SS``) -> seconds after midnight."""
    if tm is None or str(tm).strip() == "":
        return None
    s = str(tm).strip().replace(":", "")
    try:
        hh, mm = int(s[0:2]), int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss


def _pet(ds: Any) -> tuple[dict[str, Any], float | None]:
    info: dict[str, Any] = {"units": str(ds.get("Units", "")) or None,
                            "patient_weight_kg": _float(ds.get("PatientWeight")),
                            "decay_correction": str(ds.get("DecayCorrection", "")) or None,
                            "series_time": str(ds.get("SeriesTime", "")) or None,
                            "acquisition_time": str(ds.get("AcquisitionTime", "")) or None}
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if seq:
        r = seq[0]
        info.update(injected_dose_bq=_float(r.get("RadionuclideTotalDose")),
                    half_life_s=_float(r.get("RadionuclideHalfLife")),
                    injection_time=str(r.get("RadiopharmaceuticalStartTime", "")) or None,
                    radiopharmaceutical=str(r.get("Radiopharmaceutical", "")) or None)
    weight, dose, half = info["patient_weight_kg"], info.get("injected_dose_bq"), info.get("half_life_s")
    if info["units"] != "BQML" or not weight or not dose or not half:
        return info, None
    t_inj = _seconds(info.get("injection_time"))
    ref_time = info["series_time"] if info["decay_correction"] in (None, "START") else info["acquisition_time"]
    t_ref = _seconds(ref_time)
    if info["decay_correction"] == "ADMIN":
        elapsed = 0.0
    elif t_inj is None or t_ref is None:
        return info, None
    else:
        elapsed = (t_ref - t_inj) % 86400.0  # across midnight
    info["decay_s"] = elapsed
    decayed = dose * 2.0 ** (-elapsed / half)
    return info, weight * 1000.0 / decayed


def _affine(ds: Any, n_frames: int, spacing: tuple[float, float, float]) -> np.ndarray | None:
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None
    origin = np.asarray([float(v) for v in ipp])
    x_dir = np.asarray([float(v) for v in iop[:3]])  # along a row: increasing column index
    y_dir = np.asarray([float(v) for v in iop[3:]])  # down a column: increasing row index
    normal = np.cross(x_dir, y_dir)
    step = normal * spacing[0]
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if frames is not None and n_frames > 1 and len(frames) == n_frames:
        try:
            first = np.asarray([float(v) for v in frames[0].PlanePositionSequence[0].ImagePositionPatient])
            last = np.asarray([float(v) for v in frames[-1].PlanePositionSequence[0].ImagePositionPatient])
            origin, step = first, (last - first) / (n_frames - 1)
        except (AttributeError, IndexError, ValueError):
            pass
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = y_dir * spacing[1]
    lps[:3, 2] = x_dir * spacing[2]
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_dicom(path: PathLike, rescale: bool = True) -> ArrayFile:
    """Read one DICOM file as (frames, rows, cols) float32 in modality units (see the module notes)."""
    p = require_file(path, "DICOM file")
    pydicom = _pydicom(p)
    try:
        ds = pydicom.dcmread(p)
    except Exception as exc:  # InvalidDicomError, EOFError, ...
        raise DataError(p, f"cannot be read as DICOM ({type(exc).__name__}: {exc})",
                        "check that it is a complete DICOM file (Part 10, with the DICM preamble)") from exc
    if "PixelData" not in ds:
        raise DataError(p, "holds no image (no PixelData element)", "pass an image DICOM, not a report / structure")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise DataError(p, f"pixel data cannot be decoded ({type(exc).__name__}: {exc}; transfer syntax {name})",
                        "install a decoder for compressed DICOM (`pip install pylibjpeg pylibjpeg-libjpeg "
                        "pylibjpeg-openjpeg` or `python-gdcm`), or decompress it with `gdcmconv --raw`") from exc
    pixels = np.array(pixels)
    del ds.PixelData  # the header is kept in the geometry, the pixels are in ``data``
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        if n_frames > 1:
            raise DataError(p, "is a multi-frame colour DICOM", "split it into single-frame files first")
        data, layout = np.moveaxis(np.asarray(pixels), -1, 0), ("channel", "y", "x")
    else:
        data = np.asarray(pixels).reshape(n_frames, int(ds.Rows), int(ds.Columns))
        layout = ("z", "y", "x")
    slope = _float(ds.get("RescaleSlope"))
    intercept = _float(ds.get("RescaleIntercept"))
    slope = slope if slope is not None else 1.0
    intercept = intercept if intercept is not None else 0.0
    if rescale:
        data = data.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    pixel_spacing = ds.get("PixelSpacing")
    row_sp, col_sp = (float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing else (1.0, 1.0)
    slice_sp = _float(ds.get("SpacingBetweenSlices"))
    slice_sp = slice_sp if slice_sp is not None else _float(ds.get("SliceThickness"))
    spacing = (slice_sp if slice_sp is not None else 1.0, row_sp, col_sp)
    extra: dict[str, Any] = {
        "modality": str(ds.get("Modality", "")) or None, "rescale_slope": slope, "rescale_intercept": intercept,
        "rescaled": rescale, "units": str(ds.get("Units", "")) or None,
        "instance_number": ds.get("InstanceNumber"), "slice_location": _float(ds.get("SliceLocation")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")) or None, "pixel_spacing_known": bool(pixel_spacing)}
    if extra["modality"] == "PT":
        extra["pet"], extra["suv_factor"] = _pet(ds)
    geometry = Geometry(kind="dicom", layout=layout, spacing=spacing if layout[0] == "z" else spacing[1:],
                        affine=_affine(ds, n_frames, spacing) if layout[0] == "z" else None, header=ds,
                        extra=extra)
    return ArrayFile(p, data, geometry)


def read_dicom_series(folder: PathLike, rescale: bool = True, tolerance_mm: float = 0.01) -> ArrayFile:
    """A folder of single-slice DICOM files of one series -> (z, y, x) float32 volume, sorted along the slice
    normal, with the spacing between slice positions (refused unless uniform within ``tolerance_mm``)."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, "is not a folder of DICOM slices", "pass the folder holding the series' .dcm files")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
    if not files:
        raise DataError(root, "holds no .dcm files", "point at the folder of one DICOM series")
    slices = [read_dicom(f, rescale=rescale) for f in files]
    first = slices[0].geometry
    keys = ("modality", "series_uid")
    for s, f in zip(slices, files):
        if s.data.shape[0] != 1 or s.geometry.layout[0] != "z":
            raise DataError(f, "is not a single-slice grey-level DICOM", "pass a series of single-slice files")
        for k in keys:
            if s.geometry.extra.get(k) != first.extra.get(k):
                raise DataError(f, f"has {k} {s.geometry.extra.get(k)!r}, unlike {files[0].name} "
                                f"({first.extra.get(k)!r})", "put one series per folder")
        if s.data.shape != slices[0].data.shape or s.geometry.spacing[1:] != first.spacing[1:]:
            raise DataError(f, "has another in-plane grid than the first slice", "put one series per folder")
    if len(slices) == 1:
        return slices[0]
    iop = [np.asarray([float(v) for v in s.geometry.header.get("ImageOrientationPatient", [])]) for s in slices]
    ipp = [s.geometry.header.get("ImagePositionPatient") for s in slices]
    if any(v.shape != (6,) for v in iop) or any(p is None for p in ipp):
        raise DataError(root, "slices lack ImagePositionPatient / ImageOrientationPatient",
                        "a volume cannot be assembled without slice positions")
    if any(not np.allclose(v, iop[0], atol=1e-4) for v in iop):
        raise DataError(root, "slices have different orientations", "put one series per folder")
    normal = np.cross(iop[0][:3], iop[0][3:])
    pos = np.asarray([np.dot(normal, [float(v) for v in p]) for p in ipp])
    order = np.argsort(pos)
    gaps = np.diff(pos[order])
    if gaps.min() <= tolerance_mm:
        raise DataError(root, "two slices share one position (duplicate slices)", "remove the duplicates")
    if gaps.max() - gaps.min() > tolerance_mm:
        raise DataError(root, f"the series has mixed slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm)",
                        "resample it to a uniform spacing or split it into uniform parts")
    ordered = [slices[i] for i in order]
    data = np.concatenate([s.data for s in ordered], axis=0)
    spacing = (float(gaps.mean()), *first.spacing[1:])
    g0 = ordered[0].geometry
    affine = None
    if g0.affine is not None:
        affine = g0.affine.copy()
        step = np.asarray([float(v) for v in ipp[order[1]]]) - np.asarray([float(v) for v in ipp[order[0]]])
        affine[:3, 0] = np.diag([-1.0, -1.0, 1.0]) @ step
    extra = dict(g0.extra, n_slices=len(ordered), files=[str(files[i]) for i in order])
    geometry = Geometry(kind="dicom", layout=("z", "y", "x"), spacing=spacing, affine=affine, header=g0.header,
                        extra=extra)
    return ArrayFile(root, data, geometry)


registry.register(registry.FileFormat(
    name="dicom", suffixes=(".dcm",), reader=read_dicom, writer=None,
    description="DICOM image (read only), (frame, y, x) in modality units; PET SUV inputs kept", requires="pydicom"))
