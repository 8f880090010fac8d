"""Precipitation radar sequences as xarray DataArrays (time, y, x) with map coordinates.

Readers for KNMI HDF5 composites (calibration read from each file) and netCDF; Marshall-Palmer
rain rate <-> reflectivity; a PyTorch dataset of windows of ``past`` and ``future`` frames in model space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..io.geometry import compare_grids
from ..io.sequence import open_netcdf_dataarray, read_knmi_file, write_netcdf_dataarray
from . import keys as K
from .errors import DataError
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
        if not files:
            raise DataError("paths", "is an empty list of KNMI radar files", "give at least one .h5 file or a folder")
    frames, times, first = [], [], None
    for p in tqdm(files, desc="KNMI radar", disable=not progress):
        frame = read_knmi_file(p)
        g = frame.geometry
        if first is not None:
            try:
                compare_grids(p, files[0], shape=frame.shape, ref_shape=first.shape, crs=g.crs,
                              ref_crs=first.geometry.crs, transform=g.transform, ref_transform=first.geometry.transform)
            except DataError as exc:
                raise DataError(p, exc.problem, "read files of one radar product only") from None
        first = first or frame
        values = frame.data[0]
        if g.extra["units"] == "dBZ":
            values = dbz_to_rainrate(values).astype(np.float32)
        frames.append(values)
        times.append(g.times[0])
    order = np.argsort(times)
    g = first.geometry
    return xr.DataArray(
        np.stack([frames[i] for i in order]), dims=("time", "y", "x"), name=RAIN_NAME,
        coords={"time": np.array(times)[order], "y": g.extra["y"], "x": g.extra["x"]},
        attrs={"units": "mm/h", "crs": g.crs, "transform": tuple(float(v) for v in g.transform.to_gdal()),
               "source": "KNMI radar composite", "files": [str(files[i]) for i in order]},
    )


def read_radar_netcdf(path: str | os.PathLike, variable: str | None = None) -> xr.DataArray:
    """Read a (time, y, x) precipitation variable from netCDF (the only 3-D variable if not named)."""
    return open_netcdf_dataarray(path, variable)


def write_radar_netcdf(da: xr.DataArray, out_path: str | os.PathLike, inputs: Sequence[Any] = ()) -> Path:
    """Write a DataArray to netCDF-4 (compressed), atomically; list attributes are stored as strings."""
    return write_netcdf_dataarray(da, out_path, inputs, default_name=RAIN_NAME)


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
