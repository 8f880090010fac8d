"""Diffusion nowcast: DD-GAN chain (closed form), the single-loss GAN update (each term reaches only its own
player), the few-step sampler returns the generator's x0 at the last step, ensembles, the DDPM alternative,
the log-rain model space, the radar window data module, and one clear error per bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrs_diff.data.radar_sequence import LOG_THRESHOLD, advected_rain, model_to_rain, rain_to_model
from medrs_diff.datamodules import NowcastDataModule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import METHODS, NowcastDiffusion
from medrs_diff.methods.nowcast_diffusion import ddgan_schedule

TINY = dict(past_frames=3, future_frames=2, patch_size=4, dim=16, depth=1, heads=2, disc_width=8, disc_depth=2)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _batch(b=2, n=3, m=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"cond": torch.rand(b, n, 1, size, size, generator=g) * 2 - 1,
            "image": torch.rand(b, m, 1, size, size, generator=g) * 2 - 1}


def test_registered_and_ddgan_chain_closed_form():
    assert METHODS["nowcast_diffusion"] is NowcastDiffusion
    s = ddgan_schedule(4, 0.1, 20.0)
    for i in range(1, 5):  # beta_i = 1 - exp(-beta_min/T - (beta_max - beta_min)(2i - 1)/(2 T^2))
        assert float(s.betas[i - 1]) == pytest.approx(1 - math.exp(-0.1 / 4 - 19.9 * (2 * i - 1) / 32), rel=1e-9)
    # alpha-bar at the end of the chain is exp(-(beta_min + (beta_max - beta_min)/2)): x_T is pure noise
    assert float(s.alphas_cumprod[-1]) == pytest.approx(math.exp(-(0.1 + 9.95)), rel=1e-6)


def test_single_loss_update_keeps_the_players_apart():
    method = NowcastDiffusion(**TINY)
    d_loss, g_loss, logs = method.ddgan_terms(_batch()["cond"], _batch()["image"], torch.Generator().manual_seed(0))
    g_params, d_params = list(method.net.parameters()), list(method.disc.parameters())
    d_on_g = torch.autograd.grad(d_loss, g_params, retain_graph=True, allow_unused=True)
    g_on_d = torch.autograd.grad(g_loss, d_params, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in d_on_g)  # D's loss never moves G
    assert all(g is None or not g.any() for g in g_on_d)  # G's loss never moves D
    g_on_g = torch.autograd.grad(g_loss, g_params, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_on_g)
    assert any(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(d_loss, d_params, allow_unused=True))
    assert float(logs["loss_d"]) == pytest.approx(2 * math.log(2), abs=0.05)  # D starts near chance


def test_last_reverse_step_returns_the_generators_x0_and_members_are_seeded():
    method = NowcastDiffusion(**TINY).eval()
    s = method.schedule
    assert float(s.posterior_mean_coef_x0[0]) == pytest.approx(1.0) and float(s.posterior_variance[0]) == 0.0
    with torch.no_grad():  # a generator that always predicts x0 = 0.3: the sample is exactly 0.3
        method.net.out.bias.fill_(0.3)
    out = method.predict(_batch(), n_samples=3, generator=torch.Generator().manual_seed(0))
    assert out["members"].shape == (2, 3, 2, 1, 16, 16) and out["prediction"].shape == (2, 2, 1, 16, 16)
    assert torch.allclose(out["members"], torch.full_like(out["members"], 0.3), atol=1e-6)
    fresh = NowcastDiffusion(**TINY).eval()
    with torch.no_grad():
        fresh.net.out.weight.normal_(0, 0.5)
    a = fresh.predict(_batch(), n_samples=3, generator=torch.Generator().manual_seed(1))["members"]
    b = fresh.predict(_batch(), n_samples=3, generator=torch.Generator().manual_seed(1))["members"]
    assert torch.equal(a, b) and not torch.allclose(a[:, 0], a[:, 1])  # seeded; members differ


def test_ddpm_alternative_trains_and_samples_with_engine_samplers():
    method = NowcastDiffusion(**TINY, objective="ddpm", timesteps=20, sampler="dpm_solver_pp", sampling_steps=3)
    loss, logs = method.loss(_batch(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and "loss_simple" in logs
    loss.backward()
    for sampler in ("dpm_solver_pp", "ddpm"):
        out = method.predict(_batch(), sampler=sampler, n_samples=2, generator=torch.Generator().manual_seed(0))
        assert out["members"].shape == (2, 2, 2, 1, 16, 16) and out["members"].abs().max() <= 1


def test_log_rain_model_space_round_trip():
    r = np.array([0.0, 0.05, LOG_THRESHOLD, 1.0, 7.5, 99.0, 500.0, np.nan])
    x = rain_to_model(r)
    assert x[0] == x[1] == -1.0 and x[3] == 0.0 and x[-2] == 1.0 and x[-1] == -1.0  # no rain, 1 mm/h, saturation
    back = model_to_rain(x)
    assert np.allclose(back[2:6], r[2:6], rtol=1e-5) and back[0] == back[1] == 0.0


def test_bad_inputs_and_arguments():
    method = NowcastDiffusion(**TINY)
    b = _batch()
    with pytest.raises(DataError, match="2 past frame.*needs 3"):
        method.predict({"cond": b["cond"][:, :2]}, n_samples=1)
    with pytest.raises(DataError, match="NaN"):
        method.predict({"cond": b["cond"] * float("nan")}, n_samples=1)
    with pytest.raises(DataError, match="multiple of 4"):
        method.predict({"cond": b["cond"][..., :14, :14]}, n_samples=1)
    with pytest.raises(DataError, match="future frames"):
        method.loss({"cond": b["cond"], "image": b["image"][:, :1]})
    with pytest.raises(ArgumentError, match="objective"):
        NowcastDiffusion(objective="gan")
    with pytest.raises(ArgumentError, match="past_frames"):
        NowcastDiffusion(past_frames=0)


def test_datamodule_synthetic_twin_windows():
    dm = NowcastDataModule(synthetic=6, synthetic_size=16, past=3, future=2, samples_per_epoch=5, val_windows=2,
                           patch_size=12, batch_size=2)
    dm.setup("fit")
    item = dm.train_dataset[0]
    assert item["cond"].shape == (3, 1, 12, 12) and item["image"].shape == (2, 1, 12, 12)
    assert item["cond"].min() >= -1 and item["cond"].max() <= 1 and (item["cond"] > 0).any()  # some >= 1 mm/h
    assert len(dm.val_dataset) == 2 and torch.equal(dm.val_dataset[1]["image"], dm.val_dataset[1]["image"])
    with pytest.raises(ArgumentError, match="root"):
        NowcastDataModule()


def test_datamodule_knmi_split_by_time(shared_data):
    folder = shared_data / "radar_knmi" / "2010" / "08"
    dm = NowcastDataModule(root=str(folder), past=4, future=12, cut=60, box=[256, 512, 256, 512], factor=8,
                           stride=2, samples_per_epoch=3, val_windows=2, batch_size=1)
    dm.setup("fit")
    starts = [s for _, s in dm.train_dataset.starts]
    assert max(starts) + 16 <= 60 and [s for _, s in dm.val_dataset.starts] == [60, 62]  # no shared frame
    assert dm.train_dataset[0]["image"].shape == (12, 1, 32, 32)


def test_advected_rain_moves_cells():
    seq = advected_rain(1, 5, 32, seed=3, n_cells=1)[0]
    com = [np.array(np.unravel_index(np.argmax(f), f.shape)) for f in seq]
    steps = np.linalg.norm(np.diff(com, axis=0), axis=1)
    assert (steps >= 0.5).all() and (steps <= 3.5).all()  # speed 1..2 px per frame (argmax on the grid)
