"""Radar sequences for nowcasting: one reader for KNMI HDF5 and any pysteps importer, checks, log transform,
and (past, future) windows split by time without leakage.

Every sequence is a (time, y, x) ``xarray.DataArray`` of rain rate in **mm/h** with CF attributes
(``standard_name``, ``units``), the projection in ``attrs["crs"]`` (PROJ string) and the time step in
``attrs["timestep_minutes"]``. Reflectivity <-> rain rate is Marshall-Palmer Z = a R^b with **a = 200,
b = 1.6** (:func:`~medrs_diff.data.radar.rainrate_to_dbz`). The log transform (:func:`to_log_rain`) is the
data layer's: rates below ``LOG_THRESHOLD`` (0.1 mm/h) are no rain and map to ``log10(threshold) - 1``.
pysteps is imported only inside :func:`read_radar` for non-KNMI importers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import DataError
from .radar import RAIN_NAME, dbz_to_rainrate, read_knmi_hdf5

LOG_THRESHOLD = 0.1  # mm/h; below it a pixel is "no rain" for the log transform
MP_A, MP_B = 200.0, 1.6  # Marshall-Palmer Z = a R^b

__all__ = ["LOG_THRESHOLD", "read_radar", "check_sequence", "check_same_grid", "to_rainrate", "to_log_rain",
           "from_log_rain", "advected_rain", "LOG_SCALE", "rain_to_model", "model_to_rain",
           "WindowSplit", "window_starts", "split_windows", "sample_windows", "window"]


def _cf(da: xr.DataArray, step_min: float | None) -> xr.DataArray:
    da.attrs.update({"standard_name": "rainfall_rate", "long_name": "precipitation rate", "units": "mm/h",
                     "Marshall_Palmer": f"Z = {MP_A:g} R^{MP_B:g}"})
    if step_min is not None:
        da.attrs["timestep_minutes"] = float(step_min)
    da["x"].attrs.update({"standard_name": "projection_x_coordinate", "units": "m"})
    da["y"].attrs.update({"standard_name": "projection_y_coordinate", "units": "m"})
    return da


def to_rainrate(values: np.ndarray, units: str, accutime_min: float | None = None,
                where: Any = "input") -> np.ndarray:
    """Convert ``values`` in ``units`` (mm/h, mm over ``accutime_min`` minutes, or dBZ) to mm/h."""
    u = str(units).strip().lower().replace(" ", "")
    if u in ("mm/h", "mmh-1", "mm/hr", "mmh**-1"):
        return np.asarray(values, np.float32)
    if u == "mm":
        if accutime_min is None or not accutime_min > 0:
            raise DataError(where, "values are accumulations in mm but the accumulation time is unknown",
                            "pass the accumulation time in minutes (accutime_min)")
        return (np.asarray(values, np.float32) * (60.0 / accutime_min)).astype(np.float32)
    if u == "dbz":
        return dbz_to_rainrate(values, MP_A, MP_B).astype(np.float32)
    raise DataError(where, f"unknown units '{units}'", "convert to mm/h, mm (accumulation) or dBZ first")


def read_radar(paths: str | os.PathLike | Sequence[str | os.PathLike], importer: str = "knmi_hdf5",
               timestep_minutes: float | None = None, **importer_kwargs: Any) -> xr.DataArray:
    """Read radar files into a (time, y, x) mm/h DataArray, checked to be a gap-free regular sequence.

    ``importer`` is ``knmi_hdf5`` (this package's reader, calibration read from each file) or any pysteps
    importer name (``mch_gif``, ``fmi_pgm``, ``odim_hdf5``, ``bom_rf3``, ...; times taken from the file names
    through ``fn_pattern`` (strptime of the file stem) in ``importer_kwargs``, or the files' order with
    ``timestep_minutes``); ``pysteps:<name>`` forces the pysteps importer (e.g. ``pysteps:knmi_hdf5``).
    """
    if not isinstance(paths, str | os.PathLike) and not list(paths):
        raise DataError("paths", "no radar files given", "pass a folder or a non-empty list of files")
    if importer == "knmi_hdf5":
        da = read_knmi_hdf5(paths)
    else:
        da = _read_pysteps(paths, importer.removeprefix("pysteps:"), timestep_minutes, **importer_kwargs)
    check_sequence(da, timestep_minutes=timestep_minutes)
    return da


def _read_pysteps(paths: Any, importer: str, timestep_minutes: float | None, fn_pattern: str | None = None,
                  **kwargs: Any) -> xr.DataArray:
    from pysteps.io import get_method  # lazy: pysteps is an optional dependency

    try:
        imp = get_method(importer, "importer")
    except ValueError:
        raise DataError(importer, "is not a pysteps importer", "pass knmi_hdf5 or a name from "
                        "pysteps.io.interface (mch_gif, fmi_pgm, odim_hdf5, bom_rf3, ...)") from None
    files = sorted(Path(paths).iterdir()) if isinstance(paths, str | os.PathLike) and Path(paths).is_dir() \
        else [Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    frames, times, meta0 = [], [], None
    for i, f in enumerate(files):
        if not f.is_file():
            raise DataError(f, "radar file does not exist", "check the path")
        try:
            r, _, meta = imp(str(f), **kwargs)
        except Exception as exc:  # noqa: BLE001 - any importer failure is a bad file for the user
            raise DataError(f, f"pysteps importer '{importer}' cannot read it ({type(exc).__name__}: {exc})",
                            "pass files of that product or the matching importer") from None
        rate = to_rainrate(np.ma.filled(np.asarray(r, np.float32), np.nan), meta.get("unit", "?"),
                           meta.get("accutime"), f)
        if meta0 is not None and (rate.shape != frames[0].shape or meta["projection"] != meta0["projection"]
                                  or (meta["x1"], meta["y2"]) != (meta0["x1"], meta0["y2"])):
            raise DataError(f, f"grid {rate.shape} / {meta['projection']} differs from the first file's "
                            f"{frames[0].shape} / {meta0['projection']}", "read files of one radar product only")
        meta0 = meta0 or meta
        frames.append(rate)
        if fn_pattern is not None:
            from datetime import datetime
            times.append(np.datetime64(datetime.strptime(f.stem, fn_pattern), "ns"))
        elif timestep_minutes is not None:
            times.append(np.datetime64("1970-01-01", "ns") + i * np.timedelta64(int(timestep_minutes * 60), "s"))
        else:
            raise DataError(importer, "cannot tell the frames' times", "pass fn_pattern (strptime of the file "
                            "stem) or timestep_minutes")
    scale = 1000.0 if meta0.get("cartesian_unit", "m") == "km" else 1.0
    h, w = frames[0].shape
    dx, dy = meta0["xpixelsize"] * scale, meta0["ypixelsize"] * scale
    x = meta0["x1"] * scale + (np.arange(w) + 0.5) * dx
    y = meta0["y2"] * scale - (np.arange(h) + 0.5) * dy
    if meta0.get("yorigin", "upper") == "lower":
        frames = [fr[::-1] for fr in frames]  # rows top-down like y
    order = np.argsort(times)
    da = xr.DataArray(np.stack([frames[i] for i in order]), dims=("time", "y", "x"), name=RAIN_NAME,
                      coords={"time": np.array(times)[order], "y": y, "x": x},
                      attrs={"units": "mm/h", "crs": meta0["projection"], "source": meta0.get("institution", importer),
                             "transform": (meta0["x1"] * scale, dx, 0.0, meta0["y2"] * scale, 0.0, -dy),
                             "files": [str(files[i]) for i in order]})
    return da


def check_sequence(da: xr.DataArray, timestep_minutes: float | None = None, min_frames: int = 1,
                   where: Any = None) -> xr.DataArray:
    """Check dims (time, y, x), units mm/h and a regular time axis without gaps (missing times named).

    Sets the CF attributes and ``timestep_minutes`` and returns ``da``.
    """
    where = where if where is not None else (da.name or "radar sequence")
    if tuple(da.dims) != ("time", "y", "x"):
        raise DataError(where, f"dims are {da.dims}", "pass a DataArray with dims (time, y, x)")
    units = da.attrs.get("units")
    if units is None or str(units).replace(" ", "").lower() not in ("mm/h", "mmh-1", "mm/hr"):
        raise DataError(where, f"unknown units '{units}' (need mm/h)",
                        "convert with medrs_diff.data.radar_sequence.to_rainrate and set attrs['units'] = 'mm/h'")
    n = da.sizes["time"]
    if n < min_frames:
        raise DataError(where, f"has {n} frames, fewer than the {min_frames} needed", "pass more past frames")
    t = da["time"].values
    step = None
    if n > 1:
        d = np.diff(t)
        if (d <= np.timedelta64(0)).any():
            raise DataError(where, "times are not strictly increasing", "sort the frames and drop duplicates")
        step = np.timedelta64(int(timestep_minutes * 60), "s") if timestep_minutes is not None else d.min()
        if (d % step).astype(np.int64).any():
            raise DataError(where, f"time steps {sorted(set(d.astype('timedelta64[s]').tolist()))} are not "
                            f"multiples of {step.astype('timedelta64[s]')}", "pass frames on one regular time step")
        if (d != step).any():
            full = np.arange(t[0], t[-1] + step, step)
            missing = np.setdiff1d(full, t)
            shown = ", ".join(str(m.astype("datetime64[m]")) for m in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(where, f"gap in time: missing {shown}{more}",
                            "add the missing frames or split the sequence at the gap")
    step_min = float(step / np.timedelta64(1, "m")) if step is not None else timestep_minutes
    return _cf(da, step_min)


def check_same_grid(a: xr.DataArray, b: xr.DataArray, where: Any = "radar sequences") -> None:
    """Raise DataError unless ``a`` and ``b`` share shape, x/y coordinates and projection."""
    if a.shape[1:] != b.shape[1:] or not (np.allclose(a["x"], b["x"]) and np.allclose(a["y"], b["y"])) \
            or a.attrs.get("crs") != b.attrs.get("crs"):
        raise DataError(where, f"different grids: {a.shape[1:]} {a.attrs.get('crs')} vs {b.shape[1:]} "
                        f"{b.attrs.get('crs')}", "resample both to one grid before combining them")


def to_log_rain(rate: Any, threshold: float = LOG_THRESHOLD) -> np.ndarray:
    """mm/h -> log10(mm/h); rates below ``threshold`` (no rain) -> ``log10(threshold) - 1``; NaN kept."""
    r = np.asarray(rate, np.float64)
    floor = np.log10(threshold) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(r >= threshold, np.log10(np.maximum(r, threshold)), floor)
    return np.where(np.isnan(r), np.nan, out)


def from_log_rain(log_rate: Any, threshold: float = LOG_THRESHOLD) -> np.ndarray:
    """Inverse of :func:`to_log_rain`: values below ``log10(threshold)`` -> 0 mm/h."""
    v = np.asarray(log_rate, np.float64)
    return np.where(v < np.log10(threshold), 0.0, 10.0**v)


#: model space of the diffusion nowcast: log10(mm/h) / LOG_SCALE, so no rain (-2) -> -1 and 100 mm/h -> 1
LOG_SCALE = 2.0


def rain_to_model(rate: Any, threshold: float = LOG_THRESHOLD) -> np.ndarray:
    """mm/h -> model space [-1, 1]: ``clip(to_log_rain(rate) / LOG_SCALE, -1, 1)`` (>= 100 mm/h saturates; NaN -> no
    rain, so fill missing pixels knowingly before calling)."""
    v = to_log_rain(rate, threshold) / LOG_SCALE
    return np.clip(np.nan_to_num(v, nan=-1.0), -1.0, 1.0).astype(np.float32)


def model_to_rain(x: Any, threshold: float = LOG_THRESHOLD) -> np.ndarray:
    """Inverse of :func:`rain_to_model`: model space -> mm/h (below ``log10(threshold) / LOG_SCALE`` -> 0)."""
    return from_log_rain(LOG_SCALE * np.asarray(x, np.float64), threshold)


def window_starts(n_frames: int, past: int, future: int, stride: int = 1) -> list[int]:
    """Start indices of every (past + future)-frame window of a gap-free sequence of ``n_frames``."""
    return list(range(0, n_frames - past - future + 1, stride))


@dataclass
class WindowSplit:
    """Window start indices of a time split: windows of ``train`` use only frames ``< cut``, those of ``test``
    only frames ``>= cut - past`` with every future frame ``>= cut``."""

    train: list[int]
    test: list[int]
    past: int
    future: int
    cut: int

    def frames(self, start: int) -> range:
        return range(start, start + self.past + self.future)


def split_windows(n_frames: int, past: int, future: int, cut: int, stride: int = 1,
                  test_stride: int | None = None, test_past_from_train: bool = False) -> WindowSplit:
    """Split windows by time at frame ``cut``: no frame of a test window lies in any training window.

    With ``test_past_from_train=True`` the first test windows may take their *past* frames from before the
    cut (the targets stay after it), as an operational nowcast would; the default keeps the sets disjoint.
    """
    if not 0 < cut < n_frames:
        raise DataError("cut", f"{cut} is outside 1..{n_frames - 1}", "split inside the sequence")
    train = [s for s in window_starts(n_frames, past, future, stride) if s + past + future <= cut]
    first = cut - past if test_past_from_train else cut
    test = [s for s in window_starts(n_frames, past, future, test_stride or stride) if s >= first]
    if not test:
        raise DataError("cut", f"no test window of {past}+{future} frames after frame {cut} of {n_frames}",
                        "move the cut earlier or shorten the windows")
    return WindowSplit(train, test, past, future, cut)


def sample_windows(starts: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` window starts drawn without replacement by a seeded generator (all, shuffled, if n >= len)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(starts))[: min(n, len(starts))]
    return [int(starts[i]) for i in idx]


def window(da: xr.DataArray, start: int, past: int, future: int) -> tuple[xr.DataArray, xr.DataArray]:
    """The (past, future) frames of the window starting at ``start``; too few past frames is a DataError."""
    if start < 0 or start + past + future > da.sizes["time"]:
        raise DataError(da.name or "radar sequence", f"window {start}..{start + past + future - 1} needs "
                        f"{past} past + {future} future frames, the sequence has {da.sizes['time']}",
                        "pick an earlier start or fewer frames")
    return da.isel(time=slice(start, start + past)), da.isel(time=slice(start + past, start + past + future))


def advected_rain(n: int, frames: int, size: int = 32, seed: int = 0, n_cells: int = 3,
                  speed: tuple[float, float] = (1.0, 2.0), radius: tuple[float, float] = (2.5, 4.5),
                  peak: tuple[float, float] = (2.0, 30.0)) -> np.ndarray:
    """In-memory synthetic twin of a radar sequence: ``n`` sequences (n, frames, size, size) in mm/h of Gaussian
    rain cells advected by one constant velocity per sequence (random direction, ``speed`` px per frame),
    seeded. Cells start so that they stay mostly inside the grid; rates < 0.05 mm/h are set to 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.zeros((n, frames, size, size), np.float32)
    for k in range(n):
        ang, sp = rng.uniform(0, 2 * np.pi), rng.uniform(*speed)
        v = sp * np.array([np.sin(ang), np.cos(ang)])
        mid = size / 2 - v * (frames - 1) / 2  # centre the track on the grid
        for _ in range(n_cells):
            c0 = mid + rng.uniform(-0.3, 0.3, 2) * size
            r, p = rng.uniform(*radius), rng.uniform(*peak)
            for t in range(frames):
                cy, cx = c0 + v * t
                out[k, t] += p * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    out[out < 0.05] = 0.0
    return out
