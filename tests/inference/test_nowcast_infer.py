"""``medrs-diff infer`` with a diffusion-nowcast checkpoint: past radar files -> NetCDF forecast (times after the last
input, mm/h, the input's projection), ensemble members and a PNG strip; one clear error per bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from medrs_diff.cli import main
from medrs_diff.data import synthetic as S
from medrs_diff.data.radar import read_radar_netcdf, write_radar_netcdf
from medrs_diff.methods import NowcastDiffusion
from medrs_diff.train.checkpoint import method_config

TINY = dict(past_frames=3, future_frames=2, patch_size=4, dim=16, depth=1, heads=2, disc_width=8, disc_depth=2,
            n_members=3)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    method = NowcastDiffusion(**TINY)
    with torch.no_grad():
        method.net.out.weight.normal_(0, 0.3)
    path = tmp_path / "nowcast.ckpt"
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": {"box": [0, 32, 8, 40], "factor": 2, "past": 3, "future": 2}}, path)
    return path


@pytest.fixture
def frames(tmp_path):
    """A folder of single-frame NetCDF files (5-minute steps) cut from a synthetic advected-rain sequence."""
    seq = read_radar_netcdf(S.make_rain_sequence(tmp_path / "seq", n_frames=5, size=48, seed=1)["path"])
    folder = tmp_path / "frames"
    for i in range(seq.sizes["time"]):
        write_radar_netcdf(seq.isel(time=[i]), folder / f"frame_{i:02d}.nc")
    return seq, folder


def test_infer_writes_netcdf_forecast_members_and_panel(ckpt, frames, tmp_path):
    seq, folder = frames
    out = tmp_path / "out"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(folder), "--output", str(out),
                 "--device", "cpu"]) == 0
    mean, mem = read_radar_netcdf(out / "forecast.nc"), xr.open_dataarray(out / "forecast_members.nc")
    step = np.timedelta64(5, "m")
    assert list(mean["time"].values) == [seq["time"].values[-1] + k * step for k in (1, 2)]
    assert mean.attrs["units"] == "mm/h" and mean.attrs["crs"] == seq.attrs["crs"]
    assert mean.shape == (2, 16, 16) and mem.shape == (3, 2, 16, 16)  # box 32 x 32 averaged 2 x 2
    boxed = seq.isel(y=slice(0, 32), x=slice(8, 40)).coarsen(y=2, x=2).mean()
    np.testing.assert_allclose(mean["x"].values, boxed["x"].values)  # on the averaged cells' coordinates
    np.testing.assert_allclose(mean.values, mem.values.mean(0), rtol=1e-5, atol=1e-6)
    assert np.isfinite(mem.values).all() and (mem.values >= 0).all()
    assert (out / "forecast.png").stat().st_size > 1000


def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_one_clear_error_each(ckpt, frames, tmp_path, capsys):
    seq, folder = frames
    base = ["infer", "--checkpoint", str(ckpt), "--device", "cpu", "--output", str(tmp_path / "o")]
    (folder / "frame_02.nc").unlink()  # a gap in time, named
    err = _refused(capsys, [*base, "--input", str(folder)])
    assert "gap in time: missing 2024-06-01T12:10" in err
    few = tmp_path / "few"
    for i in (3, 4):
        write_radar_netcdf(seq.isel(time=[i]), few / f"f{i}.nc")
    assert "has 2 past frame(s); the model needs 3" in _refused(capsys, [*base, "--input", str(few)])
    grids = tmp_path / "grids"
    write_radar_netcdf(seq.isel(time=[0]), grids / "a.nc")
    write_radar_netcdf(seq.isel(time=[1], x=slice(0, 40)), grids / "b.nc")
    assert "different grids" in _refused(capsys, [*base, "--input", str(grids)])
    units = seq.copy()
    units.attrs["units"] = "furlongs"
    write_radar_netcdf(units, tmp_path / "units" / "seq.nc")
    assert "unknown units 'furlongs'" in _refused(capsys, [*base, "--input", str(tmp_path / "units" / "seq.nc")])
    assert not (tmp_path / "o").exists()  # nothing written before a refusal


def test_infer_on_real_knmi_files(shared_data, tmp_path):
    src = sorted((shared_data / "radar_knmi" / "2010" / "08").glob("*.h5"))[56:60]  # 4 past frames, 04:40-04:55
    past = tmp_path / "past"
    past.mkdir()
    for f in src:
        (past / f.name).symlink_to(f)
    torch.manual_seed(0)
    method = NowcastDiffusion(**TINY)
    ckpt = tmp_path / "knmi.ckpt"
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": {"box": [192, 576, 128, 512], "factor": 8}}, ckpt)
    out = tmp_path / "out"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(past), "--output", str(out),
                 "--device", "cpu"]) == 0
    fc = read_radar_netcdf(out / "forecast.nc")
    assert fc.shape == (2, 48, 48) and fc.attrs["units"] == "mm/h" and "+proj" in str(fc.attrs["crs"])
    assert str(fc["time"].values[0])[:16] == "2010-08-26T05:00"  # 5 minutes after the last input
