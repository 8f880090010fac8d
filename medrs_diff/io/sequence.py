"""Sequences of 2-D frames: HDF5 (``.h5``, ``.hdf5``) and NetCDF (``.nc``), read as (time, y, x).

- KNMI radar composites (HDF5 v3.5, ``image1`` / ``geographic`` groups) are recognised and calibrated
  from each file's own formula: precipitation accumulations become mm/h, reflectivity stays dBZ
  (``geometry.extra["units"]``); one frame per file, timed at the end of its interval, on the KNMI
  polar-stereographic grid (``crs`` a proj4 string in metres, ``transform`` an Affine).
- Other HDF5 files: the dataset ``dataset`` (or the single numeric dataset of 2 or more dimensions),
  its ``time`` dataset (int64 ns since the epoch, or ISO strings) and attributes ``crs``,
  ``transform`` (GDAL order), ``nodata``, ``units``: what :func:`write_hdf5` writes.
- NetCDF through xarray: the variable ``variable`` (or the only 3-D one) with a ``time`` dimension,
  CRS from its ``crs`` attribute or grid-mapping variable, transform from a ``transform`` attribute
  (GDAL order) or from regular ``x`` / ``y`` coordinates.

``geometry.times`` holds one ``numpy.datetime64`` per frame (or numbers when the file has no dates);
``extra["x"]`` / ``extra["y"]`` the pixel-centre coordinates.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, require_file
from . import registry
from .atomic import atomic_output
from .types import ArrayFile, Geometry

PathLike = str | os.PathLike
LAYOUT = ("time", "y", "x")
#: Dataset written by :func:`write_hdf5`.
H5_DATASET = "data"
_KM = 1000.0


def _affine(transform: Any) -> Any:
    """An Affine from an Affine or a GDAL-order 6-tuple (c, a, b, f, d, e); None stays None."""
    from rasterio.transform import Affine

    if transform is None or isinstance(transform, Affine):
        return transform
    t = [float(v) for v in np.asarray(transform, dtype=np.float64).ravel()]
    if len(t) < 6:
        raise ValueError(f"transform {t} has fewer than 6 numbers")
    return Affine.from_gdal(*t[:6])


def _gdal(transform: Any) -> tuple[float, ...] | None:
    return None if transform is None else tuple(float(v) for v in _affine(transform).to_gdal())


def _centres(n: int, start: float, step: float) -> np.ndarray:
    return start + (np.arange(n) + 0.5) * step


def _regular_transform(x: np.ndarray, y: np.ndarray) -> Any:
    """Affine of pixel-centre coordinates when both are regular, else None."""
    if len(x) < 2 or len(y) < 2:
        return None
    dx, dy = np.diff(x), np.diff(y)
    if not (np.allclose(dx, dx[0], rtol=1e-6) and np.allclose(dy, dy[0], rtol=1e-6)):
        return None
    from rasterio.transform import Affine

    return Affine(float(dx[0]), 0.0, float(x[0] - dx[0] / 2), 0.0, float(dy[0]), float(y[0] - dy[0] / 2))


def _coords(geometry: Geometry, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = geometry.extra.get("x"), geometry.extra.get("y")
    if x is not None and y is not None and len(x) == w and len(y) == h:
        return np.asarray(x, np.float64), np.asarray(y, np.float64)
    t = _affine(geometry.transform)
    if t is not None:
        return _centres(w, t.c, t.a), _centres(h, t.f, t.e)
    return np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)


def _frames(data: np.ndarray, path: PathLike) -> np.ndarray:
    if data.ndim == 2:
        return data[None]
    if data.ndim != 3:
        raise DataError(path, f"sequence data has shape {data.shape}", "pass (time, y, x) or (y, x) data")
    return data


def _times(times: Sequence[Any] | None, n: int, path: PathLike) -> np.ndarray:
    if times is None:
        return np.arange(n)
    t = np.asarray(list(times))
    if len(t) != n:
        raise DataError(path, f"{len(t)} times for {n} frames", "give one time per frame")
    if t.dtype.kind in "OUS":
        t = t.astype("datetime64[ns]")
    return t.astype("datetime64[ns]") if t.dtype.kind == "M" else t


# ------------------------------------------------------------------------------------------ KNMI


def _attr(obj: Any, name: str) -> Any:
    v = obj.attrs[name]
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size == 1 else v
    return v.decode() if isinstance(v, bytes | np.bytes_) else v


def knmi_crs(proj4: str) -> str:
    """KNMI stores the ellipsoid in km; return the proj4 string in metres."""
    def to_m(m: re.Match) -> str:
        v = float(m.group(2))
        return f"+{m.group(1)}={v * 1000 if v < 1e5 else v:.3f}"
    return re.sub(r"\+(a|b)=([0-9.]+)", to_m, proj4).strip() + " +units=m +no_defs"


def _is_knmi(f: Any) -> bool:
    return "image1" in f and "geographic" in f and "overview" in f


def _knmi(f: Any, path: Path) -> ArrayFile:
    try:
        img, cal, geo = f["image1"], f["image1/calibration"], f["geographic"]
        raw = img["image_data"][...]
        formula = _attr(cal, "calibration_formulas")
        missing = {int(_attr(cal, "calibration_missing_data")), int(_attr(cal, "calibration_out_of_image"))}
        quantity = str(_attr(img, "image_geo_parameter")).upper()
        start = datetime.strptime(_attr(f["overview"], "product_datetime_start"), "%d-%b-%Y;%H:%M:%S.%f")
        end = datetime.strptime(_attr(f["overview"], "product_datetime_end"), "%d-%b-%Y;%H:%M:%S.%f")
        psx, psy = float(_attr(geo, "geo_pixel_size_x")), float(_attr(geo, "geo_pixel_size_y"))
        col_off, row_off = float(_attr(geo, "geo_column_offset")), float(_attr(geo, "geo_row_offset"))
        proj4 = _attr(f["geographic/map_projection"], "projection_proj4_params")
    except KeyError as exc:
        raise DataError(path, f"lacks the KNMI HDF5 item {exc}", "pass KNMI radar composites (HDF5 v3.5)") from exc
    m = re.match(r"GEO\s*=\s*([-+0-9.eE]+)\s*\*\s*PV\s*\+?\s*([-+0-9.eE]+)", formula.replace(" ", ""))
    if m is None:
        raise DataError(path, f"unknown calibration formula '{formula}'", "expected 'GEO=<gain>*PV+<offset>'")
    gain, offset = float(m.group(1)), float(m.group(2))
    values = raw.astype(np.float32) * gain + offset
    values[np.isin(raw, list(missing))] = np.nan
    minutes = (end - start).total_seconds() / 60.0 or 5.0
    if "PRECIP" in quantity:  # accumulated mm over the product interval -> mm/h
        values, units = values * np.float32(60.0 / minutes), "mm/h"
    elif "REFLECTIVITY" in quantity or "DBZ" in quantity:
        units = "dBZ"
    else:
        raise DataError(path, f"holds '{quantity}', not precipitation or reflectivity", "pass a KNMI rain product")
    h, w = raw.shape
    pw, ph = abs(psx) * _KM, abs(psy) * _KM
    x = (col_off + (np.arange(w) + 0.5) * abs(psx)) * _KM
    y = (-row_off - (np.arange(h) + 0.5) * abs(psy)) * _KM
    transform = _affine((float(x[0] - pw / 2), pw, 0.0, float(y[0] + ph / 2), 0.0, -ph))
    geometry = Geometry(kind="sequence", layout=LAYOUT, crs=knmi_crs(proj4), transform=transform, spacing=(ph, pw),
                        times=(np.datetime64(end, "ns"),),
                        extra={"format": "knmi", "x": x, "y": y, "units": units, "quantity": quantity,
                               "start": np.datetime64(start, "ns"), "interval_minutes": minutes})
    return ArrayFile(path, values[None], geometry)


def read_knmi_file(path: PathLike) -> ArrayFile:
    """One KNMI radar composite as a (1, y, x) frame (mm/h or dBZ, NaN where missing) with its grid."""
    import h5py

    p = require_file(path, "KNMI radar file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DataError(p, f"cannot be read as HDF5 ({exc})", "check that it is a complete KNMI .h5 file") from exc
    with f:
        return _knmi(f, p)


# ------------------------------------------------------------------------------------------ HDF5


def read_hdf5(path: PathLike, dataset: str | None = None) -> ArrayFile:
    """A (time, y, x) sequence from HDF5: a KNMI composite or one dataset with its ``time`` and attributes."""
    import h5py

    p = require_file(path, "HDF5 file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DataError(p, f"cannot be read as HDF5 ({exc})", "check that it is a complete .h5 file") from exc
    with f:
        if dataset is None and _is_knmi(f):
            return _knmi(f, p)
        found: list[str] = []
        f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and o.ndim >= 2
                     and o.dtype.kind in "biuf" else None)
        if dataset is not None and dataset not in f:
            raise DataError(p, f"has no dataset '{dataset}' (it has {found})", "pass one of those as `dataset`")
        if dataset is None:
            if H5_DATASET in found:
                dataset = H5_DATASET
            elif len(found) == 1:
                dataset = found[0]
            else:
                raise DataError(p, f"holds {len(found)} arrays {found}", "pass `dataset=` to choose one")
        ds = f[dataset]
        data = _frames(np.asarray(ds[...]), p)
        attrs = {k: _attr(ds, k) for k in ds.attrs}
        times = None
        for name in ("time", "times"):
            parent = ds.parent
            if name in parent and isinstance(parent[name], h5py.Dataset) and parent[name].ndim == 1:
                tds = parent[name]
                t = np.asarray(tds[...])
                units = str(_attr(tds, "units")) if "units" in tds.attrs else ""
                if t.dtype.kind in "SO":
                    t = np.array([v.decode() if isinstance(v, bytes) else v for v in t], dtype="datetime64[ns]")
                elif t.dtype.kind in "iu" and units == "ns since 1970-01-01":
                    t = t.astype("datetime64[ns]")
                times = tuple(t)
                break
    try:
        transform = _affine(attrs.get("transform"))
    except ValueError as exc:
        raise DataError(p, f"has an unreadable 'transform' attribute ({exc})", "store 6 numbers in GDAL order") \
            from exc
    nodata = attrs.get("nodata")
    geometry = Geometry(kind="sequence", layout=LAYOUT, crs=attrs.get("crs") or None, transform=transform,
                        spacing=(abs(transform.e), abs(transform.a)) if transform is not None else None,
                        nodata=None if nodata is None else float(nodata), times=times,
                        extra={"format": "hdf5", "dataset": dataset, "units": attrs.get("units"), "attrs": attrs})
    return ArrayFile(p, data, geometry)


def write_hdf5(path: PathLike, data: Any, geometry: Geometry | None = None, *, inputs: Iterable[PathLike] = (),
               dataset: str = H5_DATASET) -> Path:
    """Write a (time, y, x) sequence as HDF5 (compressed dataset, ``time`` and grid attributes), atomically."""
    import h5py

    arr = _frames(np.asarray(data), path)
    g = geometry or Geometry("sequence")
    times = _times(g.times, arr.shape[0], path) if g.times is not None else None
    with atomic_output(path, inputs) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset(dataset, data=arr, compression="gzip", shuffle=True)
        ds.attrs["layout"] = ",".join(LAYOUT)
        if g.crs is not None:
            ds.attrs["crs"] = str(g.crs)
        if g.transform is not None:
            ds.attrs["transform"] = np.asarray(_gdal(g.transform), np.float64)
        if g.nodata is not None:
            ds.attrs["nodata"] = float(g.nodata)
        if g.extra.get("units") is not None:
            ds.attrs["units"] = str(g.extra["units"])
        if times is not None:
            if times.dtype.kind == "M":
                t = f.create_dataset("time", data=times.astype("datetime64[ns]").astype(np.int64))
                t.attrs["units"] = "ns since 1970-01-01"
            else:
                f.create_dataset("time", data=times)
    return Path(path)


# ------------------------------------------------------------------------------------------ NetCDF


def open_netcdf_dataarray(path: PathLike, variable: str | None = None) -> Any:
    """A (time, y, x) float32 ``xarray.DataArray`` from NetCDF (the only 3-D variable if not named)."""
    import xarray as xr

    p = require_file(path, "netCDF file")
    try:
        ds = xr.open_dataset(p)
    except Exception as exc:
        raise DataError(p, f"cannot be read as netCDF ({type(exc).__name__}: {exc})",
                        "check that it is a complete netCDF-4 / HDF5 file") from exc
    with ds:
        names = [variable] if variable else [n for n, v in ds.data_vars.items() if v.ndim == 3]
        if variable and variable not in ds:
            raise DataError(p, f"has no variable '{variable}' (it has {list(ds.data_vars)})", "pass one of those")
        if len(names) != 1:
            raise DataError(p, f"has {len(names)} 3-D variables {names}", "pass `variable=` to choose one")
        da = ds[names[0]].load()
        mapping = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
        if mapping and mapping in ds and "crs" not in da.attrs:
            gm = ds[mapping].attrs
            crs = gm.get("crs_wkt") or gm.get("spatial_ref")
            if crs:
                da.attrs["crs"] = crs
    if "time" not in da.dims:
        raise DataError(p, f"variable '{da.name}' has dims {da.dims} without 'time'", "name the time dimension 'time'")
    spatial = [d for d in da.dims if d != "time"]
    da = da.transpose("time", *spatial).rename(dict(zip(spatial, ("y", "x"), strict=True)))
    return da.astype(np.float32)


def read_netcdf(path: PathLike, variable: str | None = None) -> ArrayFile:
    """A NetCDF sequence as an :class:`ArrayFile` (time, y, x) with times, CRS and transform when known."""
    da = open_netcdf_dataarray(path, variable)
    x, y = np.asarray(da["x"].values) if "x" in da.coords else None, np.asarray(da["y"].values) if "y" in da.coords \
        else None
    try:
        transform = _affine(da.attrs.get("transform"))
    except ValueError as exc:
        raise DataError(path, f"has an unreadable 'transform' attribute ({exc})", "store 6 numbers in GDAL order") \
            from exc
    if transform is None and x is not None and y is not None and x.dtype.kind in "fiu" and y.dtype.kind in "fiu":
        transform = _regular_transform(x, y)
    times = tuple(da["time"].values) if "time" in da.coords else None
    nodata = da.attrs.get("_FillValue", da.encoding.get("_FillValue"))
    geometry = Geometry(kind="sequence", layout=LAYOUT, crs=da.attrs.get("crs"), transform=transform,
                        spacing=(abs(transform.e), abs(transform.a)) if transform is not None else None,
                        nodata=None if nodata is None or np.isnan(nodata) else float(nodata), times=times,
                        extra={"format": "netcdf", "variable": da.name, "x": x, "y": y,
                               "units": da.attrs.get("units"), "attrs": dict(da.attrs)})
    return ArrayFile(Path(path), np.asarray(da.values), geometry)


def _nc_attr(v: Any) -> Any:
    if isinstance(v, list | tuple):
        numeric = all(isinstance(e, int | float) for e in v)
        return np.asarray(v, dtype=np.float64) if numeric else "\n".join(map(str, v))
    if isinstance(v, dict):
        return str(v)
    return v


def write_netcdf_dataarray(da: Any, out_path: PathLike, inputs: Iterable[PathLike] = (),
                           default_name: str = "data") -> Path:
    """Write a DataArray to NetCDF-4 (compressed), atomically; list attributes are stored as arrays / text."""
    da = da.copy()
    da.attrs = {k: _nc_attr(v) for k, v in da.attrs.items() if v is not None}
    name = da.name or default_name
    with atomic_output(out_path, inputs) as tmp:
        da.to_dataset(name=name).to_netcdf(tmp, engine="netcdf4", encoding={name: {"zlib": True}})
    return Path(out_path)


def to_dataarray(data: Any, geometry: Geometry | None = None, name: str | None = None) -> Any:
    """A (time, y, x) DataArray from an array and its geometry (coordinates from ``extra`` or the transform)."""
    import xarray as xr

    arr = _frames(np.asarray(data), name)
    g = geometry or Geometry("sequence")
    xs, ys = _coords(g, arr.shape[1], arr.shape[2])
    attrs = {k: v for k, v in dict(g.extra.get("attrs") or {}).items() if not k.startswith("_")}
    if g.crs is not None:
        attrs["crs"] = str(g.crs)
    if g.transform is not None:
        attrs["transform"] = _gdal(g.transform)
    if g.extra.get("units") is not None:
        attrs["units"] = g.extra["units"]
    return xr.DataArray(arr, dims=LAYOUT, name=name or g.extra.get("variable") or "data", attrs=attrs,
                        coords={"time": _times(g.times, arr.shape[0], name), "y": ys, "x": xs})


def write_netcdf(path: PathLike, data: Any, geometry: Geometry | None = None, *, inputs: Iterable[PathLike] = (),
                 variable: str | None = None) -> Path:
    """Write a (time, y, x) sequence as NetCDF-4 keeping times, coordinates, CRS and transform."""
    return write_netcdf_dataarray(to_dataarray(data, geometry, variable), path, inputs)


# ------------------------------------------------------------------------------------------ registry


def read_sequence(path: PathLike, **kwargs: Any) -> ArrayFile:
    """Read an HDF5 (``dataset=``) or NetCDF (``variable=``) sequence as (time, y, x)."""
    if registry.suffix_of(path) == ".nc":
        return read_netcdf(path, **kwargs)
    return read_hdf5(path, **kwargs)


def write_sequence(path: PathLike, data: Any, geometry: Geometry | None = None, *,
                   inputs: Iterable[PathLike] = (), **kwargs: Any) -> Path:
    """Write a (time, y, x) sequence as NetCDF (``.nc``) or HDF5 (``.h5`` / ``.hdf5``)."""
    if registry.suffix_of(path) == ".nc":
        return write_netcdf(path, data, geometry, inputs=inputs, **kwargs)
    return write_hdf5(path, data, geometry, inputs=inputs, **kwargs)


registry.register(registry.FileFormat(
    name="sequence", suffixes=(".h5", ".hdf5", ".nc"), reader=read_sequence, writer=write_sequence,
    description="(time, y, x) sequences: HDF5 (KNMI radar composites or a dataset + time) and NetCDF",
    requires="h5py, xarray + netCDF4"))
