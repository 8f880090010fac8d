"""RDDM (residual denoising diffusion) against closed forms: its reductions to DDIM are exact, and with
the exact denoiser of a Gaussian mixture its sampler reproduces the known conditional distribution."""

import math

import pytest
import torch

from medrs_diff.diffusion import rddm as R
from medrs_diff.diffusion.samplers import ddim
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import GaussianMixture

SHAPE = (1, 2, 2)
N = 3000


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture(torch.tensor([[-0.6] * 4, [0.6] * 4]), torch.tensor(0.15), torch.tensor([0.3, 0.7]),
                           shape=SHAPE)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def exact_rddm_denoiser(gm, sched: R.RDDMSchedule, x_in, objective="res_noise"):
    """E[I_res | I_t], E[eps | I_t] for I_0 ~ gm: I_t - abar I_in = (1 - abar) I_0 + betabar eps."""

    def denoise(x_t, t):
        a = sched.alphas_cumsum[t].to(x_t.dtype).reshape(-1, 1, 1, 1)
        bb = sched.betas2_cumsum[t].sqrt().to(x_t.dtype).reshape(-1, 1, 1, 1)
        n = ((1 - a) ** 2 + bb**2).sqrt()
        x0 = gm.posterior_mean((x_t - a * x_in) / n, ((1 - a) / n).flatten() ** 2)
        res = x_in - x0
        eps = (x_t - x0 - a * res) / bb
        return {"res": res, "noise": eps, "res_noise": torch.cat([res, eps], 1)}[objective]

    return denoise


def test_ramps_are_the_papers():
    assert torch.allclose(R.ramp(4, "increased"), torch.tensor([1, 2, 3, 4], dtype=torch.float64) / 10)
    assert torch.allclose(R.ramp(4, "decreased"), torch.tensor([4, 3, 2, 1], dtype=torch.float64) / 10)
    assert torch.allclose(R.ramp(5, "average", 0.01), torch.full((5,), 0.002, dtype=torch.float64))
    s = R.make_rddm_schedule(1000, "decreased", "increased", sum_scale=0.01)
    assert math.isclose(float(s.alphas_cumsum[-1]), 1.0, abs_tol=1e-12)
    assert math.isclose(float(s.betas2_cumsum[-1]), 0.01, rel_tol=1e-12)
    with pytest.raises(ValueError, match="unknown RDDM ramp"):
        R.ramp(4, "cosine")
    with pytest.raises(ValueError, match="non-decreasing"):
        R.RDDMSchedule(torch.tensor([0.5, 0.2]), torch.tensor([0.1, 0.2]))


def test_forward_process_decomposes_exactly():
    s = R.make_rddm_schedule(50)
    x0, x_in, eps = (torch.randn(3, *SHAPE, generator=_g(i)) for i in range(3))
    idx = torch.tensor([0, 20, 49])
    x_t = R.q_sample(s, x0, x_in, idx, eps)
    a = s.gather("alphas_cumsum", idx, 4)
    bb = s.gather("betas2_cumsum", idx, 4).sqrt()
    got_x0, res, got_eps = R.split_prediction(torch.cat([x_in - x0, eps], 1), x_t, x_in, a, bb, "res_noise")
    assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps)
    x0_r, _, eps_r = R.split_prediction(x_in - x0, x_t, x_in, a, bb, "res")
    assert torch.allclose(x0_r, x0) and torch.allclose(eps_r, eps, atol=1e-4)
    # at the last index (abar = 1) I_T = I_in + betabar_T eps whatever I_0 is
    assert torch.allclose(x_t[2], x_in[2] + bb[2] * eps[2], atol=1e-6)


def test_loss_is_zero_for_the_true_targets_and_checks_channels():
    s = R.make_rddm_schedule(20)
    x0, x_in, eps = (torch.randn(4, *SHAPE, generator=_g(i)) for i in range(3))
    idx = torch.tensor([0, 5, 10, 19])
    for obj, target in (("res", x_in - x0), ("res_noise", torch.cat([x_in - x0, eps], 1))):
        loss, logs = R.RDDMLoss(s, obj)(lambda x, t, tg=target: tg, x0, x_in, index=idx, noise=eps)
        assert float(loss) == 0.0
        wrong, _ = R.RDDMLoss(s, obj)(lambda x, t, tg=target: tg + 0.5, x0, x_in, index=idx, noise=eps)
        assert math.isclose(float(wrong), 0.5, rel_tol=1e-6)  # L1
    with pytest.raises(ValueError, match="needs 2"):
        R.RDDMLoss(s, "res_noise")(lambda x, t: x, x0, x_in)
    with pytest.raises(ValueError, match="cannot recover I_0 where abar = 1"):
        R.RDDMLoss(s, "noise")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_zero_residual_schedule_is_ddim_in_ve_coordinates(gm, eta):
    """abar = 0, betabar^2 = (1 - abar_DDPM)/abar_DDPM: RDDM on x / sqrt(abar_DDPM) is DDIM, step by step."""
    vp = make_schedule("linear", 1000)
    ac = vp.alphas_cumprod
    rs = R.RDDMSchedule(torch.zeros_like(ac), (1 - ac) / ac)
    den_vp = gm.denoiser(vp)

    def den_ve(x, t):  # eps-prediction at I_t = x_t / sqrt(abar)
        return den_vp(x * ac[t].sqrt().to(x.dtype).reshape(-1, 1, 1, 1), t)

    x_T = torch.randn(64, *SHAPE, generator=_g(0), dtype=torch.float64)
    want = ddim(den_vp, x_T, vp, steps=20, eta=eta, generator=_g(1))
    ve_start = x_T / math.sqrt(float(ac[vp.respace(20).timesteps[-1]]))
    got = R.rddm_sample(den_ve, torch.zeros_like(x_T), rs, steps=20, eta=eta, objective="noise", x_T=ve_start,
                        generator=_g(1))
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-9)


def test_from_ddpm_is_ddim_at_eta_zero(gm):
    vp = make_schedule("cosine", 1000)
    rs = R.RDDMSchedule.from_ddpm(vp)
    den_vp = gm.denoiser(vp)
    ac = vp.alphas_cumprod

    def den(x, t):  # residual = I_in - I_0 = -x0, noise = eps
        eps = den_vp(x, t)
        a = ac[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return torch.cat([-(x - (1 - a).sqrt() * eps) / a.sqrt(), eps], 1)

    x_T = torch.randn(64, *SHAPE, generator=_g(2), dtype=torch.float64)
    want = ddim(den_vp, x_T, vp, steps=15)
    got = R.rddm_sample(den, torch.zeros_like(x_T), rs, steps=15, x_T=x_T)
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_restoration_sampler_reproduces_the_exact_conditional(gm, eta):
    """Paper ramps (alpha decreased, beta^2 increased), I_0 | I_in ~ gm: 50 steps from I_in + noise give
    gm's mean and variance within Monte-Carlo error, for both objectives that see the residual."""
    s = R.make_rddm_schedule(1000, "decreased", "increased", sum_scale=1.0)
    x_in = torch.full((N, *SHAPE), 0.3, dtype=torch.float64)
    outs = {}
    for obj in ("res", "res_noise"):
        outs[obj] = R.rddm_sample(exact_rddm_denoiser(gm, s, x_in, obj), x_in, s, steps=50, eta=eta,
                                  objective=obj, generator=_g(3))
    assert torch.allclose(outs["res"], outs["res_noise"], atol=1e-8)
    x = outs["res_noise"].flatten(1)
    mean, var = x.mean(0), x.var(0)
    se_mean, se_var = (gm.variance() / N).sqrt(), gm.variance() * math.sqrt(2 / N)
    assert torch.all((mean - gm.mean()).abs() < 4 * se_mean + 0.01), (mean, gm.mean())
    assert torch.all((var - gm.variance()).abs() < 5 * se_var + 0.01), (var, gm.variance())
    # bimodal: the share of the right mode is the mixture weight 0.7
    share = (x.mean(1) > 0).double().mean()
    assert abs(float(share) - 0.7) < 4 * math.sqrt(0.21 / N) + 0.01


def test_rddm_learns_a_small_restoration():
    """RDDMLoss trains a tiny net (I_t, I_in, t) -> (res, noise); 5 sampling steps then restore noisy inputs
    better than the inputs themselves (x0 in {-0.5, 0.5} per sample, I_in = x0 + 0.3 n)."""
    torch.manual_seed(0)
    s = R.make_rddm_schedule(100, "decreased", "increased", sum_scale=0.01)
    d = 16

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * d + 1, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                                           torch.nn.SiLU(), torch.nn.Linear(128, 2 * d))

        def forward(self, x_t, t, cond):
            h = torch.cat([x_t.flatten(1), cond.flatten(1), t[:, None].float() / 100], 1)
            return self.mlp(h).reshape(-1, 2, 4, 4)

    def batch(n, g):
        x0 = (torch.randint(0, 2, (n, 1, 1, 1), generator=g).float() - 0.5).expand(n, 1, 4, 4)
        return x0, x0 + 0.3 * torch.randn(n, 1, 4, 4, generator=g)

    net, loss_fn, g = Net(), R.RDDMLoss(s, "res_noise"), _g(0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(400):
        x0, x_in = batch(128, g)
        loss, logs = loss_fn(net, x0, x_in, generator=g, cond=x_in)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0, x_in = batch(256, _g(9))
    with torch.no_grad():
        out = R.rddm_sample(lambda x, t: net(x, t, x_in), x_in, s, steps=5, generator=_g(10))
    rmse_in = float(((x_in - x0) ** 2).mean().sqrt())
    rmse_out = float(((out - x0) ** 2).mean().sqrt())
    assert rmse_out < 0.6 * rmse_in, (rmse_out, rmse_in)  # measured 0.134 vs 0.297
