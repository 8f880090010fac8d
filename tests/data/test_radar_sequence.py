"""Nowcasting data layer: units, log transform, gap/grid/units/too-few-frames errors, leak-free window split."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from medrs_diff.data import radar_sequence as S
from medrs_diff.data.errors import DataError


def _seq(n=12, size=16, step_min=5, units="mm/h"):
    t = np.datetime64("2024-06-01T12:00", "ns") + np.arange(n) * np.timedelta64(step_min, "m")
    v = np.random.default_rng(0).gamma(0.5, 2.0, (n, size, size)).astype(np.float32)
    return xr.DataArray(v, dims=("time", "y", "x"), name="precip_rate",
                        coords={"time": t, "y": -np.arange(size) * 1000.0, "x": np.arange(size) * 1000.0},
                        attrs={"units": units, "crs": "EPSG:3035"})


def test_units_conversion_and_log_round_trip():
    # 1 mm in 5 min = 12 mm/h; 23.0103 dBZ = 1 mm/h by Z = 200 R^1.6
    np.testing.assert_allclose(S.to_rainrate(np.array([1.0]), "mm", 5.0), [12.0])
    np.testing.assert_allclose(S.to_rainrate(np.array([23.0103]), "dBZ"), [1.0], rtol=1e-4)
    with pytest.raises(DataError, match="unknown units 'inch'"):
        S.to_rainrate(np.zeros(2), "inch")
    with pytest.raises(DataError, match="accumulation time is unknown"):
        S.to_rainrate(np.zeros(2), "mm")
    r = np.array([0.0, 0.05, 0.1, 1.0, 12.5, 200.0, np.nan])
    lg = S.to_log_rain(r)
    np.testing.assert_allclose(lg[:6], [-2, -2, -1, 0, np.log10(12.5), np.log10(200)])
    back = S.from_log_rain(lg)
    np.testing.assert_allclose(back[:6], [0, 0, 0.1, 1.0, 12.5, 200.0], rtol=1e-12)  # below threshold -> 0
    assert np.isnan(back[6]) and np.isnan(lg[6])


def test_check_sequence_sets_cf_and_names_missing_times():
    da = S.check_sequence(_seq())
    assert da.attrs["timestep_minutes"] == 5.0 and da.attrs["standard_name"] == "rainfall_rate"
    assert da["x"].attrs["standard_name"] == "projection_x_coordinate"
    gapped = _seq().isel(time=[0, 1, 2, 4, 5, 8, 9])
    with pytest.raises(DataError, match=r"gap in time: missing 2024-06-01T12:15, 2024-06-01T12:30, "
                                        r"2024-06-01T12:35\. Fix"):
        S.check_sequence(gapped)
    with pytest.raises(DataError, match="unknown units 'dBZ' \\(need mm/h\\)"):
        S.check_sequence(_seq(units="dBZ"))
    with pytest.raises(DataError, match="has 2 frames, fewer than the 3 needed"):
        S.check_sequence(_seq(n=2), min_frames=3)
    with pytest.raises(DataError, match="different grids"):
        S.check_same_grid(_seq(size=16), _seq(size=8))
    S.check_same_grid(_seq(), _seq())  # same grid: no error


def test_split_by_time_has_no_leakage():
    n, past, future = 40, 4, 3
    sp = S.split_windows(n, past, future, cut=25)
    train_frames = {f for s in sp.train for f in sp.frames(s)}
    test_frames = {f for s in sp.test for f in sp.frames(s)}
    assert train_frames.isdisjoint(test_frames) and max(train_frames) == 24 and min(test_frames) == 25
    assert sp.train == list(range(0, 25 - past - future + 1)) and sp.test[-1] == n - past - future
    # operational variant: past frames may precede the cut, every target frame is after it
    op = S.split_windows(n, past, future, cut=25, test_past_from_train=True)
    assert min(s + past for s in op.test) == 25
    assert {f for s in op.test for f in range(s + past, s + past + future)}.isdisjoint(train_frames)
    a, b = S.sample_windows(sp.train, 5, seed=3), S.sample_windows(sp.train, 5, seed=3)
    assert a == b and len(set(a)) == 5 and set(a) <= set(sp.train)
    assert S.sample_windows(sp.train, 5, seed=4) != a
    with pytest.raises(DataError, match="no test window"):
        S.split_windows(n, past, future, cut=38)


def test_window_refuses_too_few_past_frames():
    da = _seq(n=6)
    p, f = S.window(da, 1, 3, 2)
    assert p.sizes["time"] == 3 and f["time"].values[0] == da["time"].values[4]
    with pytest.raises(DataError, match="needs 4 past \\+ 3 future frames, the sequence has 6"):
        S.window(da, 0, 4, 3)


def test_read_radar_knmi_and_pysteps_importer_agree(shared_data):
    files = sorted((shared_data / "radar_knmi" / "2010" / "08").glob("*.h5"))[:3]
    if len(files) < 3:
        pytest.skip("no KNMI files")
    ours = S.read_radar(files)
    assert ours.attrs["timestep_minutes"] == 5.0 and ours.shape == (3, 765, 700)
    ps = S.read_radar(files, importer="pysteps:knmi_hdf5", fn_pattern="RAD_NL25_RAP_5min_%Y%m%d%H%M")
    assert ps.attrs["units"] == "mm/h" and ps.attrs["timestep_minutes"] == 5.0
    np.testing.assert_array_equal(ps["time"].values, ours["time"].values)
    np.testing.assert_allclose(ps["x"].values, ours["x"].values)
    np.testing.assert_allclose(ps["y"].values, ours["y"].values)
    both = np.isfinite(ours.values)
    np.testing.assert_array_equal(np.isfinite(ps.values), both)  # same radar range (about 26 % of the grid)
    assert both.mean() > 0.2 and float(ours.values[both].max()) > 1.0
    # pysteps reads mm per 5 min (x12 -> mm/h); ours decodes the same calibration
    np.testing.assert_allclose(ps.values[both], ours.values[both], atol=1e-4)
    with pytest.raises(DataError, match="paths: no radar files given"):
        S.read_radar([])
    with pytest.raises(DataError, match="is not a pysteps importer"):
        S.read_radar(files, importer="nope")
