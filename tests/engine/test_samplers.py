"""Samplers against closed forms: with the exact Gaussian(-mixture) denoiser every sampler must
reproduce the known data distribution. Tolerances are a few Monte-Carlo standard errors."""

import pytest
import torch

from medrs_diff.diffusion import samplers as S
from medrs_diff.diffusion.samplers.base import Hook
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import GaussianMixture, wasserstein_1d

N = 3000
SHAPE = (1, 2, 2)


@pytest.fixture(scope="module")
def sched():
    return make_schedule("linear", 1000)


@pytest.fixture(scope="module")
def gauss():
    return GaussianMixture(torch.tensor([[0.3, -0.2, 0.5, 0.0]]), torch.tensor([[0.4, 0.2, 0.6, 0.3]]), shape=SHAPE)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(torch.tensor([[-0.6] * 4, [0.6] * 4]), torch.tensor(0.15), torch.tensor([0.3, 0.7]),
                           shape=SHAPE)


def _x_T(n=N, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _moments_ok(x, gm, n=N):
    mean, var = x.flatten(1).mean(0).double(), x.flatten(1).var(0).double()
    se_mean = (gm.variance() / n).sqrt()
    assert torch.all((mean - gm.mean()).abs() < 4 * se_mean + 0.01), (mean, gm.mean())
    # Var of a sample variance ~ 2 s^4 / n; allow 5 standard errors plus a small bias for few steps.
    assert torch.all((var - gm.variance()).abs() < 5 * gm.variance() * (2 / n) ** 0.5 + 0.02), (var, gm.variance())


def _g(seed=1):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "name,run",
    [
        ("ddpm-1000", lambda d, x, s: S.ddpm(d, x, s, generator=_g())),
        ("ddpm-50-small", lambda d, x, s: S.ddpm(d, x, s, steps=50, generator=_g())),
        ("ddpm-50-large", lambda d, x, s: S.ddpm(d, x, s, steps=50, variance="fixed_large", generator=_g())),
        ("ddim-50", lambda d, x, s: S.ddim(d, x, s, steps=50)),
        ("ddim-50-eta1", lambda d, x, s: S.ddim(d, x, s, steps=50, eta=1.0, generator=_g())),
        ("dpm2m-20", lambda d, x, s: S.dpm_solver_pp(d, x, s, steps=20)),
        ("dpm3m-20", lambda d, x, s: S.dpm_solver_pp(d, x, s, steps=20, order=3)),
        ("dpm2m-10", lambda d, x, s: S.dpm_solver_pp(d, x, s, steps=10)),
    ],
)
def test_samplers_reproduce_gaussian_moments(name, run, sched, gauss):
    x = run(gauss.denoiser(sched), _x_T(), sched)
    assert x.shape == (N, *SHAPE)
    _moments_ok(x, gauss)


def test_analytic_dpm_reproduces_moments_and_is_saved(sched, gauss):
    r = sched.respace(50)
    gamma = S.estimate_gamma(gauss.denoiser(sched), r, [gauss.sample(2000, _g(5))], generator=_g(6))
    gamma = S.AnalyticGamma.from_state_dict(gamma.state_dict())
    x = S.analytic_dpm(gauss.denoiser(sched), _x_T(), sched, gamma, steps=50, generator=_g())
    _moments_ok(x, gauss)
    # Optimal variances lie between the paper's bounds: >= posterior variance.
    var = S.analytic_variances(r, gamma.gamma)
    assert torch.all(var[1:] >= r.posterior_variance[1:] - 1e-12)
    with pytest.raises(ValueError, match="not estimated"):
        S.analytic_dpm(gauss.denoiser(sched), _x_T(8), sched, gamma, steps=40)


def test_fast_samplers_match_ddpm_1000_on_a_mixture(sched, mixture):
    den = mixture.denoiser(sched)
    ref = mixture.sample(N, _g(9))
    ddpm = S.ddpm(den, _x_T(), sched, generator=_g())
    ddim = S.ddim(den, _x_T(), sched, steps=50)
    dpm = S.dpm_solver_pp(den, _x_T(), sched, steps=20)
    w_ddpm = float(wasserstein_1d(ddpm, ref).mean())
    floor = float(wasserstein_1d(mixture.sample(N, _g(10)), ref).mean())  # sampling noise of two sets
    assert w_ddpm < 2 * floor
    assert float(wasserstein_1d(ddim, ddpm).mean()) < 3.5 * floor
    assert float(wasserstein_1d(dpm, ddpm).mean()) < 3.5 * floor
    # Mode weights survive: fraction of samples in the positive mode ~ 0.7.
    for x in (ddpm, ddim, dpm):
        assert float((x.flatten(1).mean(1) > 0).float().mean()) == pytest.approx(0.7, abs=0.03)


def test_respacing_without_rebuilt_betas_would_be_wrong(sched, gauss):
    """The MONAI bug: stepping 1000 -> 50 steps with the original betas leaves visible noise."""
    den = gauss.denoiser(sched)
    good = S.ddpm(den, _x_T(), sched, steps=50, generator=_g())
    _moments_ok(good, gauss)
    bad_sched = make_schedule("linear", 1000)
    bad_sched.timesteps = bad_sched.timesteps  # training chain, but walk only 50 of its indices
    naive = _naive_t_minus_one(den, _x_T(), bad_sched, 50)
    assert float((naive.flatten(1).var(0).double() - gauss.variance()).abs().max()) > 0.1


def _naive_t_minus_one(den, x, sched, steps):
    ts = torch.linspace(999, 0, steps).round().long()
    for t in ts:
        t = int(t)
        beta, abar = float(sched.betas[t]), float(sched.alphas_cumprod[t])
        eps = den(x, torch.full((x.shape[0],), t))
        x = (x - beta / (1 - abar) ** 0.5 * eps) / (1 - beta) ** 0.5
        if t > 0:
            x = x + beta**0.5 * torch.randn(x.shape, generator=_g(t))
    return x


class Recorder(Hook):
    def __init__(self):
        self.states = {}

    def after_step(self, ctx, x_prev):
        self.states[ctx.index] = (ctx.abar_prev, x_prev.clone())
        return x_prev


def test_respaced_ddpm_marginals_at_every_kept_step(sched, gauss):
    rec = Recorder()
    S.ddpm(gauss.denoiser(sched), _x_T(), sched, steps=100, hooks=[rec], generator=_g())
    assert len(rec.states) == 100
    for _, (abar, x) in rec.states.items():
        _moments_ok(x, gauss.marginal(abar))


def test_analytic_variance_is_exact_for_isotropic_gaussians(sched):
    """For N(mu, s^2 I) data Cov[x0 | x_t] is a constant scalar, so Analytic-DPM's reverse kernel is the
    exact one and every kept step has the exact marginal even at 10 steps; fixed-small variance does not."""
    iso = GaussianMixture(torch.tensor([[0.2, -0.1, 0.4, 0.0]]), torch.tensor(0.5), shape=SHAPE)
    den = iso.denoiser(sched)
    r = sched.respace(10)
    gamma = S.estimate_gamma(den, r, [iso.sample(4000, _g(5))], generator=_g(6))
    rec = Recorder()
    S.analytic_dpm(den, _x_T(), sched, gamma, steps=10, hooks=[rec], generator=_g())
    for _, (abar, x) in rec.states.items():
        _moments_ok(x, iso.marginal(abar))
    rec_small = Recorder()
    S.ddpm(den, _x_T(), sched, steps=10, hooks=[rec_small], generator=_g())
    gaps = [float((x.flatten(1).var(0).double() - iso.marginal(a).variance()).abs().max())
            for a, x in rec_small.states.values()]
    assert max(gaps) > 0.05  # fixed-small underestimates the reverse variance on large steps


def test_ddim_deterministic_and_invertible(sched, gauss):
    den = gauss.denoiser(sched)
    a = S.ddim(den, _x_T(200), sched, steps=50, generator=_g(1))
    b = S.ddim(den, _x_T(200), sched, steps=50, generator=_g(2))
    assert torch.equal(a, b)
    x0 = gauss.sample(200, _g(3))
    z = S.ddim_invert(den, x0, sched, steps=50, fixed_point_iters=10)
    assert float(z.std()) == pytest.approx(1.0, abs=0.15)  # the code looks like noise
    back = S.ddim(den, z, sched, steps=50)
    assert float((back - x0).abs().max()) < 1e-3


def test_paradigms_equals_sequential_with_fewer_rounds(sched, mixture):
    den = mixture.denoiser(sched)
    x = _x_T(300)
    seq = S.ddpm(den, x, sched, steps=100, generator=_g(3))
    par = S.paradigms(den, x, sched, steps=100, window=20, tolerance=0.05, generator=_g(3))
    assert par.rounds < 100
    assert float((par.sample - seq).abs().max()) < 0.02
    seq = S.ddim(den, x, sched, steps=100)
    par = S.paradigms(den, x, sched, steps=100, base="ddim", window=20, tolerance=0.01)
    assert par.rounds < 100 and float((par.sample - seq).abs().max()) < 1e-3
    with pytest.raises(ValueError, match="hooks"):
        S.paradigms(den, x, sched, steps=10, hooks=(Recorder(),))


def test_learned_variance_interpolates_log_variances(sched, gauss):
    den = gauss.denoiser(sched)
    for v, mode in ((1.0, "fixed_large"), (-1.0, "fixed_small")):
        net = lambda x, t, v=v: torch.cat([den(x, t), torch.full_like(x, v)], 1)  # noqa: E731
        learned = S.ddpm(net, _x_T(50), sched, steps=20, variance="learned", generator=_g(4))
        fixed = S.ddpm(den, _x_T(50), sched, steps=20, variance=mode, generator=_g(4))
        assert torch.allclose(learned, fixed, atol=1e-5)


@pytest.mark.parametrize("ptype", ["x0", "v"])
def test_prediction_types_sample_identically(sched, gauss, ptype):
    a = S.dpm_solver_pp(gauss.denoiser(sched), _x_T(100), sched, steps=15)
    b = S.dpm_solver_pp(gauss.denoiser(sched, ptype), _x_T(100), sched, steps=15, prediction_type=ptype)
    assert torch.allclose(a, b, atol=1e-4)


def test_truncated_start_keeps_the_data_distribution(sched, gauss):
    x0_hat = gauss.sample(N, _g(11))
    out = S.sample_from_estimate(S.ddim, gauss.denoiser(sched), x0_hat, sched, t_start=250, steps=20, eta=1.0,
                                 generator=_g(12))
    _moments_ok(out, gauss)
    x, trunc = S.truncated_start(x0_hat, sched, 250, generator=_g(13))
    assert int(trunc.timesteps[-1]) == 250 and len(trunc) == 251
    # Partial diffusion from t'=50 stays close to its start; from T-1 it forgets it.
    near = S.sample_from_estimate(S.ddim, gauss.denoiser(sched), x0_hat[:200], sched, t_start=50, steps=10)
    assert float((near - x0_hat[:200]).pow(2).mean()) < 0.05


def test_same_seed_same_sample_3d(sched):
    gm = GaussianMixture(torch.zeros(1, 8), torch.ones(1, 8), shape=(1, 2, 2, 2))
    x = torch.randn(4, 1, 2, 2, 2, generator=_g(0))
    a = S.ddpm(gm.denoiser(sched), x, sched, steps=10, generator=_g(5))
    b = S.ddpm(gm.denoiser(sched), x, sched, steps=10, generator=_g(5))
    assert a.shape == x.shape and torch.equal(a, b)


def test_clip_hook_and_thresholding(sched, gauss):
    class Clip(Hook):
        calls = 0

        def on_x0(self, ctx):
            Clip.calls += 1
            return ctx.x0.clamp(-0.1, 0.1)

    out = S.ddim(gauss.denoiser(sched), _x_T(64), sched, steps=10, hooks=[Clip()])
    assert Clip.calls == 10 and float(out.abs().max()) <= 0.1 + 1e-6
    out = S.dpm_solver_pp(gauss.denoiser(sched), _x_T(64) * 5, sched, steps=10, clip=True)
    assert float(out.abs().max()) <= 1.0 + 1e-6


def test_bad_inputs(sched, gauss):
    den = gauss.denoiser(sched)
    with pytest.raises(ValueError, match="only 1000"):
        S.ddim(den, _x_T(4), sched, steps=2000)
    with pytest.raises(ValueError, match="4-D"):
        S.ddpm(den, torch.zeros(4), sched, steps=5)
    with pytest.raises(ValueError, match="4-D"):
        S.ddpm(den, torch.zeros(1, 1, 2, 2, 2, 2), sched, steps=5)
    with pytest.raises(ValueError, match="needs 2"):
        S.ddpm(den, _x_T(4), sched, steps=5, variance="learned")
    with pytest.raises(ValueError, match="prediction type"):
        S.ddim(den, _x_T(4), sched, steps=5, prediction_type="score")
    with pytest.raises(ValueError, match="variance mode"):
        S.ddpm(den, _x_T(4), sched, steps=5, variance="huge")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        S.ddim(den, _x_T(4), make_schedule("linear", 100, zero_terminal_snr=True), steps=5)
