"""gDDIM: order 0 is DDIM exactly on a VP chain; the multistep weights integrate polynomials exactly;
higher orders solve the probability-flow ODE more accurately than DDIM at the same step count."""

import numpy as np
import pytest
import torch

from medrs_diff.diffusion import samplers as S
from medrs_diff.diffusion.samplers.gddim import lagrange_weights
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import GaussianMixture

SHAPE = (1, 2, 2)


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture(torch.tensor([[-0.6] * 4, [0.6] * 4]), torch.tensor(0.15), torch.tensor([0.3, 0.7]),
                           shape=SHAPE)


def test_mixture_denoiser_is_finite_at_zero_terminal_snr(gm):
    """v / x0 targets of the exact mixture denoiser come from its posterior mean: finite where alpha-bar = 0."""
    sched = make_schedule("cosine", 50, zero_terminal_snr=True)
    x_t = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    last = torch.full((8,), 49)
    x0 = gm.denoiser(sched, "x0")(x_t, last)
    v = gm.denoiser(sched, "v")(x_t, last)
    assert torch.isfinite(x0).all() and torch.isfinite(v).all()
    mean = (gm.weights[:, None] * gm.means).sum(0).reshape(SHAPE).to(x0.dtype)
    torch.testing.assert_close(x0, mean.expand_as(x0))  # at alpha-bar 0 the posterior is the prior
    torch.testing.assert_close(v, -x0)  # v = sqrt(a) eps - sqrt(1 - a) x0 with a = 0


def _x_T(n=256, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("name", "steps", "spacing", "ztsnr", "ptype"), [
    ("linear", 10, "linspace", False, "eps"),
    ("linear", 50, "trailing", False, "eps"),
    ("cosine", 20, "trailing", True, "v"),
])
def test_order_zero_is_ddim_exactly(gm, name, steps, spacing, ztsnr, ptype):
    sched = make_schedule(name, 1000, zero_terminal_snr=ztsnr)
    den = gm.denoiser(sched, ptype)
    want = S.ddim(den, _x_T(), sched, steps=steps, spacing=spacing, prediction_type=ptype)
    got = S.gddim(den, _x_T(), sched, steps=steps, spacing=spacing, order=0, prediction_type=ptype)
    assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-10, rtol=1e-10)


def test_lagrange_weights_integrate_polynomials_exactly():
    nodes = [3.0, 7.5, 20.0, 41.0]
    rng = np.random.default_rng(0)
    for q in range(4):
        p = np.polynomial.Polynomial(rng.normal(size=q + 1))
        w = lagrange_weights(nodes[: q + 1], 3.0, 0.2)
        exact = p.integ()(0.2) - p.integ()(3.0)
        assert abs(sum(wj * p(r) for wj, r in zip(w, nodes[: q + 1])) - exact) < 1e-9 * max(1, abs(exact))


def test_higher_orders_track_the_ode_better_than_ddim(gm):
    sched = make_schedule("linear", 1000)
    den = gm.denoiser(sched)
    ref = S.ddim(den, _x_T(), sched, steps=1000)  # the probability-flow ODE solution from the same x_T
    err = {q: float((S.gddim(den, _x_T(), sched, steps=50, order=q) - ref).abs().mean()) for q in (0, 1, 2)}
    assert err[1] < 0.5 * err[0] and err[2] < 0.2 * err[0], err


def test_bad_order_and_registry_entry():
    with pytest.raises(ValueError, match="order must be 0, 1, 2 or 3"):
        S.gddim(lambda x, t: x, _x_T(4), make_schedule("linear", 100), order=5)
    spec = S.get_sampler("gddim")
    assert not spec.stochastic and spec.supports_hooks and "order" in spec.options and spec.default_steps == 20


MU = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64)
SD = torch.tensor([0.4, 0.2, 0.6, 0.3], dtype=torch.float64)


def _blurring(levels: int, decay: torch.Tensor) -> S.DiagonalDiffusion:
    """Per-coordinate alpha_t = sqrt(abar_t) exp(-decay tau_t) (frequencies fade at different rates)."""
    sched = make_schedule("linear", 1000).respace(levels)
    ab = sched.alphas_cumprod[:, None]
    tau = 3.0 * sched.timesteps.double()[:, None] / 999
    alphas = (ab.sqrt() * torch.exp(-decay[None] * tau)).reshape(levels, 1, 2, 2)
    sigmas = (1 - ab).sqrt().expand(levels, 4).reshape(levels, 1, 2, 2)
    return S.DiagonalDiffusion(alphas, sigmas, sched.timesteps)


def _gauss_eps(proc):
    def denoise(x, t):  # exact eps for x0 ~ N(MU, SD^2) per coordinate
        i = torch.searchsorted(proc.timesteps, t[:1]).item()
        a, s = proc.alphas[i], proc.sigmas[i]
        mu, sd = MU.reshape(1, 2, 2), SD.reshape(1, 2, 2)
        return s * (x - a * mu) / (a**2 * sd**2 + s**2)

    return denoise


def test_diagonal_with_scalar_coefficients_is_gddim(gm):
    sched = make_schedule("linear", 1000)
    levels = sched.respace(20)
    ab = levels.alphas_cumprod.reshape(-1, 1, 1, 1)
    proc = S.DiagonalDiffusion(ab.sqrt(), (1 - ab).sqrt(), levels.timesteps)
    for q in (0, 2):
        want = S.gddim(gm.denoiser(sched), _x_T(), sched, steps=20, order=q)
        got = S.gddim_diagonal(gm.denoiser(sched), _x_T(), proc, order=q)
        assert torch.allclose(got, want, atol=1e-10), q


def test_diagonal_gddim_samples_a_blurring_diffusion_exactly():
    """Gaussian data, exact eps: gDDIM on the per-coordinate process lands on N(MU, SD^2); DDIM with one
    alpha for all coordinates (the blur ignored) does not."""
    decay = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    proc = _blurring(50, decay)
    n = 4000
    a_T, s_T = proc.alphas[-1], proc.sigmas[-1]
    z = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mu, sd = MU.reshape(1, 2, 2), SD.reshape(1, 2, 2)
    x_T = a_T * mu + (a_T**2 * sd**2 + s_T**2).sqrt() * z
    out = S.gddim_diagonal(_gauss_eps(proc), x_T, proc, order=2).flatten(1)
    assert torch.all((out.mean(0) - MU).abs() < 4 * SD / n**0.5 + 0.005), out.mean(0)
    assert torch.all((out.std(0) / SD - 1).abs() < 0.05), out.std(0)
    scalar = S.DiagonalDiffusion(proc.alphas[:, :, :1, :1].expand_as(proc.alphas), proc.sigmas, proc.timesteps)
    wrong = S.gddim_diagonal(_gauss_eps(proc), x_T, scalar, order=2).flatten(1)
    assert (wrong.mean(0) - MU).abs().max() > 0.1
    with pytest.raises(ValueError, match="must increase"):
        S.DiagonalDiffusion(proc.alphas.flip(0), proc.sigmas.flip(0))
