"""Ensemble CRPS (plain, fair, pooled) and radially averaged log spectral distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.regression import continuous_ranked_probability_score

from medrs_diff.metrics import CRPSMetric, RALSDMetric, crps, pooled_crps, radial_power_spectrum, ralsd


def test_crps_hand_worked():
    ens = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    obs = np.array([2.0]).reshape(1, 1, 1)
    # (|1-2| + |3-2|)/2 - (|1-3| + |3-1|)/(2·2²) = 1 - 0.5
    assert crps(ens, obs).item() == pytest.approx(0.5)
    assert crps(ens, obs, fair=True).item() == pytest.approx(1 - 4 / (2 * 2 * 1))
    one = np.array([4.0]).reshape(1, 1, 1, 1)
    assert crps(one, obs).item() == pytest.approx(2.0)  # a single member: absolute error


def test_crps_matches_pysteps_and_torchmetrics(rng):
    ens = rng.gamma(1.0, 2.0, (1, 7, 12, 10))
    obs = rng.gamma(1.0, 2.0, (1, 12, 10))
    ours = crps(ens, obs).item()
    tm = continuous_ranked_probability_score(torch.from_numpy(ens[0].reshape(7, -1).T),
                                             torch.from_numpy(obs[0].reshape(-1)))
    assert ours == pytest.approx(tm.item(), rel=1e-9)
    ver = pytest.importorskip("pysteps.verification")
    assert ours == pytest.approx(ver.CRPS(ens[0], obs[0]), rel=1e-9)


def test_pooled_crps_and_streaming(rng):
    ens = np.zeros((1, 2, 4, 4))
    ens[0, 0, :2, :2] = 4.0  # member 0: rain in the top-left 2×2 cell
    obs = np.zeros((1, 4, 4))
    obs[0, 0, 0] = 4.0  # one rain pixel there
    avg = pooled_crps(ens, obs, scales=(2,), pool="avg")[2]
    # top-left cell: members {4, 0}, obs 1 -> (3 + 1)/2 - (4 + 4)/8 = 1; other three cells 0
    assert avg.item() == pytest.approx(1.0 / 4)
    mx = pooled_crps(ens, obs, scales=(2,), pool="max")[2]
    # max pooling: members {4, 0}, obs 4 -> (0 + 4)/2 - 1 = 1 in one of four cells
    assert mx.item() == pytest.approx(1.0 / 4)
    e, o = rng.random((3, 4, 8, 8)), rng.random((3, 8, 8))
    m = CRPSMetric(scales=(1, 4))
    m.update(e[:1], o[:1])
    m.update(e[1:], o[1:])
    out = m.compute()
    assert out["crps"] == pytest.approx(crps(e, o).mean().item())
    assert out["crps_avgpool4"] == pytest.approx(pooled_crps(e, o, (4,))[4].mean().item())


def test_crps_nan_and_shape_errors():
    ens = np.array([[[[1.0, np.nan]], [[3.0, 1.0]]]])  # (1, 2, 1, 2): second pixel has a NaN member
    obs = np.array([[[2.0, 5.0]]])
    assert crps(ens, obs).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="member axis"):
        crps(np.zeros((1, 2, 4, 4)), np.zeros((1, 4, 5)))


def test_ralsd_hand_worked(rng):
    ref = rng.random((2, 16, 16))
    assert ralsd(2 * ref, ref).tolist() == pytest.approx([20 * math.log10(2)] * 2)
    assert ralsd(ref, ref).tolist() == pytest.approx([0.0, 0.0])
    m = RALSDMetric()
    m.update(2 * ref, ref)
    assert m.compute()["ralsd"] == pytest.approx(20 * math.log10(2))


def test_radial_spectrum_of_a_cosine():
    n = 16
    x = np.cos(2 * np.pi * 3 * np.arange(n) / n)[None, :].repeat(n, 0)  # wavenumber 3 along W
    spec = radial_power_spectrum(x)
    assert spec.shape == (n // 2,)
    assert int(spec.argmax()) == 2  # ring k = 3
    others = torch.cat([spec[:2], spec[3:]])
    assert float(others.max()) < 1e-12 * float(spec[2])
    with pytest.raises(ValueError, match="finite"):
        radial_power_spectrum(np.full((8, 8), np.nan))
