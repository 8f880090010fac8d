"""The diffusion nowcast in the KNMI evaluation's layout: training loop on one sequence's windows, and forecasts as
(member, lead, y, x) mm/h DataArrays timed after the last input, repeated back to the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from medrs_diff.data.radar_sequence import advected_rain, rain_to_model
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.evaluation.nowcast_model import diffusion_nowcast, fit_nowcast
from medrs_diff.methods import NowcastDiffusion

TINY = dict(past_frames=3, future_frames=2, patch_size=4, dim=16, depth=1, heads=2, disc_width=8, disc_depth=2)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _past(n=4, size=16):
    rain = advected_rain(1, n, size, seed=2)[0]
    t = np.datetime64("2010-08-26T05:00", "ns") + np.arange(n) * np.timedelta64(5, "m")
    return xr.DataArray(rain, dims=("time", "y", "x"), coords={"time": t, "y": np.arange(size) * -1e3,
                        "x": np.arange(size) * 1e3}, attrs={"units": "mm/h", "timestep_minutes": 5.0, "crs": "P"})


def test_forecast_layout_times_and_block_repetition():
    torch.manual_seed(0)
    method = NowcastDiffusion(**TINY).eval()
    with torch.no_grad():
        method.net.out.weight.normal_(0, 0.5)
    past = _past()
    fc = diffusion_nowcast(method, past, [1, 2], seed=3, members=3, factor=2)
    assert fc.dims == ("member", "lead", "y", "x") and fc.shape == (3, 2, 16, 16)
    assert list(fc["time"].values) == [past["time"].values[-1] + k * np.timedelta64(5, "m") for k in (1, 2)]
    v = fc.values
    assert np.array_equal(v[..., ::2, ::2], v[..., 1::2, 1::2])  # each 8 x 8 model cell repeated 2 x 2
    assert fc.attrs["units"] == "mm/h" and fc.attrs["crs"] == "P" and (v >= 0).all()
    again = diffusion_nowcast(method, past, [1, 2], seed=3, members=3, factor=2)
    assert np.array_equal(again.values, v)  # seeded
    with pytest.raises(ArgumentError, match="leads"):
        diffusion_nowcast(method, past, [1, 2, 3], seed=0, members=1, factor=2)
    with pytest.raises(DataError, match="not divisible by factor 3"):
        diffusion_nowcast(method, past, [1], seed=0, members=1, factor=3)


def test_fit_nowcast_trains_on_the_given_windows():
    torch.manual_seed(0)
    method = NowcastDiffusion(**TINY, recon_weight=1.0)
    seq = rain_to_model(advected_rain(1, 10, 16, seed=1)[0])
    before = [p.detach().clone() for p in method.net.parameters()]
    losses = fit_nowcast(method, seq, [0, 2, 4], steps=3, batch_size=2)
    assert len(losses) == 3 and np.isfinite(losses).all() and not method.training
    assert any(not torch.equal(a, b) for a, b in zip(before, method.net.parameters()))
    with pytest.raises(DataError, match="runs past the 10 frames"):
        fit_nowcast(method, seq, [6], steps=1)
    with pytest.raises(ArgumentError, match="at least one training window"):
        fit_nowcast(method, seq, [], steps=1)
