"""BDDM (Lam et al. 2022): the step loss has its closed form, the schedule network trained over the exact
Gaussian-mixture denoiser lowers it, the searched few-step schedule is a valid chain whose DDPM samples are
closer (W1) to the exact distribution than linearly spaced steps of the same count, and all of it is
reproducible from the seeds."""

import math

import pytest
import torch

from medrs_diff.diffusion import samplers as S
from medrs_diff.diffusion.accuracy import default_mixture
from medrs_diff.diffusion.bddm import (
    fit_schedule_net,
    grid_search,
    learned_schedule,
    nearest_timesteps,
    search_schedule,
    step_loss,
)
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import wasserstein_1d


@pytest.fixture(scope="module")
def setup():
    gm, sched = default_mixture(), make_schedule("linear", 1000)
    den = gm.denoiser(sched)
    fit = fit_schedule_net(den, sched, gm.sample, iters=400, generator=torch.Generator().manual_seed(0))
    return gm, sched, den, fit


def test_step_loss_closed_form():
    # by hand, D = 2, delta = 0.5, beta_hat = 0.25 (r = 0.5), eps = (1, 0), eps_hat = (0, 1):
    # ||sqrt(.5)(1,0) - (.25/sqrt(.5))(0,1)||^2 = 0.5 + 0.125; / (2 * 0.25) = 1.25
    # + 1/4 log 2 + (2/2)(0.5 - 1) = 1.25 + 0.1733 - 0.5
    val = step_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0.5], dtype=torch.float64),
                    torch.tensor([0.25], dtype=torch.float64))
    assert abs(float(val) - (0.75 + 0.25 * math.log(2))) < 1e-9
    # a perfect noise estimate with ||eps||^2 = D leaves only 1/4 log(delta / beta_hat): larger steps are
    # never penalised (the first term is (1 - r)/2 ||eps||^2, cancelled by D/2 (r - 1))
    e = torch.ones(3, 8)
    abar, b = torch.full((3,), 0.3, dtype=torch.float64), torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    assert torch.allclose(step_loss(e, e, abar, b), 0.25 * torch.log(0.7 / b), atol=1e-6)


def test_schedule_net_learns_and_is_reproducible(setup):
    gm, sched, den, fit = setup
    first, last = sum(fit.losses[:40]) / 40, sum(fit.losses[-40:]) / 40
    assert last < 0.8 * first, (first, last)
    again = fit_schedule_net(den, sched, gm.sample, iters=400, generator=torch.Generator().manual_seed(0))
    assert again.losses == fit.losses
    x = torch.randn(5, *gm.shape, generator=torch.Generator().manual_seed(1))
    b = torch.full((5,), 0.1, dtype=torch.float64)
    assert torch.equal(fit.net(x, b), again.net(x, b))
    with pytest.raises(ValueError, match="eps-predictor"):
        fit_schedule_net(lambda x, t: torch.cat([x, x], 1), sched, gm.sample, iters=1)
    with pytest.raises(ValueError, match="tau must lie"):
        fit_schedule_net(den, sched, gm.sample, tau=1000)


def test_searched_schedule_is_valid_and_reproducible(setup):
    gm, sched, den, fit = setup
    chains = [search_schedule(fit.net, den, sched, 1e-3, 0.8, gm.shape, max_steps=8,
                              generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    c = chains[0]
    assert torch.equal(c.alphas_cumprod, chains[1].alphas_cumprod)
    assert 1 <= len(c) <= 8 and abs(float(c.alphas_cumprod[-1]) - 1e-3) < 1e-12
    assert ((c.betas > 0) & (c.betas < 1)).all()
    assert (c.alphas_cumprod[1:] < c.alphas_cumprod[:-1]).all()  # alpha-bar decreasing in noise
    assert abs(float(c.betas[-1]) - 0.8) < 1e-12  # the first (noisiest) step is beta_hat_N
    # each level is given the training timestep of nearest log-SNR
    t = nearest_timesteps(sched.alphas_cumprod, sched.alphas_cumprod[[0, 17, 500, 999]])
    assert t.tolist() == [0, 17, 500, 999]
    with pytest.raises(ValueError, match="lie in"):
        learned_schedule([0.5, 1.2], sched)


def test_bddm_schedule_beats_linear_spacing(setup):
    gm, sched, den, fit = setup
    gv = torch.Generator().manual_seed(5)
    val, x_val = gm.sample(2000, gv), torch.randn(2000, *gm.shape, generator=gv)

    def score(chain):
        return float(wasserstein_1d(S.ddpm(den, x_val, chain, generator=torch.Generator().manual_seed(6)), val).mean())

    res = grid_search(fit.net, den, sched, gm.shape, score, max_steps=5, seed=7)
    assert len(res.schedule) == 5 and len(res.candidates) == 60
    g = torch.Generator().manual_seed(10)  # fresh test draws, not the validation set
    ref, x_T = gm.sample(4000, g), torch.randn(4000, *gm.shape, generator=g)

    def w1(chain):
        return float(wasserstein_1d(S.ddpm(den, x_T, chain, generator=torch.Generator().manual_seed(1)), ref).mean())

    learned, linear = w1(res.schedule), w1(sched.respace(5))
    assert learned < 0.8 * linear, (learned, linear)  # measured 0.11 vs 0.18


def test_samplers_cli_adds_bddm_rows(capsys):
    from medrs_diff.cli import main

    assert main(["samplers", "--n", "300", "--bddm"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "| bddm(<=5)-5 |" in out and "| bddm_ddim(<=5)-5 |" in out and "| ddpm-5 |" in out
    assert "ddim-50" in rows  # the existing rows stay
    nfe = [int(r.split("|")[5]) for name, r in rows.items() if name.startswith("bddm(")]
    assert len(nfe) == 3 and all(1 <= k <= 20 for k in nfe)
