"""evaluation/nowcast_knmi.py: the per-lead scoring on hand cases and the CLI's refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

SCRIPT = Path(__file__).resolve().parents[2] / "evaluation" / "nowcast_knmi.py"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("nowcast_knmi", SCRIPT)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_scores_per_lead_hand_cases(mod):
    obs = np.zeros((2, 8, 8))
    obs[:, 0, 2:6] = 2.0  # 4 pixels >= 1 mm/h per lead
    truths = [obs, obs]  # 2 windows x 2 leads
    perfect = xr.DataArray(obs, dims=("lead", "y", "x"))
    half = obs.copy()
    half[1, 0, 2:4] = 0.0  # lead 2: 2 hits, 2 misses per window
    ens = xr.DataArray(np.stack([obs, obs + 1.0]), dims=("member", "lead", "y", "x"))  # CRPS = 0.5 - 0.25
    s = mod.score({"p": [perfect, perfect], "h": [xr.DataArray(half, dims=perfect.dims)] * 2, "e": [ens, ens]},
                  truths, [1, 2], thresholds=(1.0,), scales=(1,))
    assert s["p"]["csi@1"] == [1.0, 1.0] and s["p"]["fss_1@1"] == [1.0, 1.0]
    assert s["h"]["csi@1"] == [1.0, 0.5] and s["h"]["pod@1"] == [1.0, 0.5] and s["h"]["far@1"] == [0.0, 0.0]
    assert "csi@5" not in s["p"] and set(s) == {"p", "h", "e_mean", "e"}
    np.testing.assert_allclose(s["e"]["crps"], [0.25, 0.25])  # |x-y| mean 0.5, spread term 1/4
    assert s["e_mean"]["csi@1"] == [1.0, 1.0]  # mean = obs + 0.5: same events
    assert s["p"]["ralsd"] == [0.0, 0.0] and s["e"]["ralsd"] == [0.0, 0.0]  # member 0 = obs: same spectrum
    assert s["h"]["ralsd"][0] == 0.0 and s["h"]["ralsd"][1] > 0.5  # half the rain gone at lead 2
    holes = obs.copy()
    holes[:, 7, 7] = np.nan  # extrapolation leaves pixels advected from outside undefined: counted as dry
    s_nan = mod.score({"n": [xr.DataArray(holes, dims=perfect.dims)] * 2}, truths, [1, 2], thresholds=(1.0,),
                      scales=(1,))
    assert s_nan["n"]["ralsd"] == [0.0, 0.0]
    pooled = mod.score({"e": [ens, ens]}, truths, [1, 2], thresholds=(1.0,), scales=(1, 2))
    np.testing.assert_allclose(pooled["e"]["crps_avgpool2"], [0.25, 0.25])  # pooling obs + 1 keeps the offset


def test_cli_refuses_unknown_method_and_bad_numbers(mod, capsys, tmp_path):
    assert mod.main(["--methods", "convlstm", "--out-dir", str(tmp_path)]) == 2
    assert "--methods: unknown ['convlstm']" in capsys.readouterr().err
    assert mod.main(["--leads", "0", "--out-dir", str(tmp_path)]) == 2
    assert "--leads: must be >= 1, got 0" in capsys.readouterr().err
    assert mod.main(["--data", str(tmp_path), "--out-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())  # nothing written before the refusal
