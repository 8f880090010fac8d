"""pysteps nowcasting baselines behind one signature: past frames (mm/h DataArray) + lead times -> forecast.

* ``persistence``: the last observed frame, repeated.
* ``extrapolation``: Lucas-Kanade optical flow on the log rain rate of the past frames (scikit-image's
  iterative LK; pysteps' ``LK`` needs OpenCV), then semi-Lagrangian advection of the last frame (pysteps
  ``nowcasts extrapolation``).
* ``sprog``: S-PROG (Seed 2003; pysteps ``sprog``), a cascade of AR(2) processes advected in Lagrangian frame.
* ``steps``: the STEPS ensemble (Bowler et al. 2006; pysteps ``steps``), ``n_members`` members, seeded.

Models work in dB (10 log10 R) of :func:`~medrs_diff.data.radar_sequence.to_log_rain` (threshold 0.1 mm/h,
no rain at -20 dB); missing input pixels (NaN) are filled with no rain. Outputs are mm/h DataArrays
``(lead, y, x)``, or ``(member, lead, y, x)`` for ``steps``, with ``time`` = last input time + lead x step.
pysteps is imported inside the functions so the package imports without it.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..data.radar_sequence import LOG_THRESHOLD, check_sequence, from_log_rain, to_log_rain
from ..errors import ArgumentError, DataError

__all__ = ["BASELINES", "MIN_PAST", "nowcast", "lead_times_coord"]

MIN_PAST = {"persistence": 1, "extrapolation": 2, "sprog": 3, "steps": 3}


def _db(rate: np.ndarray) -> np.ndarray:
    r = np.where(np.isfinite(rate), rate, 0.0)
    return 10.0 * to_log_rain(r, LOG_THRESHOLD)


def _from_db(db: np.ndarray) -> np.ndarray:
    return from_log_rain(np.where(np.isfinite(db), db, -np.inf) / 10.0, LOG_THRESHOLD).astype(np.float32)


def _motion(db: np.ndarray, radius: int = 7, smooth: float = 4.0) -> np.ndarray:
    """Lucas-Kanade motion (pixels per step, pysteps layout ``(2, H, W)`` = (x/columns, y/rows)): the mean of
    scikit-image's iterative, coarse-to-fine LK flow over consecutive frame pairs, Gaussian-smoothed.
    (pysteps' own ``LK`` needs OpenCV, which the project does not depend on.)"""
    from scipy.ndimage import gaussian_filter
    from skimage.registration import optical_flow_ilk

    flows = [optical_flow_ilk(db[i].astype(np.float32), db[i + 1].astype(np.float32), radius=radius)
             for i in range(len(db) - 1)]
    vr, vc = np.mean(flows, 0)
    return np.stack([gaussian_filter(vc, smooth), gaussian_filter(vr, smooth)])


def _km_per_pixel(past: xr.DataArray) -> float:
    return abs(float(past["x"].values[1] - past["x"].values[0])) / 1000.0 if past.sizes["x"] > 1 else 1.0


def _persistence(past: xr.DataArray, leads: list[int], **_: Any) -> np.ndarray:
    last = np.where(np.isfinite(past.values[-1]), past.values[-1], 0.0).astype(np.float32)
    return np.repeat(last[None], len(leads), 0)


def _extrapolation(past: xr.DataArray, leads: list[int], **_: Any) -> np.ndarray:
    from pysteps import nowcasts

    db = _db(past.values)
    v = _motion(db)
    last = np.where(np.isfinite(past.values[-1]), past.values[-1], 0.0)
    out = nowcasts.get_method("extrapolation")(last, v, leads, extrap_kwargs={"allow_nonfinite_values": True})
    return np.nan_to_num(np.asarray(out, np.float32), nan=0.0)


def _sprog(past: xr.DataArray, leads: list[int], n_cascade_levels: int = 6, **_: Any) -> np.ndarray:
    from pysteps import nowcasts

    db = _db(past.values)
    v = _motion(db)
    out = nowcasts.get_method("sprog")(db[-3:], v, leads, precip_thr=10 * np.log10(LOG_THRESHOLD),
                                       n_cascade_levels=n_cascade_levels)
    return _from_db(np.asarray(out))


def _steps(past: xr.DataArray, leads: list[int], n_members: int = 8, seed: int = 0,
           n_cascade_levels: int = 6, **_: Any) -> np.ndarray:
    from pysteps import nowcasts

    db = _db(past.values)
    v = _motion(db)
    step_min = float(past.attrs["timestep_minutes"])
    out = nowcasts.get_method("steps")(db[-3:], v, leads, n_ens_members=n_members,
                                       n_cascade_levels=n_cascade_levels, precip_thr=10 * np.log10(LOG_THRESHOLD),
                                       kmperpixel=_km_per_pixel(past), timestep=step_min, seed=seed,
                                       noise_method="nonparametric", vel_pert_method="bps",
                                       mask_method="incremental")
    return _from_db(np.asarray(out))


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "persistence": _persistence, "extrapolation": _extrapolation, "sprog": _sprog, "steps": _steps}


def lead_times_coord(past: xr.DataArray, leads: Sequence[int]) -> np.ndarray:
    """Valid times of ``leads`` (in time steps) after the last frame of ``past``."""
    step = np.timedelta64(int(round(float(past.attrs["timestep_minutes"]) * 60)), "s")
    return past["time"].values[-1] + np.asarray(leads) * step


def nowcast(method: str, past: xr.DataArray, leads: Sequence[int], **kwargs: Any) -> xr.DataArray:
    """Forecast ``leads`` (positive time steps) from ``past`` (time, y, x) mm/h with a pysteps baseline.

    Returns mm/h ``(lead, y, x)`` (``(member, lead, y, x)`` for ``steps``) with ``time`` and ``lead`` coords
    and ``attrs["seconds"]``, the wall time of the forecast.
    """
    if method not in BASELINES:
        raise ArgumentError("method", f"unknown baseline '{method}'", f"pick one of {sorted(BASELINES)}")
    leads = [int(v) for v in leads]
    if not leads or min(leads) < 1 or leads != sorted(set(leads)):
        raise ArgumentError("leads", f"must be increasing positive time steps, got {leads}", "e.g. leads=[1, 2, 3]")
    check_sequence(past, min_frames=MIN_PAST[method], where=f"{method} past frames")
    if not np.isfinite(past.values).any():
        raise DataError(f"{method} past frames", "hold no valid pixel", "pass frames with radar data")
    t0 = _time.perf_counter()
    values = BASELINES[method](past, leads, **kwargs)
    seconds = _time.perf_counter() - t0
    if not np.isfinite(values).all():
        raise DataError(method, "the forecast holds NaN/inf", "check the input frames (report this)")
    dims = ("lead", "y", "x") if values.ndim == 3 else ("member", "lead", "y", "x")
    attrs = {k: v for k, v in past.attrs.items() if k != "files"}
    attrs.update({"method": method, "seconds": seconds})
    return xr.DataArray(values, dims=dims, name=past.name,
                        coords={"lead": leads, "time": ("lead", lead_times_coord(past, leads)),
                                "y": past["y"], "x": past["x"]}, attrs=attrs)
