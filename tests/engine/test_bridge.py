"""DDBM bridges against closed forms: the marginal coefficients, the preconditioning's unit variances and,
with the exact Gaussian denoiser, the hybrid sampler's output against the closed-form p(x | y)."""

import math

import pytest
import torch

from medrs_diff.diffusion.bridge import (
    BridgeLoss,
    BridgePreconditioner,
    BridgeProcess,
    ddbm_sample,
    karras_times,
)

N = 4000
Y = torch.tensor([-1.0, -0.3, 0.4, 1.2], dtype=torch.float64)
RHO, V = 0.6, 0.25  # x | y ~ N(RHO y, V)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def exact_denoiser(process):
    """E[x0 | x_t, y] for x0 | y ~ N(RHO y, V): x_t = a y + b x0 + sqrt(c) z."""

    def denoise(x_t, t, y):
        a, b, c = (v.to(x_t.dtype).reshape(-1, 1, 1, 1) for v in process.coefficients(t))
        m = RHO * y
        return m + V * b / (b**2 * V + c) * (x_t - a * y - b * m)

    return denoise


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_bridge_coefficients_pin_both_ends_and_match_ve_closed_form(kind):
    p = BridgeProcess(kind)
    t = torch.tensor([p.t_min, 0.3 * p.t_max, p.t_max * (1 - 1e-9)], dtype=torch.float64)
    a, b, c = p.coefficients(t)
    assert abs(float(b[0]) - 1) < 1e-3 and float(a[0]) < 1e-3 and float(c[0]) < 1e-3  # x_t -> x0
    assert abs(float(a[-1]) - 1) < 1e-6 and float(b[-1]) < 1e-6 and float(c[-1]) < 1e-6 * p.t_max**2  # x_t -> y
    if kind == "ve":  # DDBM's VE bridge: a = t^2/T^2, b = 1 - t^2/T^2, c = t^2 (1 - t^2/T^2)
        r = t**2 / p.t_max**2
        assert torch.allclose(a, r) and torch.allclose(b, 1 - r) and torch.allclose(c, t**2 * (1 - r))
    # Gaussian conditioning of the base process: x_t = al_t x0 + s_t z, x_T = (al_T/al_t) x_t + independent noise
    T = torch.full_like(t, p.t_max)
    al_t, al_T, s2_t, s2_T = p.log_alpha(t).exp(), p.log_alpha(T).exp(), p.sigma2(t), p.sigma2(T)
    k = (al_T / al_t) * s2_t / s2_T  # Cov(x_t, x_T) / Var(x_T) given x0
    assert torch.allclose(a, k) and torch.allclose(b, al_t - k * al_T, atol=1e-12)
    assert torch.allclose(c, s2_t - k * (al_T / al_t) * s2_t, atol=1e-9)


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_preconditioning_gives_unit_variance_input_and_target(kind):
    p = BridgeProcess(kind)
    pre = BridgePreconditioner(p, sigma_data=0.5, sigma_data_end=0.8, cov_xy=0.15)
    n = 20000
    g = _g(0)
    # (x0, y) jointly Gaussian with var 0.25, 0.64, cov 0.15
    y = 0.8 * torch.randn(n, generator=g, dtype=torch.float64)
    x0 = 0.15 / 0.64 * y + math.sqrt(0.25 - 0.15**2 / 0.64) * torch.randn(n, generator=g, dtype=torch.float64)
    for frac in (0.05, 0.5, 0.95):
        t = torch.full((n,), frac * p.t_max, dtype=torch.float64)
        x_t = p.sample(x0[:, None, None, None], y[:, None, None, None], t, torch.randn(n, 1, 1, 1, generator=g,
                                                                                       dtype=torch.float64)).flatten()
        c_skip, c_out, c_in, w = (v[0] for v in pre.scalings(t[:1]))
        assert abs(float((c_in * x_t).var()) - 1) < 0.05
        assert abs(float(((x0 - c_skip * x_t) / c_out).var()) - 1) < 0.05
        assert math.isclose(float(w), float(c_out) ** -2)


def test_bridge_loss_is_zero_for_the_exact_network_and_refuses_shape_mismatch():
    """A net whose D equals the true x0 (it sees x0 through a closure) has loss 0; a biased one loss > 0."""
    p = BridgeProcess("ve")
    pre = BridgePreconditioner(p)
    x0, y = torch.randn(8, 1, 2, 2, generator=_g(1)), torch.randn(8, 1, 2, 2, generator=_g(2))
    t = torch.linspace(0.01, 70, 8, dtype=torch.float64)
    noise = torch.randn(8, 1, 2, 2, generator=_g(3))
    x_t = p.sample(x0, y, t, noise)
    c_skip, c_out, c_in, _ = (v.float().reshape(-1, 1, 1, 1) for v in pre.scalings(t))

    def net(x_in, c_noise, y_):
        assert torch.allclose(x_in, c_in * x_t, atol=1e-5)
        assert torch.allclose(c_noise, 0.25 * torch.log(t.float()))
        return (x0 - c_skip * x_t) / c_out

    loss, _ = BridgeLoss(pre)(net, x0, y, t=t, noise=noise)
    assert float(loss) < 1e-8
    biased, _ = BridgeLoss(pre)(lambda a, b, c: net(a, b, c) + 0.1, x0, y, t=t, noise=noise)
    assert float(biased) > 1e-3
    with pytest.raises(ValueError, match="differ in shape"):
        BridgeLoss(pre)(net, x0, y[:, :, :1])


def test_karras_times():
    ts = karras_times(5, 0.002, 80.0)
    assert ts[0] == pytest.approx(80.0) and ts[-2] == pytest.approx(0.002) and ts[-1] == 0.0
    assert all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_hybrid_sampler_matches_the_closed_form_conditional(kind):
    """Exact denoiser plugged in: sampled x | y has mean RHO y and variance V within Monte-Carlo error."""
    p = BridgeProcess(kind)
    y = Y.reshape(1, 1, 2, 2).expand(N, 1, 2, 2).clone()
    x, nfe = ddbm_sample(exact_denoiser(p), y, p, steps=40, churn_step_ratio=0.33, generator=_g(5))
    assert nfe == 40 * 3 - 1
    x = x.flatten(1)
    mean, var = x.mean(0), x.var(0)
    se_mean, se_var = math.sqrt(V / N), V * math.sqrt(2 / N)
    assert torch.all((mean - RHO * Y).abs() < 4 * se_mean + 0.01), (mean, RHO * Y)
    assert torch.all((var - V).abs() < 5 * se_var + 0.01), var


def test_ode_only_is_deterministic_so_it_cannot_sample():
    p = BridgeProcess("ve")
    y = Y.reshape(1, 1, 2, 2).expand(64, 1, 2, 2).clone()
    x, nfe = ddbm_sample(exact_denoiser(p), y, p, steps=10, churn_step_ratio=0.0)
    assert nfe == 19 and float(x.var(0).max()) < 1e-20
    with pytest.raises(ValueError, match="churn_step_ratio"):
        ddbm_sample(exact_denoiser(p), y, p, churn_step_ratio=1.0)
