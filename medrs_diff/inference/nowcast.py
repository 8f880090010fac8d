"""``medrs-diff infer`` for the diffusion nowcast: past radar files in, a NetCDF forecast ensemble and a PNG out.

Input: a folder of radar files (KNMI HDF5 or any pysteps importer via ``importer``; NetCDF frames or
sequences ``.nc`` read directly) or one NetCDF (time, y, x) sequence. Checks before any compute, one
:class:`~medrs_diff.errors.DataError` each: different grids between files, unknown units (mm/h needed,
or a unit :func:`~medrs_diff.data.radar_sequence.to_rainrate` converts), gaps in time (the missing
timestamps named), fewer past frames than the model needs, a grid the model cannot tile.

The checkpoint's data settings (``box`` rows / columns, ``factor`` averaging) are applied to the input as in
training; the forecast is written on that grid (x / y coordinates of the averaged cells, the input's
projection in ``crs``). Outputs in ``output/``: ``forecast.nc`` (ensemble mean, mm/h, (time, y, x),
times after the last input), ``forecast_members.nc`` ((member, time, y, x), mm/h) and ``forecast.png``
(a panel strip: the last past frames, the ensemble mean and member 0 per lead).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..data.radar import read_radar_netcdf, write_radar_netcdf
from ..data.radar_sequence import check_same_grid, check_sequence, model_to_rain, rain_to_model, read_radar
from ..errors import ArgumentError, DataError

PathLike = str | os.PathLike


def read_past(source: PathLike, importer: str = "knmi_hdf5") -> xr.DataArray:
    """The checked (time, y, x) mm/h past sequence of a folder of radar files or one NetCDF sequence."""
    src = Path(source)
    if src.is_file():
        files = [src]
    elif src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        raise DataError(src, "does not exist", "pass a folder of past radar files or a NetCDF sequence")
    if not files:
        raise DataError(src, "holds no radar files", "put the past frames there")
    if all(f.suffix == ".nc" for f in files):
        parts = []
        for f in files:
            da = read_radar_netcdf(f)
            da = da.expand_dims("time") if "time" not in da.dims else da
            if parts:
                check_same_grid(parts[0], da, where=f)
            parts.append(da)
        da = xr.concat(parts, dim="time") if len(parts) > 1 else parts[0]
        da.attrs = dict(parts[0].attrs)
        return check_sequence(da.sortby("time"), where=src)
    return read_radar(files, importer=importer)


def _grid(da: xr.DataArray, data: Mapping[str, Any]) -> xr.DataArray:
    box, factor = data.get("box"), data.get("factor")
    factor = 1 if factor is None else int(factor)
    if box is not None:
        y0, y1, x0, x1 = (int(v) for v in box)
        if y1 > da.sizes["y"] or x1 > da.sizes["x"]:
            raise DataError("input", f"grid {da.shape[1:]} is smaller than the training box {list(box)}",
                            "give radar files on the grid the model was trained on")
        da = da.isel(y=slice(y0, y1), x=slice(x0, x1))
    if factor > 1:
        attrs = dict(da.attrs)
        da = da.coarsen(y=factor, x=factor, boundary="trim").mean()
        da.attrs = attrs
    return da


def nowcast_files(method: Any, source: PathLike, output: PathLike, data: Mapping[str, Any] | None = None, *,
                  importer: str = "knmi_hdf5", n_samples: int | None = None, sampler: str | None = None,
                  steps: int | None = None, seed: int = 0, panels: bool = True) -> dict[str, Path]:
    """Forecast from the past frames in ``source`` and write ``output/forecast.nc`` (+ members, + PNG)."""
    past = _grid(read_past(source, importer), data or {})
    need = int(method.past_frames)
    if past.sizes["time"] < need:
        raise DataError(source, f"has {past.sizes['time']} past frame(s); the model needs {need}",
                        f"give at least {need} consecutive frames")
    m = int(method.size_multiple)
    if past.sizes["y"] % m or past.sizes["x"] % m:
        raise DataError(source, f"grid {past.sizes['y']}x{past.sizes['x']} (after the training box / averaging) is "
                        f"not a multiple of the patch size {m}", f"crop the frames to a multiple of {m}")
    past = past.isel(time=slice(-need, None))
    dev = next(method.parameters()).device
    x = torch.from_numpy(rain_to_model(np.nan_to_num(past.values, nan=0.0)))[None, :, None].to(dev)
    g = torch.Generator(device=dev).manual_seed(int(seed))
    with torch.no_grad():
        out = method.predict({"cond": x}, sampler=sampler, steps=steps, n_samples=n_samples, generator=g)
    members = model_to_rain(out["members"][0, :, :, 0].cpu().numpy()).astype(np.float32)  # (K, M, H, W)
    step = np.timedelta64(int(round(float(past.attrs["timestep_minutes"]) * 60)), "s")
    times = past["time"].values[-1] + np.arange(1, members.shape[1] + 1) * step
    attrs = {k: v for k, v in past.attrs.items() if k not in ("files", "transform")}
    attrs.update(units="mm/h", standard_name="rainfall_rate", long_name="nowcast rain rate",
                 source=f"medrs_diff {method.name}, {members.shape[0]} members")
    coords = {"time": times, "y": past["y"].values, "x": past["x"].values}
    mem = xr.DataArray(members, dims=("member", "time", "y", "x"), name="precip_rate_members",
                       coords={"member": np.arange(members.shape[0]), **coords}, attrs=attrs)
    mean = xr.DataArray(members.mean(0), dims=("time", "y", "x"), name="precip_rate", coords=coords,
                        attrs={**attrs, "long_name": "nowcast rain rate, ensemble mean"})
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"forecast": write_radar_netcdf(mean, out_dir / "forecast.nc"),
             "members": write_radar_netcdf(mem, out_dir / "forecast_members.nc")}
    if panels:
        files["panel"] = panel_strip(past, mean, mem, out_dir / "forecast.png")
    return files


def panel_strip(past: xr.DataArray, mean: xr.DataArray, members: xr.DataArray, path: PathLike,
                leads: Sequence[int] | None = None) -> Path:
    """PNG: row 1 the last past frames, row 2 the ensemble mean, row 3 member 0 at ``leads`` (default 4 spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n = mean.sizes["time"]
    leads = list(leads) if leads is not None else sorted({max(0, round(q * (n - 1))) for q in (0, 1 / 3, 2 / 3, 1)})
    cols = max(len(leads), min(4, past.sizes["time"]))
    fig, axes = plt.subplots(3, cols, figsize=(2.2 * cols, 6.6), squeeze=False)
    norm = LogNorm(0.1, 50)
    show = lambda ax, img, title: (ax.imshow(np.where(img >= 0.1, img, np.nan), norm=norm, cmap="viridis"),  # noqa: E731
                                   ax.set_title(title, fontsize=7))
    for ax in axes.flat:
        ax.axis("off")
    for c, i in enumerate(range(past.sizes["time"] - min(cols, past.sizes["time"]), past.sizes["time"])):
        show(axes[0, c], past.values[i], str(past["time"].values[i])[:16])
    for c, li in enumerate(leads):
        t = str(mean["time"].values[li])[:16]
        show(axes[1, c], mean.values[li], f"mean {t}")
        show(axes[2, c], members.values[0, li], f"member 0 {t}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def check_importer(importer: str) -> None:
    """Refuse an empty importer name before reading anything."""
    if not importer:
        raise ArgumentError("--importer", "is empty", "use knmi_hdf5 or a pysteps importer name")


__all__ = ["check_importer", "nowcast_files", "panel_strip", "read_past"]
