"""ILVR and the data-consistency block: band projections, every sampler, 2-D and 3-D, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _guidance_testlib import (
    SCHEDULE,
    gen,
    single_thread,  # noqa: F401 - autouse fixture
)

from medrs_diff.diffusion.guidance import ILVR, CorrelatedGaussian, DataConsistency, block_lowpass
from medrs_diff.diffusion.samplers import StepContext, ddim, ddpm, dpm_solver_pp

SAMPLERS = [(ddpm, {}), (ddim, {"eta": 0.0}), (dpm_solver_pp, {"order": 2})]


def _setup(shape):
    prior = CorrelatedGaussian.smooth(shape, mean=0.2)
    return prior, prior.denoiser(SCHEDULE), prior.sample(1, gen(0)) + 0.5


def test_block_lowpass_is_the_pooling_projection():
    x = torch.randn(2, 3, 8, 4, generator=gen(1))
    ref = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    torch.testing.assert_close(block_lowpass(x, 2), ref)
    x3 = torch.randn(1, 1, 4, 8, 4, generator=gen(2))
    ref3 = F.interpolate(F.avg_pool3d(x3, 4), scale_factor=4, mode="nearest")
    torch.testing.assert_close(block_lowpass(x3, 4), ref3)
    torch.testing.assert_close(block_lowpass(block_lowpass(x, 2), 2), block_lowpass(x, 2))


@pytest.mark.parametrize(("sampler", "kwargs"), SAMPLERS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 4, 4, 4)])
def test_ilvr_output_low_band_is_the_reference(sampler, kwargs, shape):
    """phi_N is a projection and the last step's forward sample of the reference is the reference
    itself, so the output's low band equals the reference's (float precision), with every sampler."""
    prior, den, ref = _setup(shape)
    x_T = torch.randn((5, *shape), generator=gen(3))
    out = sampler(den, x_T, SCHEDULE, steps=20, hooks=[ILVR(ref, factor=4)], generator=gen(4), **kwargs)
    torch.testing.assert_close(block_lowpass(out, 4), block_lowpass(ref, 4).expand_as(out), atol=1e-5, rtol=0)
    # The high band is left to the model: the samples differ from each other and from the reference.
    high = out - block_lowpass(out, 4)
    assert high.std(0).mean() > 0.05


def test_ilvr_high_band_follows_the_conditional_distribution():
    """Correlated Gaussian prior, noiseless 4x block-mean observation: the exact conditional of the high
    band given the low band is Gaussian. ILVR-100 with ancestral steps puts the sample mean within 0.3
    conditional stds of it (measured 0.1; 4.5 MC standard errors = 0.1)."""
    from medrs_diff.diffusion.guidance import SuperResolution

    shape = (1, 8, 8)
    prior, den, ref = _setup(shape)
    op = SuperResolution(shape, 4)
    post_mean, post_cov = prior.posterior(op, op(ref), 0.0)
    post_std = post_cov.diagonal().clamp_min(0).sqrt()
    n = 2000
    out = ddpm(den, torch.randn((n, *shape), generator=gen(3)), SCHEDULE, steps=100,
               hooks=[ILVR(ref, factor=4)], generator=gen(4))
    mean = out.reshape(n, -1).double().mean(0)
    assert ((mean - post_mean) / post_std).abs().max() < 0.3


def test_ilvr_stops_at_stop_t():
    prior, den, ref = _setup((1, 8, 8))
    x_T = torch.randn((3, 1, 8, 8), generator=gen(3))
    plain = ddpm(den, x_T, SCHEDULE, steps=10, generator=gen(4))
    never = ddpm(den, x_T, SCHEDULE, steps=10, hooks=[ILVR(ref, 4, stop_t=1000)], generator=gen(4))
    torch.testing.assert_close(never, plain, atol=0, rtol=0)
    early = ddpm(den, x_T, SCHEDULE, steps=10, hooks=[ILVR(ref, 4, stop_t=300)], generator=gen(4))
    gap = (block_lowpass(early, 4) - block_lowpass(ref, 4)).abs().max()
    assert gap > 1e-3  # the last steps were free, so the low band is no longer pinned


def _ctx(x, abar_prev=0.6, t=10):
    return StepContext(step=0, index=1, t=t, abar_t=0.5, abar_prev=abar_prev, x_t=x, x0=x, eps=x,
                       schedule=SCHEDULE, model=None, generator=gen(7), extra={})


@pytest.mark.parametrize("band", ["all", "low", "high"])
def test_consistency_block_moves_only_its_band(band):
    x = torch.randn(2, 1, 4, 8, generator=gen(1))
    y = torch.randn(1, 1, 4, 8, generator=gen(2))
    w = 0.3
    out = DataConsistency(y, weight=w, band=band, factor=2).after_step(_ctx(x), x)
    noise = torch.randn(x.shape, generator=gen(7))
    y_prev = math.sqrt(0.6) * y + math.sqrt(0.4) * noise  # the block's fresh q(y_{t-1} | y)
    d = y_prev - x
    expected = {"all": d, "low": block_lowpass(d, 2), "high": d - block_lowpass(d, 2)}[band]
    torch.testing.assert_close(out, x + w * expected)


def test_consistency_at_the_last_step_uses_the_measurement_itself():
    x = torch.randn(2, 1, 4, 4, generator=gen(1))
    y = torch.randn(1, 1, 4, 4, generator=gen(2))
    out = DataConsistency(y, weight=1.0, band="all").after_step(_ctx(x, abar_prev=1.0), x)
    torch.testing.assert_close(out, y.expand_as(x))


@pytest.mark.parametrize(("sampler", "kwargs"), SAMPLERS)
def test_consistency_ablation_and_ilvr_equivalence(sampler, kwargs):
    """``enabled=False`` reproduces the plain sampler bit for bit (same random stream); weight 1 on
    the low band is ILVR; a partial weight lands between them."""
    prior, den, y = _setup((1, 8, 8))
    x_T = torch.randn((4, 1, 8, 8), generator=gen(3))
    run = lambda hooks: sampler(den, x_T, SCHEDULE, steps=15, hooks=hooks, generator=gen(4), **kwargs)  # noqa: E731
    plain = run([])
    torch.testing.assert_close(run([DataConsistency(y, enabled=False)]), plain, atol=0, rtol=0)
    ilvr = run([ILVR(y, 4)])
    torch.testing.assert_close(run([DataConsistency(y, weight=1.0, band="low", factor=4)]), ilvr, atol=1e-6, rtol=0)
    gap = lambda x: (block_lowpass(x, 4) - block_lowpass(y, 4)).abs().mean()  # noqa: E731
    half = run([DataConsistency(y, weight=0.5, band="low", factor=4)])
    assert gap(ilvr) < 1e-5 < gap(half) < gap(plain)


def test_consistency_in_3d():
    prior, den, y = _setup((1, 4, 4, 4))
    out = ddim(den, torch.randn((2, 1, 4, 4, 4), generator=gen(3)), SCHEDULE, steps=10,
               hooks=[DataConsistency(y, weight=1.0, band="all")])
    torch.testing.assert_close(out, y.expand_as(out), atol=1e-6, rtol=0)


def test_ilvr_and_consistency_bad_input():
    ref = torch.zeros(1, 1, 6, 6)
    with pytest.raises(ValueError, match="does not divide"):
        ILVR(ref, factor=4)
    with pytest.raises(ValueError, match="positive integer"):
        ILVR(ref, factor=0)
    with pytest.raises(ValueError, match="4-D"):
        ILVR(torch.zeros(6, 6), factor=2)
    prior, den, _ = _setup((1, 8, 8))
    with pytest.raises(ValueError, match="ILVR reference"):
        ddpm(den, torch.zeros(1, 1, 8, 8), SCHEDULE, steps=2, hooks=[ILVR(torch.zeros(1, 1, 4, 4), 2)])
    with pytest.raises(ValueError, match="weight"):
        DataConsistency(ref, weight=1.5, band="all")
    with pytest.raises(ValueError, match="band"):
        DataConsistency(ref, band="mid")
    with pytest.raises(ValueError, match="does not divide"):
        DataConsistency(ref, band="low", factor=4)
    with pytest.raises(ValueError, match="measured image"):
        ddpm(den, torch.zeros(1, 1, 8, 8), SCHEDULE, steps=2, hooks=[DataConsistency(ref, band="all")])
