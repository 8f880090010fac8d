"""Stochastic gDDIM (lam > 0): lam = 0 is the deterministic sampler bit for bit; order 0 is DDIM with the
derived per-step eta under the same generator (lam = 1: DDIM eta = 1); with the exact eps of Gaussian data
the samples' mean / variance match the closed form (VP chain and a diagonal blurring process); the
registry marks it stochastic and it follows the generator (one stream or one per element)."""

import math

import pytest
import torch

from medrs_diff.diffusion import samplers as S
from medrs_diff.diffusion.generators import SampleGenerators
from medrs_diff.diffusion.samplers.base import Model, prepare
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import GaussianMixture

SHAPE = (1, 2, 2)
MU = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64)
SD = torch.tensor([0.4, 0.2, 0.6, 0.3], dtype=torch.float64)


@pytest.fixture(scope="module")
def sched():
    return make_schedule("linear", 1000)


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture(torch.tensor([[-0.6] * 4, [0.6] * 4]), torch.tensor(0.15), torch.tensor([0.3, 0.7]),
                           shape=SHAPE)


def _x_T(n=256, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_lam_zero_is_the_deterministic_sampler_bit_for_bit(gm, sched):
    den = gm.denoiser(sched)
    for q in (0, 2):
        want = S.gddim(den, _x_T(), sched, steps=20, order=q)
        got = S.gddim(den, _x_T(), sched, steps=20, order=q, lam=0.0, generator=_g(1))
        assert torch.equal(got, want), q
    proc = S.DiagonalDiffusion(*_blur_coeffs(20))
    want = S.gddim_diagonal(_gauss_eps(proc), _x_T(), proc, order=2)
    assert torch.equal(S.gddim_diagonal(_gauss_eps(proc), _x_T(), proc, order=2, lam=0.0, generator=_g(1)), want)


def _ddim_with_step_etas(den, x_T, schedule, steps, lam, generator):
    """DDIM's own step, eta chosen per step by the derived relation."""
    sched = prepare(x_T, schedule, steps, "linspace")
    model = Model(den, sched, "eps", "fixed_small", False, None)
    x = x_T
    for step, index in enumerate(range(len(sched) - 1, -1, -1)):
        eta = S.gddim_eta(float(sched.alphas_cumprod[index]), float(sched.alphas_cumprod_prev[index]), lam)
        x = S.ddim_step(model, x, index, eta, step, (), generator)
    return x


@pytest.mark.parametrize("lam", [0.5, 1.0, 1.7])
def test_order_zero_is_ddim_with_the_derived_eta(gm, sched, lam):
    den = gm.denoiser(sched)
    got = S.gddim(den, _x_T(), sched, steps=20, order=0, lam=lam, generator=_g(7))
    want = _ddim_with_step_etas(den, _x_T(), sched, 20, lam, _g(7))
    assert torch.allclose(got, want, atol=1e-10, rtol=1e-8)
    if lam == 1.0:  # eta = 1 at every step: DDIM's eta = 1 (DDPM's posterior on the sub-chain)
        assert torch.allclose(got, S.ddim(den, _x_T(), sched, steps=20, eta=1.0, generator=_g(7)), atol=1e-10)
    assert not torch.allclose(got, S.gddim(den, _x_T(), sched, steps=20, order=0, lam=lam, generator=_g(8)))


def test_derived_eta_closed_form():
    ab_t, ab_s = 0.3, 0.6
    r2 = (1 - ab_s) * ab_t / (ab_s * (1 - ab_t))
    assert S.gddim_eta(ab_t, ab_s, 0.0) == 0.0
    assert abs(S.gddim_eta(ab_t, ab_s, 1.0) - 1.0) < 1e-12
    assert abs(S.gddim_eta(ab_t, ab_s, 2.0) - math.sqrt((1 - r2**4) / (1 - r2))) < 1e-12
    assert abs(S.gddim_eta(ab_t, 1.0, 0.5) - 1.0) < 1e-12  # last step to x0: all noise terms vanish anyway


def _gauss_den(sched):
    mu, sd = MU.reshape(SHAPE), SD.reshape(SHAPE)

    def denoise(x, t):  # exact eps for x0 ~ N(MU, SD^2) per coordinate
        ab = sched.alphas_cumprod.to(x.dtype)[t].reshape(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * sd**2 + 1 - ab)

    return denoise


def _chain_moments(alphas, sigmas, lam):
    """Exact mean / variance of the discrete stochastic chain for Gaussian data with its exact eps: every step
    is affine in x plus Gaussian noise (x0 = p x + q, eps = k x - k a mu), so the moments recurse in closed form.
    ``alphas`` / ``sigmas``: per level (index 0 least noisy), each (levels, 4); the chain starts at the exact
    terminal marginal and ends at x0."""
    a, s = alphas[-1], sigmas[-1]
    m, v = a * MU, a**2 * SD**2 + s**2
    for i in range(len(alphas) - 1, -1, -1):
        a, s = alphas[i], sigmas[i]
        k = s / (a**2 * SD**2 + s**2)
        p, q = (1 - s * k) / a, s * k * MU
        if i == 0:
            m, v = p * m + q, p**2 * v
            continue
        a_s, s_s = alphas[i - 1], sigmas[i - 1]
        c = ((s_s / a_s) / (s / a)) ** (lam * lam)
        A, B = a_s * p + s_s * c * k, a_s * q - s_s * c * k * a * MU
        m, v = A * m + B, A**2 * v + s_s**2 * (1 - c**2)
    return m, v


def _check_moments(out, mean, var, n):
    assert torch.all((out.mean(0) - mean).abs() < 4 * (var / n).sqrt()), (out.mean(0), mean)
    assert torch.all((out.var(0) / var - 1).abs() < 4 * (2 / n) ** 0.5), (out.var(0), var)


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_vp_samples_match_the_closed_form_of_the_chain(sched, lam):
    """The chain's exact output law (discretisation included: 50 steps shrink the variance, as DDPM's
    few-step chains do), within Monte Carlo error."""
    n = 8000
    ab_T = sched.alphas_cumprod[-1].double()
    z = torch.randn(n, *SHAPE, generator=_g(4), dtype=torch.float64)
    mu, sd = MU.reshape(SHAPE), SD.reshape(SHAPE)
    x_T = ab_T.sqrt() * mu + (ab_T * sd**2 + 1 - ab_T).sqrt() * z  # the exact terminal marginal
    out = S.gddim(_gauss_den(sched), x_T, sched, steps=50, order=0, lam=lam, generator=_g(5)).flatten(1)
    ab = sched.respace(50).alphas_cumprod.double()[:, None].expand(50, 4)
    _check_moments(out, *_chain_moments(ab.sqrt(), (1 - ab).sqrt(), lam), n)


def test_vp_samples_reach_the_data_law_with_many_steps(sched):
    """1000 steps: the SDE solution itself, N(MU, SD^2) within Monte Carlo error plus 3 %."""
    n = 8000
    ab_T = sched.alphas_cumprod[-1].double()
    mu, sd = MU.reshape(SHAPE), SD.reshape(SHAPE)
    x_T = ab_T.sqrt() * mu + (ab_T * sd**2 + 1 - ab_T).sqrt() * torch.randn(n, *SHAPE, generator=_g(4),
                                                                            dtype=torch.float64)
    out = S.gddim(_gauss_den(sched), x_T, sched, steps=1000, order=0, lam=0.5, generator=_g(5)).flatten(1)
    assert torch.all((out.mean(0) - MU).abs() < 4 * SD / n**0.5), out.mean(0)
    assert torch.all((out.std(0) / SD - 1).abs() < 0.03), out.std(0) / SD


def _blur_coeffs(levels):
    decay = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    sched = make_schedule("linear", 1000).respace(levels)
    ab = sched.alphas_cumprod[:, None]
    tau = 3.0 * sched.timesteps.double()[:, None] / 999
    alphas = (ab.sqrt() * torch.exp(-decay[None] * tau)).reshape(levels, *SHAPE)
    sigmas = (1 - ab).sqrt().expand(levels, 4).reshape(levels, *SHAPE)
    return alphas, sigmas, sched.timesteps


def _gauss_eps(proc):
    def denoise(x, t):
        i = torch.searchsorted(proc.timesteps, t[:1]).item()
        a, s = proc.alphas[i], proc.sigmas[i]
        mu, sd = MU.reshape(SHAPE), SD.reshape(SHAPE)
        return s * (x - a * mu) / (a**2 * sd**2 + s**2)

    return denoise


def test_diagonal_stochastic_samples_match_the_closed_form():
    proc = S.DiagonalDiffusion(*_blur_coeffs(50))
    n = 8000
    a_T, s_T = proc.alphas[-1], proc.sigmas[-1]
    mu, sd = MU.reshape(SHAPE), SD.reshape(SHAPE)
    x_T = a_T * mu + (a_T**2 * sd**2 + s_T**2).sqrt() * torch.randn(n, *SHAPE, generator=_g(4), dtype=torch.float64)
    out = S.gddim_diagonal(_gauss_eps(proc), x_T, proc, order=0, lam=1.0, generator=_g(6)).flatten(1)
    _check_moments(out, *_chain_moments(proc.alphas.flatten(1), proc.sigmas.flatten(1), 1.0), n)
    other = S.gddim_diagonal(_gauss_eps(proc), x_T, proc, order=0, lam=1.0, generator=_g(7))
    assert not torch.allclose(other.flatten(1), out)


def test_registry_marks_it_stochastic_and_it_follows_the_generator(gm, sched):
    spec = S.get_sampler("gddim")
    assert not spec.stochastic and "lam" in spec.options
    assert not spec.is_stochastic() and not spec.is_stochastic(lam=0.0) and spec.is_stochastic(lam=0.5)
    assert S.get_sampler("ddim").is_stochastic(eta=1.0) and not S.get_sampler("ddim").is_stochastic()
    assert S.get_sampler("ddpm").is_stochastic()
    den = gm.denoiser(sched)
    x = _x_T(4)
    gens = lambda seeds: SampleGenerators.from_seeds(seeds)  # noqa: E731
    a = spec(den, x, sched, steps=10, order=0, lam=1.0, generator=gens([1, 2, 3, 4]))
    b = spec(den, x, sched, steps=10, order=0, lam=1.0, generator=gens([1, 2, 3, 4]))
    c = spec(den, x, sched, steps=10, order=0, lam=1.0, generator=gens([1, 2, 3, 5]))
    alone = spec(den, x[3:], sched, steps=10, order=0, lam=1.0, generator=gens([4]))
    assert torch.equal(a, b) and torch.equal(a[:3], c[:3]) and not torch.allclose(a[3], c[3])
    assert torch.allclose(alone[0], a[3], atol=1e-12)  # element j's noise depends on generator j only


def test_bad_lam_is_refused(sched):
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        S.gddim(lambda x, t: x, _x_T(4), sched, order=0, lam=-0.1)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        S.gddim(lambda x, t: x, _x_T(4), sched, order=0, lam=float("nan"))
    with pytest.raises(ValueError, match="single-step: pass order=0"):
        S.gddim(lambda x, t: x, _x_T(4), sched, lam=1.0)
    proc = S.DiagonalDiffusion(*_blur_coeffs(5))
    with pytest.raises(ValueError, match="single-step: pass order=0"):
        S.gddim_diagonal(lambda x, t: x, _x_T(4), proc, order=1, lam=1.0)
