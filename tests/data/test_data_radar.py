"""Radar sequences: KNMI HDF5 and netCDF readers, Marshall-Palmer, windows of past/future frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from medrs_diff.data import keys as K
from medrs_diff.data import radar as R
from medrs_diff.data.errors import DataError


def test_marshall_palmer_anchors_and_round_trip():
    # Z = 200 R^1.6: 1 mm/h -> 23.01 dBZ, 10 mm/h -> 39.01 dBZ
    np.testing.assert_allclose(R.rainrate_to_dbz(np.array([1.0, 10.0])), [23.0103, 39.0103], atol=1e-4)
    r = np.array([0.1, 0.5, 2.0, 30.0, 100.0])
    np.testing.assert_allclose(R.dbz_to_rainrate(R.rainrate_to_dbz(r)), r, rtol=1e-6)
    t = torch.tensor([0.0, 0.5, 20.0])
    torch.testing.assert_close(R.dbz_to_rainrate(R.rainrate_to_dbz(t)), torch.tensor([0.0, 0.5, 20.0]))
    assert R.rainrate_to_dbz(np.array([0.0]))[0] == 0.0  # no rain -> the floor


def test_synthetic_netcdf_sequence_advects(synth):
    da = R.read_radar_netcdf(synth["rain"]["path"])
    assert da.dims == ("time", "y", "x") and da.shape == (10, 48, 48)
    assert da.attrs["units"] == "mm/h" and np.issubdtype(da["time"].dtype, np.datetime64)
    com = [np.array(np.unravel_index(np.argmax(f), f.shape), float) for f in da.values]
    vy, vx = synth["rain"]["velocity"]
    # the strongest cell moves by the velocity each frame (within a pixel of rounding)
    step = (com[-1] - com[0]) / (len(com) - 1)
    np.testing.assert_allclose(step, [vy, vx], atol=0.3)


def test_netcdf_round_trip_keeps_coords(synth, tmp_path):
    da = R.read_radar_netcdf(synth["rain"]["path"])
    out = R.write_radar_netcdf(da, tmp_path / "copy.nc", inputs=[synth["rain"]["path"]])
    back = R.read_radar_netcdf(out)
    xr.testing.assert_identical(back.drop_attrs(), da.drop_attrs())
    with pytest.raises(DataError, match="same file as an input"):
        R.write_radar_netcdf(da, synth["rain"]["path"], inputs=[synth["rain"]["path"]])


def test_windows_of_past_and_future_frames(synth):
    da = R.read_radar_netcdf(synth["rain"]["path"])
    ds = R.RadarWindows(da, past=4, future=2, stride=2)
    assert len(ds) == 3  # starts 0, 2, 4 (10 frames, windows of 6)
    item = ds[1]
    assert item[K.COND].shape == (4, 48, 48) and item[K.IMAGE].shape == (2, 48, 48)
    assert item[K.TIME][0] == str(da["time"].values[2])
    expected = R.radar_scaling().forward(R.rainrate_to_dbz(da.values[6:8]))
    np.testing.assert_allclose(item[K.IMAGE].numpy(), expected, atol=1e-5)
    assert float(item[K.COND].min()) >= -1 and float(item[K.COND].max()) <= 1


def test_windows_skip_time_gaps_and_reject_empty_data(synth):
    da = R.read_radar_netcdf(synth["rain"]["path"])
    gapped = xr.concat([da.isel(time=slice(0, 5)), da.isel(time=slice(6, 10))], dim="time")
    ds = R.RadarWindows(gapped, past=2, future=1)
    starts = [gapped["time"].values[s] for s in ds.starts]
    assert len(ds) == 3 + 2 and da["time"].values[3] not in starts  # no window spans the gap
    with pytest.raises(DataError, match="fewer than past \\+ future"):
        R.RadarWindows(da, past=8, future=8)
    empty = da.copy(data=np.full(da.shape, np.nan, np.float32))
    with pytest.raises(DataError, match="has no valid pixel"):
        R.RadarWindows(empty, past=2, future=2)


def test_knmi_hdf5_reader_on_real_composites(shared_data):
    folder = shared_data / "radar_knmi" / "2010" / "08"
    files = sorted(folder.glob("*.h5"))[:6]
    if not files:
        pytest.skip(f"no KNMI files in {folder}")
    da = R.read_knmi_hdf5(files)
    assert da.shape == (6, 765, 700) and da.dims == ("time", "y", "x")
    assert str(da["time"].values[0]) == "2010-08-26T00:00:00.000000000"
    np.testing.assert_array_equal(np.diff(da["time"].values), np.timedelta64(5, "m"))
    # map grid: 1 km pixels, top-left corner at (0, -3650 km) in the KNMI stereographic projection
    assert da.attrs["transform"] == (0.0, 1000.0, 0.0, -3_650_000.0, 0.0, -1000.0)
    assert "+proj=stere" in da.attrs["crs"] and "+a=6378137.000" in da.attrs["crs"]
    values = da.values
    assert np.isnan(values).any() and np.isfinite(values).any()  # outside the radar range is missing
    assert float(np.nanmin(values)) >= 0.0 and float(np.nanmax(values)) < 300.0  # plausible mm/h
    item = R.RadarWindows(da, past=3, future=3, crop=(128, 128))[0]
    assert item[K.COND].shape == (3, 128, 128) and bool(torch.isfinite(item[K.COND]).all())


def test_unreadable_and_wrong_radar_files(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"bad\.h5: cannot be read as HDF5"):
        R.read_knmi_hdf5([tmp_path / "bad.h5"])
    with pytest.raises(DataError, match=r"missing\.h5: KNMI radar file does not exist"):
        R.read_knmi_hdf5([tmp_path / "missing.h5"])
    with pytest.raises(DataError, match=r"^paths: is an empty list of KNMI radar files\. Fix: give at least one"):
        R.read_knmi_hdf5([])
    xr.Dataset({"a": (("t", "y", "x"), np.zeros((2, 2, 2))), "b": (("t", "y", "x"), np.zeros((2, 2, 2)))}).to_netcdf(
        tmp_path / "two.nc")
    with pytest.raises(DataError, match=r"two\.nc: has 2 3-D variables"):
        R.read_radar_netcdf(tmp_path / "two.nc")
    with pytest.raises(DataError, match=r"two\.nc: variable 'a' has dims .* without 'time'"):
        R.read_radar_netcdf(tmp_path / "two.nc", variable="a")
