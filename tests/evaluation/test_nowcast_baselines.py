"""pysteps baselines on a synthetic advected rain blob: extrapolation beats persistence, STEPS is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("pysteps")

from medrs_diff.errors import ArgumentError, DataError  # noqa: E402
from medrs_diff.evaluation import nowcast_baselines as B  # noqa: E402
from medrs_diff.metrics import forecast as MF  # noqa: E402

SIZE, V = 64, (1.0, 2.0)  # pixels per 5-minute step (rows, columns)


def _blob(n: int) -> xr.DataArray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    frames = []
    for t in range(n):
        cy, cx = 20 + V[0] * t, 12 + V[1] * t
        core = 8.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
        side = 3.0 * np.exp(-((yy - cy - 6) ** 2 + (xx - cx + 4) ** 2) / (2 * 3.0**2))
        frames.append(np.where(core + side < 0.05, 0.0, core + side))
    t = np.datetime64("2024-06-01T12:00", "ns") + np.arange(n) * np.timedelta64(5, "m")
    return xr.DataArray(np.asarray(frames, np.float32), dims=("time", "y", "x"), name="precip_rate",
                        coords={"time": t, "y": -np.arange(SIZE) * 1000.0, "x": np.arange(SIZE) * 1000.0},
                        attrs={"units": "mm/h", "crs": "EPSG:3035"})


@pytest.fixture(scope="module")
def seq() -> xr.DataArray:
    return _blob(10)


def _csi(fc: np.ndarray, obs: np.ndarray, thr: float = 1.0) -> float:
    return float(MF.categorical_scores(MF.contingency_table(fc[None], obs[None], [thr]))["csi"][0])


def test_extrapolation_beats_persistence_and_times_follow_input(seq):
    past, truth = seq.isel(time=slice(0, 4)), seq.isel(time=slice(4, 10))
    leads = list(range(1, 7))
    pers = B.nowcast("persistence", past, leads)
    extr = B.nowcast("extrapolation", past, leads)
    np.testing.assert_array_equal(extr["time"].values, truth["time"].values)
    np.testing.assert_array_equal(pers.values[3], past.values[-1])
    assert extr.attrs["units"] == "mm/h" and extr.attrs["seconds"] > 0
    v = B._motion(B._db(past.values))  # (columns, rows) per step at the blob's centre
    np.testing.assert_allclose(v[:, 23, 18], [V[1], V[0]], atol=0.3)
    c_p, c_e = _csi(pers.values[-1], truth.values[-1]), _csi(extr.values[-1], truth.values[-1])
    assert c_e > 0.7 and c_e > c_p + 0.3, (c_e, c_p)


def test_sprog_and_steps_members_differ_and_are_seeded(seq):
    past, truth = seq.isel(time=slice(0, 4)), seq.isel(time=slice(4, 7))
    sp = B.nowcast("sprog", past, [1, 2, 3], n_cascade_levels=4)
    assert sp.dims == ("lead", "y", "x") and _csi(sp.values[0], truth.values[0]) > 0.5
    a = B.nowcast("steps", past, [1, 2, 3], n_members=3, seed=7, n_cascade_levels=4)
    b = B.nowcast("steps", past, [1, 2, 3], n_members=3, seed=7, n_cascade_levels=4)
    c = B.nowcast("steps", past, [1, 2, 3], n_members=3, seed=8, n_cascade_levels=4)
    assert a.dims == ("member", "lead", "y", "x") and a.shape == (3, 3, SIZE, SIZE)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values[0], a.values[1]) and not np.allclose(a.values, c.values)
    assert (a.values >= 0).all() and _csi(a.values.mean(0)[0], truth.values[0]) > 0.3


def test_baseline_refusals(seq):
    with pytest.raises(DataError, match="sprog past frames: has 2 frames, fewer than the 3 needed"):
        B.nowcast("sprog", seq.isel(time=slice(0, 2)), [1])
    with pytest.raises(ArgumentError, match="unknown baseline 'dgmr'"):
        B.nowcast("dgmr", seq, [1])
    with pytest.raises(ArgumentError, match="increasing positive time steps"):
        B.nowcast("persistence", seq, [0, 1])
    with pytest.raises(DataError, match="gap in time"):
        B.nowcast("extrapolation", seq.isel(time=[0, 1, 3]), [1])
