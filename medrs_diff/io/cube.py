"""Hyperspectral cubes: MATLAB ``.mat`` (v5 via scipy.io, v7.3 via h5py) and ENVI (``.hdr`` + raw data
file, via GDAL's ENVI driver), read as (band, y, x).

``.mat`` files hold named variables; the cube is ``key`` or the single large numeric array (one that
is at least twice the size of every other). Arrays keep MATLAB's shape (v7.3 datasets, which h5py
sees with reversed axes, are transposed back). Shapes are turned into (band, y, x) so:

- 3-D (rows, cols, bands) (Indian Pines, Pavia, Salinas): the band axis ``band_axis`` (default last)
  moves first.
- 2-D (bands, pixels) with the image size known (``shape=(rows, cols)`` or scalar variables such as
  ``nRow`` / ``nCol``, ``lines`` / ``cols``): pixels are in MATLAB column-major order, so
  ``Y.reshape(bands, rows, cols, order="F")`` (Jasper Ridge, Samson; see their README). A
  (pixels, bands) array is transposed first.
- any other 2-D array (a label map) -> (1, rows, cols); 4-D and larger arrays are returned as stored
  (``layout`` empty).

Small numeric side variables (scalars such as ``maxValue``, vectors such as ``SlectBands``) are kept in
``geometry.extra["variables"]``; a ``wavelength(s)`` variable with one value per band becomes
``geometry.wavelengths``. ENVI wavelengths (``wavelength`` / ``wavelength units``) are given in nm.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, require_file
from . import registry
from .atomic import atomic_outputs
from .types import ArrayFile, Geometry

PathLike = str | os.PathLike
#: Variable written by :func:`write_mat` (and read first when no key is given and it is present).
MAT_KEY = "cube"
_ROW_NAMES = ("nrow", "nrows", "lines", "rows", "height", "nlines")
_COL_NAMES = ("ncol", "ncols", "cols", "columns", "samples", "width", "nsamples")
_WAVELENGTH_NAMES = ("wavelength", "wavelengths", "wl", "lambda", "wavelength_nm")
_ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".raw", ".bin", ".bsq", ".bil", ".bip", ".envi")
_SIDE_MAX = 4096  # largest side variable (elements) copied into geometry.extra


# ------------------------------------------------------------------------------------------ .mat


def _mat_variables(path: Path) -> tuple[dict[str, np.ndarray], str]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
        return {k: v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)}, "5"
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        pass
    except Exception as exc:
        raise DataError(path, f"cannot be read as a .mat file ({type(exc).__name__}: {exc})",
                        "re-save it from MATLAB (save -v7 or -v7.3) or with scipy.io.savemat") from exc
    import h5py

    try:
        with h5py.File(path, "r") as f:
            out = {}
            for k in f.keys():
                item = f[k]
                if isinstance(item, h5py.Dataset) and item.dtype.kind in "biuf":
                    out[k] = np.asarray(item).T  # HDF5 sees MATLAB's column-major arrays with reversed axes
            return out, "7.3"
    except OSError as exc:
        raise DataError(path, f"cannot be read as a MATLAB v7.3 (HDF5) file ({exc})",
                        "re-save it from MATLAB or with scipy.io.savemat") from exc


def _numeric(v: np.ndarray) -> bool:
    return v.dtype.kind in "biuf"


def _choose(path: Path, arrays: dict[str, np.ndarray], key: str | None) -> str:
    if key is not None:
        if key not in arrays:
            raise DataError(path, f"has no variable '{key}' (it has {sorted(arrays)})", "pass one of those as `key`")
        return key
    big = sorted((k for k, v in arrays.items() if _numeric(v) and v.ndim >= 2 and v.size > 1),
                 key=lambda k: -arrays[k].size)
    if not big:
        raise DataError(path, f"holds no numeric array (variables {sorted(arrays)})", "check the file")
    if len(big) > 1 and arrays[big[1]].size * 2 > arrays[big[0]].size:
        raise DataError(path, f"holds {len(big)} arrays {sorted(big)} of similar size", "pass `key=` to choose one")
    return big[0]


def _scalar(arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> int | None:
    for k, v in arrays.items():
        if k.lower() in names and _numeric(v) and v.size == 1:
            return int(v.ravel()[0])
    return None


def _side_variables(arrays: dict[str, np.ndarray], chosen: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in arrays.items():
        if k != chosen and _numeric(v) and v.size <= _SIDE_MAX:
            out[k] = v.ravel()[0].item() if v.size == 1 else np.asarray(v).squeeze()
    return out


def read_mat(path: PathLike, key: str | None = None, *, band_axis: int | None = None,
             shape: tuple[int, int] | None = None) -> ArrayFile:
    """Read one array of a MATLAB file as (band, y, x) (see the module notes for the rules)."""
    p = require_file(path, ".mat file")
    arrays, version = _mat_variables(p)
    name = _choose(p, arrays, key)
    arr = np.asarray(arrays[name])
    if not _numeric(arr):
        raise DataError(p, f"variable '{name}' is not numeric ({arr.dtype})", "choose a numeric variable with `key=`")
    side = _side_variables(arrays, name)
    rows, cols = shape if shape is not None else (_scalar(arrays, _ROW_NAMES), _scalar(arrays, _COL_NAMES))
    layout: tuple[str, ...] = ("band", "y", "x")
    if arr.ndim == 3:
        data = np.moveaxis(arr, band_axis if band_axis is not None else -1, 0)
    elif arr.ndim == 2 and rows is not None and cols is not None and rows * cols in arr.shape:
        if arr.shape[1] != rows * cols:  # (pixels, bands)
            arr = arr.T
        data = arr.reshape(arr.shape[0], rows, cols, order="F")
    elif arr.ndim == 2:
        if shape is not None:
            raise DataError(p, f"variable '{name}' has shape {arr.shape}, with no axis of {rows} x {cols} pixels",
                            "pass the image size (rows, cols) of this cube as `shape=`")
        data = arr[None]
    else:
        data, layout = arr, ()
    wavelengths = None
    for k, v in side.items():
        if k.lower() in _WAVELENGTH_NAMES and np.ndim(v) == 1 and layout and len(v) == data.shape[0]:
            wavelengths = tuple(float(w) for w in v)
    geometry = Geometry(kind="cube", layout=layout, wavelengths=wavelengths,
                        extra={"format": "mat", "matlab_version": version, "key": name, "variables": side})
    return ArrayFile(p, np.ascontiguousarray(data), geometry)


def write_mat(path: PathLike, data: Any, geometry: Geometry | None = None, *, key: str = MAT_KEY,
              inputs: Iterable[PathLike] = ()) -> Path:
    """Write a (band, y, x) cube as MATLAB v5 ``key`` of shape (y, x, band), with ``wavelength`` when known."""
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise DataError(path, f"cube data has shape {arr.shape}", "pass a (band, y, x) array")
    import scipy.io

    variables: dict[str, Any] = {key: np.moveaxis(arr, 0, -1)}
    if geometry is not None and geometry.wavelengths is not None:
        variables["wavelength"] = np.asarray(geometry.wavelengths, np.float64)
    with atomic_outputs([path], inputs) as (tmp,), open(tmp, "wb") as f:
        scipy.io.savemat(f, variables, do_compression=True)
    return Path(path)


# ------------------------------------------------------------------------------------------ ENVI


def envi_data_file(header: PathLike) -> Path:
    """The raw data file beside an ENVI header (same stem, no suffix or .img / .dat / .raw / ...)."""
    h = Path(header)
    stem = h.name[: -len(".hdr")] if h.name.lower().endswith(".hdr") else h.stem
    for suffix in _ENVI_DATA_SUFFIXES:
        for s in {suffix, suffix.upper()}:
            c = h.parent / f"{stem}{s}"
            if c.is_file() and c != h:
                return c
    raise DataError(h, "ENVI header has no data file beside it",
                    f"put the raw data file next to it, named {stem} or {stem}.img / .dat / .raw / .bsq")


def _envi_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.strip().strip("{}").split(",") if t.strip()]


def _to_nm(values: list[float], units: str | None) -> tuple[float, ...]:
    u = (units or "").strip().lower()
    factor = 1000.0 if u in ("micrometers", "micrometer", "microns", "micron", "um", "µm") else 1.0
    if not u and values and max(values) < 30:  # no units: values below 30 are micrometres
        factor = 1000.0
    return tuple(v * factor for v in values)


def read_envi(path: PathLike) -> ArrayFile:
    """Read an ENVI cube (``path`` = its ``.hdr``) as (band, y, x) with CRS, transform, nodata, band names
    and wavelengths (nm)."""
    import rasterio

    h = require_file(path, "ENVI header")
    data_file = envi_data_file(h)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            src = rasterio.open(data_file, driver="ENVI")
    except rasterio.errors.RasterioError as exc:
        raise DataError(h, f"cannot be read as ENVI ({exc})",
                        "check the header and that the data file is complete") from exc
    with src:
        try:
            data = src.read()
        except rasterio.errors.RasterioError as exc:
            raise DataError(data_file, f"pixel data cannot be read ({exc})", "the data file is truncated") from exc
        envi = dict(src.tags(ns="ENVI"))
        georef = src.crs is not None or src.transform != rasterio.Affine.identity()
        names = _envi_list(envi.get("band_names"))
        wl_text = _envi_list(envi.get("wavelength"))
        wavelengths = None
        if wl_text is not None and len(wl_text) == src.count:
            try:
                wavelengths = _to_nm([float(w) for w in wl_text], envi.get("wavelength_units"))
            except ValueError as exc:
                raise DataError(h, f"has unreadable wavelengths {wl_text[:3]}...", "fix the `wavelength` field") \
                    from exc
        geometry = Geometry(
            kind="cube", layout=("band", "y", "x"), crs=src.crs, transform=src.transform if georef else None,
            spacing=(abs(src.transform.e), abs(src.transform.a)) if georef else None, nodata=src.nodata,
            band_names=tuple(names) if names is not None and len(names) == src.count else None,
            wavelengths=wavelengths, extra={"format": "envi", "data_file": str(data_file), "envi": envi})
    return ArrayFile(h, data, geometry)


def _fmt_number(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def write_envi(path: PathLike, data: Any, geometry: Geometry | None = None, *,
               inputs: Iterable[PathLike] = (), data_suffix: str = ".img") -> Path:
    """Write a (band, y, x) cube as ENVI: ``path`` (the ``.hdr``) and its data file ``<stem><data_suffix>``,
    both atomically, keeping CRS, transform, nodata, band names and wavelengths (nm; band names and
    wavelengths only when there is one per band, as for a prediction with fewer bands). Returns the header."""
    import rasterio

    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(path, f"cube data has shape {arr.shape}", "pass a (band, y, x) array")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    h = Path(path)
    if not h.name.lower().endswith(".hdr"):
        raise DataError(h, "an ENVI output must be named by its header (.hdr)", "use a path ending in .hdr")
    g = geometry or Geometry("cube")
    img = h.parent / f"{h.name[:-4]}{data_suffix}"
    profile: dict[str, Any] = dict(driver="ENVI", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
                                   dtype=arr.dtype.name, nodata=g.nodata)
    if g.crs is not None:
        profile["crs"] = g.crs
    if g.transform is not None:
        profile["transform"] = g.transform
    with atomic_outputs([img, h], inputs) as (tmp_img, tmp_hdr):
        # GDAL writes its header beside the data file: <temporary data stem>.hdr, moved to tmp_hdr below
        gdal_hdr = tmp_img.parent / f"{tmp_img.name[: len(tmp_img.name) - len(data_suffix)]}.hdr"
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(tmp_img, "w", **profile) as dst:
                    dst.write(arr)
                    names = g.band_names if g.band_names is not None and len(g.band_names) == arr.shape[0] else None
                    for i, n in enumerate(names or (), start=1):
                        if n is not None:
                            dst.set_band_description(i, str(n))
                    if g.wavelengths is not None and len(g.wavelengths) == arr.shape[0]:
                        dst.update_tags(ns="ENVI", wavelength="{" + ", ".join(_fmt_number(w) for w in g.wavelengths)
                                        + "}", wavelength_units="Nanometers")
            text = gdal_hdr.read_text()
            # the description GDAL writes names the temporary file: name the final one instead
            text = re.sub(r"description = \{[^}]*\}", "description = {" + img.name + "}", text, count=1)
            tmp_hdr.write_text(text)
        finally:
            gdal_hdr.unlink(missing_ok=True)
    return h


# ------------------------------------------------------------------------------------------ registry


def read_cube(path: PathLike, **kwargs: Any) -> ArrayFile:
    """Read a ``.mat`` (``key=``, ``band_axis=``, ``shape=``) or ENVI ``.hdr`` cube as (band, y, x)."""
    if registry.suffix_of(path) == ".hdr":
        if kwargs:
            raise DataError(path, f"options {sorted(kwargs)} do not apply to ENVI files", "drop them")
        return read_envi(path)
    return read_mat(path, **kwargs)


def write_cube(path: PathLike, data: Any, geometry: Geometry | None = None, *, inputs: Iterable[PathLike] = (),
               **kwargs: Any) -> Path:
    """Write a (band, y, x) cube as ENVI (``.hdr``) or MATLAB v5 (``.mat``, variable ``cube`` (y, x, band))."""
    if registry.suffix_of(path) == ".hdr":
        return write_envi(path, data, geometry, inputs=inputs, **kwargs)
    return write_mat(path, data, geometry, inputs=inputs, **kwargs)


registry.register(registry.FileFormat(
    name="cube", suffixes=(".mat", ".hdr"), reader=read_cube, writer=write_cube,
    description="hyperspectral cube, (band, y, x): MATLAB .mat (v5 / v7.3) or ENVI .hdr + data file",
    requires="scipy, h5py (v7.3), rasterio (ENVI)"))
