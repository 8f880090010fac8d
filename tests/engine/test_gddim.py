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


def v_denoiser(gm, sched):
    """Exact v-prediction from the posterior mean, finite at alpha-bar 0 (zero terminal SNR)."""
    table = sched.parent_alphas_cumprod

    def denoise(x_t, t):
        a = table[t].to(x_t.dtype)
        x0 = gm.posterior_mean(x_t, a)
        a = a.reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return denoise


def _x_T(n=256, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("name", "steps", "spacing", "ztsnr", "ptype"), [
    ("linear", 10, "linspace", False, "eps"),
    ("linear", 50, "trailing", False, "eps"),
    ("cosine", 20, "trailing", True, "v"),
])
def test_order_zero_is_ddim_exactly(gm, name, steps, spacing, ztsnr, ptype):
    sched = make_schedule(name, 1000, zero_terminal_snr=ztsnr)
    den = v_denoiser(gm, sched) if ptype == "v" else gm.denoiser(sched)
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
