"""Precipitation radar sequences as xarray DataArrays (time, y, x) with map coordinates.

Readers for KNMI HDF5 composites (calibration read from each file) and netCDF; Marshall-Palmer
rain rate <-> reflectivity; a PyTorch dataset of windows of ``past`` and ``future`` frames in model space.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import keys as K
from .atomic import atomic_output
from .errors import DataError, require_file
from .scaling import Scaling, linear

RAIN_NAME = "precip_rate"


def rainrate_to_dbz(rate: Any, a: float = 200.0, b: float = 1.6, min_dbz: float = 0.0) -> Any:
    """Rain rate (mm/h) -> reflectivity (dBZ) by Z = a R^b (Marshall-Palmer); values below ``min_dbz``
    (including no rain) are set to ``min_dbz``."""
    r = torch.as_tensor(rate) if isinstance(rate, torch.Tensor) else np.asarray(rate, dtype=np.float64)
    if isinstance(r, torch.Tensor):
        dbz = 10.0 * torch.log10(a * torch.clamp(r, min=1e-12) ** b)
        return torch.clamp(dbz, min=min_dbz)
    with np.errstate(divide="ignore"):
        dbz = 10.0 * np.log10(a * np.maximum(r, 1e-12) ** b)
    return np.where(np.isnan(r), np.nan, np.maximum(dbz, min_dbz))


def dbz_to_rainrate(dbz: Any, a: float = 200.0, b: float = 1.6, min_dbz: float = 0.0) -> Any:
    """Reflectivity (dBZ) -> rain rate (mm/h), inverse of :func:`rainrate_to_dbz`; ``<= min_dbz`` -> 0."""
    if isinstance(dbz, torch.Tensor):
        r = (10.0 ** (dbz / 10.0) / a) ** (1.0 / b)
        return torch.where(dbz <= min_dbz, torch.zeros_like(r), r)
    dbz = np.asarray(dbz, dtype=np.float64)
    r = (10.0 ** (dbz / 10.0) / a) ** (1.0 / b)
    return np.where(dbz <= min_dbz, 0.0, r)


def radar_scaling(min_dbz: float = 0.0, max_dbz: float = 60.0) -> Scaling:
    """Reflectivity range [min_dbz, max_dbz] dBZ onto [-1, 1]."""
    return linear(min_dbz, max_dbz, kind="dbz")


def _attr(obj: Any, name: str) -> Any:
    v = obj.attrs[name]
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size == 1 else v
    return v.decode() if isinstance(v, bytes | np.bytes_) else v


def _knmi_crs(proj4: str) -> str:
    """KNMI stores the ellipsoid in km; return the proj4 string in metres."""
    def to_m(m: re.Match) -> str:
        v = float(m.group(2))
        return f"+{m.group(1)}={v * 1000 if v < 1e5 else v:.3f}"
    return re.sub(r"\+(a|b)=([0-9.]+)", to_m, proj4).strip() + " +units=m +no_defs"


def _read_knmi_file(path: Path) -> tuple[np.ndarray, datetime, dict[str, Any]]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"cannot be read as HDF5 ({exc})", "check that it is a complete KNMI .h5 file") from exc
    with f:
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
    if "PRECIP" in quantity:  # accumulated mm over the product interval -> mm/h
        minutes = (end - start).total_seconds() / 60.0 or 5.0
        values = values * (60.0 / minutes)
    elif "REFLECTIVITY" in quantity or "DBZ" in quantity:
        values = dbz_to_rainrate(values).astype(np.float32)
    else:
        raise DataError(path, f"holds '{quantity}', not precipitation or reflectivity", "pass a KNMI rain product")
    h, w = raw.shape
    km = 1000.0
    x = (col_off + (np.arange(w) + 0.5) * abs(psx)) * km
    y = (-row_off - (np.arange(h) + 0.5) * abs(psy)) * km
    return values, end, {"x": x, "y": y, "crs": _knmi_crs(proj4), "pixel": (abs(psx) * km, abs(psy) * km)}


def read_knmi_hdf5(paths: str | os.PathLike | Sequence[str | os.PathLike], pattern: str = "*.h5",
                   progress: bool = False) -> xr.DataArray:
    """Read KNMI radar composites (a folder or a list of files) into a (time, y, x) rain-rate DataArray.

    Values are mm/h (NaN where the radar has no data); ``x``/``y`` are metres in the polar stereographic
    projection given in ``attrs["crs"]``; ``time`` is the end of each accumulation interval.
    """
    if isinstance(paths, str | os.PathLike) and Path(paths).is_dir():
        files = sorted(Path(paths).rglob(pattern))
        if not files:
            raise DataError(paths, f"no files matching '{pattern}'", "point to the folder holding the KNMI .h5 files")
    else:
        files = [Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    frames, times, geo = [], [], None
    for p in tqdm(files, desc="KNMI radar", disable=not progress):
        values, t, g = _read_knmi_file(require_file(p, "KNMI radar file"))
        if geo is not None and (values.shape != frames[0].shape or g["crs"] != geo["crs"]):
            raise DataError(p, f"grid {values.shape} / {g['crs']} differs from that of {files[0]}",
                            "read files of one radar product only")
        geo = geo or g
        frames.append(values)
        times.append(np.datetime64(t, "ns"))
    order = np.argsort(times)
    pw, ph = geo["pixel"]
    transform = tuple(float(v) for v in (geo["x"][0] - pw / 2, pw, 0.0, geo["y"][0] + ph / 2, 0.0, -ph))
    return xr.DataArray(
        np.stack([frames[i] for i in order]), dims=("time", "y", "x"), name=RAIN_NAME,
        coords={"time": np.array(times)[order], "y": geo["y"], "x": geo["x"]},
        attrs={"units": "mm/h", "crs": geo["crs"], "transform": transform,
               "source": "KNMI radar composite", "files": [str(files[i]) for i in order]},
    )


def read_radar_netcdf(path: str | os.PathLike, variable: str | None = None) -> xr.DataArray:
    """Read a (time, y, x) precipitation variable from netCDF (the only 3-D variable if not named)."""
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
    if "time" not in da.dims:
        raise DataError(p, f"variable '{da.name}' has dims {da.dims} without 'time'", "name the time dimension 'time'")
    spatial = [d for d in da.dims if d != "time"]
    da = da.transpose("time", *spatial).rename(dict(zip(spatial, ("y", "x"), strict=True)))
    return da.astype(np.float32)


def _nc_attr(v: Any) -> Any:
    if isinstance(v, list | tuple):
        numeric = all(isinstance(e, int | float) for e in v)
        return np.asarray(v, dtype=np.float64) if numeric else "\n".join(map(str, v))
    return v


def write_radar_netcdf(da: xr.DataArray, out_path: str | os.PathLike, inputs: Sequence[Any] = ()) -> Path:
    """Write a DataArray to netCDF-4 (compressed), atomically; list attributes are stored as strings."""
    da = da.copy()
    da.attrs = {k: _nc_attr(v) for k, v in da.attrs.items()}
    name = da.name or RAIN_NAME
    with atomic_output(out_path, inputs) as tmp:
        da.to_dataset(name=name).to_netcdf(tmp, engine="netcdf4", encoding={name: {"zlib": True}})
    return Path(out_path)


class RadarWindows(Dataset):
    """Windows of ``past`` conditioning frames and ``future`` target frames from a (time, y, x) sequence.

    Items: ``cond`` (past, H, W) and ``image`` (future, H, W) in model space (rain rate -> dBZ -> [-1, 1]),
    ``mask`` (1, H, W) where every frame has data (missing pixels are filled with no-rain), ``time``,
    ``image_scaling``. Windows never span a gap in the time axis.
    """

    def __init__(self, rain: xr.DataArray, past: int = 4, future: int = 4, stride: int = 1,
                 scaling: Scaling | None = None, crop: tuple[int, int] | None = None) -> None:
        if tuple(rain.dims) != ("time", "y", "x"):
            raise DataError(rain.name, f"dims are {rain.dims}", "pass a DataArray with dims (time, y, x)")
        n = past + future
        if rain.sizes["time"] < n:
            raise DataError(rain.name, f"has {rain.sizes['time']} frames, fewer than past + future = {n}",
                            "read more frames or shorten the windows")
        if not bool(np.isfinite(rain.values).any()):
            raise DataError(rain.attrs.get("files", [rain.name])[0] if rain.attrs.get("files") else rain.name,
                            "has no valid pixel in any frame (all missing)", "check the files; they hold no data")
        self.rain, self.past, self.future, self.crop = rain, past, future, crop
        self.scaling = scaling or radar_scaling()
        t = rain["time"].values
        steps = np.diff(t)
        step = np.median(steps) if len(steps) else None
        self.starts = [s for s in range(0, rain.sizes["time"] - n + 1, stride)
                       if step is None or bool(np.all(steps[s : s + n - 1] == step))]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.starts[i]
        win = self.rain.isel(time=slice(s, s + self.past + self.future))
        if self.crop is not None:
            win = win.isel(y=slice(0, self.crop[0]), x=slice(0, self.crop[1]))
        r = torch.from_numpy(np.asarray(win.values, dtype=np.float32))
        valid = torch.isfinite(r)
        r = torch.where(valid, r, torch.zeros_like(r))
        floor = float(self.scaling.clip_min[0]) if self.scaling.clip_min else 0.0
        x = self.scaling.forward(rainrate_to_dbz(r, min_dbz=floor))
        return {K.COND: x[: self.past], K.IMAGE: x[self.past :], K.MASK: valid.all(0, keepdim=True),
                K.TIME: [str(v) for v in win["time"].values], K.scaling_key(K.IMAGE): self.scaling.to_dict()}
