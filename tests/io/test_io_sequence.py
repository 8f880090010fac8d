"""Sequences: NetCDF and HDF5 (time, y, x) with times, CRS and transform; KNMI radar composites."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from rasterio.transform import Affine

from medrs_diff import io
from medrs_diff.data import radar as R
from medrs_diff.errors import DataError
from medrs_diff.io import sequence

TIMES = tuple(np.datetime64("2024-06-01T12:00", "ns") + np.arange(3) * np.timedelta64(5, "m"))
GRID = Affine(1000.0, 0.0, 200_000.0, 0.0, -1000.0, 500_000.0)


def _geometry() -> io.Geometry:
    return io.Geometry("sequence", crs="EPSG:3035", transform=GRID, times=TIMES, extra={"units": "mm/h"})


@pytest.mark.parametrize("suffix", [".nc", ".h5", ".hdf5"])
def test_round_trip_keeps_values_times_crs_and_transform(tmp_path, suffix):
    rain = np.random.default_rng(7).gamma(1.0, 2.0, (3, 4, 5)).astype(np.float32)
    rain[0, 0, 0] = np.nan
    out = io.write(tmp_path / f"rain{suffix}", rain, _geometry())
    f = io.read(out)
    g = f.geometry
    assert g.layout == ("time", "y", "x") and f.shape == (3, 4, 5)
    np.testing.assert_array_equal(f.data, rain)
    assert g.times == TIMES and g.transform == GRID and g.spacing == (1000.0, 1000.0)
    assert str(g.crs) == "EPSG:3035" and g.extra["units"] == "mm/h"
    back = io.read(io.write(tmp_path / f"copy{suffix}", f.data, g, inputs=[out]))
    np.testing.assert_array_equal(back.data, rain)
    assert back.geometry.times == TIMES and back.geometry.transform == GRID


def test_netcdf_coordinates_are_pixel_centres_and_radar_reads_the_same(tmp_path):
    out = io.write(tmp_path / "rain.nc", np.ones((3, 2, 2), np.float32), _geometry(), variable="precip_rate")
    ds = xr.open_dataset(out)
    np.testing.assert_allclose(ds["x"].values, [200_500.0, 201_500.0])
    np.testing.assert_allclose(ds["y"].values, [499_500.0, 498_500.0])
    ds.close()
    da = R.read_radar_netcdf(out)  # the data layer delegates to io
    assert da.name == "precip_rate" and da.dims == ("time", "y", "x") and da.attrs["units"] == "mm/h"
    assert tuple(da["time"].values) == TIMES


def test_netcdf_transform_from_regular_coordinates_and_grid_mapping_crs(tmp_path):
    x, y = 10.0 + 20.0 * np.arange(4), 100.0 - 20.0 * np.arange(3)
    wkt = 'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]]]'
    ds = xr.Dataset({"refl": (("time", "lat", "lon"), np.zeros((2, 3, 4)), {"grid_mapping": "spatial_ref"}),
                     "spatial_ref": ((), 0, {"crs_wkt": wkt})},
                    coords={"time": np.array(TIMES[:2]), "lat": y, "lon": x})
    ds.to_netcdf(tmp_path / "g.nc")
    f = io.read(tmp_path / "g.nc")
    assert f.geometry.transform == Affine(20.0, 0.0, 0.0, 0.0, -20.0, 110.0)
    assert f.geometry.crs == wkt


def test_generic_hdf5_dataset_choice(tmp_path):
    import h5py

    with h5py.File(tmp_path / "two.h5", "w") as h:
        h["a"] = np.zeros((2, 3, 3))
        h["b"] = np.ones((2, 3, 3))
    with pytest.raises(DataError, match=r"two\.h5: holds 2 arrays \['a', 'b'\].*`dataset=`"):
        io.read(tmp_path / "two.h5")
    f = io.read(tmp_path / "two.h5", dataset="b")
    assert f.shape == (2, 3, 3) and f.geometry.times is None and float(f.data.max()) == 1.0


def test_real_knmi_composite(shared_data):
    files = sorted((shared_data / "radar_knmi" / "2010" / "08").glob("*.h5"))[:2]
    if not files:
        pytest.skip("no KNMI files")
    f = io.read(files[0])
    g = f.geometry
    assert f.shape == (1, 765, 700) and g.extra["format"] == "knmi" and g.extra["units"] == "mm/h"
    assert g.times == (np.datetime64("2010-08-26T00:00:00", "ns"),) and g.extra["interval_minutes"] == 5.0
    assert g.transform == Affine(1000.0, 0.0, 0.0, 0.0, -1000.0, -3_650_000.0) and g.spacing == (1000.0, 1000.0)
    assert "+proj=stere" in g.crs and "+a=6378137.000" in g.crs
    assert sequence.read_knmi_file(files[0]).geometry.times == g.times
    da = R.read_knmi_hdf5(files)  # the data layer builds its DataArray on the io reader
    np.testing.assert_array_equal(da.values[0], f.data[0])
    assert da.attrs["transform"] == tuple(g.transform.to_gdal()) and da.attrs["crs"] == g.crs
