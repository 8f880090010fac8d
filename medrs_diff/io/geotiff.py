"""GeoTIFF / TIFF (``.tif``, ``.tiff``) via rasterio: data (band, y, x) with CRS, transform, nodata,
band names and tags kept.

Plain, non-georeferenced TIFFs (clinical photographs, microscopy) are read by the same reader; their
geometry has ``crs`` and ``transform`` None. ``write_geotiff`` writes a tiled, compressed GTiff
atomically; the model-space scaling record goes into the ``MEDRS_SCALING`` tag.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from ..errors import DataError, require_file
from . import registry
from .atomic import atomic_output
from .records import SCALING_TAG, scaling_json
from .types import ArrayFile, Geometry

PathLike = str | os.PathLike


class GeoRaster(ArrayFile):
    """A (window of a) GeoTIFF as ``data`` (C, H, W) with shortcuts to its geometry."""

    @property
    def crs(self) -> Any:
        return self.geometry.crs

    @property
    def transform(self) -> Any:
        """The affine transform (identity for a plain TIFF, as rasterio reports it)."""
        t = self.geometry.transform
        return t if t is not None else self.geometry.extra.get("pixel_transform", Affine.identity())

    @property
    def nodata(self) -> float | None:
        return self.geometry.nodata

    @property
    def band_names(self) -> tuple[str | None, ...]:
        return self.geometry.band_names or ()

    @property
    def tags(self) -> dict[str, str]:
        return self.geometry.extra.get("tags", {})

    def valid_mask(self) -> np.ndarray:
        """(H, W) bool: pixels where no band is nodata or NaN."""
        return valid_mask(self.data, self.nodata)


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) bool from (C, H, W): True where every band is finite and differs from ``nodata``."""
    ok = np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else np.ones(data.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        ok &= data != nodata
    return ok.all(axis=0)


def open_geotiff(path: PathLike) -> rasterio.DatasetReader:
    """Open a raster with rasterio; ``DataError`` naming the file if missing or unreadable."""
    p = require_file(path, "GeoTIFF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(p)
    except rasterio.errors.RasterioError as exc:
        raise DataError(p, f"cannot be read as a raster ({exc})",
                        "check that it is a complete GeoTIFF (gdalinfo should open it)") from exc


def check_bands(path: PathLike, count: int, bands: Sequence[int] | None,
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


def is_georeferenced(src: rasterio.DatasetReader) -> bool:
    """True when an open raster has a CRS, a non-identity transform or GCPs."""
    return src.crs is not None or src.transform != Affine.identity() or bool(src.gcps[0])


def read_geotiff(path: PathLike, bands: Sequence[int] | None = None, window: Window | None = None,
                 expected_bands: int | None = None) -> GeoRaster:
    """Read (a window of) a GeoTIFF as (C, H, W) with its geometry; bands are 1-based."""
    with open_geotiff(path) as src:
        idx = check_bands(path, src.count, bands, expected_bands)
        try:
            data = src.read(idx, window=window)
        except rasterio.errors.RasterioError as exc:
            raise DataError(path, f"pixel data cannot be read ({exc})", "the file is truncated or corrupt") from exc
        transform = src.window_transform(window) if window is not None else src.transform
        georef = is_georeferenced(src)
        tags = dict(src.tags())
        extra: dict[str, Any] = {"tags": tags, "count": src.count, "dtype": src.dtypes[0]}
        if not georef:
            extra["pixel_transform"] = transform
        if SCALING_TAG in tags:
            extra["scaling"] = json.loads(tags[SCALING_TAG])
        names = tuple(src.descriptions[i - 1] for i in idx)
        geometry = Geometry(kind="geotiff", layout=("band", "y", "x"), crs=src.crs,
                            transform=transform if georef else None,
                            spacing=(abs(transform.e), abs(transform.a)) if georef else None,
                            nodata=src.nodata, band_names=names, extra=extra)
        return GeoRaster(Path(path), data, geometry)


def read_geotiff_scaling_record(path: PathLike) -> dict[str, Any] | None:
    """The scaling record (a plain dict) written by ``write_geotiff``, or None."""
    with open_geotiff(path) as src:
        text = src.tags().get(SCALING_TAG)
    return None if text is None else json.loads(text)


def has_valid_data(path: PathLike, bands: Sequence[int] | None = None, max_size: int = 512) -> bool:
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


def undeclared_nonfinite(data: np.ndarray, nodata: float | None, per_band: bool = False) -> np.ndarray:
    """(H, W) bool from (C, H, W) (``per_band``: (C, H, W)): True where a band is NaN / +-Inf that the
    file does not declare as nodata (a NaN nodata declares NaN; an Inf only when it is the nodata value)."""
    if not np.issubdtype(data.dtype, np.floating):
        return np.zeros(data.shape if per_band else data.shape[-2:], bool)
    bad = ~np.isfinite(data)
    if nodata is not None:
        bad &= ~(np.isnan(data) if np.isnan(nodata) else data == nodata)
    return bad if per_band else bad.any(axis=0)


def nonfinite_pixels(path: PathLike, bands: Sequence[int] | None = None) -> tuple[int, np.ndarray]:
    """Count the pixels holding undeclared NaN / Inf (:func:`undeclared_nonfinite`) block by block (memory
    bounded), and each selected band's finite minimum over its data pixels (NaN for a band without
    any). Integer rasters hold none and are not scanned."""
    with open_geotiff(path) as src:
        idx = check_bands(path, src.count, bands)
        mins = np.full(len(idx), np.nan)
        if not all(np.issubdtype(np.dtype(src.dtypes[i - 1]), np.floating) for i in idx):
            return 0, mins
        count, nodata = 0, src.nodata
        for _, window in src.block_windows(1):
            a = src.read(idx, window=window)
            count += int(undeclared_nonfinite(a, nodata).sum())
            ok = np.isfinite(a) if nodata is None or np.isnan(nodata) else np.isfinite(a) & (a != nodata)
            for j in range(len(idx)):
                if ok[j].any():
                    mins[j] = np.nanmin([mins[j], float(a[j][ok[j]].min())])
    return count, mins


def geotiff_profile(height: int, width: int, count: int, dtype: Any, crs: Any, transform: Any,
                    nodata: float | None = None) -> dict[str, Any]:
    """A tiled, compressed GTiff profile for ``rasterio.open(..., 'w', **profile)``."""
    profile: dict[str, Any] = dict(driver="GTiff", height=height, width=width, count=count,
                                   dtype=np.dtype(dtype).name, crs=crs, transform=transform, nodata=nodata,
                                   compress="deflate", BIGTIFF="IF_SAFER")
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    return profile


def set_band_metadata(dst: rasterio.DatasetWriter, band_names: Sequence[str | None] | None,
                      scaling: Any, tags: Mapping[str, str] | None = None) -> None:
    """Band descriptions, the scaling record (``Scaling``, dict or JSON) and extra tags on an open writer."""
    if band_names is not None:
        if len(band_names) != dst.count:
            raise DataError(dst.name, f"{len(band_names)} band names for {dst.count} bands",
                            "give one name per output band")
        for i, name in enumerate(band_names, start=1):
            if name is not None:
                dst.set_band_description(i, name)
    extra = dict(tags or {})
    if scaling is not None:
        extra[SCALING_TAG] = scaling_json(scaling)
    if extra:
        dst.update_tags(**extra)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def write_geotiff(data: Any, out_path: PathLike, *, crs: Any = None, transform: Any = None,
                  nodata: float | None = None, band_names: Sequence[str | None] | None = None,
                  dtype: Any = None, reference: PathLike | None = None, scaling: Any = None,
                  tags: Mapping[str, str] | None = None, inputs: Iterable[PathLike] = ()) -> Path:
    """Write (C, H, W) or (H, W) ``data`` as GeoTIFF, atomically, taking CRS / transform / nodata / band
    names from ``reference`` unless given. Without CRS and transform a plain (non-georeferenced) TIFF
    is written; a CRS without a transform is refused."""
    arr = _numpy(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(out_path, f"data has shape {arr.shape}", "pass (C, H, W) or (H, W)")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    inputs = list(inputs)
    if reference is not None:
        inputs.append(reference)
        with open_geotiff(reference) as ref:
            if (ref.height, ref.width) != arr.shape[1:]:
                raise DataError(reference, f"reference is {ref.height}x{ref.width} but data is "
                                f"{arr.shape[1]}x{arr.shape[2]}", "write data on the reference grid")
            crs = ref.crs if crs is None else crs
            if transform is None and is_georeferenced(ref):
                transform = ref.transform
            nodata = ref.nodata if nodata is None else nodata
            if band_names is None and ref.count == arr.shape[0]:
                band_names = ref.descriptions
    if transform is None and crs is not None:
        raise DataError(out_path, "no transform given", "pass `transform=` or `reference=`")
    dtype = np.dtype(dtype if dtype is not None else arr.dtype)
    profile = geotiff_profile(arr.shape[1], arr.shape[2], arr.shape[0], dtype, crs, transform, nodata)
    if transform is None:
        del profile["transform"]
    with atomic_output(out_path, inputs) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr.astype(dtype, copy=False))
            set_band_metadata(dst, band_names, scaling, tags)
    return Path(out_path)


def _write(path: PathLike, data: np.ndarray, geometry: Geometry | None, *, inputs: Iterable[PathLike] = (),
           **kwargs: Any) -> Path:
    """Registry writer: CRS, transform, nodata, band names (when one per band), tags and scaling kept."""
    g = geometry or Geometry("geotiff")
    arr = data[None] if data.ndim == 2 else data
    kwargs.setdefault("crs", g.crs)
    kwargs.setdefault("transform", g.transform)
    kwargs.setdefault("nodata", g.nodata)
    if g.band_names is not None and len(g.band_names) == arr.shape[0]:
        kwargs.setdefault("band_names", list(g.band_names))
    if g.kind == "geotiff":
        kwargs.setdefault("tags", {k: v for k, v in g.extra.get("tags", {}).items() if k != SCALING_TAG})
    if g.extra.get("scaling") is not None:
        kwargs.setdefault("scaling", g.extra["scaling"])
    return write_geotiff(arr, path, inputs=inputs, **kwargs)


registry.register(registry.FileFormat(
    name="geotiff", suffixes=(".tif", ".tiff"), reader=read_geotiff, writer=_write,
    description="GeoTIFF or plain TIFF, (band, y, x); CRS, transform, nodata, band names and tags kept",
    requires="rasterio"))
