"""DDFM's EM hook: the Fourier TV proximal solve against a dense solve, the E-step against numerical
integration of the latent posterior, identity when off, and fusion behaviour inside DDIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _guidance_testlib import (
    SCHEDULE,
    dense,
    gen,
    single_thread,  # noqa: F401 - autouse fixture
)
from scipy import integrate

from medrs_diff.diffusion.guidance import CorrelatedGaussian, DDFMFusion
from medrs_diff.diffusion.guidance.ddfm import (
    DDFM_ETA,
    DDFM_LAMBDA,
    DDFM_RHO,
    DDFM_STEPS,
    EMState,
    diff,
    diff_adjoint,
    em_one_step,
    fourier_tv_prox,
    laplace_e_step,
    m_step,
    official_m_step,
    update_rate,
)
from medrs_diff.diffusion.samplers import ddim


def test_published_hyperparameters():
    assert (DDFM_LAMBDA, DDFM_RHO, DDFM_STEPS, DDFM_ETA) == (0.5, 0.01, 100, 0.0)


@pytest.mark.parametrize("shape", [(5, 6), (3, 4, 5)])
def test_diff_adjoint_is_the_transpose(shape):
    d = math.prod(shape)
    for ax in range(len(shape)):
        mat = dense(lambda x, ax=ax: diff(x.unsqueeze(1), ax + 2).squeeze(1), d, shape)
        mat_t = dense(lambda x, ax=ax: diff_adjoint(x.unsqueeze(1), ax + 2).squeeze(1), d, shape)
        torch.testing.assert_close(mat_t, mat.T)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5)])
def test_fourier_prox_equals_dense_linear_solve(shape):
    """(I + sum D^T D) k = v + sum D^T u solved by one FFT division equals the dense solve."""
    d = math.prod(shape)
    g = gen(0)
    v = torch.randn(1, 1, *shape, generator=g, dtype=torch.float64)
    u = [torch.randn(1, 1, *shape, generator=g, dtype=torch.float64) for _ in shape]
    a = torch.eye(d, dtype=torch.float64)
    rhs = v.reshape(-1).clone()
    for ax in range(len(shape)):
        dm = dense(lambda x, ax=ax: diff(x.unsqueeze(1), ax + 2).squeeze(1), d, shape)
        a = a + dm.T @ dm
        rhs = rhs + dm.T @ u[ax].reshape(-1)
    ref = torch.linalg.solve(a, rhs).reshape(v.shape)
    torch.testing.assert_close(fourier_tv_prox(v, u), ref, atol=1e-10, rtol=1e-10)


def test_m_step_equals_its_closed_form_by_hand():
    """The M-step's three updates by hand on a 4x4 image (dense solve for the TV proximal step)."""
    g = gen(1)
    shape = (4, 4)
    xp, y = (torch.randn(1, 1, *shape, generator=g, dtype=torch.float64) for _ in range(2))
    c = torch.rand(1, 1, *shape, generator=g, dtype=torch.float64) + 0.5
    e = [torch.rand(1, 1, *shape, generator=g, dtype=torch.float64) + 0.5 for _ in shape]
    lam, rho = 0.7, 0.3
    d = 16
    mats = [dense(lambda x, ax=ax: diff(x.unsqueeze(1), ax + 2).squeeze(1), d, shape) for ax in range(2)]
    u = [rho * (m @ xp.reshape(-1)) / (2 * lam * ed.reshape(-1) + rho) for m, ed in zip(mats, e, strict=True)]
    a = torch.eye(d, dtype=torch.float64) + sum(m.T @ m for m in mats)
    k = torch.linalg.solve(a, xp.reshape(-1) + sum(m.T @ ui for m, ui in zip(mats, u, strict=True)))
    ref = (2 * c.reshape(-1) * y.reshape(-1) + rho * k) / (2 * c.reshape(-1) + rho)
    torch.testing.assert_close(m_step(xp, y, c, e, lam, rho).reshape(-1), ref, atol=1e-10, rtol=1e-10)


def test_e_step_matches_numerical_posterior_moments():
    """r ~ N(0, m), m ~ Exp(gamma): E[1/m | r] and E[m | r] by quadrature of p(r | m) p(m)."""
    for r, gamma in [(0.3, 1.0), (1.2, 0.25), (0.05, 4.0)]:
        def post(m, r=r, gamma=gamma):
            return math.exp(-r * r / (2 * m)) / math.sqrt(2 * math.pi * m) * gamma * math.exp(-gamma * m)

        z = integrate.quad(post, 0, np.inf, limit=200)[0]
        inv = integrate.quad(lambda m, p=post: p(m) / m, 0, np.inf, limit=200)[0] / z
        mean = integrate.quad(lambda m, p=post: p(m) * m, 0, np.inf, limit=200)[0] / z
        e_inv, e_m = laplace_e_step(torch.tensor([r], dtype=torch.float64), torch.tensor(gamma, dtype=torch.float64))
        assert float(e_inv) == pytest.approx(inv, rel=1e-6)
        assert float(e_m) == pytest.approx(mean, rel=1e-6)


def test_e_step_hand_case_and_rate_update():
    """r = 0.5, gamma = 2: E[1/m] = sqrt(4)/0.5 = 4, E[m] = 0.5/2 + 1/4 = 0.5; the rate of E[m] = (0.5, 1.5) is 1."""
    e_inv, e_m = laplace_e_step(torch.tensor([[0.5, -0.5]]), torch.tensor(2.0))
    torch.testing.assert_close(e_inv, torch.tensor([[4.0, 4.0]]))
    torch.testing.assert_close(e_m, torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(update_rate(torch.tensor([[0.5, 1.5]])), torch.tensor([[1.0]]))


def _prior(shape=(1, 8, 8)):
    prior = CorrelatedGaussian.smooth(shape, mean=0.0, decay=1.0)
    return prior.denoiser(SCHEDULE)


def _sources(shape=(1, 1, 8, 8)):
    yy, xx = torch.meshgrid(torch.arange(shape[-2]), torch.arange(shape[-1]), indexing="ij")
    a = torch.where((yy - 4) ** 2 + (xx - 4) ** 2 < 5, 0.8, -0.6).float().expand(shape).clone()  # a hot blob
    b = (0.5 * torch.sin(xx / 1.5) * torch.cos(yy / 2.0)).float().expand(shape).clone()  # texture
    return a, b


@pytest.mark.parametrize("off", [{"weight": 0.0}, {"enabled": False}])
def test_switched_off_hook_is_plain_ddim_exactly(off):
    den = _prior()
    a, b = _sources()
    x_T = torch.randn(2, 1, 8, 8, generator=gen(3))
    plain = ddim(den, x_T, SCHEDULE, steps=20)
    hooked = ddim(den, x_T, SCHEDULE, steps=20, hooks=[DDFMFusion(a, b, **off)])
    assert torch.equal(plain, hooked)


def test_zero_weight_terms_give_the_prior_estimate():
    """With lambda = 0 the TV proximal step returns x_prior (u = D x_prior); a vanishing intensity weight
    (rho >> c) then leaves the estimate unchanged: the EM iteration is the identity."""
    g = gen(4)
    xp = torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    e = [torch.ones_like(xp)] * 2
    out = m_step(xp, y, torch.zeros_like(xp), e, lam=0.0, rho=0.01)
    torch.testing.assert_close(out, xp, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("official", [False, True])
def test_ddim_with_ddfm_fuses_both_sources(official):
    """The fused sample lies between the sources: closer to a than b is and (in gradients) closer to b than a is."""
    den = _prior()
    a, b = _sources()
    x_T = torch.randn(1, 1, 8, 8, generator=gen(5))
    out = ddim(den, x_T, SCHEDULE, steps=DDFM_STEPS, eta=DDFM_ETA, hooks=[DDFMFusion(a, b, official_code=official)])
    assert torch.isfinite(out).all()
    plain = ddim(den, x_T, SCHEDULE, steps=DDFM_STEPS)
    err_a = (out - a).abs().mean()
    assert err_a < (b - a).abs().mean()
    assert err_a < (plain - a).abs().mean()


def test_em_state_rates_follow_residuals():
    """Rates adapt to the residual scale: small residuals -> large rate (1/mean E[m])."""
    a, b = _sources()
    st = EMState(1, 4, torch.device("cpu"), torch.float32)
    em_one_step(a + 0.01, a, b, st)
    small = float(st.gamma)
    st2 = EMState(1, 4, torch.device("cpu"), torch.float32)
    em_one_step(a + 0.5, a, b, st2)
    assert small > float(st2.gamma)


def test_refusals():
    a, b = _sources()
    with pytest.raises(ValueError, match="registered on one grid"):
        DDFMFusion(a, b[..., :7])
    with pytest.raises(ValueError, match="rho must be > 0"):
        DDFMFusion(a, b, rho=0.0)
    with pytest.raises(ValueError, match="NaN"):
        DDFMFusion(a * float("nan"), b)
    with pytest.raises(ValueError, match="weight"):
        DDFMFusion(a, b, weight=2.0)
    hook = DDFMFusion(a, b)
    with pytest.raises(ValueError, match="modality a"):
        ddim(_prior((1, 4, 4)), torch.randn(1, 1, 4, 4), SCHEDULE, steps=3, hooks=[hook])


def test_official_em_is_the_residual_weighted_blend_by_hand():
    """rho -> 0: f = b + (a - b) c / (c + d), c = sqrt(2 gamma)/|a - x0|, d = min(sqrt(2 gamma_b)/|x0 - b|, 2 c)."""
    g = gen(6)
    a, b, x0 = (torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(3))
    st = EMState(1, 4, torch.device("cpu"), torch.float64)
    out = em_one_step(x0, a, b, st, lam=0.5, rho=1e-12, official_code=True)
    c = math.sqrt(2.0) / (a - x0).abs().clamp(min=1e-3)
    d = torch.minimum(math.sqrt(2.0) / (x0 - b).abs().clamp(min=1e-3), 2 * c)
    torch.testing.assert_close(out, b + (a - b) * c / (c + d), atol=1e-9, rtol=1e-9)


def test_bare_objective_em_returns_source_a_at_published_rho():
    """The documented reason the code's model is the default: c >> rho, so x = y and f = a."""
    g = gen(7)
    a, b, x0 = (torch.rand(1, 1, 8, 8, generator=g) * 2 - 1 for _ in range(3))
    out = em_one_step(x0, a, b, EMState(1, 4, torch.device("cpu"), torch.float32), official_code=False)
    assert (out - a).abs().max() < 0.02


def test_official_m_step_two_steps_by_hand():
    """The code's M-step by hand over two reverse steps on a 4x5 image: h = dense solve of the TV prox of the
    residual y - x_prior with the previous step's targets rho/(2 lam + rho) (h[i] - h[i+1], last h[n-1]);
    x = (2 c y + rho (y - h)) / (2 c + 2 d + rho)."""
    g = gen(8)
    shape = (4, 5)
    n = math.prod(shape)
    lam, rho = 0.5, 0.3
    mats = [dense(lambda x, ax=ax: diff(x.unsqueeze(1), ax + 2).squeeze(1), n, shape) for ax in range(2)]
    a = torch.eye(n, dtype=torch.float64) + sum(m.T @ m for m in mats)

    def code_diff(h: torch.Tensor, ax: int) -> torch.Tensor:  # h[i] - h[i + 1]; h[n - 1] at the end, by loops
        out = h.clone()
        for i in range(h.shape[ax] - 1):
            out.select(ax, i).copy_(h.select(ax, i) - h.select(ax, i + 1))
        return out

    state = EMState(1, 4, torch.device("cpu"), torch.float64)
    targets = [torch.zeros(shape, dtype=torch.float64) for _ in range(2)]
    for _ in range(2):
        xp, y = (torch.randn(1, 1, *shape, generator=g, dtype=torch.float64) for _ in range(2))
        c, d = (torch.rand(1, 1, *shape, generator=g, dtype=torch.float64) + 0.5 for _ in range(2))
        rhs = (y - xp).reshape(-1) + sum(m.T @ t.reshape(-1) for m, t in zip(mats, targets, strict=True))
        h = torch.linalg.solve(a, rhs).reshape(shape)
        ref = (2 * c[0, 0] * y[0, 0] + rho * (y[0, 0] - h)) / (2 * c[0, 0] + 2 * d[0, 0] + rho)
        out = official_m_step(xp, y, c, d, lam, rho, state)
        torch.testing.assert_close(out[0, 0], ref, atol=1e-10, rtol=1e-10)
        targets = [rho / (2 * lam + rho) * code_diff(h, ax) for ax in range(2)]
