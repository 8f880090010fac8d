"""Plain readers for single files (NIfTI, GeoTIFF) that keep the geometry and fail with clear messages.

Pipelines use MONAI / TorchGeo on top of these; these are what writers and tiled inference use to get
the exact grid (affine, CRS, transform, nodata) of an input so the output lands on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import rasterio
from rasterio.windows import Window

from .errors import DataError, require_file
from .scaling import Scaling

SCALING_TAG = "MEDRS_SCALING"  # GeoTIFF metadata tag / NIfTI comment extension holding the scaling record


@dataclass
class NiftiVolume:
    """A NIfTI image in its stored voxel order: ``data`` (spatial..., [channels]), ``affine``, ``header``."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path


@dataclass
class GeoRaster:
    """A GeoTIFF (or a window of it) as ``data`` (C, H, W) with its CRS, transform, nodata and band names."""

    data: np.ndarray
    crs: Any
    transform: Any
    nodata: float | None
    band_names: tuple[str | None, ...]
    path: Path
    tags: dict[str, str] = field(default_factory=dict)

    def valid_mask(self) -> np.ndarray:
        """(H, W) bool: pixels where no band is nodata or NaN."""
        return valid_mask(self.data, self.nodata)


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) bool from (C, H, W): True where every band is finite and differs from ``nodata``."""
    ok = np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else np.ones(data.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        ok &= data != nodata
    return ok.all(axis=0)


def load_nifti_image(path: str | os.PathLike) -> nib.Nifti1Image:
    """Open a NIfTI (header only, data stays on disk); ``DataError`` if missing or not NIfTI."""
    p = require_file(path, "NIfTI file")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types (ImageFileError, OSError, EOFError...)
        raise DataError(p, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})",
                        "check that it is a complete .nii / .nii.gz file (re-export or re-download it)") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(p, f"is a {type(img).__name__}, not NIfTI", "convert it to .nii.gz first")
    return img


def read_nifti(path: str | os.PathLike, dtype: Any = np.float32) -> NiftiVolume:
    """Read a NIfTI file into memory, keeping affine and header exactly."""
    img = load_nifti_image(path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32) if dtype is not None else img.dataobj)
    except Exception as exc:
        raise DataError(path, f"voxel data cannot be read ({type(exc).__name__}: {exc})",
                        "the file is truncated or corrupt: re-export or re-download it") from exc
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return NiftiVolume(data, img.affine.copy(), img.header.copy(), Path(path))


def read_nifti_scaling(path: str | os.PathLike) -> Scaling | None:
    """The model-space scaling recorded by ``write_nifti``, or None."""
    for ext in load_nifti_image(path).header.extensions:
        content = ext.get_content()
        if ext.get_code() == 6 and content.startswith(SCALING_TAG.encode()):
            return Scaling.from_json(content[len(SCALING_TAG) + 1 :].decode())
    return None


def open_geotiff(path: str | os.PathLike) -> rasterio.DatasetReader:
    """Open a raster with rasterio; ``DataError`` naming the file if missing or unreadable."""
    p = require_file(path, "GeoTIFF")
    try:
        return rasterio.open(p)
    except rasterio.errors.RasterioError as exc:
        raise DataError(p, f"cannot be read as a raster ({exc})",
                        "check that it is a complete GeoTIFF (gdalinfo should open it)") from exc


def check_bands(path: str | os.PathLike, count: int, bands: Sequence[int] | None,
                expected: int | None = None) -> list[int]:
    """Validate 1-based band indices against a file's band count; returns the list to read."""
    idx = list(range(1, count + 1)) if bands is None else [int(b) for b in bands]
    bad = [b for b in idx if b < 1 or b > count]
    if bad:
        raise DataError(path, f"has {count} band(s) but bands {bad} were requested",
                        f"request 1-based band indices between 1 and {count}")
    if expected is not None and len(idx) != expected:
        raise DataError(path, f"gives {len(idx)} band(s) but {expected} are expected",
                        f"pass a file with {expected} bands or select {expected} with `bands=`")
    return idx


def read_geotiff(path: str | os.PathLike, bands: Sequence[int] | None = None, window: Window | None = None,
                 expected_bands: int | None = None) -> GeoRaster:
    """Read (a window of) a GeoTIFF as (C, H, W) with its geometry; bands are 1-based."""
    with open_geotiff(path) as src:
        idx = check_bands(path, src.count, bands, expected_bands)
        try:
            data = src.read(idx, window=window)
        except rasterio.errors.RasterioError as exc:
            raise DataError(path, f"pixel data cannot be read ({exc})", "the file is truncated or corrupt") from exc
        transform = src.window_transform(window) if window is not None else src.transform
        names = tuple(src.descriptions[i - 1] for i in idx)
        return GeoRaster(data, src.crs, transform, src.nodata, names, Path(path), dict(src.tags()))


def read_geotiff_scaling(path: str | os.PathLike) -> Scaling | None:
    """The model-space scaling recorded by ``write_geotiff``, or None."""
    with open_geotiff(path) as src:
        text = src.tags().get(SCALING_TAG)
    return None if text is None else Scaling.from_dict(json.loads(text))


def has_valid_data(path: str | os.PathLike, bands: Sequence[int] | None = None, max_size: int = 512) -> bool:
    """True if a raster holds at least one pixel that is neither nodata nor NaN in every selected band.

    Reads a decimated view first (cheap, uses overviews when present) and falls back to a full
    windowed scan only when that view looks empty, so memory stays bounded.
    """
    with open_geotiff(path) as src:
        idx = check_bands(path, src.count, bands)
        h, w = min(src.height, max_size), min(src.width, max_size)
        small = src.read(idx, out_shape=(len(idx), h, w), resampling=rasterio.enums.Resampling.nearest)
        if valid_mask(small, src.nodata).any():
            return True
        for _, window in src.block_windows(1):
            if valid_mask(src.read(idx, window=window), src.nodata).any():
                return True
    return False
